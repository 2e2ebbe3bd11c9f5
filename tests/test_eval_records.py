"""Perplexity at long windows, eval.batch_offset, samples.jsonl through the runner (also when interrupted),
intervals in results.json, and the top-level seed as the master seed."""
import json
import math

import pytest
import torch

from conftest import compose_config
from lsh_bitnet.tasks import _perplexity as PPL
from lsh_bitnet.run.runner import run

TEXT = ("The quick brown fox jumps over the lazy dog near the river bank. " * 3 +
        "Après l'été, naïve café owners counted 12,345 coins — and €50 notes.\n") * 40
TINY = ["model=tiny_bitnet", "dataset=text_file", "metric=perplexity", "eval.seq_len=48", "eval.progress=false"]


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "tiny.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


def _lines(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_chunked_head_equals_the_full_logits():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=97, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2)).eval()
    x = torch.randint(0, 97, (3, 23))
    assert PPL._chunked_head(model) is not None  # the chunked path is the one under test
    with torch.no_grad():
        got = PPL.window_nll(model, x, chunk=5)
        want = [model(input_ids=row[None], labels=row[None]).loss.item() * 22 for row in x]
    assert got.tolist() == pytest.approx(want, rel=1e-5)
    model.config.final_logit_softcapping = 30.0  # a head that post-processes logits: full-logit path
    assert PPL._chunked_head(model) is None


