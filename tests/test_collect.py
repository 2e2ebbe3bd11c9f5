"""The collector on hand-written run trees: rows, failures apart, swept columns, frontier, files, CLI."""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lsh_bitnet.collect import collect_runs, main, write_summary
from lsh_bitnet.pareto import pareto_front

REPO = Path(__file__).resolve().parent.parent

BASE_CONFIG = {
    "model": {"name": "smollm2_135m", "name_or_path": None, "dtype": "float32", "device": "cpu"},
    "attention": {"name": "full", "include_self": True, "sink_tokens": 0, "local_window": 0, "layers": None,
                  "query_chunk": 256, "diagnostics": False},
    "hasher": {"name": "simhash", "n_bits": 8, "seed": 0},
    "dataset": {"name": "wikitext2", "split": "test", "path": None, "max_chars": None},
    "metric": {"name": "perplexity", "max_new_tokens": 6},
    "eval": {"seq_len": 256, "batch_size": 1, "max_batches": None, "progress": True},
    "seed": 0, "cache_dir": None, "resume": True, "extra": None,
}
VARIANT_FIELDS = {"full": {}, "lsh": {"n_tables": 1}, "oracle_topk": {"k": None, "fraction": 0.1},
                  "window": {"sink_tokens": 4, "local_window": 64},
                  "lsh_forest": {"n_trees": 4, "max_depth": 16, "min_candidates": 64}}


def record(attention="full", ratio=1.0, ppl=20.0, acc=None, status="ok", attn=None, hasher=None, **top):
    config = copy.deepcopy(BASE_CONFIG)
    config["attention"].update({"name": attention, **VARIANT_FIELDS[attention], **(attn or {})})
    config["hasher"].update(hasher or {})
    config.update(top)
    metrics = {"perplexity": ppl, "nll": 3.0, "tokens": 1000, "bits_per_byte": 1.1}
    if acc is not None:
        config["metric"]["name"], config["dataset"] = "synthetic_accuracy", {"name": "synthetic_ny_adj", "n_samples": 20}
        metrics = {"accuracy": acc, "choice_accuracy": acc, "n_samples": 20, "mean_prompt_tokens": 90.0}
    rec = {
        "schema_version": 1, "status": status, "error": None,
        "job": {"name": "launch", "num": 0, "override_dirname": f"attention={attention}", "overrides": []},
        "config": config, "config_hash": "abc",
        "metrics": metrics, "cost": {"comparisons": int(ratio * 1000), "full_comparisons": 1000,
                                     "comparison_ratio": ratio, "hash_ops": 10, "is_oracle": attention == "oracle_topk"},
        "diagnostics": None, "timing": {"load_s": 1.0, "eval_s": 2.0, "wall_s": 3.0, "tokens_per_s": 500.0},
        "memory": {"peak_rss_bytes": 123456, "peak_accelerator_bytes": None},
        "provenance": {"started_at": "2025-01-01T00:00:00+00:00", "finished_at": None},
    }
    if status != "ok":
        rec.update(metrics=None, cost=None)
    if status == "failed":
        rec["error"] = {"type": "ValueError", "message": "attention.n_tables must be >= 1 (got 0)\nsecond line",
                        "traceback": "Traceback ...\n  boom"}
    return rec


def write(root: Path, name: str, payload) -> None:
    (root / name).mkdir(parents=True)
    text = payload if isinstance(payload, str) else json.dumps(payload)
    (root / name / "results.json").write_text(text)


