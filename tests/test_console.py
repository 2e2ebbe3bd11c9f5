"""Console output: the closing line of a job, progress off a terminal, a sweep's summary of its own jobs."""
import json
import logging
import os
import subprocess
import sys
import time

import pytest

from conftest import REPO_ROOT, compose_config
from lsh_bitnet import console

TEXT = "The quick brown fox jumps over the lazy dog near the river bank.\n" * 120


def _record(status="ok", **extra):
    rec = {"status": status, "config": {"metric": {"name": "perplexity"}},
           "metrics": {"perplexity": 24.126, "perplexity_ci_low": 22.01, "perplexity_ci_high": 26.35, "n": 8},
           "cost": {"comparison_ratio": 0.3125, "mac_ratio": 0.47}, "timing": {"wall_s": 31.24}, "error": None}
    rec.update(extra)
    return rec


def test_job_line_names_metric_interval_ratios_wall_and_path(tmp_path):
    line = console.job_line(_record(), tmp_path / "results.json")
    assert line == (f"[lsh-bitnet] ok | perplexity 24.13 [22.01, 26.35] (n=8) | comparison_ratio 0.3125, "
                    f"mac_ratio 0.47 | wall 31.2 s | {tmp_path / 'results.json'}")
    synthetic = _record(config={"metric": {"name": "synthetic_accuracy"}},
                        metrics={"accuracy": 23 / 30, "n_samples": 30}, cost={"comparison_ratio": 1.0})
    assert "| accuracy 0.7667 (n=30) | comparison_ratio 1 |" in console.job_line(synthetic, "r.json")
    huge = _record("failed", error={"summary": "ValueError: " + "x" * 8000})
    line = console.job_line(huge, "r.json")
    assert line.startswith("[lsh-bitnet] failed | ValueError: xxx") and len(line) < 320 and "\n" not in line


def test_report_job_logs_at_error_for_failures(caplog, tmp_path):
    with caplog.at_level(logging.INFO, logger="lsh_bitnet"):
        console.report_job(_record("interrupted", error={"summary": "KeyboardInterrupt: SIGINT"}), tmp_path / "r")
    assert caplog.records[-1].levelno == logging.ERROR and "interrupted | KeyboardInterrupt" in caplog.text


def test_log_progress_writes_quarter_lines_with_postfix(caplog, monkeypatch):
    monkeypatch.setattr(sys, "stderr", open(os.devnull, "w"))  # not a terminal
    with caplog.at_level(logging.INFO, logger="lsh_bitnet"):
        bar = console.progress(range(8), desc="perplexity", unit="batch")
        assert isinstance(bar, console.LogProgress)
        for i in bar:
            bar.set_postfix(ppl=f"{10 + i:.2f}")
    lines = [r.getMessage() for r in caplog.records]
    assert [line.split(" in ")[0] for line in lines] == [
        "perplexity: 2/8 batch (25%)", "perplexity: 4/8 batch (50%)", "perplexity: 6/8 batch (75%)",
        "perplexity: 8/8 batch (100%)"]
    assert lines[-1].endswith("ppl=17.00") and not any("\r" in line for line in lines)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lsh_bitnet"):
        list(console.progress(range(5), desc="quiet", disable=True))
    assert caplog.records == []


def test_failures_are_grouped_by_identical_error():
    failed = [(f"job{i}", "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB") for i in range(24)]
    failed += [("jobx", "ValueError: attention.k must be >= 1 (got 0)"), ("joby", "status 'running'")]
    lines = console.group_failures(failed)
    assert lines[0] == ("24 x RuntimeError: CUDA out of memory. Tried to allocate 2 GiB  "
                        "[job0, job1, job2, +21 more]")
    assert len(lines) == 3 and sum(len(line) for line in lines) < 400