def test_perplexity_bits_per_byte_is_in_bits():
    """A model giving all 8 tokens of its vocabulary one logit: ln 8 nats = 3 bits per predicted token, so
    bits_per_byte = 3 * predicted / bytes (in nats it would be 2.08 * predicted / bytes)."""
    from types import SimpleNamespace

    from lsh_bitnet.data.tokens import TokenStream

    class Uniform(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.unused = torch.nn.Parameter(torch.zeros(1))  # where the evaluation reads the device from

        def forward(self, input_ids, use_cache=False):
            return SimpleNamespace(logits=torch.zeros(*input_ids.shape, 8))

    ids = torch.arange(23) % 8  # 4 windows of 5 tokens; the last 3 tokens are dropped
    byte_len = torch.tensor([1, 2, 3, 4] * 5 + [9, 9, 9])
    cfg = SimpleNamespace(seq_len=5, batch_size=3, max_batches=None, batch_offset=0, progress=False)
    m = PPL.evaluate_perplexity(Uniform(), TokenStream(ids=ids, byte_len=byte_len), cfg)
    assert (m["predicted_tokens"], m["bytes"], m["n_windows"]) == (16, 50, 4)
    assert m["nll"] == pytest.approx(math.log(8)) and m["bits_per_byte"] == pytest.approx(3 * 16 / 50)


def test_batch_offset_records_and_intervals(tmp_path, text_file, cache_dir):
    cfg = compose_config(TINY + [f"dataset.path={text_file}", "eval.batch_offset=2", "eval.max_batches=3"],
                         cache_dir=cache_dir)
    record = run(cfg, output_dir=tmp_path)
    m = record["metrics"]
    assert m["n"] == m["n_windows"] == 3 and m["first_window"] == 2
    assert m["perplexity_ci_low"] < m["perplexity"] < m["perplexity_ci_high"]
    rows = _lines(tmp_path / "samples.jsonl")
    assert [r["index"] for r in rows] == [2, 3, 4]
    assert sum(r["comparisons"] for r in rows) == record["cost"]["comparisons"]
    assert sum(r["full_comparisons"] for r in rows) == record["cost"]["full_comparisons"]

    from lsh_bitnet.data import token_stream, windows
    from lsh_bitnet.models import load_model_cached

    loaded = load_model_cached(cfg.model, cache_dir)
    loaded.model.set_attn_implementation("sdpa")  # stock attention, independent of ours
    ids, _ = windows(token_stream(TEXT, loaded.tokenizer, cache_dir, tokenizer_id="tiny_bitnet"), 48)
    with torch.inference_mode():
        losses = [loaded.model(input_ids=w[None], labels=w[None]).loss.item() for w in ids[2:5]]
    assert [r["nll"] / r["predicted"] for r in rows] == pytest.approx(losses, rel=1e-5)
    assert m["nll"] == pytest.approx(sum(losses) / 3, rel=1e-5)


def test_tokenisation_is_timed_apart_from_the_evaluation(tmp_path, text_file, cache_dir, monkeypatch):
    """timing.data_s holds the data preparation; eval_s (what the collector's wall_ratio divides) does not."""
    import time

    import lsh_bitnet.data as data

    real = data.token_stream

    def slow_stream(*args, **kwargs):
        time.sleep(3.0)  # a first-job tokenisation far longer than the tiny model's evaluation
        return real(*args, **kwargs)

    monkeypatch.setattr(data, "token_stream", slow_stream)
    cfg = compose_config(TINY + [f"dataset.path={text_file}", "eval.max_batches=1"], cache_dir=cache_dir)
    timing = run(cfg, output_dir=tmp_path)["timing"]
    assert timing["data_s"] >= 3.0
    assert timing["eval_s"] < timing["data_s"]


def test_interrupted_run_keeps_the_finished_windows(tmp_path, text_file, cache_dir, monkeypatch):
    real, calls = PPL.window_nll, []

    def stop_on_third(model, x, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # what Ctrl-C raises in the middle of a forward
        return real(model, x, *args, **kwargs)

    monkeypatch.setattr(PPL, "window_nll", stop_on_third)
    cfg = compose_config(TINY + [f"dataset.path={text_file}"], cache_dir=cache_dir)
    with pytest.raises(KeyboardInterrupt):
        run(cfg, output_dir=tmp_path)
    rows = _lines(tmp_path / "samples.jsonl")
    assert [r["index"] for r in rows] == [0, 1]
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["status"] in ("failed", "interrupted")  # the runner records a KeyboardInterrupt as interrupted
    m = record["metrics"]
    assert m["partial"] is True and m["n"] == 2
    assert m["perplexity"] == pytest.approx(math.exp(sum(r["nll"] for r in rows) / sum(r["predicted"] for r in rows)))


def test_seed_is_the_master_seed(tmp_path, text_file, cache_dir):
    c = compose_config(["seed=7"])
    assert c.hasher.seed == 7 and c.dataset.seed == 7
    c = compose_config(["seed=7", "hasher.seed=3", "dataset=passkey", "metric=passkey_accuracy"])
    assert c.hasher.seed == 3 and c.dataset.seed == 7
    args = TINY + [f"dataset.path={text_file}", "attention=lsh", "hasher.n_bits=3", "eval.max_batches=4"]
    a, b, other = (run(compose_config(args + [f"seed={seed}"], cache_dir=cache_dir), output_dir=tmp_path / str(i))
                   for i, seed in enumerate([1, 1, 2]))
    assert a["metrics"] == b["metrics"] and a["cost"]["comparisons"] == b["cost"]["comparisons"]
    runs = {1: a, 2: other}
    assert runs[2]["cost"]["comparisons"] != runs[1]["cost"]["comparisons"]  # new hash functions
    assert runs[2]["metrics"]["perplexity_ci_low"] != runs[1]["metrics"]["perplexity_ci_low"]


LONG_VARIANTS = [["attention=full"], ["attention=window"], ["attention=oracle_topk", "attention.fraction=0.05"],
                 ["attention=lsh", "hasher.n_bits=4", "attention.n_tables=2", "attention.sink_tokens=4",
                  "attention.local_window=32"],
                 ["attention=lsh_forest", "attention.n_trees=2", "attention.min_candidates=64"]]


# 4096 is tiny_bitnet's (and BitNet 2B4T's) max_position_embeddings: longer windows are a config error
# there (tests/test_reliability.py), so 8192 is left to models with more positions (SmolLM2: 8192).
@pytest.mark.parametrize("seq_len", [4096])
@pytest.mark.parametrize("variant", LONG_VARIANTS, ids=lambda v: v[0].split("=")[1])
def test_long_windows_run_for_every_variant(tmp_path, cache_dir, variant, seq_len):
    """One window of 4096 tokens on the tiny model (1 token per byte): finite perplexity, exact
    full comparison count. Memory on SmolLM2 is in docs/FINDINGS.md section 3."""
    path = tmp_path / "long.txt"
    path.write_text((TEXT * 4)[: seq_len + 10], encoding="utf-8")
    cfg = compose_config(["model=tiny_bitnet", "dataset=text_file", f"dataset.path={path}", "metric=perplexity",
                          f"eval.seq_len={seq_len}", "eval.progress=false", *variant], cache_dir=cache_dir)
    record = run(cfg, output_dir=tmp_path / "run")
    assert record["status"] == "ok" and math.isfinite(record["metrics"]["perplexity"])
    info = record["model_info"]
    assert record["cost"]["full_comparisons"] == info["n_layers"] * info["n_heads"] * seq_len * (seq_len + 1) // 2


def _preset_jobs(experiment):
    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    params = {k: str(v).split(",") for k, v in cfg.hydra.sweeper.params.items()}
    return cfg, [[f"{k}={a}", f"{k2}={b}"] for (k, va), (k2, vb) in [tuple(params.items())] for a in va for b in vb]


def test_long_context_preset_jobs_compose_and_validate():
    from lsh_bitnet.validate import validate_config

    cfg, jobs = _preset_jobs("long_context")
    assert cfg.hydra.sweep.dir == "multirun/long_context" and len(jobs) == 8
    seen = set()
    for job in jobs:
        c = compose_config(["experiment=long_context", *job])
        validate_config(c)
        seen.add((c.dataset.name, c.attention.name))
        assert c.dataset.n_samples >= 50
        assert c.dataset.target_tokens == (4096 if c.dataset.name == "passkey" else 2048)
    assert seen == {(d, a) for d in ("synthetic_ny_adj", "passkey") for a in ("full", "window", "oracle_topk")}


@pytest.mark.slow
def test_long_context_preset_runs_as_is(tmp_path, cache_dir):
    """The preset through launch.py (tiny model, one sample per job): every job ok, samples.jsonl per job."""
    import subprocess
    import sys

    from conftest import REPO_ROOT

    out = subprocess.run([sys.executable, "launch.py", "experiment=long_context", "model=tiny_bitnet",
                          "dataset.n_samples=1", "eval.progress=false", f"hydra.sweep.dir={tmp_path}",
                          f"cache_dir={cache_dir}"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=1200)
    assert out.returncode == 0, out.stderr[-3000:]
    records = [json.loads(p.read_text()) for p in tmp_path.glob("*/results.json")]
    assert len(records) == 8 and all(r["status"] == "ok" for r in records)
    assert all(len(_lines(p)) == 1 for p in tmp_path.glob("*/samples.jsonl"))
