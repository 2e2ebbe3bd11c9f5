"""hasher=hadamard: SimHash over pseudo-random rotations, bit = (H D_R ... H D_1 x)_c > 0 (Andoni et al. 2015).

SimHash projects a vector on n_tables * n_bits Gaussian hyperplanes: head_dim multiply-adds per bit. Here the
hyperplanes are the rows of pseudo-random rotations: x (zero-padded to P = the next power of two >= head_dim) is
multiplied by a random sign diagonal D_1 and transformed by the Walsh-Hadamard matrix H, `hasher.rounds` times,
and each rotation gives P sign bits for P log2 P additions per round (the fast Walsh-Hadamard transform): at
P = 64 and one round 7 operations per bit instead of 64 (FALCONN's rotations for cross-polytope LSH; for
hyperplane LSH the P bits of one rotation are signs of mutually orthogonal projections, as in super-bit LSH,
Ji et al. 2012).

Layout: the bits of ceil(n_tables * n_bits / P) rotations per KV head, concatenated; table t takes bits
[t * n_bits, (t + 1) * n_bits). So the tables are nested (n_tables = L is the first L tables of any larger
setting) but the bits are not: with another n_bits the tables regroup the same rotated coordinates.
`planes` holds the equivalent hyperplanes (Hkv, n_tables, head_dim, n_bits) for references and tests.

No collision probability in closed form (the bits of one rotation are not independent): the sampling
estimator refuses this family by name (hashers/base.py).
"""
import math
from dataclasses import dataclass

from lsh_bitnet.attention.hashers.base import Hasher, layer_seed
from lsh_bitnet.config import HasherConfig
from lsh_bitnet.errors import require
from lsh_bitnet.registry import HASHERS

# Rounds of H D: FALCONN uses 3 for cross-polytope LSH (near-Gaussian rotations); hyperplane bits need
# less (docs/FINDINGS.md section 6 measures 1 and 3). More than a few add work and no randomness.
MAX_ROUNDS = 8


@dataclass
class HadamardConfig(HasherConfig):
    name: str = "hadamard"
    # H D rounds per rotation: each costs P log2 P additions + P sign flips per P bits
    rounds: int = 1


def padded_dim(head_dim: int) -> int:
    """The power of two the rotations run in (>= head_dim; the extra coordinates are zeros)."""
    return 1 << max(head_dim - 1, 0).bit_length()


def fwht(x):
    """Unnormalised Walsh-Hadamard transform over the last dim (a power of two): log2 P butterfly stages."""
    import torch

    n = x.shape[-1]
    h = 1
    while h < n:
        y = x.reshape(*x.shape[:-1], n // (2 * h), 2, h)  # (..., blocks, pair, h)
        a, b = y[..., 0, :], y[..., 1, :]
        x = torch.stack((a + b, a - b), dim=-2).reshape(*x.shape[:-1], n)
        h *= 2
    return x


@HASHERS.register
class HadamardHasher(Hasher):
    """bit = (H D_R ... H D_1 x)_c > 0: the coordinates of pseudo-random rotations, n_bits per table."""

    name = "hadamard"
    schema = HadamardConfig

    @classmethod
    def check(cls, cfg, bits, bits_key, head_dim=None) -> None:
        rounds = getattr(cfg, "rounds", 1)
        require(1 <= rounds <= MAX_ROUNDS, f"hasher.rounds must be in [1, {MAX_ROUNDS}] (got {rounds}): each round "
                "is one sign flip and one Walsh-Hadamard transform")

    @classmethod
    def from_config(cls, cfg, n_bits, head_dim, n_kv_heads, n_tables, layer_idx):
        return cls(n_bits, head_dim, n_kv_heads, n_tables, int(cfg.seed), layer_idx, rounds=int(cfg.rounds))

    def __init__(self, n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx, rounds: int = 1):
        import torch

        super().__init__(n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx)
        if not 1 <= rounds <= MAX_ROUNDS:
            raise ValueError(f"hasher.rounds must be in [1, {MAX_ROUNDS}] (got {rounds})")
        self.rounds, self.padded = rounds, padded_dim(head_dim)
        self.n_rotations = max(1, math.ceil(n_tables * n_bits / self.padded))
        # One generator per (KV head, rotation): rotation r never depends on how many follow it (nested tables).
        signs = []
        for h in range(n_kv_heads):
            for r in range(self.n_rotations):
                gen = torch.Generator().manual_seed(layer_seed(seed, layer_idx, h, r, rounds, self.padded))
                signs.append(torch.randint(0, 2, (rounds, self.padded), generator=gen) * 2 - 1)
        # (Hkv, rotations, rounds, P) of +-1, float64 as the transform runs
        self.signs = torch.stack(signs).view(n_kv_heads, self.n_rotations, rounds, self.padded).double()

    @property
    def ops_per_vector(self) -> int:
        return self.ops_for(self.n_bits, self.head_dim, self.n_tables, self.rounds)

    @classmethod
    def ops_for(cls, n_bits, head_dim, n_tables, rounds: int = 1) -> int:
        P = padded_dim(head_dim)
        return max(1, math.ceil(n_tables * n_bits / P)) * rounds * (P * int(math.log2(P)) + P)  # additions + flips

    def rotate(self, x):
        """x (B, Hkv, T, D) -> (B, Hkv, T, rotations * P) float64: every rotation's coordinates."""
        import torch.nn.functional as F

        B, H, T, D = x.shape
        y = F.pad(x.double(), (0, self.padded - D))[:, :, :, None, :]  # (B, Hkv, T, 1, P)
        signs = self._param(self.signs, x.device)  # (Hkv, rotations, rounds, P)
        for r in range(self.rounds):
            # float64, as simhash: the transform's sums are exact to ~1e-13, so signs do not depend on the device
            y = fwht(y * signs[:, :, r][None, :, None])  # (B, Hkv, T, rotations, P)
        return y.reshape(B, H, T, self.n_rotations * self.padded)

    def bits(self, x):
        self._check(x)
        B, H, T, _ = x.shape
        used = self.n_tables * self.n_bits
        return (self.rotate(x)[..., :used] > 0).view(B, H, T, self.n_tables, self.n_bits)

    @property
    def planes(self):
        """The hyperplanes these bits are the signs of: (Hkv, n_tables, head_dim, n_bits) float64, the rows of
        H D_R ... H D_1 (integers) restricted to the head dim."""
        import torch

        eye = torch.eye(self.head_dim, dtype=torch.float64)[None, None].expand(1, self.n_kv_heads, -1, -1)
        rows = self.rotate(eye)[0]  # (Hkv, D, rotations * P): column c is the plane of rotated coordinate c
        used = rows[..., :self.n_tables * self.n_bits].reshape(self.n_kv_heads, self.head_dim, self.n_tables,
                                                               self.n_bits)
        return used.permute(0, 2, 1, 3).contiguous()
