"""hasher=sparse_sign: bit = x . r > 0 for sparse random directions r with entries +1, 0, -1 (Achlioptas 2003).

A family with a parameter of its own (`hasher.density`: the share of non-zero entries) and no collision
probability, so attention.estimator=sampling refuses it by name. Draws follow lsh-bitnet's seeding: one
generator per (seed, layer, KV head, table), bits in order, so the functions are nested like SimHash's.
"""
from dataclasses import dataclass

from lsh_bitnet.attention.hashers.base import Hasher, table_generators
from lsh_bitnet.config import HasherConfig
from lsh_bitnet.errors import require
from lsh_bitnet.registry import HASHERS


@dataclass
class SparseSignConfig(HasherConfig):
    name: str = "sparse_sign"
    density: float = 1 / 3  # Achlioptas' 1/3: as accurate as Gaussian directions for projections, 2/3 zeros


@HASHERS.register
class SparseSignHasher(Hasher):
    name = "sparse_sign"
    schema = SparseSignConfig

    @classmethod
    def check(cls, cfg, bits, bits_key, head_dim=None) -> None:
        require(0 < cfg.density <= 1, f"hasher.density must be in (0, 1] (got {cfg.density}): e.g. hasher.density=0.33")

    @classmethod
    def ops_for(cls, n_bits, head_dim, n_tables) -> int:
        return head_dim * n_bits * n_tables  # computed as a dense projection: every multiply-add counted

    @classmethod
    def from_config(cls, cfg, n_bits, head_dim, n_kv_heads, n_tables, layer_idx):
        return cls(n_bits, head_dim, n_kv_heads, n_tables, int(cfg.seed), layer_idx, density=float(cfg.density))

    def __init__(self, n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx, density=SparseSignConfig.density):
        import torch

        super().__init__(n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx)
        planes = []
        for gen in table_generators(self.seed, self.layer_idx, self.n_kv_heads, self.n_tables):
            # one rand(D) per bit, in bit order: bit b never depends on how many bits follow it (nested codes)
            u = torch.stack([torch.rand(self.head_dim, generator=gen) for _ in range(self.n_bits)], -1) \
                if self.n_bits else torch.zeros(self.head_dim, 0)  # (D, n_bits)
            sign = torch.where(u < density / 2, 1.0, -1.0)
            planes.append(torch.where(u < density, sign, 0.0))  # P(+1) = P(-1) = density / 2
        self.planes = torch.stack(planes).view(self.n_kv_heads, self.n_tables, self.head_dim, self.n_bits)
        self._flat = self.planes.permute(0, 2, 1, 3).reshape(self.n_kv_heads, self.head_dim, -1)  # (Hkv, D, L*K)

    def bits(self, x):
        import torch

        self._check(x)
        B, H, T, _ = x.shape
        proj = torch.matmul(x.float(), self._param(self._flat, x.device).unsqueeze(0))  # (B, Hkv, T, L*K)
        return (proj > 0).view(B, H, T, self.n_tables, self.n_bits)
