"""SparseSpec: one rule's settings as the kernel reads them, built from the rule's own schema.

One source of defaults: each rule's schema dataclass (lsh_bitnet/attention/rules/<name>.py), each hasher's
(lsh_bitnet/attention/hashers/<name>.py). A plain dict, a DictConfig or a dataclass is merged into the schema
that its `name` selects (`typed_attention`, `typed_hasher`), so a mistyped key or a value outside a closed set
fails there with a ConfigError naming the key.
"""
import dataclasses
from enum import Enum
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, ValidationError

from lsh_bitnet.config import AttentionConfig, HasherConfig
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.registry import HASHERS, RULES

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


def _typed(cfg: Any, schema: type, group: str):
    """cfg merged into `schema` (defaults filled in, Enums converted); a key the schema lacks or a bad value is a
    ConfigError naming `group.key`."""
    if isinstance(cfg, schema):
        return cfg
    if isinstance(cfg, DictConfig):  # resolve against the whole config first: hasher.seed may be ${seed}
        cfg = OmegaConf.to_container(cfg, resolve=True)
    elif dataclasses.is_dataclass(cfg):  # e.g. the HasherConfig base with a name: its fields, into the schema
        cfg = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg)}
    try:
        return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), cfg))
    except (ConfigKeyError, ValidationError) as exc:
        raise ConfigError(_schema_error(exc, schema, group, cfg)) from None


def _schema_error(exc, schema: type, group: str, cfg: Any) -> str:
    key = str(getattr(exc, "key", None) or getattr(exc, "full_key", "") or "").split(".")[-1]
    fields = {f.name: f for f in dataclasses.fields(schema)}
    where = f"{group}={_name(cfg)}"
    if key not in fields:
        return f"{group}.{key} is not a key of {where}: its keys are {sorted(fields)}"
    kind = fields[key].type
    if isinstance(kind, type) and issubclass(kind, Enum):
        value = cfg.get(key) if isinstance(cfg, dict) else getattr(cfg, key, None)
        return f"{group}.{key}={value!r} is not known: allowed {[m.value for m in kind]}"
    return f"{group}.{key}: {getattr(exc, 'msg', exc)} ({where})"


def typed_attention(cfg: Any) -> AttentionConfig:
    """dict | DictConfig | schema dataclass -> the rule's schema dataclass (defaults filled in)."""
    return _typed(cfg, RULES.get(_name(cfg)).schema, "attention")


def typed_hasher(cfg: Any) -> Optional[HasherConfig]:
    """dict | DictConfig | dataclass -> the hasher's schema dataclass (defaults filled in); None stays None."""
    if cfg is None:
        return None
    name = _name(cfg)
    if name is None:
        raise ConfigError(f"hasher.name is missing: set hasher= one of {HASHERS.names()}")
    return _typed(cfg, HASHERS.get(name).schema, "hasher")


class SparseSpec:
    """The rule `variant` (`.rule`, from lsh_bitnet.registry.RULES) and its schema's values as attributes.

        SparseSpec("lsh", n_tables=2, sink_tokens=4)    SparseSpec.from_config(cfg.attention)

    A knob the rule's schema does not declare raises (ConfigError), at construction and on assignment."""

    def __init__(self, variant: str = "full", **knobs):
        self._fill(typed_attention({**knobs, "name": variant}))

    @classmethod
    def from_config(cls, attention_cfg) -> "SparseSpec":
        spec = cls.__new__(cls)
        spec._fill(typed_attention(attention_cfg))
        return spec

    def _fill(self, cfg) -> None:
        self.__dict__["variant"] = cfg.name
        for f in dataclasses.fields(cfg):
            if f.name != "name":
                self.__dict__[f.name] = getattr(cfg, f.name)

    def __setattr__(self, key: str, value: Any) -> None:
        if key not in self.__dict__ or key == "variant":
            raise ConfigError(f"attention={self.variant} has no knob {key!r}: its keys are "
                              f"{sorted(k for k in self.__dict__ if k != 'variant')}")
        self.__dict__[key] = value

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, SparseSpec) and self.__dict__ == other.__dict__

    def __repr__(self) -> str:
        return "SparseSpec(" + ", ".join(f"{k}={v!r}" for k, v in self.__dict__.items()) + ")"

    @property
    def rule(self):
        return RULES.get(self.variant)

    @property
    def hashed(self) -> bool:
        return self.rule.hashed

    @property
    def hash_shape(self):
        """(n_bits, n_tables) of this rule's hasher; n_bits None = hasher.n_bits (the forest: max_depth, n_trees)."""
        return self.rule.hash_shape(self)
