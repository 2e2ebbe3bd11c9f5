"""New rules inside real (tiny) HF models: KV-cache decode == prefill, centred keys (calibration never reads
evaluated tokens; prompt runs are flagged causal: false), mac_ratio."""
import pytest
import torch

from conftest import compose_config
from naive_attention import naive_prompt_center
from test_attention_model import T, generated_and_prefill, logits, padded_batch, patched, tiny_model

RULES = {
    "lsh_m2": ({"name": "lsh", "n_tables": 4, "min_collisions": 2}, {"name": "simhash", "n_bits": 2}),
    "lsh_m2_sampling": ({"name": "lsh", "n_tables": 4, "min_collisions": 2, "estimator": "sampling"},
                        {"name": "bit_sampling", "n_bits": 2}),
    "lsh_sampling_sinks": ({"name": "lsh", "n_tables": 3, "estimator": "sampling", "sink_tokens": 2,
                            "local_window": 3}, {"name": "simhash", "n_bits": 3}),
    "lsh_topk": ({"name": "lsh_topk", "n_tables": 4, "k": 5}, {"name": "simhash", "n_bits": 3}),
    "lsh_topk_soft": ({"name": "lsh_topk", "n_tables": 3, "fraction": 0.3, "score": "soft"},
                      {"name": "bit_sampling", "n_bits": 4}),
    "lsh_calibration": ({"name": "lsh", "n_tables": 2, "min_collisions": 1}, {"name": "simhash", "n_bits": 3,
                                                                               "center": "calibration"}),
}


