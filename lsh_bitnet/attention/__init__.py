"""Sparse (LSH) attention for HF causal LMs. Importing this package registers the "lsh_bitnet"
attention and mask functions with transformers."""
from lsh_bitnet.attention import registry  # noqa: F401  (registers at import time)
from lsh_bitnet.attention.cost import CostMeter
from lsh_bitnet.attention.diagnostics import DiagnosticsMeter
from lsh_bitnet.attention.hashers import BitSamplingHasher, Hasher, SimHashHasher, build_hasher
from lsh_bitnet.attention.kernel import LayerCost, SparseSpec, sparse_attention, sparse_attention_counts
from lsh_bitnet.attention.patch import AttentionPatch, patch_model, validate_attention_config

__all__ = [
    "AttentionPatch", "BitSamplingHasher", "CostMeter", "DiagnosticsMeter", "Hasher", "LayerCost", "SimHashHasher",
    "SparseSpec", "build_hasher", "patch_model", "sparse_attention", "sparse_attention_counts",
    "validate_attention_config",
]