@pytest.fixture
def tree(tmp_path):
    root = tmp_path / "sweep"
    write(root, "0_attention=full", record("full", 1.0, 20.0))
    write(root, "1_n_bits=2", record("lsh", 0.5, 24.0, hasher={"n_bits": 2}))
    write(root, "2_n_bits=4", record("lsh", 0.3, 26.0, hasher={"n_bits": 4}))
    write(root, "3_n_bits=8", record("lsh", 0.4, 30.0, hasher={"n_bits": 8}))  # dominated by 1_ and 2_
    write(root, "4_oracle", record("oracle_topk", 0.1, 21.0))
    write(root, "5_window", record("window", 0.2, 40.0))
    write(root, "10_forest", record("lsh_forest", 0.35, 25.0, attn={"min_candidates": 32}))
    write(root, "6_failed", record("lsh", status="failed", hasher={"n_bits": 16}))
    write(root, "7_invalid", '{"status": "ok", "metrics": ')
    write(root, "8_running", record("lsh", status="running", hasher={"n_bits": 32}))
    missing = record("lsh", 0.2, 22.0)
    del missing["cost"]["comparison_ratio"]
    write(root, "9_missing", missing)
    return root


def test_collect_rows_failed_and_swept(tree):
    ok, failed = collect_runs(tree)
    assert len(ok) == 7 and len(failed) == 4
    assert list(failed["run_dir"]) == ["6_failed", "7_invalid", "8_running", "9_missing"]
    errors = dict(zip(failed["run_dir"], failed["error"]))
    assert errors["6_failed"] == "ValueError: attention.n_tables must be >= 1 (got 0)"
    assert "unreadable" in errors["7_invalid"] and "running" in errors["8_running"]
    assert "cost.comparison_ratio" in errors["9_missing"]
    assert all("\n" not in e for e in errors.values())
    # natural order: 10_forest after 5_window
    assert list(ok["run_dir"])[-1] == "10_forest"
    swept = ok.attrs["swept"]
    assert "hasher.n_bits" in swept and "attention.name" in swept
    # one forest run: its knobs differ from nothing; resume does not change results
    assert "attention.min_candidates" not in swept and "model.name" not in swept and "resume" not in swept
    lsh = ok[ok["attention"] == "lsh"].set_index("run_dir")
    assert lsh.loc["1_n_bits=2", "n_bits"] == 2 and lsh.loc["1_n_bits=2", "family"] == "lsh/simhash"
    # knobs a variant ignores are empty, not their (misleading) default
    full = ok[ok["attention"] == "full"].iloc[0]
    assert pd.isna(full["n_bits"]) and pd.isna(full["hasher"]) and pd.isna(full["sink_tokens"])
    forest = ok[ok["attention"] == "lsh_forest"].iloc[0]
    assert pd.isna(forest["n_bits"]) and forest["min_candidates"] == 32 and forest["hasher"] == "simhash"
    assert pd.isna(ok[ok["attention"] == "window"].iloc[0]["n_tables"])


def test_pareto_front_dominance_and_ties():
    df = pd.DataFrame({"r": [0.1, 0.2, 0.2, 0.3, 0.3, 0.5, float("nan")],
                       "acc": [0.5, 0.7, 0.7, 0.6, 0.9, 0.9, 1.0]})
    front = pareto_front(df, "r", "acc", minimize_y=False)
    # (0.2, 0.7) twice: exact ties, both kept; (0.3, 0.6) dominated by them in both; (0.5, 0.9) has the
    # same accuracy as the cheaper (0.3, 0.9); NaN never on the front.
    assert list(front) == [True, True, True, False, True, False, False]
    ppl = pareto_front(df.assign(p=[30, 20, 25, 19, 40, 19, 1]), "r", "p", minimize_y=True)
    assert list(ppl) == [True, True, False, True, False, False, False]


