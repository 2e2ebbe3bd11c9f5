"""GGUF checkpoints (the offline default SmolLM2-135M-Instruct): convert once, then load safetensors.

De-quantising the Q4_1 GGUF takes ~20 s per load; the converted float32 model and its tokenizer are
cached with save_pretrained, and later loads come from there.
"""
import time
from pathlib import Path
from typing import Tuple

import torch
import transformers
from omegaconf import DictConfig
from transformers import AutoModelForCausalLM, AutoTokenizer

from lsh_bitnet.models import cache
from lsh_bitnet.models.checks import gguf_cache_key, gguf_path

# Converted weights are cached in full precision; the requested dtype is applied when loading.
CONVERT_DTYPE = torch.float32


def gguf_cache_entry(cfg: DictConfig, cache_dir: Path) -> Path:
    return cache.entry_dir(cache_dir, cfg.name, gguf_cache_key(cfg))


def _drop_gguf_quantizer(model) -> None:
    """A GGUF-loaded model is flagged as quantized (so save_pretrained refuses it) although its weights
    are already de-quantised floats; drop the flag so it saves as a plain checkpoint."""
    model.hf_quantizer = None
    for config in (model.config, getattr(model, "generation_config", None)):
        if config is not None and hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")


def convert_gguf(cfg: DictConfig, entry: Path):
    """De-quantise the GGUF file, publish the safetensors cache entry, return (model, tokenizer)."""
    path = gguf_path(cfg)
    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=CONVERT_DTYPE)
    _drop_gguf_quantizer(model)
    meta = {"source": str(path), "fingerprint": cache.file_fingerprint(path), "convert_s": time.perf_counter() - started,
            "transformers": transformers.__version__, "torch": torch.__version__}
    with cache.publish(entry, meta) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return model, tokenizer


def load_gguf(cfg: DictConfig, cache_dir: Path, dtype: torch.dtype, device_map) -> Tuple[object, object, str, Path]:
    """Returns (model, tokenizer, loaded_from, cache entry)."""
    entry = gguf_cache_entry(cfg, cache_dir)
    if cache.check_or_discard(entry):
        tokenizer = AutoTokenizer.from_pretrained(entry)
        model = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, device_map=device_map)
        return model, tokenizer, "converted-cache", entry
    model, tokenizer = convert_gguf(cfg, entry)
    return model, tokenizer, "gguf-convert", entry
