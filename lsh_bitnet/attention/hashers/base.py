"""The Hasher base: what a hash family declares (docs/EXTENDING.md) and the machinery every family shares.

A hasher maps (B, Hkv, T, D) vectors to n_tables codes of n_bits bits each, per KV head. A family is one
module in this package with a `@HASHERS.register` subclass: its `name`, its `schema` (a subclass of
config.HasherConfig), `bits` (and its drawn parameters), `ops_for` (hash_ops per vector), `check` (its limits)
and, if it has one, `log_p_collision` (the collision probability attention.estimator=sampling weights by).

Every (layer, KV head, table) gets its own CPU torch.Generator, seeded from (hasher.seed, layer_idx,
kv_head, table), which draws that table's bits one after the other. So the functions are nested (SPEC
section 7): the n_bits=b functions are the first b of any longer setting and the n_tables=L tables the
first L of any larger one, and a sweep over bits or tables uses common random numbers. A run is
reproducible and does not depend on the device or on the global RNG. Query heads are hashed with the
functions of the KV head that serves them (GQA).

Centring (hasher.center) applies to keys only: `key_codes(key)` hashes `key - mu`, `codes(query)` the
query as it is; q . (k - mu) = q . k - q . mu keeps the ranking of keys for a fixed query.

Torch-free at import (the config checks ask the class before torch loads): methods import torch.
"""
import hashlib
from typing import Dict, Optional, Tuple

from lsh_bitnet.config import HasherConfig

# Codes are packed into int64 and must stay non-negative (the forest compares XORs as integers).
MAX_BITS = 62
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
    import torch

    for h in range(n_kv_heads):
        for t in range(n_tables):
            yield torch.Generator().manual_seed(layer_seed(seed, layer_idx, h, t))


