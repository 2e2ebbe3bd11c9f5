"""Hash families (hasher=<name>): one module per family, each registering its Hasher class with
`@HASHERS.register` on import (lsh_bitnet.registry imports every module here except `_x` and `base`).
base.py says what a family declares. Torch-free at import: methods import torch.
"""
# First, before any hasher module: the schema bases (see lsh_bitnet/attention/rules/__init__.py for why).
from lsh_bitnet import config as _config  # noqa: F401
from lsh_bitnet.attention.hashers.base import MAX_BITS, Hasher, build_hasher, layer_seed, table_generators  # noqa: F401
from lsh_bitnet.attention.hashers.bit_sampling import BitSamplingHasher  # noqa: F401
from lsh_bitnet.attention.hashers.hadamard import HadamardHasher  # noqa: F401
from lsh_bitnet.attention.hashers.simhash import SimHashHasher  # noqa: F401
from lsh_bitnet.registry import HASHERS  # noqa: F401  (name -> Hasher class, plug-ins included)
