"""hasher=bit_sampling: bit = x[c] > 0 for n_bits distinct coordinates c of the head dim per (KV head, table).

Collision probability of one table of K bits (SPEC section 7.2): the table draws a uniformly random K-subset of
the D coordinates, and the codes agree iff all of it lies among the a_ij coordinates where (q_c > 0) == (k'_c > 0):
p1 = C(a_ij, K) / C(D, K) (hypergeometric). It depends on signs only, not on the angle.
"""
from dataclasses import dataclass

from lsh_bitnet.attention.hashers.base import Hasher, table_generators
from lsh_bitnet.config import HasherConfig
from lsh_bitnet.errors import require
from lsh_bitnet.registry import HASHERS


@dataclass
class BitSamplingConfig(HasherConfig):
    name: str = "bit_sampling"


def log_p_bit_sampling(agree, n_bits: int, head_dim: int):
    """log C(a, K) / C(D, K) = sum_r log((a - r) / (D - r)); -inf where a < K (float64)."""
    import torch

    a = agree.double()
    out = torch.zeros_like(a)
    for r in range(n_bits):
        out += torch.log((a - r).clamp(min=0.0) / (head_dim - r))
    return out


@HASHERS.register
class BitSamplingHasher(Hasher):
    """bit = x[c] > 0 for n_bits distinct coordinates c per (KV head, table)."""

    name = "bit_sampling"
    schema = BitSamplingConfig

    @classmethod
    def check(cls, cfg, bits, bits_key, head_dim=None) -> None:
        require(head_dim is None or bits <= head_dim, f"{bits_key}={bits} > head_dim={head_dim}: bit_sampling draws "
                f"distinct coordinates of the head dim; set {bits_key} <= {head_dim} or use hasher=simhash")

    def __init__(self, n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx):
        import torch

        super().__init__(n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx)
        if n_bits > head_dim:
            raise ValueError(f"hasher.n_bits={n_bits} > head_dim={head_dim}: bit_sampling draws distinct "
                             f"coordinates; set hasher.n_bits <= {head_dim} or use hasher=simhash")
        # The first n_bits of a full permutation: nested in n_bits, distinct coordinates.
        coords = [torch.randperm(head_dim, generator=gen)[:n_bits]
                  for gen in table_generators(seed, layer_idx, n_kv_heads, n_tables)]
        self.coords = torch.stack(coords).view(n_kv_heads, n_tables, n_bits).long()  # (Hkv, n_tables, n_bits)

    @classmethod
    def ops_for(cls, n_bits, head_dim, n_tables) -> int:
        # No multiply-adds, but one coordinate test per bit: counted so hashing is never free.
        return n_bits * n_tables

    def bits(self, x):
        self._check(x)
        B, H, T, _ = x.shape
        idx = self._param(self.coords, x.device).view(1, H, 1, -1).expand(B, H, T, -1)  # (B, Hkv, T, tables*bits)
        return (x.gather(-1, idx) > 0).view(B, H, T, self.n_tables, self.n_bits)

    def log_p_collision(self, q, kh, need):
        """log C(a_ij, K) / C(D, K) over the `need` entries (need None: every entry), a_ij the coordinates where
        (q_c > 0) == (k'_c > 0), counted by a +-1 matmul."""
        import torch

        sq, sk = (q > 0).float() * 2 - 1, (kh > 0).float() * 2 - 1
        agree = (q.shape[-1] + torch.matmul(sq, sk.transpose(-1, -2))) / 2
        return log_p_bit_sampling(agree if need is None else agree[need], self.n_bits, self.head_dim)
