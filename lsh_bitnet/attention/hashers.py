"""Hash functions over head-dim vectors: bit sampling and SimHash (docs/ATTENTION-API.md, "Hashers").

Every (layer, KV head, table) gets its own CPU torch.Generator, seeded from (hasher.seed, layer_idx,
kv_head, table), which draws that table's bits one after the other. So the functions are nested (SPEC
section 7): the n_bits=b functions are the first b of any longer setting and the n_tables=L tables the
first L of any larger one, and a sweep over bits or tables uses common random numbers. A run is
reproducible and does not depend on the device or on the global RNG. Query heads are hashed with the
functions of the KV head that serves them (GQA).

Centring (hasher.center) applies to keys only: `key_codes(key)` hashes `key - mu`, `codes(query)` the
query as it is; q . (k - mu) = q . k - q . mu keeps the ranking of keys for a fixed query.
"""
import hashlib
from typing import Dict, Optional, Tuple

import torch

from lsh_bitnet.attention.checks import MAX_BITS  # codes are packed into int64

# name -> Hasher subclass. A new hasher (e.g. Reformer's cross-polytope) is one module with a
# `@register_hasher("name")` class implementing `bits` and `ops_per_vector`, plus conf/hasher/<name>.yaml.
HASHERS: Dict[str, type] = {}
# Up to this many bits, pack() builds one int64 temporary (512 KiB) instead of looping over bit positions:
# a decode step hashes one query per head, where the per-bit loop's small operations cost more than the data.
PACK_AT_ONCE_MAX_BITS = 1 << 16


