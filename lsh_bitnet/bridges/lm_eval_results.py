"""lm-eval's results (simple_evaluate with log_samples) -> our metrics, per-document records, provenance.

metrics (results.json `metrics`, docs/RESULTS.md):
- `tasks`: per task, every metric lm-eval reports with its `_stderr` and a 95% normal interval
  value +- 1.96 stderr (`_ci_low`, `_ci_high`), `n` documents, `primary` (the metric behind `accuracy`);
- `accuracy` (+ `_ci_low`, `_ci_high`, `_stderr`): the primary metric; with several tasks, its mean over
  all their documents. Where every document scores 0 or 1 (acc, exact match) the interval is Wilson's, the
  one every accuracy of this project (and the collector's pooled rows) carries: lm-eval's normal interval
  collapses to a point at 0 of n or n of n. Otherwise it is lm-eval's stderr interval.
- `primary_metric` ("task/metric"), `n` / `n_samples` (documents), `tokens` (fed to the model), and, with
  several tasks, `<task>/<primary>` with its interval as flat columns for the collector; `groups`: lm-eval's
  aggregates of group tasks (mmlu and the like), where a run has them.

records (samples.jsonl, one per document): `index` (doc_id, plus task position x 1e6 when a run has several
tasks), `task`, `doc_id`, `target`, `prompt_hash` (lm-eval's: pairing checks it), `score` (the primary
metric's per-document value), `correct` (score == 1, for 0/1 metrics), `metrics` (every per-document value),
`loglikelihoods` or `generated`, and `comparisons`, `full_comparisons`, `tokens` from the ledger.
"""
import hashlib
import json
import math
from typing import Any, Dict, List, Optional, Tuple

from lsh_bitnet.stats import LEVEL, _z, wilson

PREFERRED = ("acc", "exact_match", "score", "acc_norm", "em", "f1", "mc2", "mc1", "bleu", "rouge1")
INDEX_STRIDE = 1_000_000  # documents of different tasks of one run never share an index
# lm-eval's metric names (perplexity, word_perplexity, ...) that hold a positive value: a log-scale interval
POSITIVE_METRIC = "perplexity"
_SKIP = ("name", "alias", "sample_len", "samples")


