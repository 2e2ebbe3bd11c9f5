"""Exact per-layer comparison counters (SPEC section 4), kept on the device until read.

Each attention call adds an int64 (4,) tensor [comparisons, full_comparisons, hash_ops, selection_ops] to its
layer's row; nothing is copied to the host until `per_layer()` is read at the end of a run.
int64 is ample: a 30-layer, 20-head model at 4096 tokens adds ~5e9 per sequence, 2e9 sequences
before overflow.
"""
from typing import Dict, List, Optional

import torch

# selection_ops: work spent choosing candidates that is neither hashing nor a query-key dot product
# (collision counting over keys, prefix searches, top-k selection), SPEC section 7.
FIELDS = ("comparisons", "full_comparisons", "hash_ops", "selection_ops")


class CostMeter:
    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        self._totals: Dict[torch.device, torch.Tensor] = {}  # device -> (n_layers, 3) int64; a model may span devices

    def add(self, layer_idx: int, counts: torch.Tensor) -> None:
        """counts: (4,) int64 [comparisons, full_comparisons, hash_ops, selection_ops] of one call of layer layer_idx."""
        totals = self._totals.get(counts.device)
        if totals is None:
            totals = self._totals[counts.device] = torch.zeros(self.n_layers, len(FIELDS), dtype=torch.int64,
                                                                device=counts.device)
        totals[layer_idx] += counts

    def reset(self) -> None:
        self._totals = {}

    def per_layer(self) -> List[List[int]]:
        """[[comparisons, full_comparisons, hash_ops, selection_ops] per layer] as exact Python ints (one host sync)."""
        rows = [[0] * len(FIELDS) for _ in range(self.n_layers)]
        for totals in self._totals.values():
            for row, values in zip(rows, totals.tolist()):
                for f, v in enumerate(values):
                    row[f] += int(v)
        return rows

    def summary(self, patched: List[bool], is_oracle: bool) -> dict:
        """The `cost` block of results.json (docs/RESULTS.md)."""
        rows = self.per_layer()
        totals = [sum(r[f] for r in rows) for f in range(len(FIELDS))]
        comparisons, full, hash_ops, selection_ops = totals
        ratio: Optional[float] = comparisons / full if full > 0 else None
        return {
            "comparisons": comparisons, "full_comparisons": full, "comparison_ratio": ratio,
            "hash_ops": hash_ops, "selection_ops": selection_ops, "is_oracle": bool(is_oracle),
            "per_layer": {**{name: [r[f] for r in rows] for f, name in enumerate(FIELDS)},
                          "patched": [bool(p) for p in patched]},
        }
