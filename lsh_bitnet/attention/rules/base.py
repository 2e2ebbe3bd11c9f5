"""What an attention rule declares about itself, in one place (docs/EXTENDING.md).

A rule is a class registered with `@RULES.register` (lsh_bitnet.registry); the registry holds the class and
every method is a classmethod. `spec` below is a SparseSpec or the rule's typed schema: both carry the
schema's fields as attributes. `cands` is the per-call Candidates (candidates.py): positions, validity, the
always-attend sets and q.k scores, on which `prepare` leaves whatever the rule needs for its masks.

Torch-free at import: the class attributes and `check` answer the config checks before torch loads; the
per-call methods import torch (and collisions.py / topk.py) when they run.
"""
from typing import Dict, Optional, Tuple

from lsh_bitnet.config import AttentionConfig
from lsh_bitnet.errors import require

# `auto` takes flex from this many queries on: below it (decode steps, short windows) the fixed cost of
# sorting and block-mask building exceeds the dense product (docs/BENCHMARKS.md). A rule may ask for more.
AUTO_FLEX_MIN_QUERIES = 2048
# The same per device type where it differs from CPU. CUDA: a first guess, not measured (benchmarks/gpu_check.py
# times masked and flex at 8k): there the masked engine builds a (chunk x keys) mask per chunk and runs SDPA on it
# with K/V repeated per head, while flex's fixed costs (sorts, block masks) are a few small kernels.
AUTO_FLEX_MIN_QUERIES_BY_DEVICE = {"cuda": 1024}
# Codes of up to 30 bits are compared as int32: half the memory traffic of int64 on these
# (heads x queries x keys) tensors, and 2**30 thresholds still fit.
INT32_BITS = 30


def code_dtype(bits: int):
    """The dtype hash codes of `bits` bits are compared in: int32 up to INT32_BITS, else int64."""
    import torch

    return torch.int32 if bits <= INT32_BITS else torch.int64


