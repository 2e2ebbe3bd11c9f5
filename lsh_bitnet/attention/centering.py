"""Mean keys for hasher.center=calibration (SPEC section 7): compute once, cache beside the model, load.

mu[layer, kv_head] is the mean of the keys as the attention function sees them (after RoPE, at the
positions of eval.seq_len windows) over a calibration text that is never evaluated:
- `file`: hasher.calibration_path;
- `train_split`: the dataset's train split (wikitext2/103, enwik8), while the evaluation reads another split;
- `generated`: prompts of the synthetic generator under a seed of its own (CALIBRATION_SEED);
- `auto` (default): train_split where the dataset has one, else generated.
The cache file is keyed by the model (its config and converted weights) and the sha256 of the calibration
token ids, so the same calibration text gives the same file whatever is evaluated afterwards.
"""
import hashlib
import json
import logging
from pathlib import Path
from typing import Optional

import torch

from lsh_bitnet.attention.spec import CALIBRATION_CHARS_PER_TOKEN, calibration_file_bytes
from lsh_bitnet.errors import ConfigError

RECORDER = "lsh_bitnet_calibrate"
# Never an evaluation seed of the synthetic task (the run's seed, 1234 in FINDINGS): calibration samples only.
CALIBRATION_SEED = 977_003
log = logging.getLogger(__name__)


def calibration_text(hasher_cfg, dataset_cfg, cache_dir: Path) -> str:
    """The calibration text chosen by hasher.calibration_source (module docstring)."""
    from omegaconf import OmegaConf

    source = hasher_cfg.calibration_source
    from lsh_bitnet.tasks.base import dataset_option

    has_train = "train" in dataset_option(dataset_cfg.name).splits and not (  # the option has a train split, but a
        dataset_cfg.get("path") and Path(dataset_cfg.path).expanduser().is_file())  # file as path is the split itself
    if source == "auto":
        source = "train_split" if has_train else "generated"
    if source == "file":
        from lsh_bitnet.data.text import read_text_file

        return read_text_file(Path(hasher_cfg.calibration_path).expanduser(), key="hasher.calibration_path",
                              max_bytes=calibration_file_bytes(hasher_cfg.calibration_tokens))
    if source == "train_split":
        if not has_train:
            raise ConfigError(f"hasher.calibration_source=train_split: dataset={dataset_cfg.name} (path "
                              f"{dataset_cfg.get('path')}) has no separate train split; "
                              f"use hasher.calibration_source=file (hasher.calibration_path=...) or generated")
        if dataset_cfg.split == "train":
            raise ConfigError("hasher.calibration_source=train_split while dataset.split=train is evaluated: the "
                              "calibration text must never be evaluated; use calibration_source=file or generated")
        from lsh_bitnet.data import load_text

        train = OmegaConf.merge(dataset_cfg, {"split": "train", "max_chars": None})
        return load_text(train, cache_dir)
    from lsh_bitnet.data.synthetic import make_sample

    # ~200 tokens per prompt: 120 prompts cover the default calibration_tokens (8192) with room to spare
    return "\n\n".join(make_sample(CALIBRATION_SEED, i, 2, 4, 4).prompt for i in range(120))


