"""Exact per-layer comparison counters (SPEC section 4), kept on the device until read.

Each attention call adds an int64 (4,) tensor [comparisons, full_comparisons, hash_ops, selection_ops] to its
layer's row of its phase (prefill / decode, attention/phases.py; a call split between them adds one to each);
nothing is copied to the host until `per_layer()` is read at the end of a run.
int64 is ample: a 30-layer, 20-head model at 4096 tokens adds ~5e9 per sequence, 2e9 sequences
before overflow.
"""
from typing import Dict, List, Optional

import torch

from lsh_bitnet.attention.phases import PHASES

# selection_ops: work spent choosing candidates that is neither hashing nor a query-key dot product
# (collision counting over keys, prefix searches, top-k selection), SPEC section 7.
FIELDS = ("comparisons", "full_comparisons", "hash_ops", "selection_ops")


class CostMeter:
    def __init__(self, n_layers: int):
        self.n_layers = n_layers
        # device -> (n_phases, n_layers, 4) int64; a model may span devices
        self._totals: Dict[torch.device, torch.Tensor] = {}

    def add(self, layer_idx: int, counts: torch.Tensor, phase: int = 0) -> None:
        """counts: (4,) int64 [comparisons, full_comparisons, hash_ops, selection_ops] of one call of layer
        layer_idx, in phase `phase` (phases.PREFILL or DECODE)."""
        totals = self._totals.get(counts.device)
        if totals is None:
            totals = self._totals[counts.device] = torch.zeros(len(PHASES), self.n_layers, len(FIELDS),
                                                                dtype=torch.int64, device=counts.device)
        totals[phase, layer_idx] += counts

    def reset(self) -> None:
        self._totals = {}

    def per_phase(self) -> List[List[List[int]]]:
        """[phase][layer][field] as exact Python ints (one host sync per device)."""
        out = [[[0] * len(FIELDS) for _ in range(self.n_layers)] for _ in PHASES]
        for totals in self._totals.values():
            for p, layers in enumerate(totals.tolist()):
                for row, values in zip(out[p], layers):
                    for f, v in enumerate(values):
                        row[f] += int(v)
        return out

    def per_layer(self) -> List[List[int]]:
        """[[comparisons, full_comparisons, hash_ops, selection_ops] per layer], both phases together."""
        phases = self.per_phase()
        return [[sum(p[layer][f] for p in phases) for f in range(len(FIELDS))] for layer in range(self.n_layers)]

    def summary(self, patched: List[bool], is_oracle: bool) -> dict:
        """The `cost` block of results.json (docs/RESULTS.md)."""
        phases = self.per_phase()
        rows = [[sum(p[layer][f] for p in phases) for f in range(len(FIELDS))] for layer in range(self.n_layers)]
        totals = [sum(r[f] for r in rows) for f in range(len(FIELDS))]
        comparisons, full, hash_ops, selection_ops = totals
        ratio: Optional[float] = comparisons / full if full > 0 else None
        return {
            "comparisons": comparisons, "full_comparisons": full, "comparison_ratio": ratio,
            "hash_ops": hash_ops, "selection_ops": selection_ops, "is_oracle": bool(is_oracle),
            "per_layer": {**{name: [r[f] for r in rows] for f, name in enumerate(FIELDS)},
                          "patched": [bool(p) for p in patched]},
            # the same counts per phase (attention/phases.py): prefill + decode = the totals above
            "phases": {name: dict(zip(FIELDS, (sum(r[f] for r in phases[p]) for f in range(len(FIELDS)))))
                       for p, name in enumerate(PHASES)},
        }
