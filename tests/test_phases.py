"""Dense prefill / sparse decode (attention.apply_to=decode, eval.sparse_from; SPEC section 3 "Phases"): the dense
phase is stock SDPA, the sparse phase is what step-by-step decoding over the prompt's KV cache computes, and the
counts of each phase add up to the totals."""
import json

import pytest
import torch

from conftest import compose_config
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.run.runner import run
from lsh_bitnet.validate import validate_fast
from test_attention_model import HASHER, VOCAB, ids, logits, patched, tiny_model

T, N = 24, 10  # window, prompt (eval.sparse_from)
RULES = {
    "lsh": ({"name": "lsh", "n_tables": 2}, HASHER),  # key codes cached from the prefill
    "lsh_topk_soft": ({"name": "lsh_topk", "k": 3, "score": "soft"}, HASHER),  # rehashes keys every call
    "oracle_topk": ({"name": "oracle_topk", "k": 3}, HASHER),
    "window": ({"name": "window", "sink_tokens": 1, "local_window": 3}, HASHER),
    "lsh_prompt_center": ({"name": "lsh", "n_tables": 2}, dict(HASHER, center="prompt")),
}


def decode(attention, hasher, sparse_from=None):
    return dict(attention, apply_to="decode"), hasher, sparse_from


@torch.no_grad()
def stepwise(model, x, n):
    """Prefill x[:, :n] (one call, dense under apply_to=decode), then feed x[:, n:] one token at a time over the
    KV cache: the logits of every position (B, T, V)."""
    from lsh_bitnet.tasks._synthetic import cache_kwarg

    out = model(input_ids=x[:, :n], attention_mask=torch.ones(x.shape[0], n, dtype=torch.long), use_cache=True)
    rows = [out.logits]
    for j in range(n, x.shape[1]):
        cache = out["cache"] if "cache" in out.keys() else out["past_key_values"]
        mask = torch.ones(x.shape[0], j + 1, dtype=torch.long)  # as generate passes it: the code cache keys on it
        out = model(input_ids=x[:, j:j + 1], attention_mask=mask, use_cache=True, **{cache_kwarg(model): cache})
        rows.append(out.logits)
    return torch.cat(rows, 1)


def phased(model, attention, hasher, sparse_from=None):
    from lsh_bitnet.attention import patch_model

    patch = patch_model(model, attention, hasher, sparse_from=sparse_from)
    return patch


@pytest.mark.parametrize("rule", sorted(RULES))
def test_sparse_from_equals_teacher_forced_decoding_and_the_prompt_equals_stock(rule):
    """One forward with eval.sparse_from=N == a dense prefill of N tokens + step-by-step decoding (logits and every
    count of every phase); its first N positions == stock SDPA, and the rule changes the positions after N."""
    model, x = tiny_model("llama"), ids(length=T)
    attention, hasher = RULES[rule]
    stock = logits(model, x)
    patch = phased(model, dict(attention, apply_to="decode"), hasher, sparse_from=N)
    try:
        one = logits(model, x)
        one_cost = patch.cost_summary()
    finally:
        patch.unpatch()
    patch = phased(model, dict(attention, apply_to="decode"), hasher)
    try:
        steps = stepwise(model, x, N)
        step_cost = patch.cost_summary()
    finally:
        patch.unpatch()
    assert (one[:, :N] - stock[:, :N]).abs().max().item() <= 1e-5  # the dense phase is stock SDPA
    assert (steps[:, :N] - stock[:, :N]).abs().max().item() <= 1e-5
    assert (one[:, N:] - steps[:, N:]).abs().max().item() <= 1e-4  # decode == prefill for the sparse phase
    assert (one[:, N:] - stock[:, N:]).abs().max().item() > 1e-3  # the rule did run there
    if rule == "lsh_topk_soft":  # no code cache: each decode step rehashes every key (one forward hashes them once)
        assert one_cost["phases"]["decode"].pop("hash_ops") < step_cost["phases"]["decode"].pop("hash_ops")
        for phase in ("prefill", "decode"):
            one_cost["phases"][phase].pop("mac_ratio"), step_cost["phases"][phase].pop("mac_ratio")
    assert one_cost["phases"] == step_cost["phases"]
    assert one_cost["ratio_phase"] == "decode" and one_cost["causal"] is True