def layer_seed(seed: int, layer_idx: int, *more: int) -> int:
    """A 63-bit seed per (seed, layer[, kv head, table]): hashing the tuple avoids collisions like (0, 1000) vs (1, 0)."""
    digest = hashlib.sha256(":".join(["lsh_bitnet", str(int(seed)), str(int(layer_idx)),
                                      *(str(int(m)) for m in more)]).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def table_generators(seed: int, layer_idx: int, n_kv_heads: int, n_tables: int):
    """One generator per (KV head, table), in (head, table) order: table t never depends on n_tables."""
    for h in range(n_kv_heads):
        for t in range(n_tables):
            yield torch.Generator().manual_seed(layer_seed(seed, layer_idx, h, t))


def register_hasher(name: str):
    def decorate(cls):
        cls.name = name
        HASHERS[name] = cls
        return cls
    return decorate


class Hasher:
    """Maps (B, Hkv, T, D) vectors to n_tables codes of n_bits bits each, per KV head."""

    name = "base"

    def __init__(self, n_bits: int, head_dim: int, n_kv_heads: int, n_tables: int, seed: int, layer_idx: int):
        if not 0 <= n_bits <= MAX_BITS:
            raise ValueError(f"hasher.n_bits must be in [0, {MAX_BITS}] (got {n_bits})")
        if n_tables < 1:
            raise ValueError(f"attention.n_tables must be >= 1 (got {n_tables}): set attention.n_tables=1 or more")
        self.n_bits, self.head_dim, self.n_kv_heads, self.n_tables = n_bits, head_dim, n_kv_heads, n_tables
        self.seed, self.layer_idx = seed, layer_idx
        self.center = "none"  # set by patch_model from hasher.center
        self.mu: Optional[torch.Tensor] = None  # (Hkv, D) calibration or (B, Hkv, D) prompt mean key
        # bit b has weight 2**(n_bits-1-b): bit 0 is the most significant, i.e. the root of a forest tree
        self.weights = 2 ** torch.arange(n_bits - 1, -1, -1, dtype=torch.int64)  # (n_bits,)
        self._on_device: Dict[Tuple, torch.Tensor] = {}

    @property
    def ops_per_vector(self) -> int:
        raise NotImplementedError

    def _param(self, tensor: torch.Tensor, device: torch.device, dtype=None) -> torch.Tensor:
        """The CPU master copy moved to `device` once and kept there."""
        key = (id(tensor), str(device), dtype)
        if key not in self._on_device:
            self._on_device[key] = tensor.to(device=device, dtype=dtype or tensor.dtype)
        return self._on_device[key]

    def bits(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Hkv, T, D) -> (B, Hkv, T, n_tables, n_bits) bool."""
        raise NotImplementedError

    def codes(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, Hkv, T, D) -> (B, Hkv, T, n_tables) int64; n_bits=0 gives code 0 for everything."""
        return self.pack(self.bits(x))

    def pack(self, bits: torch.Tensor) -> torch.Tensor:
        """(..., n_tables, n_bits) bool -> (..., n_tables) int64, bit 0 most significant."""
        if bits.numel() <= PACK_AT_ONCE_MAX_BITS:  # decode-sized: one weighted sum, not 3 ops per bit
            return (bits.to(torch.int64) * self._param(self.weights, bits.device)).sum(-1)
        code = torch.zeros(bits.shape[:-1], dtype=torch.int64, device=bits.device)
        for b in range(self.n_bits):  # shift-or per bit: no (..., n_tables, n_bits) int64 temporary
            code = (code << 1) | bits[..., b]
        return code

    # ------------------------------------------------------------------ centring (keys only)
    def set_prompt_center(self, key: torch.Tensor, key_valid: torch.Tensor) -> None:
        """hasher.center=prompt: mu = mean of the valid keys of each row at prefill (B, Hkv, D), kept for decode."""
        w = key_valid.to(torch.float32)[:, None, :, None]  # (B, 1, K, 1)
        self.mu = (key.float() * w).sum(2) / w.sum(2).clamp(min=1)  # (B, Hkv, D)

    def hashed_key(self, key: torch.Tensor) -> torch.Tensor:
        """The vectors that are hashed for keys (B, Hkv, K, D): key - mu when centred, else key."""
        if self.center == "none":
            return key
        if self.mu is None:
            raise RuntimeError(f"hasher.center={self.center}: no mean key yet (calibration centers not loaded, "
                               f"or a decode step before any prefill)")
        mu = self.mu.to(key.device)
        if mu.dim() == 3 and mu.shape[0] != key.shape[0]:
            raise RuntimeError(f"hasher.center=prompt: mean keys of {mu.shape[0]} rows, but {key.shape[0]} rows "
                               f"now; a decode step must follow the prefill of the same batch")
        mu = mu[:, :, None, :] if mu.dim() == 3 else mu[None, :, None, :]  # (B|1, Hkv, 1, D)
        return key.float() - mu

    def key_bits(self, key: torch.Tensor) -> torch.Tensor:
        return self.bits(self.hashed_key(key))

    def key_codes(self, key: torch.Tensor) -> torch.Tensor:
        """key (B, Hkv, K, D) -> (B, Hkv, K, n_tables) int64 codes of the (centred) keys."""
        return self.codes(self.hashed_key(key))

    def _check(self, x: torch.Tensor) -> None:
        if x.dim() != 4 or x.shape[1] != self.n_kv_heads or x.shape[-1] != self.head_dim:
            raise ValueError(f"{self.name} hasher expects (B, {self.n_kv_heads}, T, {self.head_dim}) vectors, "
                             f"got {tuple(x.shape)}")


@register_hasher("bit_sampling")
class BitSamplingHasher(Hasher):
    """bit = x[c] > 0 for n_bits distinct coordinates c per (KV head, table)."""


    def __init__(self, n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx):
        super().__init__(n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx)
        if n_bits > head_dim:
            raise ValueError(f"hasher.n_bits={n_bits} > head_dim={head_dim}: bit_sampling draws distinct "
                             f"coordinates; set hasher.n_bits <= {head_dim} or use hasher=simhash")
        # The first n_bits of a full permutation: nested in n_bits, distinct coordinates.
        coords = [torch.randperm(head_dim, generator=gen)[:n_bits]
                  for gen in table_generators(seed, layer_idx, n_kv_heads, n_tables)]
        self.coords = torch.stack(coords).view(n_kv_heads, n_tables, n_bits).long()  # (Hkv, n_tables, n_bits)

    @property
    def ops_per_vector(self) -> int:
        # No multiply-adds, but one coordinate test per bit: counted so hashing is never free.
        return self.n_bits * self.n_tables

    def bits(self, x):
        self._check(x)
        B, H, T, _ = x.shape
        idx = self._param(self.coords, x.device).view(1, H, 1, -1).expand(B, H, T, -1)  # (B, Hkv, T, tables*bits)
        return (x.gather(-1, idx) > 0).view(B, H, T, self.n_tables, self.n_bits)


@register_hasher("simhash")
class SimHashHasher(Hasher):
    """bit = x . r > 0 for n_bits Gaussian hyperplanes r per (KV head, table)."""


    def __init__(self, n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx):
        super().__init__(n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx)
        # One randn(D) call per bit, in bit order: bit b never depends on how many bits follow it.
        planes = [torch.stack([torch.randn(head_dim, generator=gen, dtype=torch.float32) for _ in range(n_bits)], -1)
                  if n_bits else torch.zeros(head_dim, 0)
                  for gen in table_generators(seed, layer_idx, n_kv_heads, n_tables)]
        self.planes = torch.stack(planes).view(n_kv_heads, n_tables, head_dim, n_bits)  # (Hkv, n_tables, D, n_bits)
        # all tables in one matmul: column t * n_bits + b is plane (t, b)
        self._flat_planes = self.planes.permute(0, 2, 1, 3).reshape(n_kv_heads, head_dim, n_tables * n_bits)

    @property
    def ops_per_vector(self) -> int:
        return self.head_dim * self.n_bits * self.n_tables

    def bits(self, x):
        self._check(x)
        B, H, T, D = x.shape
        # float32 projections: in bf16 the sign of a near-zero x.r would depend on the rounding.
        planes = self._param(self._flat_planes, x.device)  # (Hkv, D, tables*bits)
        proj = torch.matmul(x.float(), planes.unsqueeze(0))  # (B, Hkv, T, tables*bits)
        return (proj > 0).view(B, H, T, self.n_tables, self.n_bits)


def build_hasher(name: str, n_bits: int, head_dim: int, n_kv_heads: int, n_tables: int, seed: int,
                 layer_idx: int) -> Hasher:
    if name not in HASHERS:
        raise ValueError(f"hasher.name={name!r} is not known: allowed {sorted(HASHERS)}")
    return HASHERS[name](n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx)