class Rule:
    name: str = "base"  # attention=<name>
    schema: type = AttentionConfig  # its config dataclass, a subclass of config.AttentionConfig
    hashed: bool = False  # hashes queries and keys: needs a hasher (hasher.*), counts hash_ops
    dense: bool = False  # keeps every causal key: stock SDPA, the baseline every ratio divides by
    engines: Tuple[str, ...] = ("masked",)  # attention.engine values that can run it (SPEC section 8)
    why_not: Dict[str, str] = {}  # engine -> why that engine cannot run this rule (appended to the error)
    flex_passes: Optional[str] = None  # flex engine passes beyond the always pass: "table" (one per hash
    #                                    table, colliding codes) or "tree" (one per forest tree, shared prefixes)
    sampling: bool = False  # defines p_ij, so attention.estimator=sampling can weight its candidates
    oracle: bool = False  # chooses by q.k of every key: an upper bound (cost.is_oracle, dashed in plots)
    reference: Optional[str] = None  # "lower" | "upper": the bracket of report/gap.py it is (window, oracle)
    family_order: int = 100  # where its family sits in tables and plots (built-ins 0-50; plug-ins after)

    # ------------------------------------------------------------------ config (torch-free)
    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim: Optional[int] = None) -> None:
        """Checks of the rule's own knobs (cfg: its typed schema; hasher_cfg typed or None; head_dim when the
        model's shape is known): raise ConfigError naming the key and the fix."""

    @classmethod
    def refusal(cls, spec, engine: str) -> Optional[str]:
        """Why `engine` cannot run these settings, as 'attention.<key>=<value> (why)'; None if it can."""
        if engine not in cls.engines:
            return f"attention={cls.name}{cls.why_not.get(engine, '')}"
        return None

    @classmethod
    def auto_flex_min_queries(cls, spec, device_type: str = "cpu") -> int:
        """engine=auto runs flex from this many queries on (when `refusal(spec, "flex")` is None), on device_type."""
        return AUTO_FLEX_MIN_QUERIES_BY_DEVICE.get(device_type, AUTO_FLEX_MIN_QUERIES)

    @classmethod
    def hash_shape(cls, spec) -> Tuple[Optional[int], int]:
        """(n_bits, n_tables) of its hasher; n_bits None = hasher.n_bits. Hashed rules only."""
        raise TypeError(f"attention={cls.name} hashes nothing")

    @classmethod
    def reuses_key_codes(cls, spec) -> bool:
        """Whether decode steps reuse the key codes of earlier calls (codecache.py) instead of rehashing."""
        return cls.hashed

    @classmethod
    def packs_key_codes(cls, spec, n_bits: int) -> bool:
        """Whether the code cache also keeps the keys' codes byte-packed (packed.py) for `one_query_call`."""
        return False

    @classmethod
    def family(cls, hasher: Optional[str]) -> str:
        """The family one frontier is drawn over in tables and plots (hashed rules: one per hasher)."""
        return cls.name

    # ------------------------------------------------------------------ per attention call (torch inside)
    @classmethod
    def prepare(cls, cands, key_codes=None) -> None:
        """Once per call, before any mask: codes, indexes... left on `cands` (key_codes: cached, codecache.py)."""

    @classmethod
    def candidates(cls, cands, q_idx, kc: int, valid):
        """The rule's own candidates (B, Hkv|1, g|1, Qc, kc) bool for queries q_idx and keys [0, kc), before the
        always-attend sets; valid (B, 1, 1, Qc, kc) is V(i). May be overwritten by `mask`."""
        raise NotImplementedError

    @classmethod
    def mask(cls, cands, q_idx, kc: int, valid, allowed, always):
        """C(i): the candidates plus the always-attend sets, within the allowed slots (candidates.py _sets)."""
        return cls.candidates(cands, q_idx, kc, valid).logical_or_(always).logical_and_(allowed)

    @classmethod
    def bias(cls, cands, q_idx, kc: int, where=None):
        """The estimator's additive score term (B, Hkv, g, Qc, kc) float32 (sampling: -log p_ij), else None."""
        return None

    @classmethod
    def selection_ops(cls, cands, visible):
        """Exact selection cost of the call (SPEC section 7.3), int64 0-d; visible = sum of |V(i)| over query
        heads and valid queries."""
        import torch

        return torch.zeros((), dtype=torch.int64, device=visible.device)

    @classmethod
    def one_query_call(cls, spec, hasher, query, key, value, scaling: float, key_codes, key_words, visible):
        """A call of one query per row over keys that are all valid (a decode step), run without the masked
        engine's (heads x keys) candidate mask: (output (B, Hq, 1, Dv), comparisons, selection_ops) with the
        masked engine's outputs and counts, or None to leave it to the masked engine. key_codes (L, B, Hkv, K)
        and key_words (W, B, Hkv, K): the code cache's codes and packed codes (packs_key_codes), or None;
        visible: the call's full comparisons."""
        return None

    @classmethod
    def weighting_ops(cls, spec, comparisons):
        """Selection ops of weighting the `comparisons` candidates (sampling: the binomial tail's terms), or None."""
        return None


