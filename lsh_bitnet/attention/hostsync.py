"""Host syncs a CUDA run would make, counted on any device (a proxy for torch.cuda.set_sync_debug_mode).

On a GPU the host waits for the device whenever it reads a value (bool(t), int(t), t.item(), t.tolist()) or runs
an op whose output size depends on the data (nonzero, boolean indexing, unique, bincount, repeat_interleave
without output_size): each costs a pipeline drain, ~10-50 us, and at thousands per forward the GPU idles.
`HostSyncCounter` is a TorchFunctionMode that counts those calls, so the CPU tests can hold the attention code
to a budget of syncs per layer that benchmarks/gpu_check.py then measures on CUDA with the real debug mode.
It also counts `torch.tensor(..., device=...)`: a host-to-device copy from pageable memory, which waits too.
It cannot see `.to(device)` copies (on a CPU run source and target are the same device).
"""
import os
from collections import Counter
from typing import Optional

import torch
from torch.overrides import TorchFunctionMode

# Device types whose attention code avoids host syncs: the selection code takes sync-free ways there (a fixed
# selection depth, the tie pass on every row, dense estimator weights, dense collision counts, no decode gather),
# which compute the same values as the CPU ways. Tests add "cpu" to run those ways here.
# LSH_BITNET_SYNC_FREE_CPU=1 does so for a whole process, e.g. to run the reference tests through the CUDA ways:
#   LSH_BITNET_SYNC_FREE_CPU=1 pytest tests/test_attention_reference.py tests/test_topk.py tests/test_random_k.py
SYNC_FREE_DEVICES = {"cuda"} | ({"cpu"} if os.environ.get("LSH_BITNET_SYNC_FREE_CPU") == "1" else set())


def sync_free(device: torch.device) -> bool:
    """Whether code on this device must not make the host wait (see SYNC_FREE_DEVICES)."""
    return device.type in SYNC_FREE_DEVICES

# The host reads a value.
_TO_HOST = {torch.Tensor.__bool__, torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__,
            torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.numpy}
# The output's size depends on the data: CUDA copies a count to the host before allocating it.
_DATA_SIZED = {torch.nonzero, torch.Tensor.nonzero, torch.argwhere, torch.Tensor.argwhere, torch.masked_select,
               torch.Tensor.masked_select, torch.unique, torch.Tensor.unique, torch.unique_consecutive,
               torch.Tensor.unique_consecutive, torch.bincount, torch.Tensor.bincount, torch.equal,
               torch.Tensor.equal}
_INDEXING = {torch.Tensor.__getitem__, torch.Tensor.__setitem__, torch.Tensor.index_put_, torch.Tensor.index_put}


def _bool_index(index) -> bool:
    items = index if isinstance(index, (tuple, list)) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool and i.dim() > 0 for i in items)


def _name(func) -> str:
    return getattr(func, "__qualname__", None) or getattr(func, "__name__", None) or str(func)


class HostSyncCounter(TorchFunctionMode):
    """with HostSyncCounter() as syncs: ...; syncs.total, syncs.by_op (op name -> count)."""

    def __init__(self):
        super().__init__()
        self.by_op: Counter = Counter()
        self.paused = False  # set around calls that are not to be counted (e.g. a compiled kernel's own code)

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def _why(self, func, args, kwargs) -> Optional[str]:
        if func in _TO_HOST or func in _DATA_SIZED:
            return _name(func)
        if func in _INDEXING and len(args) > 1 and _bool_index(args[1]):
            return f"{_name(func)}[bool]"
        if func in (torch.repeat_interleave, torch.Tensor.repeat_interleave):
            repeats = args[1] if len(args) > 1 else kwargs.get("repeats")
            if isinstance(args[0], torch.Tensor) and args[0].dtype != torch.bool and len(args) == 1 \
                    and "repeats" not in kwargs:
                repeats = args[0]  # torch.repeat_interleave(counts): the counts are the repeats
            if isinstance(repeats, torch.Tensor) and repeats.numel() > 1 and kwargs.get("output_size") is None:
                return "repeat_interleave(tensor)"
        if func is torch.where and len(args) == 1:
            return "where(cond)"
        if func is torch.tensor and kwargs.get("device") is not None and not (
                isinstance(args[0], (list, tuple)) and len(args[0]) == 0):  # an empty tensor copies nothing
            return "tensor(host data, device=)"
        return None

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        why = None if self.paused else self._why(func, args, kwargs)
        if why is not None:
            self.by_op[why] += 1
        return func(*args, **kwargs)
