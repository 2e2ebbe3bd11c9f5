"""Datasets: raw text of perplexity splits, token streams, and the synthetic New York task.

`check_dataset_config` and `load_text` import no torch: config validation stays fast. The torch
parts (`token_stream`, `windows`, `TokenStream`) are imported on first use.
"""
from lsh_bitnet.data.text import _get, load_text
from lsh_bitnet.data.text import check_dataset_config as _check_text_or_synthetic

_LAZY = {"token_stream": "tokens", "windows": "tokens", "TokenStream": "tokens",
         "make_samples": "synthetic", "SyntheticSample": "synthetic",
         "make_passkey_samples": "passkey", "PasskeySample": "passkey"}


def check_dataset_config(dataset_cfg) -> None:
    """Cheap checks (no loading) for every dataset; raises ValueError naming the key."""
    if _get(dataset_cfg, "name") == "lm_eval":  # nothing here: metric.tasks names the documents
        return
    if _get(dataset_cfg, "name") == "passkey":
        from lsh_bitnet.data.passkey import check_passkey_config

        check_passkey_config(dataset_cfg)
        return
    _check_text_or_synthetic(dataset_cfg)


__all__ = ["check_dataset_config", "load_text", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"lsh_bitnet.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'lsh_bitnet.data' has no attribute {name!r}")
