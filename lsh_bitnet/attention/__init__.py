"""Sparse (LSH) attention for HF causal LMs.

The package imports lazily (PEP 562): `lsh_bitnet.attention.checks` and `.spec` need no torch, so the
config checks run before torch and transformers load. Importing any public name below (or
`lsh_bitnet.attention.registry` itself) registers the "lsh_bitnet" attention and mask functions with
transformers' AttentionInterface; `patch_model` does so before it switches a model over.
"""
import importlib

# public name -> submodule that defines it
_EXPORTS = {
    "AttentionPatch": "patch", "patch_model": "patch",
    "validate_attention_config": "checks",
    "CostMeter": "cost", "DiagnosticsMeter": "diagnostics",
    "BitSamplingHasher": "hashers", "Hasher": "hashers", "SimHashHasher": "hashers", "build_hasher": "hashers",
    "LayerCost": "kernel", "sparse_attention": "kernel", "sparse_attention_counts": "kernel",
    "SparseSpec": "spec",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lsh_bitnet.attention' has no attribute {name!r}")
    importlib.import_module("lsh_bitnet.attention.registry")  # the AttentionInterface registration
    value = getattr(importlib.import_module(f"lsh_bitnet.attention.{_EXPORTS[name]}"), name)
    globals()[name] = value  # later lookups skip __getattr__
    return value
