"""HF-format checkpoints (BitNet 2B4T, any AutoModelForCausalLM): a local directory or a hub id.

BitNet checkpoints carry their own `quantization_config` (autobitlinear, offline, packed ternary
weights); it is passed through untouched so the linear layers stay AutoBitLinear with ternary weights.

A hub id with no network costs ~25 s of retries inside huggingface_hub before it fails; a one-shot
probe of the endpoint (a few ms when DNS fails) decides instead, and an unreachable hub then loads
from the local HF cache only (`local_files_only`) or fails at once with how to get a local copy.
"""
from pathlib import Path
from typing import Tuple

import torch
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from lsh_bitnet.models.checks import hub_offline_by_env, hub_reachable  # noqa: F401  (torch-free probe)


class ModelLoadError(OSError):
    """A model that cannot be loaded here; the message names model.name_or_path and the fix."""


def hub_cached(repo_id: str, revision) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str)


def _download_hint(source: str) -> str:
    return (f"where the hub is reachable run `hf download {source} --local-dir DIR` (older huggingface_hub: "
            f"`huggingface-cli download {source} --local-dir DIR`), copy DIR to this machine, then run with "
            f"model.name_or_path=DIR")


def load_pretrained(cfg: DictConfig, dtype: torch.dtype, device_map) -> Tuple[object, object, str, str]:
    """Returns (model, tokenizer, loaded_from, resolved source)."""
    source = str(cfg.name_or_path)
    local = Path(source).expanduser()
    local_files_only, loaded_from = False, "hub"
    if local.is_dir():
        source, loaded_from = str(local.resolve()), "local"
    elif hub_offline_by_env() or not hub_reachable():
        if not hub_cached(source, cfg.revision):
            why = "HF_HUB_OFFLINE is set" if hub_offline_by_env() else "the Hugging Face hub cannot be reached"
            raise ModelLoadError(
                f"model.name_or_path={source!r} is not a local directory, {why}, and the model is not in the "
                f"local HF cache: {_download_hint(source)}")
        local_files_only = True  # skip the hub's retry loop: the cached copy is all we can get
    common = dict(revision=cfg.revision, trust_remote_code=cfg.trust_remote_code, local_files_only=local_files_only)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, **common)
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, device_map=device_map, **common)
    except OSError as exc:
        raise ModelLoadError(f"model.name_or_path={cfg.name_or_path!r} could not be loaded ({exc}); "
                             f"if the files are incomplete, {_download_hint(cfg.name_or_path)}") from exc
    return model, tokenizer, loaded_from, source