def test_write_summary_files_and_frontier(tree, tmp_path):
    out = tmp_path / "report"
    written = write_summary(tree, out_dir=out)
    for name in ["summary.csv", "summary.md", "failed.csv", "summary_perplexity.csv", "summary_perplexity.md",
                 "pareto_perplexity.png"]:
        assert written[name] == out / name and (out / name).stat().st_size > 0, name
    assert (out / "pareto_perplexity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = pd.read_csv(out / "summary_perplexity.csv")
    assert list(summary["comparison_ratio"]) == sorted(summary["comparison_ratio"])
    front = dict(zip(summary["run_dir"], summary["pareto"]))
    assert front["3_n_bits=8"] == False  # noqa: E712  (ratio 0.4 and ppl 30: worse than n_bits=2 in both)
    # within family: the oracle (0.1, 21) beats every lsh run, yet they stay on the lsh front
    assert front["1_n_bits=2"] and front["2_n_bits=4"] and front["0_attention=full"] and front["5_window"]
    failed = pd.read_csv(out / "failed.csv")
    assert len(failed) == 4 and set(failed["status"]) == {"failed", "unreadable", "running", "ok"}
    md = (out / "summary.md").read_text()
    assert "## Failed runs (4)" in md and "6_failed" in md and "| n_bits" in md
    assert not (tree / "summary.csv").exists()  # --out respected


def test_synthetic_metric_tables_and_plot(tmp_path):
    root = tmp_path / "mixed"
    write(root, "a", record("full", 1.0, acc=0.9))
    write(root, "b", record("lsh", 0.3, acc=0.6, hasher={"n_bits": 4}))
    write(root, "c", record("lsh", 0.5, acc=0.5, hasher={"n_bits": 2}))  # dominated: dearer and worse
    write(root, "d", record("lsh", 0.2, 30.0, hasher={"n_bits": 4}))
    written = write_summary(root)
    assert {"summary_synthetic_accuracy.csv", "pareto_synthetic_accuracy.png", "summary_perplexity.csv"} <= set(written)
    table = pd.read_csv(root / "summary_synthetic_accuracy.csv").set_index("run_dir")
    assert len(table) == 3 and "perplexity" not in table.columns
    assert table.loc["b", "pareto"] and not table.loc["c", "pareto"]
    assert (root / "pareto_synthetic_accuracy.png").stat().st_size > 1000
    assert len(pd.read_csv(root / "failed.csv")) == 0


def test_cli_prints_table_and_exit_codes(tree, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "lsh_bitnet.collect", str(tree), "--no-plot"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "| run_dir" in proc.stdout and "| 2_…" in proc.stdout and "Failed runs (4)" in proc.stdout
    assert "| 6_failed" in proc.stdout and "ValueError: attention.n_tables must be >= 1" in proc.stdout
    table = proc.stdout.split("## Failed")[0]
    assert table.index("| 4_oracle") < table.index("| 5_window") < table.index("| 2_…")  # by comparison_ratio
    assert (tree / "summary.csv").exists() and not (tree / "pareto_perplexity.png").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main([str(empty)]) == 2
    assert main([str(tmp_path / "nope")]) == 2


def test_metric_filter_and_only_failed(tmp_path, capsys):
    root = tmp_path / "f"
    write(root, "x", record("lsh", status="failed"))
    assert main([str(root)]) == 0  # a tree of failures still gets its report
    assert "Failed runs (1)" in capsys.readouterr().out
    write(root, "y", record("full", 1.0, 20.0))
    write(root, "z", record("full", 1.0, acc=0.8))
    written = write_summary(root, metric="choice_accuracy")
    assert "summary_synthetic_accuracy.csv" in written and "summary_perplexity.csv" not in written


def test_settings_get_their_own_frontier(tmp_path):
    root = tmp_path / "seq"
    write(root, "a", record("lsh", 0.2, 20.0, hasher={"n_bits": 4}))  # seq_len 256
    b = record("lsh", 0.5, 30.0, hasher={"n_bits": 2})
    b["config"]["eval"]["seq_len"] = 1024  # another setting: a does not dominate it
    write(root, "b", b)
    ok, _ = collect_runs(root)
    assert ok["setting"].nunique() == 2 and "eval.seq_len" in ok.attrs["swept"]
    written = write_summary(root)
    assert pd.read_csv(written["summary.csv"])["pareto"].all()


def test_cli_output_cut_short_by_a_pipe_is_not_an_error(tree, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is printed, as with `| head` on a long table
    try:
        proc = subprocess.run([sys.executable, "-m", "lsh_bitnet.collect", str(tree), "--no-plot"],
                              stdout=write_end, stderr=subprocess.PIPE, env=env, cwd=tmp_path, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr
    assert (tree / "summary.csv").exists()
