"""tiny_bitnet: a seeded random BitNetForCausalLM at toy size, stored exactly like the 2B4T checkpoint.

The 2B4T checkpoint holds ternary weights packed 4 per byte plus one `weight_scale` per projection,
with quantization_config {bitnet, autobitlinear, offline}. The tiny model is written in that same
format, so loading it runs the same from_pretrained path (BitNet quantizer -> AutoBitLinear layers,
BitNetDeserialize unpacking) as the real model. Weights are the absmean ternarisation of the random
init, i.e. what AutoBitLinear's online quantisation of those weights would compute.
"""
from pathlib import Path
from typing import Dict

import torch
from omegaconf import DictConfig
from safetensors.torch import save_file

from lsh_bitnet.models import cache
from lsh_bitnet.models.checks import TINY_MAX_POSITIONS, TINY_SPECIALS

TINY_CACHE_FORMAT = 1  # bumped when the stored model or tokenizer changes
# 2B4T values that do not scale with model size.
ROPE_THETA = 500000.0
RMS_NORM_EPS = 1e-5
MAX_POSITIONS = TINY_MAX_POSITIONS
BITNET_QUANT_CONFIG = {"quant_method": "bitnet", "linear_class": "autobitlinear", "quantization_mode": "offline"}
# absmean scale floor, as in transformers' WeightQuant: an all-zero matrix must not divide by zero.
MIN_SCALE = 1e-5
TINY_FIELDS = ("tiny_hidden_size", "tiny_layers", "tiny_heads", "tiny_kv_heads", "tiny_intermediate_size",
               "tiny_vocab_size", "tiny_seed")


def _bytes_to_unicode() -> Dict[int, str]:
    """GPT-2's byte -> printable character map, which the ByteLevel pre-tokenizer applies to text."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def byte_level_tokenizer():
    """Specials at ids 0..2, byte b at id 3 + b; no merges, so every UTF-8 text round-trips exactly."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(TINY_SPECIALS)}
    vocab.update({ch: len(TINY_SPECIALS) + b for b, ch in _bytes_to_unicode().items()})
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(list(TINY_SPECIALS))
    bos, eos, pad = TINY_SPECIALS
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token=bos, eos_token=eos, pad_token=pad,
                                   model_max_length=MAX_POSITIONS)


def tiny_params(cfg: DictConfig) -> Dict[str, int]:
    return {key: int(cfg[key]) for key in TINY_FIELDS}


def tiny_cache_entry(cfg: DictConfig, cache_dir: Path) -> Path:
    return cache.entry_dir(cache_dir, cfg.name, {"format": TINY_CACHE_FORMAT, **tiny_params(cfg)})


def tiny_bitnet_config(cfg: DictConfig):
    from transformers import BitNetConfig

    bos, eos, pad = range(len(TINY_SPECIALS))
    return BitNetConfig(
        vocab_size=cfg.tiny_vocab_size, hidden_size=cfg.tiny_hidden_size, intermediate_size=cfg.tiny_intermediate_size,
        num_hidden_layers=cfg.tiny_layers, num_attention_heads=cfg.tiny_heads, num_key_value_heads=cfg.tiny_kv_heads,
        hidden_act="relu2", max_position_embeddings=MAX_POSITIONS, rms_norm_eps=RMS_NORM_EPS,
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        tie_word_embeddings=True, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad)


def ternary_state_dict(model) -> Dict[str, torch.Tensor]:
    """The model's state dict in 2B4T's stored form: decoder projections as packed ternary + scale."""
    from transformers.integrations.bitnet import pack_weights

    out = {}
    for key, value in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # tied to embed_tokens, stored once
        if key.startswith("model.layers.") and key.endswith("_proj.weight"):  # (out, in)
            scale = value.abs().mean().clamp(min=MIN_SCALE)
            ternary = (value / scale).round().clamp(-1, 1)  # (out, in) in {-1, 0, 1}
            out[key] = pack_weights(ternary.clone())  # (out / 4, in) uint8; pack_weights shifts its input
            out[key[: -len("weight")] + "weight_scale"] = scale.reshape(1).clone()
        else:
            out[key] = value.contiguous().clone()
    return out


def build_tiny(cfg: DictConfig, entry: Path) -> None:
    """Seeded random init -> stored checkpoint + tokenizer in `entry` (published atomically)."""
    import transformers
    from transformers import BitNetForCausalLM

    config = tiny_bitnet_config(cfg)
    with torch.random.fork_rng(devices=[]):  # seed the init without disturbing the caller's RNG stream
        torch.manual_seed(cfg.tiny_seed)
        model = BitNetForCausalLM(config).to(torch.float32)
    state = ternary_state_dict(model)
    config.quantization_config = dict(BITNET_QUANT_CONFIG)
    meta = {"tiny": tiny_params(cfg), "transformers": transformers.__version__, "torch": torch.__version__}
    with cache.publish(entry, meta) as tmp:
        config.save_pretrained(tmp)
        model.generation_config.save_pretrained(tmp)
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        byte_level_tokenizer().save_pretrained(tmp)


def load_tiny(cfg: DictConfig, cache_dir: Path, dtype: torch.dtype, device_map):
    """Returns (model, tokenizer, loaded_from, cache entry); builds the entry on first use."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    entry = tiny_cache_entry(cfg, cache_dir)
    loaded_from = "tiny-cache"
    if not cache.check_or_discard(entry):
        build_tiny(cfg, entry)
        loaded_from = "tiny-build"
    tokenizer = AutoTokenizer.from_pretrained(entry)
    model = AutoModelForCausalLM.from_pretrained(entry, dtype=dtype, device_map=device_map)
    return model, tokenizer, loaded_from, entry