def _launch(args, cwd=REPO_ROOT, timeout=300):
    # Pipes, not a terminal: what SLURM, nohup and `> file` give a job.
    return subprocess.run([sys.executable, "launch.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.slow
def test_non_tty_run_logs_progress_lines_and_a_closing_line_without_carriage_returns(tmp_path, cache_dir):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    run_dir = tmp_path / "run"
    out = _launch(["model=tiny_bitnet", "dataset=text_file", f"dataset.path={text}", "metric=perplexity",
                   "eval.seq_len=32", "eval.max_batches=4", "attention=lsh", f"hydra.run.dir={run_dir}",
                   f"cache_dir={cache_dir}"])
    assert out.returncode == 0, out.stderr[-3000:]
    both = out.stdout + out.stderr
    assert "\r" not in both
    assert "perplexity: 1/4 batch (25%)" in both and "perplexity: 4/4 batch (100%)" in both
    closing = f"| wall "
    launch_log = (run_dir / "launch.log").read_text()
    last = launch_log.strip().splitlines()[-1]
    assert "[lsh-bitnet] ok | perplexity " in last and closing in last and last.endswith(str(run_dir / "results.json"))
    assert last.split(" - ", 1)[1] in out.stdout
    again = _launch(["model=tiny_bitnet", "dataset=text_file", f"dataset.path={text}", "metric=perplexity",
                     "eval.seq_len=32", "eval.max_batches=4", "attention=lsh", f"hydra.run.dir={run_dir}",
                     f"cache_dir={cache_dir}"])
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[lsh-bitnet] ok (resumed: results.json already held this config) | perplexity " in again.stdout


def test_sweep_ends_with_grouped_failures_and_exit_code_of_its_own_jobs(tmp_path):
    sweep = tmp_path / "sweep"
    stale = sweep / "old_job"
    stale.mkdir(parents=True)
    (stale / "results.json").write_text(json.dumps({"status": "failed", "error": {"summary": "OldError: x"}}))
    os.utime(stale / "results.json", (time.time() - 3600, time.time() - 3600))
    # fail_on_purpose fails after validation, before any model loads: three identical failures, fast.
    out = _launch(["-m", "fail_on_purpose=true", "eval.seq_len=16,32,48", f"hydra.sweep.dir={sweep}"])
    assert out.returncode == 1, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith(f"[lsh-bitnet] sweep {sweep}:"))
    assert lines[summary] == (f"[lsh-bitnet] sweep {sweep}: 0 ok, 3 failed, 0 interrupted, 0 skipped (another process "
                              f"held their lock); 1 older job dir(s) in this sweep dir not counted")
    grouped = lines[summary + 2:]
    assert len(grouped) == 1 and grouped[0].strip().startswith("3 x RuntimeError: fail_on_purpose=true")
    assert "OldError" not in "\n".join(lines[summary:])
    assert (sweep / "summary.md").exists() and "Failed runs (4)" in (sweep / "summary.md").read_text()
    assert "[lsh-bitnet] sweep" in (sweep / "sweep.log").read_text()
    assert max(len(line) for line in lines[summary:]) < 400


def test_model_record_and_tables_say_what_ran(tmp_path):
    from omegaconf import OmegaConf

    from lsh_bitnet.report.collect import write_summary
    from lsh_bitnet.models import describe_model

    default = compose_config(["model=smollm2_135m"]).model  # the schema holds its values (conf/ only selects it)
    assert describe_model(default, "/site-packages/x", "bfloat16") == \
        "SmolLM2-135M-Instruct (GGUF Q4_1, de-quantised to bfloat16)"
    hub = OmegaConf.create({"name": "hf", "gguf_file": None})
    assert describe_model(hub, "microsoft/bitnet-b1.58-2B-4T", "float32") == "microsoft/bitnet-b1.58-2B-4T (float32)"
    run = tmp_path / "r"
    run.mkdir()
    record = {"status": "ok", "config": {"model": {"name": "smollm2_135m"}, "attention": {"name": "full"},
                                         "metric": {"name": "perplexity"}, "dataset": {"name": "wikitext2", "split": "test"},
                                         "eval": {"seq_len": 64}},
              "metrics": {"perplexity": 20.0, "n_windows": 4}, "cost": {"comparison_ratio": 1.0},
              "model_info": {"description": describe_model(default, "/x", "float32")}}
    (run / "results.json").write_text(json.dumps(record))
    from lsh_bitnet.report.pareto import plot_pareto

    written = write_summary(run)
    assert "Model: SmolLM2-135M-Instruct (GGUF Q4_1, de-quantised to float32)." in written["summary.md"].read_text()
    assert plot_pareto.last_data  # the panel title is built from the same column
    from lsh_bitnet.report.collect import collect_runs
    from lsh_bitnet.report.pareto import panel_title

    ok, _ = collect_runs(run)
    assert panel_title(ok) == ("SmolLM2-135M-Instruct (GGUF Q4_1, de-quantised to float32) · wikitext2 (test split)"
                               " · 4 windows of 64 tokens")


@pytest.mark.slow
def test_failed_submitit_job_exits_non_zero_after_its_result_is_saved(tmp_path, cache_dir):
    # launcher=local: submitit's local executor, the code path of launcher=slurm without a cluster.
    sweep = tmp_path / "sweep"
    out = _launch(["-m", "launcher=local", "fail_on_purpose=true,false", "model=tiny_bitnet", "dataset=text_file",
                   f"dataset.path={REPO_ROOT / 'README.md'}", "metric=perplexity", "eval.seq_len=16",
                   "eval.max_batches=1", f"hydra.sweep.dir={sweep}", f"cache_dir={cache_dir}"])
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"[lsh-bitnet] sweep {sweep}: 1 ok, 1 failed" in out.stdout  # both results reached the sweep
    logs = {p: p.read_text() for p in (sweep / ".submitit").rglob("*_log.out")}
    failed = [text for text in logs.values() if "fail_on_purpose=true: this job fails" in text]
    assert len(logs) == 2 and len(failed) == 1
    assert failed[0].strip().splitlines()[-1].endswith("[lsh-bitnet] this job failed (error in its results.json): "
                                                       "exit status 1")