def task_values(task_results: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    """{metric: {value, stderr, filter}} from lm-eval's "metric,filter" keys (the first filter of each)."""
    out: Dict[str, Dict[str, Any]] = {}
    for key, value in task_results.items():
        metric, _, filt = key.partition(",")
        if key in _SKIP or metric.endswith("_stderr") or metric in out or not _number(value):
            continue
        stderr = task_results.get(f"{metric}_stderr,{filt}")
        out[metric] = {"value": float(value), "stderr": float(stderr) if _number(stderr) else None, "filter": filt}
    return out


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def primary_metric(task: str, available: List[str], override: Optional[str]) -> str:
    if override:
        wanted = override.split("/", 1)[1] if "/" in override and override.split("/", 1)[0] == task else override
        if wanted in available:
            return wanted
        raise ValueError(f"metric.primary={override}: task {task} reports {available}, not {wanted}")
    for name in PREFERRED:
        if name in available:
            return name
    return available[0]


def normal_interval(value: float, stderr: Optional[float], bounded: bool, positive: bool = False
                    ) -> Tuple[Optional[float], Optional[float]]:
    """value +- 1.96 stderr, inside [0, 1] for a mean of [0, 1] scores, above 0 for a perplexity."""
    if stderr is None:
        return None, None
    low, high = value - _z(LEVEL) * stderr, value + _z(LEVEL) * stderr
    if bounded:
        return max(low, 0.0), min(high, 1.0)
    return (max(low, 0.0), high) if positive else (low, high)


def _interval(scores: List[float], value: float, stderr: Optional[float]) -> Tuple[Optional[float], Optional[float]]:
    if scores and all(s in (0.0, 1.0) for s in scores):
        return wilson(int(sum(scores)), len(scores))
    return normal_interval(value, stderr, bounded=bool(scores) and all(0.0 <= s <= 1.0 for s in scores))


def _score(value: Any) -> Optional[float]:
    if isinstance(value, bool):
        return float(value)
    return float(value) if _number(value) else None


def _outputs(sample: Dict[str, Any]) -> Dict[str, Any]:
    """What the model answered: loglikelihoods (of each choice / the continuation) or generated text."""
    resps = sample.get("filtered_resps") or []
    lls = [float(r[0]) if isinstance(r, (list, tuple)) else float(r) for r in resps
           if isinstance(r, (int, float)) or (isinstance(r, (list, tuple)) and r and _number(r[0]))]
    if lls and len(lls) == len(resps):
        out: Dict[str, Any] = {"loglikelihoods": lls}
        if len(lls) > 1:
            out["prediction"] = max(range(len(lls)), key=lls.__getitem__)  # the choice lm-eval's acc takes
        elif isinstance(resps[0], (list, tuple)) and len(resps[0]) > 1:
            out["prediction"] = bool(resps[0][1])  # greedy continuation == target
        return out
    texts = [r for r in resps if isinstance(r, str)]
    return {"generated": texts[0] if len(texts) == 1 else texts}


def _jsonable(value: Any) -> Any:
    if isinstance(value, (str, int, float, bool, type(None))):
        return value
    return json.loads(json.dumps(value, default=str))


def convert(results: Dict[str, Any], doc_costs: Dict, primary: Optional[str] = None
            ) -> Tuple[Dict[str, Any], List[Dict[str, Any]], Dict[str, Any]]:
    """(metrics, records, provenance) of one lm-eval evaluation; doc_costs: CountingHFLM.doc_costs."""
    samples: Dict[str, List[Dict[str, Any]]] = results.get("samples") or {}
    leaves = [t for t in results["results"] if t in samples]
    tasks: Dict[str, Dict[str, Any]] = {}
    records: List[Dict[str, Any]] = []
    for position, task in enumerate(sorted(leaves)):
        values = task_values(results["results"][task])
        if not values:
            continue
        main = primary_metric(task, list(values), primary)
        task_records = []
        for sample in sorted(samples[task], key=lambda s: s["doc_id"]):
            cost = doc_costs.get((task, sample["doc_id"]), {})
            per_doc = {m: _jsonable(sample[m]) for m in sample.get("metrics", []) if m in sample}
            score = _score(sample.get(main))
            record = {"index": position * INDEX_STRIDE + int(sample["doc_id"]), "task": task,
                      "doc_id": sample["doc_id"], "target": _jsonable(sample.get("target")),
                      "prompt_hash": sample.get("prompt_hash"), "doc_hash": sample.get("doc_hash"),
                      "score": score, "metrics": per_doc, **_outputs(sample),
                      "tokens": int(cost.get("tokens", 0)), "comparisons": int(cost.get("comparisons", 0)),
                      "full_comparisons": int(cost.get("full_comparisons", 0))}
            task_records.append(record)
        scores = [r["score"] for r in task_records if r["score"] is not None]
        if scores and all(s in (0.0, 1.0) for s in scores):
            for r in task_records:
                r["correct"] = r["score"] == 1.0
        entry: Dict[str, Any] = {"primary": main, "n": len(task_records),
                                 "higher_is_better": (results.get("higher_is_better") or {}).get(task, {})}
        for metric, v in values.items():
            per_doc = [_score(r["metrics"].get(metric)) for r in task_records]
            bounded = bool(per_doc) and all(s is not None and 0.0 <= s <= 1.0 for s in per_doc)
            low, high = normal_interval(v["value"], v["stderr"], bounded, positive=POSITIVE_METRIC in metric)
            entry.update({metric: v["value"], f"{metric}_stderr": v["stderr"], f"{metric}_ci_low": low,
                          f"{metric}_ci_high": high})
        entry["accuracy_ci"] = _interval(scores, values[main]["value"], values[main]["stderr"])
        tasks[task] = entry
        records += task_records
    metrics = _metrics(tasks, records)
    groups = {name: {m: v["value"] for m, v in task_values(values).items()}
              for name, values in (results.get("groups") or {}).items()}
    if groups:  # lm-eval's aggregates over a group's tasks (e.g. mmlu), as it reports them
        metrics["groups"] = groups
    return metrics, records, provenance(results, records)


def _metrics(tasks: Dict[str, Dict[str, Any]], records: List[Dict[str, Any]]) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    if len(tasks) == 1:
        (task, entry), = tasks.items()
        main = entry["primary"]
        value, stderr, (low, high) = entry[main], entry[f"{main}_stderr"], entry.pop("accuracy_ci")
        label = f"{task}/{main}"
    else:
        scores = [r["score"] for r in records if r["score"] is not None]
        value = sum(scores) / len(scores) if scores else None
        sd = math.sqrt(sum((s - value) ** 2 for s in scores) / (len(scores) - 1)) if len(scores) > 1 else None
        stderr = sd / math.sqrt(len(scores)) if sd is not None else None
        low, high = _interval(scores, value, stderr) if scores else (None, None)
        label = "mean over documents of " + ", ".join(f"{t}/{e['primary']}" for t, e in tasks.items())
        for task, entry in tasks.items():
            lo, hi = entry.pop("accuracy_ci")
            out.update({f"{task}/{entry['primary']}": entry[entry["primary"]],
                        f"{task}/{entry['primary']}_ci_low": lo, f"{task}/{entry['primary']}_ci_high": hi})
    n = len(records)
    return {"accuracy": value, "accuracy_ci_low": low, "accuracy_ci_high": high, "accuracy_stderr": stderr,
            "primary_metric": label, "n": n, "n_samples": n, "tokens": sum(r["tokens"] for r in records),
            **out, "tasks": tasks}


def _config_hash(config: Dict[str, Any]) -> str:
    """sha256 of a task's resolved config, less where its YAML sits on this machine."""
    config = json.loads(json.dumps(config, default=str))
    (config.get("metadata") or {}).pop("config_source", None)
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()[:16]


def provenance(results: Dict[str, Any], records: List[Dict[str, Any]]) -> Dict[str, Any]:
    """results.json provenance.lm_eval: the version, each task's version, config hash and documents' hash."""
    configs, tasks = results.get("configs") or {}, {}
    for task in sorted(configs):
        docs = sorted(str(r.get("doc_hash")) for r in records if r["task"] == task)
        tasks[task] = {"version": (results.get("versions") or {}).get(task),
                       "config_hash": _config_hash(configs[task]),
                       "docs_hash": hashlib.sha256("\n".join(docs).encode()).hexdigest()[:16],
                       "n_shot": (results.get("n-shot") or {}).get(task),
                       "n_samples": (results.get("n-samples") or {}).get(task),
                       "config_source": ((configs[task].get("metadata") or {}).get("config_source"))}
    config = results.get("config") or {}
    seeds = ("random_seed", "numpy_seed", "torch_seed", "fewshot_seed")
    return {"lm_eval": {"version": results.get("lm_eval_version"), "tasks": tasks,
                        "groups": results.get("group_subtasks") or {}, "seeds": {k: config.get(k) for k in seeds},
                        "limit": config.get("limit"), "bootstrap_iters": config.get("bootstrap_iters")}}
