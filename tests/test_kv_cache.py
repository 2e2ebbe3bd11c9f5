"""The growable KV cache (lsh_bitnet/models/kv_cache.py): the same logits as transformers' DynamicCache for full
attention and for rules that gather keys from its strided views, in place across decode steps, and still right
after a crop, on a deep copy, and outside inference mode."""
import copy

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from lsh_bitnet.attention import patch_model
from lsh_bitnet.models.kv_cache import GrowableLayer, cache_arg, growable_cache
from lsh_bitnet.tasks._synthetic import cache_kwarg


def tiny():
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def generate(model, ids, **kw):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=6, do_sample=False, pad_token_id=0,
                          return_dict_in_generate=True, output_logits=True, **kw)


RULES = {
    "full": (None, None),
    "lsh_topk": ({"name": "lsh_topk", "n_tables": 8, "fraction": 0.2, "score": "collisions", "sink_tokens": 2,
                  "local_window": 4}, {"name": "simhash", "n_bits": 6, "seed": 0}),  # decode_topk.py
    "m_of_l": ({"name": "lsh", "n_tables": 6, "min_collisions": 2, "sink_tokens": 2},
               {"name": "simhash", "n_bits": 3, "seed": 0}),  # the masked engine's gather
    "window": ({"name": "window", "sink_tokens": 2, "local_window": 5}, None),
}


@pytest.mark.parametrize("rule", list(RULES))
def test_generation_on_a_growable_cache_equals_the_dynamic_cache(rule):
    model, ids = tiny(), torch.randint(0, 64, (1, 30), generator=torch.Generator().manual_seed(1))
    attention, hasher = RULES[rule]
    patch = patch_model(model, dict(attention, apply_to="decode"), hasher) if attention else None
    try:
        with torch.inference_mode():
            ref = generate(model, ids)
            out = generate(model, ids, **cache_arg(model))
    finally:
        if patch is not None:
            patch.unpatch()
    layers = out[cache_kwarg(model) if cache_kwarg(model) in out.keys() else "past_key_values"].layers
    assert all(isinstance(layer, GrowableLayer) for layer in layers)
    assert not layers[0].keys.is_contiguous()  # a view of a buffer with spare capacity
    assert torch.equal(out.sequences, ref.sequences)
    for a, b in zip(out.logits, ref.logits):
        assert torch.equal(a, b)


def test_decode_steps_write_in_place_and_a_crop_is_written_over():
    model = tiny()
    ids = torch.randint(0, 64, (1, 12), generator=torch.Generator().manual_seed(2))
    kw = cache_kwarg(model)
    with torch.inference_mode():
        cache = growable_cache(model)
        model(ids[:, :8], use_cache=True, **{kw: cache})
        buffer = cache.layers[0]._kbuf.data_ptr()
        for t in range(8, 12):
            model(ids[:, t:t + 1], use_cache=True, **{kw: cache})
        assert cache.layers[0]._kbuf.data_ptr() == buffer and cache.get_seq_length() == 12  # capacity 16
        snapshot = copy.deepcopy(cache)
        kept = snapshot.layers[0].keys.clone()
        cache.crop(-3)  # back to 9 tokens, then 3 other tokens over the cropped ones
        other = torch.tensor([[5, 6, 7]])
        logits = model(other, use_cache=True, **{kw: cache}).logits
        fresh = model(torch.cat([ids[:, :9], other], 1)).logits[:, -3:]  # no cache at all
        assert torch.allclose(logits, fresh, atol=1e-5)
        # the deep copy kept its own buffer: the writes above did not reach it
        assert torch.equal(snapshot.layers[0].keys, kept)
        assert not torch.equal(kept[:, :, 9:], cache.layers[0].keys[:, :, 9:])


def test_a_cache_filled_in_inference_mode_grows_outside_it():
    model = tiny()
    ids = torch.randint(0, 64, (1, 10), generator=torch.Generator().manual_seed(3))
    kw = cache_kwarg(model)
    cache = growable_cache(model)
    with torch.inference_mode():
        model(ids[:, :9], use_cache=True, **{kw: cache})
    with torch.no_grad():  # an inference-tensor buffer cannot be written here: the layer copies it first
        logits = model(ids[:, 9:], use_cache=True, **{kw: cache}).logits
        ref = model(ids).logits[:, -1:]
    assert torch.allclose(logits, ref, atol=1e-5)
