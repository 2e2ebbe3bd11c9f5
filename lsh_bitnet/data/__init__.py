"""Datasets: raw text of perplexity splits, token streams, and the synthetic New York task.

`check_dataset_config` and `load_text` import no torch: config validation stays fast. The torch
parts (`token_stream`, `windows`, `TokenStream`) are imported on first use.
"""
from lsh_bitnet.config import config_value
from lsh_bitnet.data.text import load_text

_LAZY = {"token_stream": "tokens", "windows": "tokens", "TokenStream": "tokens",
         "make_samples": "synthetic", "SyntheticSample": "synthetic",
         "make_passkey_samples": "passkey", "PasskeySample": "passkey"}


def check_dataset_config(dataset_cfg) -> None:
    """Cheap checks (no loading) of any dataset, by its registered option (lsh_bitnet.tasks.base.DatasetOption);
    raises ValueError naming the key (a ConfigError naming the known options for an unknown name)."""
    from lsh_bitnet.tasks.base import dataset_option

    dataset_option(config_value(dataset_cfg, "name")).check_config(dataset_cfg)


__all__ = ["check_dataset_config", "load_text", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"lsh_bitnet.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lsh_bitnet.data' has no attribute {name!r}")
