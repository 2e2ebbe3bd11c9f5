"""attention=lsh_probe: budgeted multi-probe buckets (SPEC sections 3, 7.1 and 7.3).

For each table the query probes the buckets within Hamming distance r (attention.probe_radius) of its code; a key
found at distance d gains r + 1 - d, so s_ij = sum_t max(0, r + 1 - d_t(i, j)) (attention/probes.py). The keys of
V(i) found at least once are the candidates; the k_i best by s_ij (k_i as oracle_topk: min(k, |V(i)|) or
ceil(fraction * |V(i)|), at most the candidates), ties to the lower slot, plus the always-attend sets form C(i).

Only what the probes return is scored: the selection work is the buckets visited, the keys found and one
selection step per candidate, not L * K bit agreements per causal key (lsh_topk's soft score, which this rule
equals at r = K up to the constant L). r = 0 ranks the keys colliding in at least one table by collision count.
The whole choice is made once per call in `prepare` (query chunk by query chunk, kept as packed bits), so the
selection count is known before the kernel's masks are built and every chunking reads the same sets.
"""
from dataclasses import dataclass
from typing import Optional

from lsh_bitnet.attention.rules.base import HashedRule, check_budget
from lsh_bitnet.config import AttentionConfig
from lsh_bitnet.errors import require
from lsh_bitnet.registry import RULES


@dataclass
class LSHProbeAttentionConfig(AttentionConfig):
    name: str = "lsh_probe"
    n_tables: int = 32
    # Buckets within this Hamming distance of the query's code are visited (0 = its own bucket only).
    probe_radius: int = 2
    # Exactly one of k / fraction, no default budget (as oracle_topk: the budget is what a run measures).
    k: Optional[int] = None
    fraction: Optional[float] = None


@RULES.register
class LSHProbe(HashedRule):
    name = "lsh_probe"
    schema = LSHProbeAttentionConfig
    why_not = {"flex": " (its top-k keys lie in every 128 x 128 block: nothing to skip)"}
    family_order = 25

    @classmethod
    def check(cls, cfg, hasher_cfg, head_dim=None) -> None:
        require(cfg.n_tables >= 1, f"attention.n_tables must be >= 1 (got {cfg.n_tables}): set attention.n_tables=1 "
                "or more")
        bits = hasher_cfg.n_bits if hasher_cfg is not None else None
        require(cfg.probe_radius >= 0 and (bits is None or cfg.probe_radius <= bits),
                f"attention.probe_radius must be in [0, hasher.n_bits={bits}] (got {cfg.probe_radius}): the probe "
                "visits the buckets within that Hamming distance of the query's code")
        super().check(cfg, hasher_cfg, head_dim)
        check_budget(cfg)

    # ------------------------------------------------------------------ per call
    @classmethod
    def prepare(cls, cands, key_codes=None) -> None:
        import torch

        from lsh_bitnet.attention.kernel import query_chunk
        from lsh_bitnet.attention.probes import ProbeScores, n_probes
        from lsh_bitnet.attention.topk import row_count

        super().prepare(cands, key_codes)
        spec, Q, K = cands.spec, cands.Q, cands.K
        probes = ProbeScores(cands.qcodes, cands.kcodes, cands.key_valid, cands.bits, spec.probe_radius,
                             cands.q_offset)
        chunk = query_chunk(spec, cands.key.device)  # the masked engine's chunk: same rows per step
        work = torch.zeros((), dtype=torch.int64, device=cands.key.device)  # keys found + selection steps
        packed = []
        for a in range(0, Q, chunk):
            e = min(Q, a + chunk)
            q_idx = torch.arange(a, e, device=cands.key.device)
            kc = K - Q + e  # keys past the chunk's last query are causally invisible
            valid = cands.sets(q_idx, kc)[0]  # (B, 1, 1, Qc, kc)
            s, found = probes.chunk(q_idx, kc, valid)  # (B, Hkv, g, Qc, kc) int32; keys found over V(i)
            cand = (s > 0) & valid  # found by at least one probe: every visit adds >= 1
            n_cand = row_count(cand)  # (B, Hkv, g, Qc)
            work += found + n_cand.sum()
            packed.append(_pack(_best(spec, s, cand, n_cand, valid, kc, probes.bound), K))
        cands.chosen = torch.cat(packed, dim=3)  # (B, Hkv, g, Q, ceil(K / 8)) uint8
        q_valid = cands.key_valid[:, cands.q_offset:]  # (B, Q)
        lookups = q_valid.sum() * (cands.Hkv * cands.g) * probes.L * n_probes(cands.bits, spec.probe_radius)
        cands.probe_ops = lookups + work

    @classmethod
    def candidates(cls, cands, q_idx, kc, valid):
        return _unpack(cands.chosen.index_select(3, q_idx), kc)

    @classmethod
    def selection_ops(cls, cands, visible):
        return cands.probe_ops  # buckets visited + keys found + one selection step per candidate


def _best(spec, s, cand, n_cand, valid, kc, bound):
    """The k_i best candidates by s (ties to the lower slot), k_i the oracle's budget capped by the n_cand found."""
    import torch

    from lsh_bitnet.attention.topk import budgets, row_count, top_k_mask

    k_i, k_max = budgets(spec.k, spec.fraction, row_count(valid), kc)  # (B, 1, 1, Qc)
    k_i = torch.minimum(k_i.expand(s.shape[:-1]), n_cand).contiguous()
    return top_k_mask(s, cand, k_i, k_max, int_bound=bound)


def _pack(mask, K):
    """(..., kc) bool -> (..., ceil(K / 8)) uint8, key slot j at bit j % 8 of byte j // 8 (slots >= kc: 0)."""
    import torch
    import torch.nn.functional as F

    n_bytes = (K + 7) // 8
    m = F.pad(mask.view(torch.uint8), (0, 8 * n_bytes - mask.shape[-1]))
    m = m.view(*m.shape[:-1], n_bytes, 8)
    out = m[..., 0].clone()
    for b in range(1, 8):  # eight strided ORs: twice as fast as a weighted sum over the last dim of 8
        out |= m[..., b] << b
    return out


def _unpack(packed, kc):
    """_pack's inverse, cut to the first kc slots: (..., kc) bool."""
    import torch

    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bits = (packed[..., :(kc + 7) // 8].unsqueeze(-1) >> shifts) & 1  # (..., bytes, 8)
    return bits.flatten(-2)[..., :kc].bool()
