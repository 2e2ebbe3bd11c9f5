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
from lsh_bitnet.run.jobs import FAIL_ENV

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
    line = console.job_line(huge, tmp_path / "r.json")
    assert line.startswith("[lsh-bitnet] failed | ValueError: xxx") and len(line) < 320 + len(str(tmp_path))
    assert "\n" not in line and line.endswith(f"| wall 31.2 s | {tmp_path}/ kept, its results.json says failed")


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
    assert all(" s left, ppl=" in line for line in lines[:-1]) and " left" not in lines[-1]  # time remaining
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="lsh_bitnet"):
        list(console.progress(range(5), desc="quiet", disable=True))
    assert caplog.records == []


def test_job_log_starts_with_a_header(caplog, tmp_path):
    from conftest import compose_config
    from lsh_bitnet.errors import ConfigError
    from lsh_bitnet.run.runner import run

    with caplog.at_level(logging.INFO, logger="lsh_bitnet"), pytest.raises(ConfigError):
        run(compose_config(["eval.seq_len=1", "seed=7"]), output_dir=tmp_path)  # a config error: header first
    lines = [r.getMessage() for r in caplog.records]
    assert lines[0] == "[lsh-bitnet] job: overrides (none: the defaults)"
    assert lines[1].startswith("[lsh-bitnet] job: seed 7 | device cpu | model smollm2_135m (")
    assert lines[1].endswith(f", float32) | output dir {tmp_path}") and "ConfigError" in lines[-1]


def test_failures_are_grouped_by_identical_error():
    failed = [(f"job{i}", "RuntimeError: CUDA out of memory. Tried to allocate 2 GiB") for i in range(24)]
    failed += [("jobx", "ValueError: attention.k must be >= 1 (got 0)"), ("joby", "status 'running'")]
    lines = console.group_failures(failed)
    assert lines[0] == ("24 x RuntimeError: CUDA out of memory. Tried to allocate 2 GiB  "
                        "[job0, job1, job2, +21 more]")
    assert len(lines) == 3 and sum(len(line) for line in lines) < 400


def _launch(args, cwd=REPO_ROOT, timeout=300, env=None):
    # Pipes, not a terminal: what SLURM, nohup and `> file` give a job.
    return subprocess.run([sys.executable, "launch.py", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL, env={**os.environ, **(env or {})})


def test_config_error_is_one_line_without_traceback_unless_hydra_full_error(tmp_path):
    run_dir = tmp_path / "run"
    out = _launch(["eval.seq_len=1", f"hydra.run.dir={run_dir}"], env={"HYDRA_FULL_ERROR": ""})
    assert out.returncode == 1
    lines = [line for line in (out.stdout + out.stderr).splitlines() if line.strip()]
    assert len(lines) == 1, lines  # no "Error executing job", no traceback
    assert "[lsh-bitnet] failed | ConfigError: eval.seq_len must be >= 2 (got 1) | config error: nothing was " \
           f"evaluated | {run_dir}/ kept, its results.json says failed" in lines[0]
    assert json.loads((run_dir / "results.json").read_text())["status"] == "failed"
    full = _launch(["eval.seq_len=1", f"hydra.run.dir={run_dir}"], env={"HYDRA_FULL_ERROR": "1"})
    assert full.returncode == 1 and "Traceback" in full.stderr and "raise ConfigError(message)" in full.stderr
    # A sweep whose every job has a config error launches nothing: the errors, one closing line, no traceback.
    sweep = _launch(["-m", "eval.seq_len=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"], env={"HYDRA_FULL_ERROR": ""})
    assert sweep.returncode == 1 and "Traceback" not in sweep.stderr
    assert sweep.stderr.strip().splitlines()[-1] == ("[lsh-bitnet] sweep: every job of the sweep has a config error "
                                                     "(listed above); nothing was launched")


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
    # libraries' own warnings may sit between our lines (transformers propagates its records when CI=true)
    header = [line for line in launch_log.splitlines() if "[lsh-bitnet]" in line][:4]
    assert header[0].endswith("[lsh-bitnet] job: overrides model=tiny_bitnet dataset=text_file "
                              f"dataset.path={text} metric=perplexity eval.seq_len=32 eval.max_batches=4 attention=lsh "
                              f"cache_dir={cache_dir}")
    assert f"[lsh-bitnet] job: seed 0 | device cpu | model tiny_bitnet (built in, float32) | output dir {run_dir}" \
        in header[1]
    assert "[lsh-bitnet] loading model tiny_bitnet: importing torch and transformers" in header[2]
    assert "[lsh-bitnet] model: tiny_bitnet (random init, seed 0, float32), 2 layers, " in header[3]
    assert "[lsh-bitnet] job: " not in out.stdout + out.stderr  # the header is launch.log's, not the console's
    # before the silent part of a start (imports, the load), a line says what comes
    console = [line.split(" - ", 1)[-1] for line in out.stdout.splitlines() if "[lsh_bitnet]" in line]
    assert console[0].startswith("[lsh-bitnet] loading model tiny_bitnet: importing torch and transformers")
    assert console[1].startswith("[lsh-bitnet] model: tiny_bitnet (random init")
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
    # The test hook fails after validation, before any model loads: three identical failures, fast.
    out = _launch(["-m", "eval.seq_len=16,32,48", f"hydra.sweep.dir={sweep}"], env={FAIL_ENV: "1"})
    assert out.returncode == 1, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    summary = next(i for i, line in enumerate(lines) if line.startswith(f"[lsh-bitnet] sweep {sweep}:"))
    assert lines[summary] == (f"[lsh-bitnet] sweep {sweep}: 0 ok, 3 failed, 0 interrupted, 0 skipped (another process "
                              f"held their lock); 1 older job dir(s) in this sweep dir not counted")
    grouped = lines[summary + 2:]
    assert len(grouped) == 1 and grouped[0].strip().startswith(f"3 x RuntimeError: {FAIL_ENV}=1: this job fails")
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
    out = _launch(["-m", "launcher=local", "seed=1,0", "model=tiny_bitnet", "dataset=text_file",
                   f"dataset.path={REPO_ROOT / 'README.md'}", "metric=perplexity", "eval.seq_len=16",
                   "eval.max_batches=1", f"hydra.sweep.dir={sweep}", f"cache_dir={cache_dir}"],
                  env={FAIL_ENV: "seed=1"})
    assert out.returncode == 1, out.stdout[-2000:] + out.stderr[-2000:]
    assert f"[lsh-bitnet] sweep {sweep}: 1 ok, 1 failed" in out.stdout  # both results reached the sweep
    logs = {p: p.read_text() for p in (sweep / ".submitit").rglob("*_log.out")}
    failed = [text for text in logs.values() if f"{FAIL_ENV}=seed=1: this job fails" in text]
    assert len(logs) == 2 and len(failed) == 1
    assert failed[0].strip().splitlines()[-1].endswith("[lsh-bitnet] this job failed (error in its results.json): "
                                                       "exit status 1")