class HashedRule(Rule):
    """A rule over hash codes: the hasher hashes queries and keys once per call, codes live on `cands`."""
    hashed = True
    bits_key: Optional[str] = None  # the knob giving the code width when hash_shape's n_bits is not None

    @classmethod
    def hash_shape(cls, spec) -> Tuple[Optional[int], int]:
        return None, spec.n_tables

    @classmethod
    def family(cls, hasher: Optional[str]) -> str:
        return f"{cls.name}/{hasher}" if isinstance(hasher, str) and hasher else cls.name

    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim: Optional[int] = None) -> None:
        """The code width and the hasher's own limits (after the subclass's knob checks)."""
        from lsh_bitnet.attention.hashers.base import MAX_BITS
        from lsh_bitnet.registry import HASHERS

        bits, _ = cls.hash_shape(cfg)
        key = "hasher.n_bits" if bits is None else cls.bits_key
        bits = hasher_cfg.n_bits if bits is None else bits
        require(0 <= bits <= MAX_BITS, f"{key} must be in [0, {MAX_BITS}] (got {bits}): codes are packed into int64")
        HASHERS.get(hasher_cfg.name).check(hasher_cfg, bits, key, head_dim)

    @classmethod
    def prepare(cls, cands, key_codes=None) -> None:
        cls.start(cands)
        cls.codes(cands, key_codes)

    @classmethod
    def start(cls, cands) -> None:
        """The hasher, the prompt's mean key (a prefill defines mu for hasher.center=prompt), the code width."""
        hasher = cands.hasher
        if hasher is None:
            raise ValueError(f"attention={cands.spec.variant} needs a hasher (got None)")
        if hasher.center == "prompt" and cands.Q == cands.K:  # a prefill: its keys define mu, kept for decode steps
            hasher.set_prompt_center(cands.key, cands.key_valid)
        cands.bits = hasher.n_bits

    @classmethod
    def codes(cls, cands, key_codes=None) -> None:
        """cands.qcodes (T, B, Hkv, g, Q) and cands.kcodes (T, B, Hkv, K): table-major in code_dtype(bits), so the
        per-table broadcast compares run on unit strides. key_codes: the code cache's (T, B, Hkv, K) view, already
        in that layout (each table's keys contiguous); a call of many queries gets its own contiguous copy
        (sorts and flat views need it; O(K) against the call's O(Q K))."""
        B, Hkv, g, Q, D = cands.query.shape
        hasher = cands.hasher
        dtype = code_dtype(cands.bits)
        if key_codes is None:
            cands.kcodes = hasher.key_codes(cands.key).to(dtype).permute(3, 0, 1, 2).contiguous()  # (T, B, Hkv, K)
        else:
            from lsh_bitnet.attention.collisions import SORT_MIN_QUERIES

            # below SORT_MIN_QUERIES (decode steps) every way compares per table on each table's contiguous keys:
            # the strided view serves, and a copy of every cached code would cost more than the call
            cands.kcodes = key_codes.contiguous() if Q >= SORT_MIN_QUERIES else key_codes
        qcodes = hasher.codes(cands.query.reshape(B, Hkv, g * Q, D)).to(dtype).view(B, Hkv, g, Q, -1)
        cands.qcodes = qcodes.permute(4, 0, 1, 2, 3).contiguous()  # (T, B, Hkv, g, Q)


# ----------------------------------------------------------------------------- budgets (oracle_topk and kin)
def check_budget(cfg) -> None:
    """k_i = min(k, |V(i)|) or ceil(fraction * |V(i)|): exactly one of attention.k / attention.fraction."""
    k, fraction = cfg.k, cfg.fraction
    require((k is None) != (fraction is None),
            f"attention={cfg.name} needs exactly one of attention.k / attention.fraction (got k={k}, "
            f"fraction={fraction}): e.g. attention.fraction=0.1, or attention.k=64")
    require(k is None or k >= 1, f"attention.k must be >= 1 (got {k})")
    require(fraction is None or 0 < fraction <= 1, f"attention.fraction must be in (0, 1] (got {fraction})")


def budget_mask(spec, scores, valid, kc: int, int_bound: Optional[int] = None):
    """The k_i best keys of V(i) by `scores` (B, Hkv, g, Qc, kc), ties to the lower slot: float32, or exact
    integers in [-int_bound, int_bound] (topk.top_k_mask)."""
    from lsh_bitnet.attention.topk import budgets, row_count, top_k_mask

    k_i, k_max = budgets(spec.k, spec.fraction, row_count(valid), kc)  # (B, 1, 1, Qc)
    return top_k_mask(scores, valid, k_i.expand(scores.shape[:-1]).contiguous(), k_max, int_bound)
