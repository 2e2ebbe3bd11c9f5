"""End to end: CLI runs, sweeps, failure isolation, resume, collector; perplexity vs a plain HF loop."""
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import REPO_ROOT, compose_config
from lsh_bitnet.run.runner import run

TEXT = ("The quick brown fox jumps over the lazy dog near the river bank. " * 3 +
        "Après l'été, naïve café owners counted 12,345 coins — and €50 notes.\n") * 40
TINY = ["model=tiny_bitnet", "dataset=text_file", "metric=perplexity", "eval.seq_len=48",
        "eval.progress=false"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _launch(*args, timeout=300):
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text())


def test_single_run_cli_writes_complete_results(tmp_path, text_file, cache_dir):
    out = _launch(*TINY, f"dataset.path={text_file}", "attention=lsh", "hasher.n_bits=2",
                  f"hydra.run.dir={tmp_path}/run", f"cache_dir={cache_dir}")
    assert out.returncode == 0, out.stderr[-3000:]
    record = _results(tmp_path / "run")
    assert record["status"] == "ok" and record["error"] is None
    for key in ("config", "config_hash", "metrics", "cost", "timing", "memory", "versions", "provenance", "job"):
        assert record[key] is not None, key
    metrics, cost = record["metrics"], record["cost"]
    assert metrics["perplexity"] > 1 and math.isclose(metrics["perplexity"], math.exp(metrics["nll"]))
    assert metrics["bits_per_byte"] > 0 and metrics["tokens"] % 48 == 0
    assert 0 < cost["comparison_ratio"] < 1
    assert cost["comparisons"] == sum(cost["per_layer"]["comparisons"])
    assert cost["full_comparisons"] == sum(cost["per_layer"]["full_comparisons"])
    assert record["config"]["attention"]["name"] == "lsh"
    assert record["timing"]["tokens_per_s"] > 0 and record["memory"]["peak_rss_bytes"] > 0
    assert {"python", "torch", "transformers"} <= set(record["versions"])


def test_full_perplexity_equals_plain_hf_loss(tmp_path, text_file, cache_dir):
    cfg = compose_config(TINY + [f"dataset.path={text_file}", "attention=full"], cache_dir=cache_dir)
    record = run(cfg, output_dir=tmp_path)
    from lsh_bitnet.data import token_stream, windows
    from lsh_bitnet.models import load_model_cached

    loaded = load_model_cached(cfg.model, cache_dir)
    loaded.model.set_attn_implementation("sdpa")  # stock attention, not ours
    stream = token_stream(text_file.read_text(encoding="utf-8"), loaded.tokenizer, cache_dir,
                          tokenizer_id=str(cfg.model.name_or_path or cfg.model.name))
    ids, _ = windows(stream, 48)
    with torch.inference_mode():
        losses = [loaded.model(input_ids=w[None], labels=w[None]).loss.item() for w in ids]
    assert record["metrics"]["n_windows"] == len(losses)
    assert record["metrics"]["nll"] == pytest.approx(sum(losses) / len(losses), rel=1e-5, abs=1e-6)
    n_layers, n_heads = loaded.info["n_layers"], loaded.info["n_heads"]
    assert record["cost"]["full_comparisons"] == len(losses) * n_layers * n_heads * 48 * 49 // 2
    assert record["cost"]["comparison_ratio"] == 1.0


def test_sweep_isolates_failure_resumes_and_collects(tmp_path, text_file, cache_dir):
    sweep_dir = tmp_path / "sweep"
    # Job 2 (eval.seq_len=1) is bad input: it must fail alone.
    args = ["-m", *TINY, f"dataset.path={text_file}", "attention=lsh", "hasher.n_bits=2",
            "eval.seq_len=40,1,56", f"hydra.sweep.dir={sweep_dir}", f"cache_dir={cache_dir}"]
    out = _launch(*args)
    assert out.returncode != 0
    assert "2 ok, 1 failed" in out.stdout, out.stdout[-2000:] + out.stderr[-2000:]
    # The end-of-sweep table is the short one (variant, metric with interval, ratios, n), sorted by cost;
    # the wide one stays in summary.md.
    table = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert [c.strip() for c in table[0].split("|")[1:-1]] == ["variant", "perplexity [95% CI]", "comparisons",
                                                             "MACs", "wall", "n"]
    # one table per setting (seq_len 40 and 56), each its header, rule and one run
    assert len(table) == 2 * 3 and max(len(line) for line in table) < 100
    assert sum(line.startswith("## perplexity") and "seq_len=" in line for line in out.stdout.splitlines()) == 2
    assert "no full-attention run in this setting" in out.stdout  # no reference: the sweep says so
    assert f"every column: {sweep_dir / 'summary.md'}" in out.stdout
    sweep_log = (sweep_dir / "sweep.log").read_text().splitlines()
    assert all(line.split("] ", 1)[1].strip() for line in sweep_log if line.startswith("[")), sweep_log[:3]
    assert all(line.startswith("[") for line in sweep_log)  # one timestamped record per line, none empty
    jobs = {d.name: _results(d) for d in sweep_dir.iterdir() if (d / "results.json").exists()}
    status = {str(r["config"]["eval"]["seq_len"]): r["status"] for r in jobs.values()}
    assert status == {"40": "ok", "1": "failed", "56": "ok"}
    started = {name: r["provenance"]["started_at"] for name, r in jobs.items()}
    mtimes = {d.name: (d / "results.json").stat().st_mtime_ns for d in sweep_dir.iterdir() if d.is_dir() and (d / "results.json").exists()}

    out2 = _launch(*args)
    assert out2.returncode != 0
    assert out2.stdout.count("resume:") == 2, out2.stdout[-2000:]
    for name, mtime in mtimes.items():
        unchanged = (sweep_dir / name / "results.json").stat().st_mtime_ns == mtime
        assert unchanged == (jobs[name]["status"] == "ok"), name

    collect = subprocess.run([sys.executable, "-m", "lsh_bitnet.report.collect", str(sweep_dir)], cwd=REPO_ROOT,
                             capture_output=True, text=True, timeout=120)
    assert collect.returncode == 0, collect.stderr
    import pandas as pd
    table = pd.read_csv(sweep_dir / "summary.csv")
    assert len(table) == 2 and set(table["status"]) == {"ok"}
    assert (sweep_dir / "failed.csv").exists()
    assert "seq_len=1" in (sweep_dir / "failed.csv").read_text()


@pytest.mark.slow
def test_plus_baselines_gives_an_ad_hoc_sweep_its_references(tmp_path, text_file, cache_dir):
    sweep_dir = tmp_path / "sweep"
    out = _launch("-m", *TINY, f"dataset.path={text_file}", "eval.max_batches=2", "attention=lsh",
                  "hasher.n_bits=2,4", "+baselines=true", f"hydra.sweep.dir={sweep_dir}", f"cache_dir={cache_dir}")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    attention = sorted(_results(p.parent)["config"]["attention"]["name"] for p in sweep_dir.rglob("results.json"))
    assert attention == ["full", "lsh", "lsh", "oracle_topk", "window"]
    assert not any("baselines" in p.parent.name for p in sweep_dir.rglob("results.json"))
    assert "no full-attention run" not in out.stdout
    rows = [line.split("|")[1].strip() for line in out.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "variant" and rows[1] == "full", rows  # most expensive first: the reference on top
    assert sorted(rows[1:]) == ["full", "lsh/simhash b=2", "lsh/simhash b=4", "oracle10", "window"], rows

