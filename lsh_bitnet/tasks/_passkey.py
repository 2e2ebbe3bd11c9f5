"""passkey_accuracy on dataset=passkey: exact match of the greedily generated key.

Each prompt is prefilled and decoded with `model.generate` (greedy, KV cache), so the prefill and every
decode step go through the model's (possibly patched) attention. Accuracy comes with a Wilson 95%
interval, overall and per depth.
"""
from typing import Any, Dict, Sequence

import torch

from lsh_bitnet.models.kv_cache import cache_arg

from lsh_bitnet.data.passkey import PasskeySample, extract_key
from lsh_bitnet.tasks._loop import prompt_token_fields, score_each, select
from lsh_bitnet.tasks._synthetic import greedy_config
from lsh_bitnet.stats import accuracy_fields


@torch.inference_mode()
def score_passkey(model, tokenizer, sample: PasskeySample, gen_cfg) -> Dict[str, Any]:
    device = next(model.parameters()).device
    prompt = tokenizer(sample.prompt, return_tensors="pt").input_ids.to(device)  # (1, P)
    # a KV cache written in place (models/kv_cache.py): decode steps do not copy the whole cache
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), generation_config=gen_cfg,
                         **cache_arg(model))
    new_ids = out.sequences[0, prompt.shape[1]:]  # (G,)
    generated = tokenizer.decode(new_ids, skip_special_tokens=True)
    prediction = extract_key(generated)
    return {"generated": generated, "prediction": prediction, "correct": prediction == sample.answer,
            "prompt_tokens": prompt.shape[1],
            # prefill + the generated tokens fed back (the last one is never fed)
            "tokens": prompt.shape[1] + max(len(new_ids) - 1, 0)}


def evaluate_passkey(model, tokenizer, samples: Sequence[PasskeySample], metric_cfg, eval_cfg,
                     sink=None) -> Dict[str, Any]:
    """accuracy over the samples (eval.batch_offset / max_batches select them), with `accuracy_by_depth`."""
    gen_cfg = greedy_config(model, tokenizer, metric_cfg.max_new_tokens)
    samples = select(samples, eval_cfg)

    def record(sample: PasskeySample, row: Dict[str, Any]) -> Dict[str, Any]:
        return {"index": sample.index, "tokens": row["tokens"], "prompt_tokens": row["prompt_tokens"],
                "depth": sample.depth, "prediction": row["prediction"], "target": sample.answer,
                "correct": row["correct"], "generated": row["generated"]}

    rows = score_each(samples, lambda sample: score_passkey(model, tokenizer, sample, gen_cfg), record,
                      ("correct",), "passkey", eval_cfg, sink)

    by_depth: Dict[str, Any] = {}
    for depth in sorted({s.depth for s in samples}):
        hits = [r["correct"] for r, s in zip(rows, samples) if s.depth == depth]
        by_depth[f"{depth:g}"] = {**accuracy_fields("accuracy", hits), "n": len(hits)}
    n = len(rows)
    return {
        **accuracy_fields("accuracy", [r["correct"] for r in rows]),
        "n": n,
        "n_samples": n,
        "first_sample": samples[0].index,
        "accuracy_by_depth": by_depth,
        **prompt_token_fields(rows),
        "mean_depth_actual": sum(s.depth_actual for s in samples) / n,
        "tokens": sum(r["tokens"] for r in rows),
        "chance_accuracy": 1 / 90000,  # a uniform guess among the 5-digit keys
        "examples": [{"answer": s.answer, "generated": r["generated"]} for r, s in zip(rows[:5], samples)],
    }
