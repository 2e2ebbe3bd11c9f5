"""metric=lm_eval's evaluation: EleutherAI's lm-evaluation-harness tasks on the loaded, patched model (the task
itself, torch-free, is lsh_bitnet/tasks/lm_eval.py).

The model goes to lm-eval as an instance (lsh_bitnet.bridges.lm_eval_lm.CountingHFLM, lm-eval's own HFLM),
so every attention rule, hasher and engine runs unchanged and every comparison lm-eval's requests cause is
counted and charged to its document. lm-eval tokenises, batches, scores and aggregates; we keep its
metrics per task (metrics.tasks), one primary `accuracy` with its interval, the per-document records
(samples.jsonl, from lm-eval's log_samples) and the provenance (lm-eval version, task versions, config
hashes). lm-eval imports only when the metric runs.
"""
from typing import Any, Dict

LM_EVAL_DEFAULT_SEEDS = "lm-eval's defaults (random 0, numpy / torch / fewshot 1234)"


def evaluate_lm_eval(model, tokenizer, manager, metric_cfg, eval_cfg, sink=None, seed: int = 0) -> Dict[str, Any]:
    """Run metric_cfg.tasks through lm-eval's simple_evaluate; `manager`: the TaskManager from
    lsh_bitnet.bridges.lm_eval.resolve_tasks (None: resolved here). Returns the metrics, with the
    provenance under "provenance" (the runner moves it to results.json provenance)."""
    from lm_eval import simple_evaluate

    from lsh_bitnet.bridges.lm_eval import resolve_tasks, set_current_tokenizer, task_metadata
    from lsh_bitnet.bridges.lm_eval_lm import CountingHFLM
    from lsh_bitnet.bridges.lm_eval_results import convert

    if manager is None:
        manager = resolve_tasks(metric_cfg, task_metadata(metric_cfg, seed))
    lm = CountingHFLM(model, tokenizer, batch_size=int(metric_cfg.batch_size))
    set_current_tokenizer(tokenizer)  # generated tasks (lsh_ruler_*) size their prompts in its tokens
    limit = metric_cfg.limit
    # lm-eval's own seeds (not ours): its fewshot sampling is then the one lm-eval users get; generated
    # tasks take the run's seed through their metadata (bridges.lm_eval.task_metadata).
    results = simple_evaluate(model=lm, tasks=list(metric_cfg.tasks), num_fewshot=metric_cfg.num_fewshot,
                              limit=int(limit) if limit is not None and limit >= 1 else limit,
                              task_manager=manager, log_samples=True)
    metrics, records, provenance = convert(results, lm.doc_costs, metric_cfg.get("primary"))
    if sink is not None:
        sink.write_batch(records)  # each record carries its own comparisons (the ledger's charges)
    metrics["unattributed_comparisons"] = lm.unattributed["comparisons"]  # 0 unless a forward answered nothing
    metrics["provenance"] = provenance
    return metrics