@pytest.mark.parametrize("rule", ["lsh", "oracle_topk"])
def test_counts_per_phase_add_to_the_total(rule):
    model, x = tiny_model("llama"), ids(length=T)
    attention, hasher = RULES[rule]
    heads, layers, B = model.config.num_attention_heads, model.config.num_hidden_layers, x.shape[0]
    for apply_to, sparse_from in (("decode", N), ("all", None)):
        patch = phased(model, dict(attention, apply_to=apply_to), hasher, sparse_from=sparse_from)
        try:
            logits(model, x)
            cost = patch.cost_summary()
        finally:
            patch.unpatch()
        pre, dec = cost["phases"]["prefill"], cost["phases"]["decode"]
        for key in ("comparisons", "full_comparisons", "hash_ops", "selection_ops"):
            assert pre[key] + dec[key] == cost[key], (apply_to, key)
        full_pre = layers * heads * B * N * (N + 1) // 2
        if apply_to == "decode":
            assert pre["comparisons"] == pre["full_comparisons"] == full_pre and pre["selection_ops"] == 0
            assert dec["full_comparisons"] == layers * heads * B * (T * (T + 1) // 2 - N * (N + 1) // 2)
            assert cost["comparison_ratio"] == dec["comparisons"] / dec["full_comparisons"] < 1
            assert cost["decode_comparisons"] == dec["comparisons"]
            assert cost["comparison_ratio"] != cost["comparisons"] / cost["full_comparisons"]
        else:  # one forward that starts the sequence: all prefill, the ratio is the total's
            assert dec["full_comparisons"] == 0 and cost["ratio_phase"] == "all"
            assert cost["comparison_ratio"] == cost["comparisons"] / cost["full_comparisons"]


def test_generation_prefill_is_dense_and_decode_steps_sparse():
    """model.generate under apply_to=decode: the first token (the prefill's) is stock's, the later steps' logits
    are the rule's, and the step timing is recorded per phase."""
    model = tiny_model("llama")
    x = ids(batch=1, length=T)
    kwargs = dict(max_new_tokens=5, do_sample=False, return_dict_in_generate=True, output_logits=True, pad_token_id=0)
    ref = model.generate(x, **kwargs)
    attention, hasher = RULES["oracle_topk"]
    patch = phased(model, dict(attention, apply_to="decode"), hasher)
    try:
        out = model.generate(x, **kwargs)
        cost, timing = patch.cost_summary(), patch.timing_summary()
    finally:
        patch.unpatch()
    assert (out.logits[0] - ref.logits[0]).abs().max().item() <= 1e-5
    pre, dec = cost["phases"]["prefill"], cost["phases"]["decode"]
    assert pre["comparisons"] == pre["full_comparisons"] and dec["comparisons"] < dec["full_comparisons"]
    assert dec["full_comparisons"] == model.config.num_hidden_layers * model.config.num_attention_heads * sum(
        range(T + 1, T + 5))  # 4 decode steps over T+1 .. T+4 keys
    assert timing["prefill_forwards"] == 1 and timing["decode_forwards"] == 4 and timing["decode_tokens"] == 4
    assert timing["decode_tokens_per_s"] > 0 and 0 < timing["decode_attention_share"] < 1


# ----------------------------------------------------------------------------- config checks
@pytest.mark.parametrize("overrides,key", [
    (["metric=perplexity", "dataset=text_file", "dataset.path=x.txt", "eval.seq_len=64", "attention=lsh",
      "attention.apply_to=decode"], "eval.sparse_from"),
    (["metric=perplexity", "dataset=text_file", "dataset.path=x.txt", "eval.seq_len=64", "attention=lsh",
      "attention.apply_to=decode", "eval.sparse_from=64"], "eval.sparse_from must be in [1, eval.seq_len=64)"),
    (["metric=perplexity", "dataset=text_file", "dataset.path=x.txt", "eval.seq_len=64", "attention=lsh",
      "attention.apply_to=decode", "eval.sparse_from=0"], "eval.sparse_from must be in [1"),
    (["metric=perplexity", "dataset=text_file", "dataset.path=x.txt", "eval.seq_len=64", "attention=lsh",
      "eval.sparse_from=32"], "set attention.apply_to=decode"),
    (["dataset=passkey", "metric=passkey_accuracy", "attention=lsh", "attention.apply_to=decode",
      "eval.sparse_from=32"], "eval.sparse_from=null"),
    (["model=tiny_bitnet", "metric=lm_eval", "attention=lsh", "attention.apply_to=decode"],
     "attention.apply_to=all"),
])
def test_bad_protocol_values_fail_at_config_time_naming_the_key(overrides, key):
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        validate_fast(compose_config(overrides))


def test_apply_to_is_a_closed_set():
    with pytest.raises(Exception, match="apply_to"):
        compose_config(["attention=lsh", "attention.apply_to=prompt"])


# ----------------------------------------------------------------------------- end to end (launch.py's run)
TEXT = ("The quick brown fox jumps over the lazy dog near the river bank. " * 3 + "Numbers 12,345 and 678.\n") * 40


def test_perplexity_with_sparse_from_end_to_end(tmp_path, cache_dir):
    path = tmp_path / "t.txt"
    path.write_text(TEXT, encoding="utf-8")
    base = ["model=tiny_bitnet", "dataset=text_file", f"dataset.path={path}", "metric=perplexity", "eval.seq_len=48",
            "eval.max_batches=2", "eval.progress=false", "attention=oracle_topk", "attention.k=2"]
    full = run(compose_config(base[:-2] + ["attention=full"], cache_dir=cache_dir), output_dir=tmp_path / "full")
    dense = run(compose_config(base + ["attention.apply_to=decode", "eval.sparse_from=47"], cache_dir=cache_dir),
                output_dir=tmp_path / "late")
    split = run(compose_config(base + ["attention.apply_to=decode", "eval.sparse_from=16"], cache_dir=cache_dir),
                output_dir=tmp_path / "split")
    sparse = run(compose_config(base, cache_dir=cache_dir), output_dir=tmp_path / "all")
    for record in (dense, split, sparse):
        assert record["status"] == "ok"
    cost = split["cost"]
    assert cost["ratio_phase"] == "decode" and cost["phases"]["prefill"]["comparison_ratio"] == 1.0
    assert cost["comparison_ratio"] == cost["phases"]["decode"]["comparison_ratio"] < 1
    # every window: 2 windows x 2 layers x 8 heads x 16*17/2 prompt comparisons
    assert cost["phases"]["prefill"]["full_comparisons"] == 2 * 2 * 8 * 16 * 17 // 2
    # from 47 on, only the last position is sparse, and its logits predict nothing: full attention's perplexity
    ppl = {k: r["metrics"]["perplexity"] for k, r in dict(full=full, dense=dense, split=split, all=sparse).items()}
    assert ppl["dense"] == pytest.approx(ppl["full"], rel=1e-6)
    assert len({ppl["full"], ppl["split"], ppl["all"]}) == 3
    records = [json.loads(line) for line in (tmp_path / "split" / "samples.jsonl").read_text().splitlines()]
    assert sum(r["decode_comparisons"] for r in records) == cost["decode_comparisons"]
    assert sum(r["comparisons"] for r in records) == cost["comparisons"]


@pytest.mark.parametrize("task", ["passkey", "synthetic"])
def test_generation_tasks_with_apply_to_decode_end_to_end(tmp_path, cache_dir, task):
    over = (["dataset=passkey", "metric=passkey_accuracy", "dataset.target_tokens=300", "dataset.n_samples=2",
             "metric.max_new_tokens=3"] if task == "passkey" else
            ["dataset.n_samples=2", "metric.max_new_tokens=3"])
    base = ["model=tiny_bitnet", "eval.progress=false", "attention=oracle_topk", "attention.k=4"] + over
    record = run(compose_config(base + ["attention.apply_to=decode"], cache_dir=cache_dir), output_dir=tmp_path / "d")
    sparse = run(compose_config(base, cache_dir=cache_dir), output_dir=tmp_path / "a")
    assert record["status"] == sparse["status"] == "ok"
    cost, timing = record["cost"], record["timing"]
    pre, dec = cost["phases"]["prefill"], cost["phases"]["decode"]
    assert pre["comparisons"] == pre["full_comparisons"] > 0 and 0 < dec["comparisons"] < dec["full_comparisons"]
    assert cost["comparison_ratio"] == dec["comparison_ratio"] and cost["ratio_phase"] == "decode"
    # the same prompts and steps: the same full counts per phase; all-sparse prunes the prompt too
    assert sparse["cost"]["phases"]["prefill"]["full_comparisons"] == pre["full_comparisons"]
    assert sparse["cost"]["phases"]["prefill"]["comparisons"] < pre["comparisons"]
    assert timing["decode_tokens_per_s"] > 0 and timing["prefill_forwards"] == 2