def _recorder(sums: dict):
    """An attention function that adds up the keys it is given, then runs stock SDPA."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    def record(module, query, key, value, attention_mask, **kwargs):
        s, n = sums.get(module.layer_idx, (0.0, 0))
        sums[module.layer_idx] = (s + key.double().sum(dim=(0, 2)), n + key.shape[0] * key.shape[2])  # (Hkv, D)
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    return record


@torch.no_grad()
def mean_keys(model, ids: torch.Tensor, seq_len: int) -> torch.Tensor:
    """(n_layers, Hkv, D) float32 mean key over windows of seq_len tokens of ids (1-D long)."""
    from transformers.modeling_utils import AttentionInterface

    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    sums: dict = {}
    AttentionInterface.register(RECORDER, _recorder(sums))
    AttentionMaskInterface.register(RECORDER, sdpa_mask)
    previous = model.config._attn_implementation
    model.set_attn_implementation(RECORDER)
    try:
        device = next(model.parameters()).device
        n_windows = max(1, len(ids) // seq_len)  # a text shorter than one window is one shorter window
        for w in range(n_windows):
            window = ids[w * seq_len:(w + 1) * seq_len].to(device)
            model(input_ids=window[None], use_cache=False)
    finally:
        model.set_attn_implementation(previous or "sdpa")
    return torch.stack([(sums[i][0] / sums[i][1]).float().cpu() for i in sorted(sums)])


def calibration_centers(model, tokenizer, text: str, seq_len: int, n_tokens: int, model_key: dict,
                        cache_root: Optional[Path]) -> torch.Tensor:
    """Mean keys (n_layers, Hkv, D) of the first n_tokens of text, cached under cache_root when given."""
    text = text[:CALIBRATION_CHARS_PER_TOKEN * n_tokens]
    ids = torch.tensor(tokenizer(text)["input_ids"][:n_tokens], dtype=torch.long)
    key = {"model": model_key, "ids_sha256": hashlib.sha256(ids.numpy().tobytes()).hexdigest(), "seq_len": seq_len,
           "n_tokens": len(ids)}
    path = None
    if cache_root is not None:
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = Path(cache_root) / f"centers-{digest}.pt"
        if path.is_file() and (cached := _cached_centers(path, key)) is not None:
            return cached
    centers = mean_keys(model, ids, seq_len)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{id(centers)}")
        # the key as plain JSON values: torch.load(weights_only=True) refuses our config Enums
        torch.save({"centers": centers, "key": json.loads(json.dumps(key, sort_keys=True, default=str))}, tmp)
        tmp.replace(path)  # atomic: a concurrent job sees the whole file or none
    return centers


def _cached_centers(path: Path, key: dict) -> Optional[torch.Tensor]:
    """The centers in a cache file, or None when it is damaged or not the one asked for: then it is named in
    one log line and deleted, and the caller rebuilds it (a damaged file would otherwise fail every run)."""
    try:
        saved = torch.load(path, weights_only=True)
        centers = saved["centers"]
        if not (isinstance(centers, torch.Tensor) and centers.dim() == 3 and centers.is_floating_point()
                and bool(torch.isfinite(centers).all())):
            problem = "it holds no finite (layers, kv heads, head dim) tensor"
        elif saved.get("key") != json.loads(json.dumps(key, sort_keys=True, default=str)):
            problem = "its key is not the one its name stands for"
        else:
            return centers
    except Exception as exc:  # noqa: BLE001  (any unreadable file: truncated, overwritten, not a torch file)
        why = " ".join(str(exc).split())  # torch's unpickling errors run over several paragraphs
        problem = f"it cannot be loaded ({type(exc).__name__}: {why[:200]})"
    log.warning("[lsh-bitnet] calibration centres cache %s is damaged: %s; deleting and rebuilding it", path, problem)
    path.unlink(missing_ok=True)
    return None


def centers_for_run(cfg, loaded, cache_dir: Path) -> Optional[torch.Tensor]:
    """The runner's hook: calibration centers when a hashed variant runs with hasher.center=calibration."""
    from lsh_bitnet.registry import RULES

    if not RULES.get(cfg.attention.name).hashed or cfg.hasher.center != "calibration":
        return None
    from omegaconf import OmegaConf

    text = calibration_text(cfg.hasher, cfg.dataset, cache_dir)
    model_path = (loaded.info or {}).get("cache_path")
    root = Path(str(model_path) + ".centers") if model_path else Path(cache_dir) / "centers"  # beside the model
    model_key = {"model": OmegaConf.to_container(cfg.model, resolve=True), "weights": model_path}
    return calibration_centers(loaded.model, loaded.tokenizer, text, int(cfg.eval.seq_len),
                               int(cfg.hasher.calibration_tokens), model_key, root)
