"""attention=random_k: uniformly random keys at the oracle's budget, against the naive loop reference
(tests/naive_attention.py), decode == prefill, seeding, uniformity, counts and config."""
import pytest
import torch

from conftest import compose_config
from naive_attention import naive_sparse_attention, naive_selection_ops
from test_attention_reference import ALWAYS, ATOL, D, HQ, make_data, query_valid

BUDGETS = (dict(k=1), dict(k=5), dict(k=100), dict(fraction=0.25), dict(fraction=1.0))
CASES = [dict(budget, include_self=s, sink_tokens=sk, local_window=w, query_chunk=(256, 5)[n % 2])
         for n, (budget, (s, sk, w)) in enumerate((b, a) for b in BUDGETS for a in ALWAYS[::3])]


def spec_of(case, seed=7):
    from lsh_bitnet.attention.spec import SparseSpec

    return SparseSpec("random_k", seed=seed, **case)


@pytest.mark.parametrize("mode", ["prefill", "decode", "chunk"])
@pytest.mark.parametrize("case", CASES, ids=[",".join(f"{k}={v}" for k, v in c.items()) for c in CASES])
def test_random_k_matches_reference(case, mode):
    from lsh_bitnet.attention.kernel import sparse_attention

    q, k, v, kv = make_data(mode, CASES.index(case), None)
    out, cost = sparse_attention(q, k, v, kv, spec=spec_of(case), scaling=0.25, layer_idx=3)
    ref_args = {key: val for key, val in case.items() if key != "query_chunk"}
    ref, comparisons, full = naive_sparse_attention(q, k, v, kv, variant="random_k", seed=7, layer_idx=3,
                                                    scaling=0.25, **ref_args)
    qv = query_valid(kv, q.shape[2])[:, None, :, None]
    assert float(((out.double() - ref) * qv).abs().max()) <= ATOL
    assert (cost.comparisons, cost.full_comparisons, cost.hash_ops) == (comparisons, full, 0)
    assert cost.selection_ops == naive_selection_ops(q, k, kv, variant="random_k") == 2 * full


def test_decode_draws_what_the_prefill_draws():
    """Every query's candidates, computed in one prefill (in uneven chunks) and as a decode step over the keys
    up to it (Q = 1), are the same set: ranks depend on positions only."""
    from lsh_bitnet.attention.candidates import Candidates

    q, k, _, kv = make_data("prefill", 5, None)  # rows left- and right-padded
    T = q.shape[2]
    spec = spec_of(dict(fraction=0.3, sink_tokens=1, local_window=2), seed=11)
    prefill, _ = Candidates(q, k, kv, spec, layer_idx=2).mask(torch.arange(T), T)
    for a, e in ((0, 5), (5, 19), (19, T)):  # chunks see only their keys: same rows
        chunk, _ = Candidates(q, k, kv, spec, layer_idx=2).mask(torch.arange(a, e), e)
        assert torch.equal(chunk, prefill[..., a:e, :e])
    for i in range(T):
        step, _ = Candidates(q[:, :, i:i + 1], k[:, :, :i + 1], kv[:, :i + 1], spec, layer_idx=2).mask(
            torch.zeros(1, dtype=torch.long), i + 1)  # (B, Hkv, g, 1, i + 1)
        assert torch.equal(step[..., 0, :], prefill[..., i, :i + 1]), i


def test_decode_with_cache_matches_prefill_in_a_model():
    from test_attention_model import T, generated_and_prefill, padded_batch, patched, tiny_model

    model = tiny_model("llama")
    x, mask, _ = padded_batch("left", n_pad=5)
    with patched(model, {"name": "random_k", "fraction": 0.3, "seed": 3}):
        steps, prefill = generated_and_prefill(model, x, mask)
    for step, step_logits in enumerate(steps):
        assert (step_logits - prefill[:, T - 1 + step]).abs().max().item() <= 1e-4


def test_seeded_reproducible_and_independent_of_the_global_rng():
    from lsh_bitnet.attention.candidates import Candidates

    q, k, _, kv = make_data("prefill", 1, None)
    Q = q.shape[2]

    def draw(seed, layer):
        torch.manual_seed(seed * 1000 + layer + 17)  # the global RNG must not matter
        return Candidates(q, k, kv, spec_of(dict(k=4, include_self=False), seed=seed), layer_idx=layer).mask(
            torch.arange(Q), Q)[0]

    assert torch.equal(draw(1, 0), draw(1, 0))
    assert not torch.equal(draw(1, 0), draw(2, 0)) and not torch.equal(draw(1, 0), draw(1, 1))
    heads = draw(1, 0).flatten(1, 2)  # (B, Hq, Q, K): each query head draws its own keys
    assert all(not torch.equal(heads[:, 0], heads[:, h]) for h in range(1, HQ))


def test_draws_are_uniform_over_the_visible_keys():
    """The chosen keys' relative positions p(j) / |V(i)| are uniform on [0, 1): deciles within 4 standard
    deviations of equal over ~40k draws (fixed seed: a deterministic check of the ranking, not a flaky one)."""
    from lsh_bitnet.attention.candidates import Candidates

    T, H = 512, 8
    q, k = torch.zeros(1, H, T, D), torch.zeros(1, H, T, D)
    kv = torch.ones(1, T, dtype=torch.bool)
    cand, _ = Candidates(q, k, kv, spec_of(dict(k=12, include_self=False)), layer_idx=0).mask(torch.arange(T), T)
    i, j = torch.nonzero(cand[0].flatten(0, 1))[:, 1:].unbind(-1)  # (query, key) of every draw
    keep = i >= 63  # queries with at least 64 visible keys
    decile = (j[keep] * 10 // (i[keep] + 1)).bincount(minlength=10).double()
    n = decile.sum()
    assert int(n) == H * 12 * (T - 63)
    assert float(((decile - n / 10).abs() / (n * 0.1 * 0.9) ** 0.5).max()) < 4


def test_config_budget_seed_and_engine():
    from lsh_bitnet.validate import validate_config

    cfg = compose_config(["attention=random_k", "attention.fraction=0.1", "seed=5"])
    validate_config(cfg)
    assert cfg.attention.seed == 5  # the run's seed, through the schema's field
    for overrides, message in ((["attention=random_k"], "exactly one of attention.k / attention.fraction"),
                               (["attention=random_k", "attention.k=4", "attention.engine=flex"],
                                "attention.engine=flex cannot run attention=random_k"),
                               (["attention=random_k", "attention.k=4", "attention.n_tables=2"], "attention.n_tables")):
        with pytest.raises(Exception, match=message):
            validate_config(compose_config(overrides))