class Hasher:
    """Maps (B, Hkv, T, D) vectors to n_tables codes of n_bits bits each, per KV head."""

    name = "base"  # hasher=<name>
    schema = HasherConfig  # its config dataclass, a subclass of config.HasherConfig
    # log p1: log of the probability that one table's codes of q and of the hashed key k' collide, a method
    # (q (B, Hkv, g, Qc, D) float32, kh (B, Hkv, 1, kc, D) float32, need (B, Hkv, g, Qc, kc) bool) -> (n_need,)
    # float64 over the `need` entries, or over every entry (B, Hkv, g, Qc, kc) when need is None (CUDA: boolean
    # indexing is a host sync). None: the family declares none, and attention.estimator=sampling
    # refuses it by name (never another family's formula).
    log_p_collision = None

    # ------------------------------------------------------------------ config (torch-free)
    @classmethod
    def check(cls, cfg, bits: int, bits_key: str, head_dim: Optional[int] = None) -> None:
        """This family's limits on the code width `bits` (read from `bits_key`) and its own fields; head_dim when
        the model's shape is known. Raise ConfigError naming the key and the fix."""

    @classmethod
    def ops_for(cls, n_bits: int, head_dim: int, n_tables: int) -> int:
        """hash_ops per hashed vector (SPEC section 4): multiply-adds or elementary tests, never free."""
        raise NotImplementedError

    @classmethod
    def from_config(cls, cfg, n_bits: int, head_dim: int, n_kv_heads: int, n_tables: int, layer_idx: int) -> "Hasher":
        """The hasher of one layer; n_bits and n_tables come from the rule (Rule.hash_shape)."""
        return cls(n_bits, head_dim, n_kv_heads, n_tables, int(cfg.seed), layer_idx)

    # ------------------------------------------------------------------ the torch side
    def __init__(self, n_bits: int, head_dim: int, n_kv_heads: int, n_tables: int, seed: int, layer_idx: int):
        import torch

        if not 0 <= n_bits <= MAX_BITS:
            raise ValueError(f"hasher.n_bits must be in [0, {MAX_BITS}] (got {n_bits})")
        if n_tables < 1:
            raise ValueError(f"attention.n_tables must be >= 1 (got {n_tables}): set attention.n_tables=1 or more")
        self.n_bits, self.head_dim, self.n_kv_heads, self.n_tables = n_bits, head_dim, n_kv_heads, n_tables
        self.seed, self.layer_idx = seed, layer_idx
        self.center = "none"  # set by patch_model from hasher.center
        self.mu = None  # (Hkv, D) calibration or (B, Hkv, D) prompt mean key
        # bit b has weight 2**(n_bits-1-b): bit 0 is the most significant, i.e. the root of a forest tree
        self.weights = 2 ** torch.arange(n_bits - 1, -1, -1, dtype=torch.int64)  # (n_bits,)
        self._on_device: Dict[Tuple, object] = {}

    @property
    def ops_per_vector(self) -> int:
        return self.ops_for(self.n_bits, self.head_dim, self.n_tables)

    def _param(self, tensor, device, dtype=None):
        """The CPU master copy moved to `device` once and kept there."""
        key = (id(tensor), str(device), dtype)
        if key not in self._on_device:
            self._on_device[key] = tensor.to(device=device, dtype=dtype or tensor.dtype)
        return self._on_device[key]

    def bits(self, x):
        """x (B, Hkv, T, D) -> (B, Hkv, T, n_tables, n_bits) bool."""
        raise NotImplementedError

    def codes(self, x):
        """x (B, Hkv, T, D) -> (B, Hkv, T, n_tables) int64; n_bits=0 gives code 0 for everything."""
        return self.pack(self.bits(x))

    def pack(self, bits):
        """(..., n_tables, n_bits) bool -> (..., n_tables) int64, bit 0 most significant."""
        import torch

        if bits.numel() <= PACK_AT_ONCE_MAX_BITS:  # decode-sized: one weighted sum, not 3 ops per bit
            return (bits.to(torch.int64) * self._param(self.weights, bits.device)).sum(-1)
        code = torch.zeros(bits.shape[:-1], dtype=torch.int64, device=bits.device)
        for b in range(self.n_bits):  # shift-or per bit: no (..., n_tables, n_bits) int64 temporary
            code = (code << 1) | bits[..., b]
        return code

    # ------------------------------------------------------------------ centring (keys only)
    def set_prompt_center(self, key, key_valid) -> None:
        """hasher.center=prompt: mu = mean of the valid keys of each row at prefill (B, Hkv, D), kept for decode."""
        import torch

        w = key_valid.to(torch.float32)[:, None, :, None]  # (B, 1, K, 1)
        self.mu = (key.float() * w).sum(2) / w.sum(2).clamp(min=1)  # (B, Hkv, D)

    def hashed_key(self, key):
        """The vectors that are hashed for keys (B, Hkv, K, D): key - mu when centred, else key."""
        if self.center == "none":
            return key
        if self.mu is None:
            raise RuntimeError(f"hasher.center={self.center}: no mean key yet (calibration centers not loaded, "
                               f"or a decode step before any prefill)")
        if self.mu.device != key.device:  # moved once (calibration means load on CPU), not copied on every call
            self.mu = self.mu.to(key.device)
        mu = self.mu
        if mu.dim() == 3 and mu.shape[0] != key.shape[0]:
            raise RuntimeError(f"hasher.center=prompt: mean keys of {mu.shape[0]} rows, but {key.shape[0]} rows "
                               f"now; a decode step must follow the prefill of the same batch")
        mu = mu[:, :, None, :] if mu.dim() == 3 else mu[None, :, None, :]  # (B|1, Hkv, 1, D)
        return key.float() - mu

    def key_bits(self, key):
        return self.bits(self.hashed_key(key))

    def key_codes(self, key):
        """key (B, Hkv, K, D) -> (B, Hkv, K, n_tables) int64 codes of the (centred) keys."""
        return self.codes(self.hashed_key(key))

    def _check(self, x) -> None:
        if x.dim() != 4 or x.shape[1] != self.n_kv_heads or x.shape[-1] != self.head_dim:
            raise ValueError(f"{self.name} hasher expects (B, {self.n_kv_heads}, T, {self.head_dim}) vectors, "
                             f"got {tuple(x.shape)}")


def build_hasher(name: str, n_bits: int, head_dim: int, n_kv_heads: int, n_tables: int, seed: int,
                 layer_idx: int) -> Hasher:
    """The registered hasher `name` (ConfigError, a ValueError, naming the allowed ones when unknown)."""
    from lsh_bitnet.registry import HASHERS

    return HASHERS.get(name)(n_bits, head_dim, n_kv_heads, n_tables, seed, layer_idx)
