"""The key-code cache of KV-cache decoding (attention/codecache.py): codes come back table-major in the asked dtype,
decode steps hash only their new keys and write them in place (no copy of the cached codes per step), and any
change of the prefix or of the layout hashes everything again."""
import torch

from lsh_bitnet.attention.codecache import KeyCodeCache

B, HKV, D, L = 2, 3, 4, 5


class Mask:  # stands for one forward's attention mask object (the cache keys "same forward" on its identity)
    pass


def hash_keys(calls):
    def run(key):  # (B, Hkv, n, D) -> (B, Hkv, n, L) int64: a code per table from the key's first coordinate
        calls.append(key.shape[2])
        base = (key[..., :1] * 1000).round().long()  # (B, Hkv, n, 1)
        return base + torch.arange(L)
    return run


def step(cache, keys, calls, dtype=torch.int32, layer=0):
    mask = Mask()
    valid = torch.ones(B, keys.shape[2], dtype=torch.bool)
    cache.begin_forward(mask, keys, valid)
    return cache.codes(layer, mask, keys, hash_keys(calls), dtype), mask


def test_decode_steps_hash_new_keys_only_and_write_in_place():
    gen = torch.Generator().manual_seed(0)
    keys = torch.randn(B, HKV, 12, D, generator=gen)
    cache, calls = KeyCodeCache(), []
    (codes, reused), _ = step(cache, keys[:, :, :8], calls)
    assert reused == 0 and calls == [8] and codes.shape == (L, B, HKV, 8) and codes.dtype == torch.int32
    pointers = []
    for K in (9, 10, 11, 12):
        (codes, reused), _ = step(cache, keys[:, :, :K], calls)
        assert reused == K - 1 and calls[-1] == 1  # only the new key is hashed
        expected = hash_keys([])(keys[:, :, :K]).to(torch.int32).permute(3, 0, 1, 2)
        assert torch.equal(codes, expected)
        pointers.append(codes.data_ptr())
    # the first step grows the buffer to twice the prompt; the later ones write into it: no copy of cached codes
    assert len(set(pointers)) == 1


def test_a_changed_prefix_or_dtype_hashes_everything():
    gen = torch.Generator().manual_seed(1)
    keys = torch.randn(B, HKV, 9, D, generator=gen)
    cache, calls = KeyCodeCache(), []
    step(cache, keys[:, :, :8], calls)
    other = keys.clone()
    other[0, 1, 2] += 1  # one key of the prefix differs (another sequence)
    (codes, reused), _ = step(cache, other, calls)
    assert reused == 0 and calls[-1] == 9
    assert torch.equal(codes, hash_keys([])(other).to(torch.int32).permute(3, 0, 1, 2))
    (codes, reused), _ = step(cache, torch.cat([other, other[:, :, -1:]], 2), calls, dtype=torch.int64)
    assert reused == 0 and codes.dtype == torch.int64  # the cached int32 codes are not reinterpreted
