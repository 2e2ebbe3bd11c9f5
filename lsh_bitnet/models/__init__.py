"""Model loading: `load_model(cfg.model, cache_dir)` for every `model=` option, plus a per-process cache.

    smollm2_135m / any gguf_file  -> models.gguf   (GGUF -> safetensors cache, "gguf-convert" / "converted-cache")
    tiny_bitnet                   -> models.tiny   (seeded BitNet in 2B4T format, "tiny-build" / "tiny-cache")
    bitnet_b158_2b4t / hf / other -> models.hub    (local dir or hub id, "local" / "hub")

Every loaded model is in eval mode with requires_grad off, in the requested dtype and device, and its
tokenizer has a pad token and pads on the left (generation appends on the right).
Importing this package is cheap: transformers is imported only when a model is loaded.
"""
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf

from lsh_bitnet.models.checks import TINY_NAME, as_config, check_model_config, resolve_device, resolve_dtype

__all__ = ["LoadedModel", "load_model", "load_model_cached", "clear_model_cache", "check_model_config"]


@dataclass
class LoadedModel:
    model: Any  # PreTrainedModel, eval mode, requires_grad False
    tokenizer: Any  # PreTrainedTokenizerBase, pad token set, padding_side "left"
    info: Dict[str, Any] = field(default_factory=dict)


def _finalize(model, tokenizer, dtype, device: str):
    import torch

    # Pre-quantized BitNet loads keep non-quantized tensors (norms, embeddings) in the checkpoint's dtype
    # while the AutoBitLinear layers take the requested one, and the mix fails in the first matmul; a
    # cast is exact for the ternary weights, so the layers stay as they are.
    if any(p.is_floating_point() and p.dtype != dtype for p in model.parameters()):
        model.to(dtype)
    target, current = torch.device(device), next(model.parameters()).device
    if current.type != target.type or (target.index is not None and current.index != target.index):
        model.to(target)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError("the tokenizer has neither a pad nor an eos token: use a model whose tokenizer defines eos")
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation appends on the right: pads must not sit between prompt and answer
    if getattr(model, "generation_config", None) is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


def describe_model(cfg, source, dtype: str) -> str:
    """What ran, for tables and plot titles: `SmolLM2-135M-Instruct (GGUF Q4_1, de-quantised to float32)`.

    The option name (smollm2_135m) hides that the default is the Instruct model, 4-bit."""
    if cfg.name == TINY_NAME:
        return f"tiny_bitnet (random init, seed {cfg.get('tiny_seed')}, {dtype})"
    if cfg.get("gguf_file"):
        stem, _, quant = Path(str(cfg.gguf_file)).stem.rpartition(".")
        if not stem:  # no quantisation suffix in the file name
            stem, quant = quant, "unknown quantisation"
        return f"{stem} (GGUF {quant}, de-quantised to {dtype})"
    return f"{str(source).rstrip('/').split('/')[-1] if Path(str(source)).exists() else source} ({dtype})"


def _info(cfg, model, source, loaded_from: str, load_s: float, cache_path) -> Dict[str, Any]:
    from transformers.integrations.bitnet import AutoBitLinear

    config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    n_heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_heads
    param = next(model.parameters())
    return {
        "name": cfg.name, "name_or_path": str(source), "model_class": type(model).__name__,
        "description": describe_model(cfg, source, str(param.dtype).replace("torch.", "")),
        "n_layers": config.num_hidden_layers, "n_heads": n_heads,
        "n_kv_heads": getattr(config, "num_key_value_heads", None) or n_heads, "head_dim": head_dim,
        "n_params": sum(p.numel() for p in model.parameters()),
        "n_autobitlinear": sum(isinstance(m, AutoBitLinear) for m in model.modules()),
        "dtype": str(param.dtype).replace("torch.", ""), "device": str(param.device),
        "load_s": load_s, "loaded_from": loaded_from, "cache_path": str(cache_path) if cache_path else None,
    }


def load_model(model_cfg: Any, cache_dir: Path) -> LoadedModel:
    """Load `cfg.model` (checked first); `cache_dir` holds converted GGUF and tiny models under models/."""
    import torch

    cfg = as_config(model_cfg)
    check_model_config(cfg)
    started = time.perf_counter()
    device = resolve_device(str(cfg.device))
    dtype = getattr(torch, resolve_dtype(cfg.dtype, device))
    device_map = None if device == "cpu" else device  # load straight onto the GPU: 2B4T unpacked is ~5 GB
    cache_path = None
    if cfg.name == TINY_NAME:
        from lsh_bitnet.models.tiny import load_tiny

        model, tokenizer, loaded_from, cache_path = load_tiny(cfg, Path(cache_dir), dtype, device_map)
        source = cache_path
    elif cfg.get("gguf_file"):
        from lsh_bitnet.models.checks import gguf_path
        from lsh_bitnet.models.gguf import load_gguf

        model, tokenizer, loaded_from, cache_path = load_gguf(cfg, Path(cache_dir), dtype, device_map)
        source = gguf_path(cfg)
    else:
        from lsh_bitnet.models.hub import load_pretrained

        model, tokenizer, loaded_from, source = load_pretrained(cfg, dtype, device_map)
    _finalize(model, tokenizer, dtype, device)
    info = _info(cfg, model, source, loaded_from, time.perf_counter() - started, cache_path)
    if getattr(model.config, "model_type", None) == "bitnet" and info["n_autobitlinear"] == 0:
        warnings.warn(f"model.name_or_path={cfg.name_or_path!r} is a BitNet model without AutoBitLinear layers "
                      f"(no bitnet quantization_config): its linears run unquantised, unlike BitNet inference")
    return LoadedModel(model=model, tokenizer=tokenizer, info=info)


# One load per process and model config: an in-process sweep reuses the model (the runner patches
# attention before a job and unpatches it after).
_LOADED: Dict[str, LoadedModel] = {}


def _cache_key(cfg, cache_dir: Path) -> str:
    return json.dumps({"model": OmegaConf.to_container(cfg, resolve=True), "cache_dir": str(Path(cache_dir).expanduser().resolve())},
                      sort_keys=True, default=str)


def load_model_cached(model_cfg: Any, cache_dir: Path) -> LoadedModel:
    """load_model once per process and config. The first call's info has the real `load_s` and
    `model_cached: false`; later calls share model and tokenizer and say `load_s: 0.0, model_cached: true`,
    so the jobs of an in-process sweep do not all report the first job's load time as their own."""
    cfg = as_config(model_cfg)
    key = _cache_key(cfg, cache_dir)
    if key not in _LOADED:
        _LOADED[key] = load_model(cfg, cache_dir)
        _LOADED[key].info["model_cached"] = False
        return _LOADED[key]
    first = _LOADED[key]
    return LoadedModel(model=first.model, tokenizer=first.tokenizer,
                       info={**first.info, "load_s": 0.0, "model_cached": True})


def is_loaded(model_cfg: Any, cache_dir: Path) -> bool:
    """Whether load_model_cached would reuse a model this process already holds."""
    return _cache_key(as_config(model_cfg), cache_dir) in _LOADED


def clear_model_cache() -> None:
    """Forget the models held by load_model_cached (frees their memory once no caller holds them)."""
    _LOADED.clear()
