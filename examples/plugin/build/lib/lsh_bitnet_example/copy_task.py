"""metric=copy_accuracy on dataset=random_copy: random tokens shown twice; can the model copy the second time?

An induction task (Olsson et al. 2022): to predict token t of the second copy the model must attend to the key
right after token t-1's first occurrence, `length` positions back. Each sample is scored in one teacher-forced
forward: `correct` when every token of the second copy (but its first, which nothing predicts) is the greedy
prediction, `token_accuracy` the share that is. A task brings its own dataset option, schema and record.
"""
from dataclasses import dataclass
from typing import Any, Dict

from lsh_bitnet.config import DatasetConfig, MetricConfig
from lsh_bitnet.errors import require
from lsh_bitnet.registry import TASKS
from lsh_bitnet.tasks.base import DatasetOption, SampleRecords, Task, register_dataset


@dataclass
class RandomCopyDatasetConfig(DatasetConfig):
    name: str = "random_copy"
    n_samples: int = 20
    length: int = 64  # tokens per copy: the model sees 2 * length tokens
    seed: int = 0  # follows the run's `seed` (${seed}) as every option's seed field does


@dataclass
class CopyAccuracyMetricConfig(MetricConfig):
    name: str = "copy_accuracy"


def check_random_copy(cfg) -> None:
    require(cfg.n_samples >= 1, f"dataset.n_samples must be >= 1 (got {cfg.n_samples})")
    require(cfg.length >= 2, f"dataset.length must be >= 2 (got {cfg.length}): the copy is scored from its 2nd token")


DATASET = register_dataset(DatasetOption("random_copy", RandomCopyDatasetConfig, check=check_random_copy))


@TASKS.register
class CopyAccuracy(Task):
    name = "copy_accuracy"
    metric_schema = CopyAccuracyMetricConfig
    datasets = (DATASET.name,)
    record = SampleRecords((("accuracy", "correct"),))  # paired over samples, intervals: lsh-bitnet's own
    primary, higher_is_better = "accuracy", True
    values = ("accuracy", "token_accuracy", "n_samples")
    ignores = ("eval.seq_len", "dataset.max_chars")

    def make_items(self, cfg, tokenizer, cache_dir, data):
        import torch

        gen = torch.Generator().manual_seed(int(cfg.dataset.seed))
        special = set(tokenizer.all_special_ids)
        vocab = torch.tensor([i for i in range(min(len(tokenizer), 32_000)) if i not in special])
        items = []
        for _ in range(cfg.dataset.n_samples):
            half = vocab[torch.randint(len(vocab), (cfg.dataset.length,), generator=gen)]
            items.append(torch.cat([half, half]))  # (2 * length,)
        return items

    def evaluate(self, cfg, model, tokenizer, items, sink=None) -> Dict[str, Any]:
        import torch

        offset, n = cfg.eval.batch_offset, cfg.eval.max_batches
        chosen = items[offset:] if n is None else items[offset:offset + n * cfg.eval.batch_size]
        require(len(chosen) > 0, f"eval.batch_offset={offset} skips all {len(items)} samples: lower it")
        length, rows = cfg.dataset.length, []
        device = next(model.parameters()).device
        for index, ids in enumerate(chosen, start=offset):  # `index` names the item: --paired-with matches on it
            with torch.no_grad():
                logits = model(ids[None].to(device)).logits[0]  # (2L, V)
            predicted = logits[length:-1].argmax(-1).cpu()  # predictions of tokens L+1 .. 2L-1
            hits = predicted == ids[length + 1:]
            row = {"index": index, "target": " ".join(map(str, ids[:length].tolist())), "prompt_tokens": 2 * length,
                   "correct": bool(hits.all()), "token_accuracy": float(hits.float().mean()),
                   "prediction": " ".join(map(str, predicted.tolist()))}
            rows.append(row)
            if sink is not None:
                sink.write(row)
        from lsh_bitnet.stats import accuracy_fields

        return {**accuracy_fields("accuracy", [r["correct"] for r in rows]), "n_samples": len(rows),
                "token_accuracy": sum(r["token_accuracy"] for r in rows) / len(rows), "tokens": 2 * length * len(rows)}
