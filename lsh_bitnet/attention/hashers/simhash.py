"""hasher=simhash: bit = x . r > 0 for n_bits Gaussian hyperplanes r per (KV head, table) (Charikar 2002).

Collision probability of one table of K bits (SPEC section 7.2): each hyperplane separates q and the hashed key
k' with probability theta / pi, independently, so p1 = (1 - theta / pi) ** K.
"""
import math
from dataclasses import dataclass

from lsh_bitnet.attention.hashers.base import Hasher, table_generators
from lsh_bitnet.config import HasherConfig
from lsh_bitnet.registry import HASHERS


@dataclass
class SimHashConfig(HasherConfig):
    name: str = "simhash"


def log_p_simhash(cos, n_bits: int):
    """log (1 - theta / pi) ** K from cos(theta) (float64)."""
    import torch

    theta = torch.acos(cos.double().clamp(-1.0, 1.0))
    return n_bits * torch.log1p(-theta / math.pi)


@HASHERS.register
class SimHashHasher(Hasher):
    """bit = x . r > 0 for n_bits Gaussian hyperplanes r per (KV head, table)."""

    name = "simhash"
    schema = SimHashConfig

    def __init__(self, n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx):
        import torch

        super().__init__(n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx)
        # One randn(D) call per bit, in bit order: bit b never depends on how many bits follow it.
        planes = [torch.stack([torch.randn(head_dim, generator=gen, dtype=torch.float32) for _ in range(n_bits)], -1)
                  if n_bits else torch.zeros(head_dim, 0)
                  for gen in table_generators(seed, layer_idx, n_kv_heads, n_tables)]
        self.planes = torch.stack(planes).view(n_kv_heads, n_tables, head_dim, n_bits)  # (Hkv, n_tables, D, n_bits)
        # all tables in one matmul: column t * n_bits + b is plane (t, b)
        self._flat_planes = self.planes.permute(0, 2, 1, 3).reshape(n_kv_heads, head_dim, n_tables * n_bits)

    @classmethod
    def ops_for(cls, n_bits, head_dim, n_tables) -> int:
        return head_dim * n_bits * n_tables  # multiply-adds of the projections

    def bits(self, x):
        import torch

        self._check(x)
        B, H, T, D = x.shape
        # float64 projections: a float32 (or TF32) matmul rounds differently on CPU and GPU, and the sign of a
        # near-zero x.r would then depend on the device. Products of float32 values are exact in float64 and a
        # head dim's sum keeps ~45 bits, so codes are the signs of the exact projections but for ties at ~1e-13.
        planes = self._param(self._flat_planes, x.device, torch.float64)  # (Hkv, D, tables*bits)
        proj = torch.matmul(x.double(), planes.unsqueeze(0))  # (B, Hkv, T, tables*bits)
        return (proj > 0).view(B, H, T, self.n_tables, self.n_bits)

    def log_p_collision(self, q, kh, need):
        """log (1 - theta_ij / pi) ** K over the `need` entries (need None: every entry), theta_ij the angle
        between q_i and k'_j."""
        import torch

        dots = torch.matmul(q, kh.transpose(-1, -2))  # (B, Hkv, g, Qc, kc)
        norms = q.norm(dim=-1, keepdim=True) * kh.norm(dim=-1).unsqueeze(-2)
        cos = dots / norms.clamp(min=1e-30)
        return log_p_simhash(cos if need is None else cos[need], self.n_bits)  # (n_need,) or (B, Hkv, g, Qc, kc)
