"""Key codes hashed once per key in KV-cache decoding (issue 9, item 3): `hash_ops` grows with new tokens only.

Each hashed layer keeps the codes of the keys it saw in the previous forward. They may be reused only if
the new call's keys start with exactly the same keys, and checking that per layer would cost as much as
hashing. One check per forward suffices: the keys of layer 0 are a function of (token, position) alone,
so if layer 0's keys over the cached prefix are bitwise equal to the previous forward's (and the padding
is the same), every input of the model over that prefix is the same, hence so is every layer's key there.
The check compares the whole prefix of layer 0 (first/last keys only would accept a different sequence
that shares them: a layer-0 key sees its own token only). Cost: one O(K * D) copy and comparison per
forward, for one layer. A layer's cached codes are used only if they come from the forward right before this one.

Layout: the codes are kept as the rules read them, table-major (L, B, Hkv, K) in the rule's code dtype
(rules/base.code_dtype), in a buffer with spare capacity along K: a decode step writes its new key's codes in place
and hands out a view, instead of concatenating and converting every cached code at every step (at 8192 keys
and 32 tables that copy cost ~2.5x the step's SDPA call, docs/BENCHMARKS.md).
"""
import weakref
from typing import Dict, Optional, Tuple

import torch

from lsh_bitnet.attention.hostsync import sync_free


class KeyCodeCache:
    def __init__(self):
        self.epoch = 0  # forwards seen (counted at layer 0)
        self.prefix = 0  # keys of this forward known equal to the previous forward's
        self._mask_ref = None  # the attention mask object of the current forward (shared by its layers)
        self._keys: Optional[torch.Tensor] = None  # layer-0 keys of the previous forward (a copy) ...
        self._keys_buf: Optional[torch.Tensor] = None  # ... a view of this buffer with spare capacity
        self._valid: Optional[torch.Tensor] = None
        # layer -> (epoch, keys held, buffer (L, B, Hkv, capacity) table-major in the code dtype, and the same
        # codes byte-packed (W, B, Hkv, capacity) int64 or None)
        self._codes: Dict[int, Tuple[int, int, torch.Tensor, Optional[torch.Tensor]]] = {}
        self._last_words: Dict[int, Optional[torch.Tensor]] = {}  # layer -> the packed buffer of its last call

    def begin_forward(self, attention_mask, key: torch.Tensor, key_valid: torch.Tensor) -> None:
        """Called by layer 0: how many leading keys equal the previous forward's."""
        prev, n = self._keys, 0
        if (prev is not None and attention_mask is not None and prev.shape[0] == key.shape[0] and prev.shape[1:2] == key.shape[1:2]
                and prev.shape[2] <= key.shape[2] and prev.shape[3] == key.shape[3] and prev.dtype == key.dtype
                and prev.device == key.device):
            n = prev.shape[2]
            if not sync_free(key.device):  # torch.equal: half the time of == and all() (no bool tensor), two syncs
                same = torch.equal(key[:, :, :n], prev) and torch.equal(key_valid[:, :n], self._valid)
            else:  # one host sync per forward (two torch.equal calls would be two)
                same = bool((key[:, :, :n] == prev).all() & (key_valid[:, :n] == self._valid).all())
            if not same:
                n = 0
        self.epoch += 1
        self.prefix = n
        self._mask_ref = weakref.ref(attention_mask) if attention_mask is not None else None
        # A copy, not a reference: a static KV cache writes in place, and inference tensors (torch.inference_mode,
        # as in evaluation) keep no version counter to notice it. The first n keys equal the copy held already:
        # only the new ones are written (a copy of all K keys per decode step cost as much as the comparison).
        K = key.shape[2]
        self._keys_buf = _append(self._keys_buf, key[:, :, n:], n, K, dim=2)  # (B, Hkv, >= K, D)
        self._keys, self._valid = self._keys_buf[:, :, :K], key_valid.clone()

    def codes(self, layer_idx: int, attention_mask, key: torch.Tensor, hash_keys,
              dtype: torch.dtype = torch.int64, words: bool = False) -> Tuple[torch.Tensor, int]:
        """Codes (L, B, Hkv, K) in `dtype` of every key of this call (a view of the layer's buffer, valid for this
        call), and how many were reused (not hashed now). hash_keys: (B, Hkv, n, D) -> (B, Hkv, n, L) int64.
        words=True (codes of <= 8 bits, packed.packable) keeps them byte-packed as well: `words(layer_idx)`."""
        same_forward = self._mask_ref is not None and self._mask_ref() is attention_mask
        epoch, held, buf, wbuf = self._codes.get(layer_idx, (-1, 0, None, None))
        reuse = 0
        if (same_forward and buf is not None and epoch == self.epoch - 1 and buf.dtype == dtype
                and buf.shape[1:3] == key.shape[:2] and (wbuf is not None or not words)):
            reuse = min(self.prefix, held)
        K = key.shape[2]
        hashed = hash_keys(key[:, :, reuse:])  # (B, Hkv, K - reuse, L) int64
        buf = _append(buf, hashed.to(dtype).permute(3, 0, 1, 2), reuse, K)  # (L, B, Hkv, >= K)
        if words:
            from lsh_bitnet.attention.packed import word_major

            # always with spare capacity: the compiled count (packed.differing_tables) then sees one stride pattern
            # from the prefill on, not a contiguous buffer first and a recompilation at the first decode step
            wbuf = _append(wbuf, word_major(hashed), reuse, K, slack=True)  # (W, B, Hkv, >= K)
        else:
            wbuf = None
        self._last_words[layer_idx] = wbuf
        if same_forward:
            self._codes[layer_idx] = (self.epoch, K, buf, wbuf)
        return buf[..., :K], reuse

    def words(self, layer_idx: int, K: int) -> Optional[torch.Tensor]:
        """The packed codes (W, B, Hkv, K) int64 of the layer's last `codes(..., words=True)` call, else None."""
        wbuf = self._last_words.get(layer_idx)
        return None if wbuf is None else wbuf[..., :K]

    def clear(self) -> None:
        self.__init__()


def _append(buf: Optional[torch.Tensor], new: torch.Tensor, reuse: int, K: int, slack: bool = False,
            dim: int = -1) -> torch.Tensor:
    """buf holding `reuse` valid entries along `dim`, with `new` (K - reuse along dim) written after them: in place
    where it fits, else in a new buffer with room for as many keys again (decode steps append one each: amortised
    O(1) copies per key; a call that writes every key gets no spare room unless `slack`)."""
    dim = dim % new.dim()
    if reuse == 0 or buf.shape[dim] < K:
        room = 2 * K if reuse > 0 or slack else K
        grown = new.new_empty(new.shape[:dim] + (room,) + new.shape[dim + 1:])
        if reuse > 0:
            grown.narrow(dim, 0, reuse).copy_(buf.narrow(dim, 0, reuse))
        buf = grown
    buf.narrow(dim, reuse, K - reuse).copy_(new)
    return buf
