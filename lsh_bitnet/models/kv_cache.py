"""A KV cache that grows in place: decode steps write their keys and values into spare capacity.

transformers' DynamicLayer appends with `torch.cat` at every step and layer, a copy of the whole cache: at 8192
tokens of SmolLM2-135M that is 377 MB copied per generated token, about half of a float32 decode step on CPU
(docs/BENCHMARKS.md, decode), the same for every attention rule. Sparse attention is judged on what it saves
per token, so a decode step here costs what a serving system's preallocated cache costs: one write of the new
keys and values. The layers hand out views of their buffers, so a cropped cache (a negative `crop`) is simply a
shorter view, and the next update writes over what was cropped.

    model.generate(ids, **cache_arg(model))      # or model(ids, use_cache=True, **cache_arg(model))
"""
from typing import Optional

import torch
from transformers.cache_utils import DynamicCache, DynamicLayer


class GrowableLayer(DynamicLayer):
    """DynamicLayer whose keys / values are views (B, H, n, D) of buffers with room for as many tokens again."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self._kbuf: Optional[torch.Tensor] = None  # (B, H, capacity, D)
        self._vbuf: Optional[torch.Tensor] = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        held = self.get_seq_length()
        n = held + key_states.shape[-2]
        if not self._holds(key_states) or self._kbuf.shape[-2] < n:
            self._grow(held, n, key_states, value_states)
        self._kbuf[..., held:n, :] = key_states
        self._vbuf[..., held:n, :] = value_states
        self.keys, self.values = self._kbuf[..., :n, :], self._vbuf[..., :n, :]
        return self.keys, self.values

    def _holds(self, key_states: torch.Tensor) -> bool:
        """Whether keys / values are still prefixes of the buffers (not replaced by a reorder, a batch selection,
        offloading or a copy), and the buffers can be written here (an inference tensor only in inference mode)."""
        kbuf = self._kbuf
        if kbuf is None or self.keys.dim() != 4:
            return False
        if kbuf.is_inference() and not torch.is_inference_mode_enabled():
            return False
        return (self.keys.data_ptr() == kbuf.data_ptr() and self.values.data_ptr() == self._vbuf.data_ptr()
                and self.keys.stride() == kbuf.stride() and self.values.stride() == self._vbuf.stride()
                and kbuf.shape[:2] == key_states.shape[:2] and kbuf.dtype == key_states.dtype
                and kbuf.device == key_states.device)

    def _grow(self, held: int, n: int, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        """New buffers of capacity 2 n holding the first `held` cached tokens: amortised O(1) copies per token."""
        B, H, _, Dk = key_states.shape
        kbuf = key_states.new_empty(B, H, 2 * n, Dk)
        vbuf = value_states.new_empty(B, H, 2 * n, value_states.shape[-1])
        if held:
            kbuf[..., :held, :] = self.keys
            vbuf[..., :held, :] = self.values
        self._kbuf, self._vbuf = kbuf, vbuf

    def reset(self) -> None:
        self._kbuf = self._vbuf = None
        super().reset()


def growable_cache(model) -> DynamicCache:
    """A DynamicCache for `model` whose full-attention layers grow in place (sliding-window layers stay as
    transformers builds them)."""
    cache = DynamicCache(config=model.config.get_text_config(decoder=True))
    cache.layers = [GrowableLayer() if type(layer) is DynamicLayer else layer for layer in cache.layers]
    if hasattr(cache, "layer_class_to_replicate") and cache.layer_class_to_replicate is DynamicLayer:
        cache.layer_class_to_replicate = GrowableLayer  # a cache built without layers makes them on first use
    return cache


def cache_arg(model) -> dict:
    """{name: a new growable cache} for model.generate / forward, under the name the installed transformers takes."""
    from lsh_bitnet.tasks._synthetic import cache_kwarg

    return {cache_kwarg(model): growable_cache(model)}