def fixed_centers(model, seed=0):
    n_kv = model.config.num_key_value_heads
    head_dim = model.config.hidden_size // model.config.num_attention_heads
    return torch.randn(model.config.num_hidden_layers, n_kv, head_dim, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("rule", list(RULES))
def test_decode_with_cache_matches_prefill(rule):
    from lsh_bitnet.attention import patch_model

    attention, hasher = RULES[rule]
    model = tiny_model("llama")
    x, mask, _ = padded_batch("left", n_pad=5)
    centers = fixed_centers(model) if hasher.get("center") == "calibration" else None
    patch = patch_model(model, attention, hasher, centers=centers)
    try:
        steps, prefill = generated_and_prefill(model, x, mask)
        cost = patch.cost_summary()
    finally:
        patch.unpatch()
    for step, step_logits in enumerate(steps):
        assert (step_logits - prefill[:, T - 1 + step]).abs().max().item() <= 1e-4, f"{rule} step {step}"
    assert 0 < cost["comparison_ratio"] < 1 and cost["selection_ops"] > 0 and cost["causal"] is True


def test_calibration_centers_change_candidates_and_need_centers():
    from lsh_bitnet.attention import patch_model
    from lsh_bitnet.errors import ConfigError

    model, x = tiny_model("llama"), torch.randint(0, 300, (2, T), generator=torch.Generator().manual_seed(0))
    attention, hasher = RULES["lsh_calibration"]
    with pytest.raises(ConfigError, match="hasher.center=calibration"):
        patch_model(model, attention, hasher)
    costs = []
    for centers in (torch.zeros_like(fixed_centers(model)), fixed_centers(model, 1), fixed_centers(model, 1)):
        with _patch(model, attention, hasher, centers) as p:
            logits(model, x)
            costs.append(p.cost_summary()["comparisons"])
    with patched(model, attention, dict(hasher, center="none")) as p:
        logits(model, x)
        raw = p.cost_summary()["comparisons"]
    assert costs[0] == raw  # mu = 0 is no centring
    assert costs[1] == costs[2] and costs[1] != raw


class _patch:
    def __init__(self, model, attention, hasher, centers):
        from lsh_bitnet.attention import patch_model

        self.p = patch_model(model, attention, hasher, centers=centers)

    def __enter__(self):
        return self.p

    def __exit__(self, *exc):
        self.p.unpatch()


def test_prompt_center_is_flagged_and_kept_for_decode(monkeypatch):
    from lsh_bitnet.attention.hashers import Hasher

    model = tiny_model("llama")
    x, mask, pos = padded_batch("left", n_pad=5)
    hasher = {"name": "simhash", "n_bits": 3, "center": "prompt"}
    prompt_keys = {}  # hasher -> the keys its layer's prefill saw (B, Hkv, T, D)
    real = Hasher.set_prompt_center

    def record(self, key, valid):
        prompt_keys[id(self)] = key.clone()
        real(self, key, valid)

    monkeypatch.setattr(Hasher, "set_prompt_center", record)
    with patched(model, {"name": "lsh", "n_tables": 2}, hasher) as p:
        logits(model, x, mask, pos)
        mu_prefill = [s.hasher.mu.clone() for s in p.states]
        for s, mu in zip(p.states, mu_prefill):  # the mean of the batch's real tokens' keys, padding left out
            want = naive_prompt_center(prompt_keys[id(s.hasher)], mask.bool())
            assert torch.allclose(mu.double(), want, atol=1e-5), f"layer {s.layer_idx}: mu is not the valid keys' mean"
        model.generate(x, attention_mask=mask, max_new_tokens=4, do_sample=False, pad_token_id=0)
        mu_after = [s.hasher.mu for s in p.states]
        cost = p.cost_summary()
    assert cost["causal"] is False
    for a, b in zip(mu_prefill, mu_after):  # generate's prefill is the same prompt; decode steps keep its mu
        assert a.shape == (2, 2, 16) and torch.allclose(a, b, atol=1e-6)
    with patched(model, {"name": "lsh", "n_tables": 2}, dict(hasher, center="none")) as p:
        logits(model, x, mask)
        assert p.cost_summary()["causal"] is True


def test_mac_ratio():
    model, x = tiny_model("llama"), torch.randint(0, 300, (1, T), generator=torch.Generator().manual_seed(0))
    with patched(model, {"name": "full"}) as p:
        logits(model, x)
        assert p.cost_summary()["mac_ratio"] == 1.0
    with patched(model, {"name": "lsh_topk", "n_tables": 4, "k": 5}, {"name": "simhash", "n_bits": 3}) as p:
        logits(model, x)
        c = p.cost_summary()
    head_dim = 16
    expected = (c["comparisons"] * head_dim + c["hash_ops"] + c["selection_ops"]) / (c["full_comparisons"] * head_dim)
    assert c["mac_ratio"] == pytest.approx(expected, rel=1e-12) and c["mac_ratio"] > c["comparison_ratio"]


# ----------------------------------------------------------------------------- calibration text and cache
BASE = ["model=tiny_bitnet", "metric=perplexity", "eval.seq_len=32", "eval.progress=false", "attention=lsh",
        "hasher.center=calibration", "hasher.calibration_tokens=200"]


def _centers(overrides, cache_dir):
    from lsh_bitnet.attention.centering import centers_for_run
    from lsh_bitnet.models import load_model_cached

    cfg = compose_config(BASE + overrides, cache_dir=cache_dir)
    return centers_for_run(cfg, load_model_cached(cfg.model, cache_dir), cache_dir)


def test_calibration_never_reads_evaluated_tokens(tmp_path, cache_dir):
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi".split()
    texts = {name: " ".join(words[(i * 7 + k) % len(words)] for i in range(600)) for k, name in enumerate("ABCD")}
    for name, text in texts.items():
        (tmp_path / f"{name}.txt").write_text(text)
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "train.txt").write_text(texts["C"])
    (wiki / "test.txt").write_text(texts["A"])
    # a file as calibration source: the evaluated text A or B does not matter
    calib = [f"hasher.calibration_source=file", f"hasher.calibration_path={tmp_path / 'C.txt'}"]
    a = _centers(["dataset=text_file", f"dataset.path={tmp_path / 'A.txt'}"] + calib, cache_dir)
    b = _centers(["dataset=text_file", f"dataset.path={tmp_path / 'B.txt'}"] + calib, cache_dir)
    assert torch.equal(a, b)
    d = _centers(["dataset=text_file", f"dataset.path={tmp_path / 'A.txt'}", "hasher.calibration_source=file",
                  f"hasher.calibration_path={tmp_path / 'D.txt'}"], cache_dir)
    assert not torch.equal(a, d)  # the calibration text does matter
    # default for a text file: generated text, the same whatever is evaluated
    g1 = _centers(["dataset=text_file", f"dataset.path={tmp_path / 'A.txt'}"], cache_dir)
    g2 = _centers(["dataset=text_file", f"dataset.path={tmp_path / 'B.txt'}"], cache_dir)
    assert torch.equal(g1, g2) and not torch.equal(g1, a)
    # default for wikitext (local dir): its train split, never the evaluated test split
    w1 = _centers(["dataset=wikitext2", f"dataset.path={wiki}"], cache_dir)
    (wiki / "test.txt").write_text(texts["B"])
    w2 = _centers(["dataset=wikitext2", f"dataset.path={wiki}"], cache_dir)
    assert torch.equal(w1, w2) and torch.equal(w1, a)  # train.txt holds C, as the file source above
    # wikitext given as a single file has no separate train split: generated text, not the evaluated file
    assert torch.equal(_centers(["dataset=wikitext2", f"dataset.path={wiki / 'test.txt'}"], cache_dir), g1)


def test_calibration_is_cached(tmp_path, cache_dir, monkeypatch):
    from lsh_bitnet.attention import centering

    (tmp_path / "C.txt").write_text("one two three four five six seven eight nine ten " * 40)
    over = ["dataset=text_file", f"dataset.path={tmp_path / 'C.txt'}", "hasher.calibration_source=generated"]
    first = _centers(over, cache_dir)
    assert list(cache_dir.rglob("centers-*.pt"))
    monkeypatch.setattr(centering, "mean_keys", lambda *a, **k: pytest.fail("recomputed despite the cache"))
    assert torch.equal(_centers(over, cache_dir), first)


def test_runner_records_causal_flag(tmp_path, cache_dir):
    from lsh_bitnet.run.runner import run

    (tmp_path / "t.txt").write_text("The river runs past the old mill and the mill wheel turns. " * 30)
    for center, causal in (("calibration", True), ("prompt", False)):
        cfg = compose_config(["model=tiny_bitnet", "dataset=text_file", f"dataset.path={tmp_path / 't.txt'}",
                              "metric=perplexity", "eval.seq_len=32", "eval.progress=false", "eval.max_batches=2",
                              "attention=lsh", "attention.min_collisions=1", f"hasher.center={center}",
                              "hasher.calibration_tokens=100"], cache_dir=cache_dir)
        record = run(cfg, output_dir=tmp_path / center)
        assert record["status"] == "ok" and record["cost"]["causal"] is causal
        assert record["cost"]["mac_ratio"] > 0
