"""The collector on hand-written run trees: rows, failures apart, swept columns, frontier, files, CLI."""
import copy
import math
import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from lsh_bitnet.report.collect import collect_runs, main, write_summary
from lsh_bitnet.report.pareto import pareto_front

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
    proc = subprocess.run([sys.executable, "-m", "lsh_bitnet.report.collect", str(tree), "--no-plot"],
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
        proc = subprocess.run([sys.executable, "-m", "lsh_bitnet.report.collect", str(tree), "--no-plot"],
                              stdout=write_end, stderr=subprocess.PIPE, env=env, cwd=tmp_path, timeout=60)
    finally:
        os.close(write_end)
    assert proc.returncode == 0, proc.stderr.decode()
    assert b"Traceback" not in proc.stderr
    assert (tree / "summary.csv").exists()


# ----------------------------------------------------------------------------- issue 11: intervals, cost axes, seeds
def rich(attention="lsh", ratio=0.5, ppl=30.0, mac=None, seed=0, top_seed=0, eval_s=2.0, compile_s=0.25, **kw):
    """A results.json as the new branches write it: intervals, selection ops, mac_ratio, engine, compile time."""
    rec = record(attention, ratio, ppl, **kw)
    rec["config"]["hasher"]["seed"], rec["config"]["seed"] = seed, top_seed
    rec["metrics"].update(perplexity_ci_low=ppl * 0.9, perplexity_ci_high=ppl * 1.2, n=8, n_windows=8)
    rec["cost"].update(selection_ops=7, mac_ratio=ratio * 1.5 if mac is None else mac, causal=attention != "lsh_topk",
                       engine="masked")
    rec["timing"].update(compile_s=compile_s, eval_s=eval_s)
    return rec


def test_intervals_and_new_cost_columns_reach_tables_and_plot_data(tmp_path):
    from lsh_bitnet.report.pareto import plot_pareto

    root = tmp_path / "r"
    write(root, "0_full", rich("full", 1.0, 20.0))
    write(root, "1_lsh", rich("lsh", 0.3, 26.0, hasher={"n_bits": 4}))
    write(root, "2_old", record("lsh", 0.5, 24.0, hasher={"n_bits": 2}))  # written before these fields existed
    written = write_summary(root)
    table = pd.read_csv(written["summary_perplexity.csv"]).set_index("run_dir")
    assert table.loc["1_lsh", "perplexity_ci_low"] == pytest.approx(26.0 * 0.9)
    assert table.loc["1_lsh", "perplexity_ci_high"] == pytest.approx(26.0 * 1.2) and table.loc["1_lsh", "n"] == 8
    assert table.loc["1_lsh", "selection_ops"] == 7 and table.loc["1_lsh", "mac_ratio"] == pytest.approx(0.45)
    assert table.loc["1_lsh", "engine"] == "masked" and table.loc["1_lsh", "compile_s"] == 0.25
    assert bool(table.loc["1_lsh", "causal"]) is True
    assert pd.isna(table.loc["2_old", "mac_ratio"]) and pd.isna(table.loc["2_old", "perplexity_ci_low"])
    md = written["summary_perplexity.md"].read_text()
    assert "26 [23.4, 31.2]" in md and "| mac_ratio" in md
    for suffix in ("png", "pdf", "svg"):
        assert written[f"pareto_perplexity.{suffix}"].stat().st_size > 1000
    assert written["pareto_perplexity.pdf"].read_bytes()[:4] == b"%PDF"
    assert b"<svg" in written["pareto_perplexity.svg"].read_bytes()[:2000]
    data = plot_pareto.last_data[f"{table['setting'].iloc[0]}|perplexity"]
    lsh = data["lsh/simhash"]
    i = lsh["x"].index(0.3)
    assert lsh["err"][0][i] == pytest.approx(23.4) and lsh["err"][1][i] == pytest.approx(31.2)
    assert math.isnan(lsh["err"][0][lsh["x"].index(0.5)])  # no interval recorded: no bar, not a zero bar


def test_causal_false_for_prompt_centred_runs_is_kept(tmp_path):
    root = tmp_path / "c"
    rec = rich("lsh", 0.3, 26.0, hasher={"n_bits": 4, "center": "prompt"})
    rec["cost"]["causal"] = False
    write(root, "a", rec)
    write(root, "b", rich("lsh", 0.5, 24.0, hasher={"n_bits": 2}))
    ok, _ = collect_runs(root)
    rows = ok.set_index("run_dir")
    assert rows.loc["a", "causal"] == False and rows.loc["b", "causal"] == True  # noqa: E712
    assert rows.loc["a", "center"] == "prompt"  # a hasher field no schema of this checkout declares still shows
    from lsh_bitnet.report.pareto import plot_pareto

    write_summary(root)
    data = next(iter(plot_pareto.last_data.values()))["lsh/simhash"]
    assert dict(zip(data["x"], data["noncausal"])) == {0.3: True, 0.5: False}  # ringed in the plot


def test_group_seeds_mean_spread_and_count(tmp_path):
    root = tmp_path / "g"
    for i, (seed, ppl) in enumerate([(0, 10.0), (1, 20.0), (2, 36.0)]):
        write(root, f"{i}_s{seed}", rich("lsh", 0.25, ppl, seed=seed, hasher={"n_bits": 4}))
    write(root, "3_b8", rich("lsh", 0.1, 50.0, hasher={"n_bits": 8}))
    ok, _ = collect_runs(root)
    assert "hasher.seed" in ok.attrs["swept"]
    written = write_summary(root, group=True)
    table = pd.read_csv(written["summary_perplexity.csv"]).set_index("n_bits")
    assert len(table) == 2
    assert table.loc[4, "n_seeds"] == 3 and table.loc[8, "n_seeds"] == 1
    assert table.loc[4, "perplexity"] == pytest.approx(22.0)
    assert table.loc[4, "perplexity_std"] == pytest.approx(13.1148, rel=1e-4)  # sample std of 10, 20, 36
    assert (table.loc[4, "perplexity_min"], table.loc[4, "perplexity_max"]) == (10.0, 36.0)
    assert table.loc[4, "seeds"] == "hasher.seed=0,1,2"
    assert pd.isna(table.loc[4, "perplexity_ci_low"]) and table.loc[8, "perplexity_ci_low"] == pytest.approx(45.0)
    md = written["summary_perplexity.md"].read_text()
    assert "22 ± 13" in md and "hasher.seed" not in md.split("Swept:")[-1].split("\n")[0]
    assert main([str(root), "--group-seeds", "--no-plot"]) == 0


def test_seed_that_changes_nothing_is_not_listed_as_swept(tmp_path):
    root = tmp_path / "s"
    write(root, "a", rich("lsh", 0.25, 20.0, top_seed=0, hasher={"n_bits": 4}))
    write(root, "b", rich("lsh", 0.25, 20.0, top_seed=1, hasher={"n_bits": 4}))  # same numbers: seed read by nothing
    write(root, "c", rich("lsh", 0.25, 21.0, seed=5, hasher={"n_bits": 4}))  # hasher.seed did change something
    ok, _ = collect_runs(root)
    assert "seed" not in ok.attrs["swept"] and ok.attrs["no_effect"] == ["seed"]
    assert "hasher.seed" in ok.attrs["swept"]
    md = write_summary(root, plot=False)["summary.md"].read_text()
    assert "Varied without changing any metric: seed." in md


def test_x_axis_choice_moves_frontier_and_plot(tmp_path):
    from lsh_bitnet.report.pareto import plot_pareto

    root = tmp_path / "x"
    write(root, "0_full", rich("full", 1.0, 20.0, mac=1.0, eval_s=4.0, compile_s=0.0))
    # cheap in comparisons but dear in MACs (hashing), and the reverse; 2_b spent 0.5 s of its 2.5 compiling
    write(root, "1_a", rich("lsh", 0.2, 25.0, mac=1.8, eval_s=6.0, compile_s=0.0, hasher={"n_bits": 8}))
    write(root, "2_b", rich("lsh", 0.4, 24.0, mac=0.6, eval_s=2.5, compile_s=0.5, hasher={"n_bits": 4}))
    write(root, "3_c", rich("lsh", 0.3, 26.0, mac=0.5, eval_s=1.0, compile_s=0.0, hasher={"n_bits": 6}))
    by_cmp = pd.read_csv(write_summary(root, out_dir=tmp_path / "c")["summary.csv"]).set_index("run_dir")["pareto"]
    assert by_cmp["1_a"] and by_cmp["2_b"] and not by_cmp["3_c"]
    out = write_summary(root, out_dir=tmp_path / "m", x="mac_ratio")
    table = pd.read_csv(out["summary.csv"]).set_index("run_dir")
    assert list(table["mac_ratio"]) == sorted(table["mac_ratio"])  # sorted by the chosen axis
    assert not table.loc["1_a", "pareto"] and table.loc["2_b", "pareto"] and table.loc["3_c", "pareto"]
    data = next(v for k, v in plot_pareto.last_data.items() if k.endswith("|perplexity"))
    assert sorted(data["lsh/simhash"]["x"]) == [0.5, 0.6, 1.8]
    wall = pd.read_csv(write_summary(root, out_dir=tmp_path / "w", x="wall_ratio", plot=False)["summary.csv"])
    assert dict(zip(wall["run_dir"], wall["wall_ratio"])) == {"0_full": 1.0, "1_a": 1.5, "2_b": 0.5, "3_c": 0.25}
    old = tmp_path / "old"
    write(old, "a", record("lsh", 0.3, 22.0))
    assert main([str(old), "--x", "mac_ratio"]) == 2  # no run reports it: said, not a blank plot
    assert main([str(old), "--x", "wall_ratio"]) == 2  # no full-attention run to divide by
    with pytest.raises(SystemExit):
        main([str(root), "--x", "flops"])


def test_new_schema_field_and_variant_get_columns_without_collector_edits(tmp_path, monkeypatch):
    from dataclasses import dataclass

    from lsh_bitnet import config

    @dataclass
    class LSHWithMin(config.SCHEMAS["attention"]["lsh"]):
        min_collisions: int = 1

    @dataclass
    class TopK(config.AttentionConfig):
        name: str = "lsh_topk"
        n_tables: int = 4
        k: int = 32
        score: str = "collisions"

    monkeypatch.setitem(config.SCHEMAS["attention"], "lsh", LSHWithMin)
    monkeypatch.setitem(config.SCHEMAS["attention"], "lsh_topk", TopK)
    monkeypatch.setitem(VARIANT_FIELDS, "lsh_topk", {"n_tables": 4, "k": 32, "score": "collisions"})
    root = tmp_path / "n"
    write(root, "a", rich("lsh", 0.3, 25.0, attn={"min_collisions": 2}, hasher={"n_bits": 4}))
    write(root, "b", rich("lsh", 0.4, 24.0, attn={"min_collisions": 1}, hasher={"n_bits": 4}))
    write(root, "c", rich("lsh_topk", 0.2, 23.0, attn={"min_collisions": 9}))
    write(root, "d", rich("oracle_topk", 0.1, 21.0, attn={"score": "soft"}))
    ok, _ = collect_runs(root)
    rows = ok.set_index("run_dir")
    assert "attention.min_collisions" in ok.attrs["swept"]
    assert rows.loc["a", "min_collisions"] == 2 and pd.isna(rows.loc["c", "min_collisions"])  # topk does not read it
    assert rows.loc["c", "score"] == "collisions" and pd.isna(rows.loc["d", "score"])  # oracle does not either
    assert rows.loc["c", "family"] == "lsh_topk/simhash" and rows.loc["c", "n_bits"] == 8  # lsh* reads the hasher
    assert pd.isna(rows.loc["d", "n_bits"])
    md = write_summary(root, plot=False)["summary_perplexity.md"].read_text()
    assert "| min_collisions" in md and "| score" in md


def test_nonfinite_values_are_flagged(tmp_path, caplog):
    root = tmp_path / "nan"
    write(root, "a", rich("lsh", 0.3, 25.0))
    bad_cost = rich("lsh", 0.3, 25.0)
    bad_cost["cost"]["hash_ops"] = float("inf")
    write(root, "b", json.dumps(bad_cost))  # bare Infinity: what json.dumps writes, strict parsers reject
    bad_metric = rich("lsh", 0.2, 25.0)
    bad_metric["metrics"]["perplexity"] = float("nan")
    write(root, "c", json.dumps(bad_metric))
    quoted = rich("lsh", 0.1, 25.0)
    quoted["metrics"]["nll"] = "NaN"
    write(root, "d", quoted)
    with caplog.at_level("WARNING", logger="lsh_bitnet.report.collect"):
        ok, failed = collect_runs(root)
    assert list(ok["run_dir"]) == ["a", "b"]
    assert ok.set_index("run_dir").loc["b", "nonfinite"] == "cost.hash_ops=inf"
    assert pd.isna(ok.set_index("run_dir").loc["b", "hash_ops"])
    errors = dict(zip(failed["run_dir"], failed["error"]))
    assert errors["c"] == "status ok but non-finite metrics: metrics.perplexity=nan"
    assert "metrics.nll=NaN" in errors["d"]
    assert sum("non-finite" in r.message for r in caplog.records) == 3
    md = write_summary(root, plot=False)["summary.md"].read_text()
    assert "**Non-finite values**" in md


def test_clipped_points_are_marked_at_the_edge_and_labels_are_moved_not_dropped(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from lsh_bitnet.report.pareto import plot_pareto, repel_labels, y_limits

    root = tmp_path / "clip"
    write(root, "0_full", rich("full", 1.0, 20.0))
    write(root, "1_far", rich("lsh", 0.05, 900.0, hasher={"n_bits": 12}))
    write(root, "2_near", rich("lsh", 0.3, 30.0, hasher={"n_bits": 4}))
    write_summary(root)
    data = next(iter(plot_pareto.last_data.values()))["lsh/simhash"]
    assert data["clipped"] == [True, False] and data["y"] == [900.0, 30.0]
    ok, _ = collect_runs(root)
    low, high = y_limits(ok, "perplexity", True)
    assert 55 < high < 65 and low < 18 + 1e-9  # 3x full attention, and room for the full run's interval

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlim(0, 1), ax.set_ylim(0, 1)
    anns = [ax.annotate(f"label {i}", (0.5, 0.5), textcoords="offset points", xytext=(5, 4), fontsize=7)
            for i in range(6)]
    fig.canvas.draw()
    repel_labels(ax, anns, ax.transData.transform([[0.5, 0.5]]))
    boxes = [a.get_window_extent(fig.canvas.get_renderer()) for a in anns]
    assert all(a.get_figure() is not None for a in anns)  # every label still drawn
    assert not any(boxes[i].overlaps(boxes[j]) for i in range(6) for j in range(i))
    plt.close(fig)


def test_job_killed_before_the_runner_started_is_a_failed_row(tree):
    """A Hydra job dir with .hydra/config.yaml and no results.json (killed while Python started) must
    not vanish from the tables; one whose lock is held is reported as starting."""
    import yaml

    from lsh_bitnet.run.jobs import job_lock

    config = copy.deepcopy(BASE_CONFIG)
    config["attention"].update({"name": "lsh", **VARIANT_FIELDS["lsh"]})
    config["hasher"]["seed"] = "${seed}"  # Hydra keeps interpolations unresolved in .hydra/config.yaml
    for name in ("11_killed", "12_starting"):
        (tree / name / ".hydra").mkdir(parents=True)
        (tree / name / ".hydra" / "config.yaml").write_text(yaml.safe_dump(config))
    with job_lock(tree / "12_starting") as holder:
        assert holder is None
        ok, failed = collect_runs(tree)
    assert len(ok) == 7 and len(failed) == 6
    rows = failed.set_index("run_dir")
    assert rows.loc["11_killed", "status"] == "missing" and rows.loc["11_killed", "attention"] == "lsh"
    assert "died before the runner started" in rows.loc["11_killed", "error"]
    assert "starting now" in rows.loc["12_starting", "error"]
    assert "hasher.seed" not in ok.attrs["swept"]  # the unresolved ${seed} is no sweep
    assert list(failed["run_dir"])[-2:] == ["11_killed", "12_starting"]
    written = write_summary(tree, plot=False)
    assert "11_killed" in pd.read_csv(written["failed.csv"])["run_dir"].tolist()
    assert "6 failed" in written["summary.md"].read_text()


def test_a_job_running_now_is_reported_as_running_not_failed(tree):
    """A `running` results.json whose job lock is held is a job still at work: listed apart, not failed;
    the same record without the lock is a job that died."""
    from lsh_bitnet.run.jobs import job_lock

    with job_lock(tree / "8_running") as holder:
        assert holder is None
        ok, failed = collect_runs(tree)
        row = failed.set_index("run_dir").loc["8_running"]
        assert bool(row["running"]) and row["error"].startswith("running now (started ")
        assert f"pid {os.getpid()} on " in row["error"]
        written = write_summary(tree, plot=False)
    md = written["summary.md"].read_text()
    assert "7 ok runs, 3 failed, 1 running now (not counted as failed" in md and "## Running now (1)" in md
    assert "8_running" not in pd.read_csv(written["failed.csv"])["run_dir"].tolist()
    _, failed = collect_runs(tree)  # the lock is gone: the job died
    row = failed.set_index("run_dir").loc["8_running"]
    assert not row["running"] and "no process holds its lock: the job died" in row["error"]


def test_brief_table_is_short_sorted_by_cost_and_labels_variants(tree):
    written = write_summary(tree, plot=False)
    lines = written["brief.md"].read_text().splitlines()
    assert lines[0].startswith("## perplexity")
    header = [c.strip() for c in lines[1].split("|")[1:-1]]
    assert header == ["variant", "perplexity [95% CI]", "comparisons", "MACs", "wall", "n"]
    rows = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[3:] if line.startswith("|")]
    assert [r[0] for r in rows] == ["full", "lsh/simhash b=2", "lsh/simhash b=8", "lsh_forest/simhash",
                                    "lsh/simhash b=4", "window", "oracle_topk"]  # most expensive first
    assert [r[2] for r in rows] == ["1", "0.5", "0.4", "0.35", "0.3", "0.2", "0.1"]
    assert max(len(line) for line in lines) < 100 and not any("no full-attention" in line for line in lines)
    # Without a full-attention run the table says it has no reference.
    for name in ("0_attention=full",):
        (tree / name / "results.json").unlink()
    assert "no full-attention run in this setting" in write_summary(tree, plot=False)["brief.md"].read_text()


def test_brief_labels_name_the_variant_a_job_was_started_with(tree):
    from lsh_bitnet.report.brief import variant_labels

    table = pd.DataFrame({"family": ["full", "oracle_topk", "oracle_topk", "lsh/simhash"],
                          "overrides": ["+variant=full,experiment=quickstart", "+variant=oracle5_sw,fraction=0.1",
                                        "+variant=oracle5_sw,fraction=0.2", None],
                          "fraction": [None, 0.1, 0.2, None], "n_bits": [None, None, None, 4]})
    assert variant_labels(table, ["n_bits", "fraction"]).tolist() == ["full", "oracle5_sw f=0.1", "oracle5_sw f=0.2",
                                                                      "lsh/simhash"]


def _quickstart_like(root: Path) -> None:
    """The quickstart's shape: full, a window and a bucket rule at nearly the same ratio and score, the
    oracle, and a second bucket setting; accuracy with Wilson-like intervals."""
    points = [("0_full", "full", 1.0, 1.0, {}, {}), ("1_window", "window", 0.282, 0.0, {}, {}),
              ("2_lsh", "lsh", 0.291, 0.0, {"n_tables": 4, "sink_tokens": 4, "local_window": 32}, {"n_bits": 8}),
              ("3_oracle", "oracle_topk", 0.1065, 0.97, {}, {}),
              ("4_lsh", "lsh", 0.097, 0.0, {"n_tables": 1}, {"n_bits": 4})]
    for name, attention, ratio, acc, attn, hasher in points:
        rec = record(attention, ratio, acc=acc, attn=attn, hasher=hasher)
        rec["metrics"].update(accuracy_ci_low=max(acc - 0.15, 0), accuracy_ci_high=min(acc + 0.1, 1),
                              chance_choice_accuracy=0.25)
        write(root, name, rec)


def test_default_plot_fits_one_column_with_a_label_on_every_point_and_none_overlapping(tmp_path):
    from lsh_bitnet.report.pareto import COLUMN_IN, plot_pareto

    _quickstart_like(tmp_path / "q")
    write_summary(tmp_path / "q")
    figure = plot_pareto.last_figure
    assert figure["size_in"][0] == COLUMN_IN <= 3.5 and figure["legends"] == 0  # one column, labels not legends
    for key, panel in figure["labels"].items():
        texts = [t for t, _ in panel["labels"]]
        # every run is named on the plot, off-front ones too (lsh b=8 is dominated by lsh b=4)
        assert {"full", "window", "oracle_topk", "lsh/simhash b=4 t=1 sink=0 w=0", "b=8 t=4 sink=4 w=32"} <= set(texts), texts
        x0, y0, w, h = panel["axes"]
        boxes = [b for _, b in panel["labels"]]
        for i, (bx, by, bw, bh) in enumerate(boxes):
            assert x0 <= bx and bx + bw <= x0 + w + 0.5 and y0 <= by and by + bh <= y0 + h + 0.5, (key, texts[i])
            for jx, jy, jw, jh in boxes[:i]:
                assert bx + bw <= jx or jx + jw <= bx or by + bh <= jy or jy + jh <= by, (key, texts[i])
    # no family has two points on its front: the figure promises no front lines
    assert "lines join" not in figure["note"] and "faded: off its family's front" in figure["note"]
    png = (tmp_path / "q" / "pareto_synthetic_accuracy.png").read_bytes()
    width = int.from_bytes(png[16:20], "big")  # the IHDR chunk
    assert width <= 3.5 * 200



def test_apply_to_is_a_setting_and_full_has_a_row_in_each(tmp_path):
    """attention.apply_to is the protocol: all-sparse and dense-prefill rows never share a frontier, and full
    attention (which reads no sparse knob) still has its own row in each protocol's setting."""
    root = tmp_path / "protocol"
    for protocol, ppl in (("all", 20.0), ("decode", 20.5)):
        write(root, f"full_{protocol}", record("full", 1.0, 18.0, attn={"apply_to": protocol}))
        write(root, f"lsh_{protocol}", record("lsh", 0.2, ppl, attn={"apply_to": protocol}))
    ok, _ = collect_runs(root)
    assert "attention.apply_to" in ok.attrs["swept"] and ok["setting"].nunique() == 2
    by_setting = ok.groupby("setting")["attention"].apply(sorted)
    assert all(names == ["full", "lsh"] for names in by_setting)


def test_schema_derived_columns_are_read_once_per_variant_not_per_run(tmp_path, monkeypatch):
    """Issue 26 item 5: 10,010 runs took 7.3 million dataclasses.fields calls, keys_read per run and key."""
    import lsh_bitnet.report.runs as runs

    root = tmp_path / "many"
    for seed in range(12):
        write(root, f"{2 * seed}_full", rich("full", 1.0, 20.0 + seed, seed=seed))
        write(root, f"{2 * seed + 1}_lsh", rich("lsh", 0.3, 26.0 + seed, seed=seed, hasher={"n_bits": 4}))
    calls = []
    real = runs.keys_read
    monkeypatch.setattr(runs, "keys_read", lambda variant: calls.append(variant) or real(variant))
    ok, _ = collect_runs(root)
    assert len(ok) == 24 and "hasher.seed" in ok.attrs["swept"]
    assert sorted(calls) == ["full", "lsh"]  # once per variant, whatever the number of runs and keys


def test_group_seeds_work_grows_linearly_with_the_seeds(tmp_path, monkeypatch):
    """Issue 26 item 5: which seed keys vary was asked once per run and key (quadratic in the seeds)."""
    import lsh_bitnet.report.collect as collect

    root = tmp_path / "seeds"
    for seed in range(150):
        write(root, f"{seed}_lsh", rich("lsh", 0.3, 26.0 + seed % 3, seed=seed, hasher={"n_bits": 4}))
    ok, _ = collect_runs(root)
    calls = []
    real = collect.json.dumps
    monkeypatch.setattr(collect.json, "dumps", lambda *a, **k: calls.append(1) or real(*a, **k))
    grouped = collect.group_seeds(ok)
    assert len(grouped) == 1 and grouped["n_seeds"].iloc[0] == 150
    assert grouped["seeds"].iloc[0] == "hasher.seed=" + ",".join(map(str, range(150)))
    assert len(calls) < 10 * 150  # linear in the runs: a few keys x 150 seeds, not 150 x 150 x keys


# ----------------------------------------------------------------------------- pipe tables without tabulate
@pytest.mark.parametrize("seed", range(6))
def test_pipe_table_is_tabulates_layout_byte_for_byte(seed):
    """report/markdown.pipe_table writes what DataFrame.to_markdown(disable_numparse=True) writes: widths from the
    padded headers, cells stripped, the alignment row, unicode cells; multi-line cells go to tabulate itself."""
    import random

    from lsh_bitnet.report.markdown import pipe_table

    rng = random.Random(seed)
    alphabet = ["a", "Z", "0", "9", ".", "-", " ", "★", "–", "±", "[", "]", "\\|", "=", "_"]
    n_cols, n_rows = rng.randint(1, 6), rng.randint(0, 7)
    headers = ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 9))).strip() or "h" for _ in range(n_cols)]
    headers = [f"{h}{i}" for i, h in enumerate(headers)]  # distinct column names
    cells = [["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(n_cols)]
             for _ in range(n_rows)]
    df = pd.DataFrame(cells, columns=headers) if n_rows else pd.DataFrame({h: [] for h in headers})
    assert pipe_table(df) == df.to_markdown(index=False, disable_numparse=True)
    align = [rng.choice(["left", "right"]) for _ in headers]
    assert pipe_table(df, colalign=align) == df.to_markdown(index=False, disable_numparse=True, colalign=align)
    multi = pd.DataFrame({"a": ["one\ntwo", "x"], "b": ["1", "2"]})
    assert pipe_table(multi) == multi.to_markdown(index=False, disable_numparse=True)
