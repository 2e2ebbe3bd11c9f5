"""The checks a new attention rule should pass, for plug-in authors (docs/EXTENDING.md) and built-ins alike.

    from lsh_bitnet.testing import check_rule

    def naive_strided(q, keys, head, spec, hasher):   # one query, the keys of V(i) in order: the last is self
        return {j for j in range(len(keys)) if j % spec.stride == spec.stride - 1}

    def test_strided():
        check_rule("strided", naive_strided, stride=4)

`check_rule` runs the rule's `sparse_attention` on random inputs with padded rows, in a prefill, in query
chunks and as decode steps, at a non-default `scaling`, and compares with a float64 loop over your naive
definition of C(i) (SPEC section 3: the always-attend sets are added by this harness, not by you):
- every output row to 1e-5;
- comparisons = sum of |C(i)| over query heads and valid queries, exactly; full_comparisons likewise;
- selection_ops, when you say what it must be (`selection_ops=lambda visible: ...`);
- a query's candidates are the same in a prefill and in a decode step over the keys up to it, and a padded
  row gives what the row alone gives (both follow from the loop comparison on these inputs).
A rule whose naive definition reads hash codes gets the layer's hasher (`hasher=` "simhash" etc.); keep the
naive side independent of the rule's own code, or the comparison proves nothing.
"""
from typing import Callable, Iterable, Optional

import torch

B, HQ, HKV, D = 2, 4, 2, 16  # GQA 2:1, as every model the harness is meant for
T_PREFILL, K_DECODE = 24, 30
SCALING = 0.7  # not 1/sqrt(D): a rule that drops the caller's scaling must fail
ATOL = 1e-5  # float32 implementation vs float64 loop


def _inputs(n_q: int, n_k: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    # multiples of 1/4: q.k exact in float32, so score ties are real ties on both sides
    q, k, v = ((torch.randn(B, h, n, D, generator=gen) * 4).round().clamp(-8, 8) / 4
               for h, n in ((HQ, n_q), (HKV, n_k), (HKV, n_k)))
    key_valid = torch.ones(B, n_k, dtype=torch.bool)
    key_valid[1, :3] = False  # row 1 left-padded: positions must not count padding
    return q, k, v, key_valid


def _always(spec, n: int) -> set:
    """A(i) for a query at position n - 1 with V(i) = positions 0..n-1 (SPEC section 3)."""
    out = set(range(min(spec.sink_tokens, n))) | set(range(max(0, n - spec.local_window), n))
    return out | {n - 1} if spec.include_self else out


def _reference(spec, naive: Callable, q, k, v, key_valid, hasher):
    """float64 outputs (B, Hq, Q, D) and comparisons / full counts, one query and head at a time."""
    n_q, n_k = q.shape[2], k.shape[2]
    g = HQ // HKV
    out = torch.zeros(B, HQ, n_q, D, dtype=torch.float64)
    comparisons = full = 0
    for b in range(B):
        slots = [j for j in range(n_k) if key_valid[b, j]]
        for i in range(n_q):
            slot = n_k - n_q + i
            if not key_valid[b, slot]:
                continue  # a padding query: ignored, not counted
            visible = [j for j in slots if j <= slot]  # V(i) in slot order; the last is the query's own slot
            for h in range(HQ):
                keys = k[b, h // g, visible].double()
                chosen = set(naive(q[b, h, i].double(), keys, h, spec, hasher)) | _always(spec, len(visible))
                full += len(visible)
                comparisons += len(chosen)
                if chosen:
                    idx = sorted(chosen)
                    weights = torch.softmax(SCALING * keys[idx] @ q[b, h, i].double(), dim=0)
                    out[b, h, i] = weights @ v[b, h // g, [visible[j] for j in idx]].double()
    return out, comparisons, full


def check_rule(name: str, naive: Callable[..., Iterable[int]], *, hasher: Optional[str] = None, n_bits: int = 4,
               selection_ops: Optional[Callable] = None, seeds: Iterable[int] = (0, 1), **fields) -> None:
    """Raise AssertionError unless attention=<name> with `fields` matches `naive` (see the module docstring).
    `fields` are the rule's knobs (its schema's), e.g. stride=4, sink_tokens=1, local_window=2."""
    from lsh_bitnet.attention.kernel import sparse_attention
    from lsh_bitnet.attention.spec import SparseSpec

    for seed in seeds:
        for mode, (n_q, n_k), chunk in (("prefill", (T_PREFILL, T_PREFILL), 256), ("chunks", (T_PREFILL, T_PREFILL), 5),
                                        ("decode", (1, K_DECODE), 256)):
            spec = SparseSpec(name, query_chunk=chunk, **fields)
            h = None
            if spec.hashed:
                from lsh_bitnet.attention.hashers import build_hasher

                bits, tables = spec.hash_shape
                h = build_hasher(hasher or "simhash", bits if bits is not None else n_bits, D, HKV, tables, seed, 0)
            q, k, v, key_valid = _inputs(n_q, n_k, 1000 * seed + n_k)
            got, cost = sparse_attention(q, k, v, key_valid, spec=spec, hasher=h, scaling=SCALING)
            want, comparisons, full = _reference(spec, naive, q, k, v, key_valid, h)
            rows = key_valid[:, n_k - n_q:][:, None, :, None]  # padding queries' outputs are ignored
            err = float(((got.double() - want) * rows).abs().max())
            where = f"attention={name} {fields} ({mode}, seed {seed})"
            assert err <= ATOL, f"{where}: outputs differ from the naive loop by {err:.3g} (> {ATOL})"
            assert cost.full_comparisons == full, f"{where}: full_comparisons {cost.full_comparisons} != {full}"
            assert cost.comparisons == comparisons, (f"{where}: comparisons {cost.comparisons} != sum of |C(i)| "
                                                     f"{comparisons} (candidates differ from the naive definition)")
            if selection_ops is not None:
                expected = int(selection_ops(full))
                assert cost.selection_ops == expected, f"{where}: selection_ops {cost.selection_ops} != {expected}"
