"""SparseSpec: what the attention kernel needs to know about a variant, built from the typed config.

One source of defaults: the schema dataclasses in lsh_bitnet/config.py. A plain dict or a DictConfig is
merged into the variant's schema (`typed_attention`), so a mistyped key fails there with OmegaConf naming
it, and the spec's own field defaults are read off the schemas rather than re-declared.
"""
from dataclasses import dataclass
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.config import (SCHEMAS, AttentionConfig, HasherConfig, LSHAttentionConfig, LSHForestAttentionConfig,
                               LSHTopKAttentionConfig)
from lsh_bitnet.errors import ConfigError

ATTENTION_SCHEMAS = SCHEMAS["attention"]
VARIANTS = tuple(ATTENTION_SCHEMAS)
HASHED_VARIANTS = ("lsh", "lsh_forest", "lsh_topk")
ESTIMATORS = ("softmax", "sampling")
TOPK_SCORES = ("collisions", "soft")
CENTERS = ("none", "calibration", "prompt")
CALIBRATION_SOURCES = ("auto", "train_split", "file", "generated")
# Calibration reads this many characters per calibration token (a token is at least one character for these
# tokenizers: ample), so a 500 MB train split is not tokenised whole, and a calibration file is read only that
# far: 4 bytes per character at most in UTF-8.
CALIBRATION_CHARS_PER_TOKEN = 16


def calibration_file_bytes(n_tokens: int) -> int:
    return 4 * CALIBRATION_CHARS_PER_TOKEN * int(n_tokens)


def _name(cfg: Any) -> Optional[str]:
    if cfg is None:
        return None
    return cfg.get("name") if isinstance(cfg, (dict, DictConfig)) else getattr(cfg, "name", None)


def _typed(cfg: Any, schema: type):
    if isinstance(cfg, schema):
        return cfg
    if isinstance(cfg, DictConfig):  # resolve against the whole config first: hasher.seed may be ${seed}
        cfg = OmegaConf.to_container(cfg, resolve=True)
    node = OmegaConf.merge(OmegaConf.structured(schema), cfg if not hasattr(cfg, "__dataclass_fields__")
                           else OmegaConf.structured(cfg))
    return OmegaConf.to_object(node)


def typed_attention(cfg: Any) -> AttentionConfig:
    """dict | DictConfig | schema dataclass -> the variant's schema dataclass (defaults filled in)."""
    name = _name(cfg)
    if name not in ATTENTION_SCHEMAS:
        raise ConfigError(f"attention={name!r} is not known: allowed {list(VARIANTS)}")
    return _typed(cfg, ATTENTION_SCHEMAS[name])


def typed_hasher(cfg: Any) -> HasherConfig:
    """dict | DictConfig | HasherConfig -> HasherConfig (defaults filled in); None stays None."""
    if cfg is None:
        return None
    if _name(cfg) is None:
        raise ConfigError("hasher.name is missing: set hasher=simhash or hasher=bit_sampling")
    return _typed(cfg, HasherConfig)


@dataclass
class SparseSpec:
    variant: str = "full"
    include_self: bool = AttentionConfig.include_self
    sink_tokens: int = AttentionConfig.sink_tokens
    local_window: int = AttentionConfig.local_window
    n_tables: int = LSHAttentionConfig.n_tables
    min_collisions: int = LSHAttentionConfig.min_collisions
    n_trees: int = LSHForestAttentionConfig.n_trees
    max_depth: int = LSHForestAttentionConfig.max_depth
    min_candidates: int = LSHForestAttentionConfig.min_candidates
    k: Optional[int] = None
    fraction: Optional[float] = None
    score: str = LSHTopKAttentionConfig.score
    estimator: str = AttentionConfig.estimator
    query_chunk: int = AttentionConfig.query_chunk
    engine: str = AttentionConfig.engine  # auto | masked | flex (SPEC section 8): how it is computed, never what

    @classmethod
    def from_config(cls, attention_cfg) -> "SparseSpec":
        cfg = typed_attention(attention_cfg)
        values = {f: getattr(cfg, f) for f in cls.__dataclass_fields__ if f != "variant" and hasattr(cfg, f)}
        return cls(variant=cfg.name, **values)

    @property
    def hashed(self) -> bool:
        return self.variant in HASHED_VARIANTS

    @property
    def hash_shape(self):
        """(n_bits, n_tables) of this variant's hasher; the forest's trees have max_depth bits."""
        return (self.max_depth, self.n_trees) if self.variant == "lsh_forest" else (None, self.n_tables)
