"""Attention rules (attention=<name>): one module per rule, each registering its Rule class with
`@RULES.register` on import (lsh_bitnet.registry imports every module here except `_x` and `base`).

A rule module declares everything about its rule once (rules/base.py lists what): its schema, checks,
engines, candidates and counts. Rule modules import no torch at import time: the config checks ask them
before torch loads; their methods import torch (and the helpers collisions.py, topk.py) when they run.
"""
# First, before any rule module: the schema bases. config.py lists this registry, so importing it here means
# every rule module is imported (by the registry) while config.py's bases already exist, whichever module a
# caller imports first.
from lsh_bitnet import config as _config  # noqa: F401
