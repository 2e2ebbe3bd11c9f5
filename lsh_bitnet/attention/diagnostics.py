"""Retrieval diagnostics: does C(i) hold the keys full attention cares about?

On a deterministic sample of queries per layer call (evenly spaced query slots, padding skipped):
- recall_at_k: share of the true top-k keys of V(i) (by q.k, ties to the lower slot) that lie in C(i);
- mass_recall: share of the full-attention softmax mass over V(i) that C(i) covers.
Averaged over (sampled query, query head) pairs, per layer and overall. Sums stay on the device.
"""
from typing import Dict, List, Optional

import torch

from lsh_bitnet.attention.candidates import Candidates, top_k_mask


def sample_queries(n_queries: int, n_samples: int) -> List[int]:
    """Evenly spaced query indices: deterministic, and covering short and long contexts alike."""
    if n_queries <= n_samples:
        return list(range(n_queries))
    step = (n_queries - 1) / (n_samples - 1) if n_samples > 1 else 0.0
    return sorted({round(i * step) for i in range(n_samples)})


class DiagnosticsMeter:
    def __init__(self, n_layers: int, k: int, n_queries: int):
        self.n_layers, self.k, self.n_queries = n_layers, k, n_queries
        self._sums: Dict[torch.device, torch.Tensor] = {}  # device -> (n_layers, 3) float64: recall, mass, pairs

    def reset(self) -> None:
        self._sums = {}

    @torch.no_grad()
    def observe(self, layer_idx: int, cands: Candidates, scaling: float) -> None:
        idx = sample_queries(cands.Q, self.n_queries)
        if not idx:
            return
        kc = cands.K - cands.Q + idx[-1] + 1  # keys past the last sampled query are invisible to all of them
        q_idx = torch.tensor(idx, device=cands.key.device)
        cand, valid = cands.mask(q_idx, kc)  # (B, Hkv, g, n, kc), (B, 1, 1, n, kc)
        scores = cands.scores(q_idx, kc)  # (B, Hkv, g, n, kc) float32
        n_valid = valid.sum(-1)  # (B, 1, 1, n)
        k_i = n_valid.clamp(max=self.k).expand(scores.shape[:-1])
        top = top_k_mask(scores, valid, k_i, min(self.k, kc))
        counted = k_i > 0  # padding queries (empty V) are not counted
        recall = (top & cand).sum(-1) / k_i.clamp(min=1)  # (B, Hkv, g, n)
        probs = torch.softmax((scores * scaling).masked_fill(~valid, float("-inf")), dim=-1)
        mass = (probs.nan_to_num(0.0) * cand).sum(-1)  # an all -inf row is NaN: it is not counted anyway
        row = torch.stack([(recall * counted).sum(), (mass * counted).sum(), counted.sum()]).double()
        sums = self._sums.get(row.device)
        if sums is None:
            sums = self._sums[row.device] = torch.zeros(self.n_layers, 3, dtype=torch.float64, device=row.device)
        sums[layer_idx] += row

    def summary(self) -> Optional[dict]:
        """The `diagnostics` block of results.json; None when nothing was observed."""
        rows = [[0.0, 0.0, 0.0] for _ in range(self.n_layers)]
        for sums in self._sums.values():
            for row, values in zip(rows, sums.tolist()):
                for f, v in enumerate(values):
                    row[f] += v
        pairs = sum(r[2] for r in rows)
        if pairs == 0:
            return None
        per = lambda f: [r[f] / r[2] if r[2] > 0 else None for r in rows]  # noqa: E731
        return {"k": self.k, "recall_at_k": sum(r[0] for r in rows) / pairs,
                "mass_recall": sum(r[1] for r in rows) / pairs,
                "per_layer": {"recall_at_k": per(0), "mass_recall": per(1)}}
