"""metric=lm_eval on dataset=lm_eval: EleutherAI's lm-evaluation-harness tasks (metric.tasks) on the patched
model, every comparison charged to its document; lm-eval's metrics per task and one primary `accuracy`.

The task, torch- and lm-eval-free at import; the checks and task lookup are lsh_bitnet/bridges/lm_eval.py,
the evaluation lsh_bitnet/tasks/_lm_eval.py (lm-eval is an optional extra: pip install -e '.[lm-eval]').
"""
import json
from pathlib import Path
from typing import Any, Dict, Optional

from lsh_bitnet.config import LMEvalDatasetConfig, LMEvalMetricConfig
from lsh_bitnet.registry import TASKS
from lsh_bitnet.tasks.base import DatasetOption, SampleRecords, Task, register_dataset

# No text and no checks: the documents come from the lm-eval tasks metric.tasks names.
DATASET = register_dataset(DatasetOption("lm_eval", LMEvalDatasetConfig))


class LMEvalRecords(SampleRecords):
    """lm-eval's per-document records: `correct` where the task's primary score is 0/1. Two runs scored the same
    document when lm-eval's hash of the prompt also agrees (`target` alone repeats across documents)."""

    identity = ("target", "prompt_tokens", "prompt_hash")

    def holds(self, record) -> bool:
        # `prompt_hash` (lm-eval's, None when it gives none) tells its records from passkey's, which hold `correct`
        return super().holds(record) and "prompt_hash" in record


@TASKS.register
class LMEval(Task):
    name = "lm_eval"
    metric_schema = LMEvalMetricConfig
    datasets = (DATASET.name,)
    record = LMEvalRecords((("accuracy", "correct"),))
    primary, higher_is_better = "accuracy", True  # the tasks' primary metric (metrics.primary_metric says which)
    values = ("accuracy", "primary_metric", "n_samples")
    y_columns = ()  # `--metric accuracy` keeps choosing the synthetic task's table
    # lm-eval chooses the documents (metric.limit), batches (metric.batch_size) and answer lengths (each task's)
    ignores = ("eval.seq_len", "eval.batch_size", "eval.max_batches", "eval.batch_offset", "dataset.max_chars")

    def check_config(self, cfg) -> None:
        """lm-eval installed in the supported range (else the install command), metric.* values sane; imports no
        lm-eval."""
        from lsh_bitnet.bridges.lm_eval import check_metric_config

        check_metric_config(cfg.metric)

    def check_data(self, cfg, cache_dir: Path) -> Any:
        """Every task known and its documents readable (a hub task offline fails here, in seconds)."""
        from lsh_bitnet.bridges.lm_eval import check_tasks

        check_tasks(cfg.metric)
        return None

    def make_items(self, cfg, tokenizer, cache_dir: Path, data: Any):
        """The task index (a TaskManager); lm-eval reads the documents when it evaluates."""
        from lsh_bitnet.bridges.lm_eval import resolve_tasks, task_metadata

        return resolve_tasks(cfg.metric, task_metadata(cfg.metric, cfg.seed))

    def evaluate(self, cfg, model, tokenizer, manager, sink=None) -> Dict[str, Any]:
        from lsh_bitnet.tasks._lm_eval import evaluate_lm_eval

        return evaluate_lm_eval(model, tokenizer, manager, cfg.metric, cfg.eval, sink=sink, seed=cfg.seed)

    def data_label(self, flat: Dict[str, Any]) -> Optional[str]:
        """`lm-eval lsh_lastword`: the documents are its tasks' (metric.tasks, a JSON list in the flat config)."""
        tasks = flat.get("metric.tasks")
        return "lm-eval " + (", ".join(json.loads(tasks)) if isinstance(tasks, str) and tasks.startswith("[") else "")

    def data_fingerprint(self, cfg, cache_dir: Path) -> Dict[str, Any]:
        """Every file on the include paths (an edited task YAML or data file reruns the job) and lm-eval's
        version."""
        from lsh_bitnet.bridges.lm_eval import tasks_fingerprint

        return tasks_fingerprint(cfg.metric)
