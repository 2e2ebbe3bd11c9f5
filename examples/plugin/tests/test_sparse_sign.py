"""hasher=sparse_sign: nested, seeded, as sparse as asked, and usable by every hashed rule."""
import pytest
import torch

from lsh_bitnet.attention.hashers import build_hasher
from lsh_bitnet.registry import HASHERS
from lsh_bitnet.testing import check_rule

import lsh_bitnet_example  # noqa: F401


def _hasher(n_bits, n_tables=2, density=1 / 3, seed=0):
    cfg = HASHERS.get("sparse_sign").schema(seed=seed, density=density)
    return HASHERS.get("sparse_sign").from_config(cfg, n_bits, 16, 2, n_tables, layer_idx=1)


def test_codes_are_nested_seeded_and_sparse():
    x = torch.randn(1, 2, 50, 16)
    short, long = _hasher(3).bits(x), _hasher(8).bits(x)
    assert torch.equal(short, long[..., :3])  # the first b bits of any longer setting
    assert torch.equal(_hasher(8).codes(x), _hasher(8).codes(x)) and not torch.equal(
        _hasher(8).codes(x), _hasher(8, seed=1).codes(x))
    planes = _hasher(60, n_tables=4, density=0.25).planes
    assert abs(float((planes != 0).float().mean()) - 0.25) < 0.03
    assert set(planes.unique().tolist()) <= {-1.0, 0.0, 1.0}


def test_bucket_attention_with_sparse_sign_matches_the_naive_union():
    def naive_buckets(q, keys, head, spec, hasher):  # one table: keys whose code equals the query's
        kv = head // 2  # GQA 2:1 in the harness
        qc = hasher.codes(q.float().view(1, 1, 1, -1).expand(1, 2, 1, -1))[0, kv, 0, 0]
        kc = hasher.codes(keys.float().view(1, 1, -1, 16).expand(1, 2, -1, 16))[0, kv, :, 0]
        return {j for j in range(len(keys)) if kc[j] == qc}

    check_rule("lsh", naive_buckets, hasher="sparse_sign", n_bits=2)


def test_sampling_estimator_refuses_it_by_name():
    from lsh_bitnet.attention.checks import validate_attention_config
    from lsh_bitnet.errors import ConfigError

    with pytest.raises(ConfigError, match="hasher=sparse_sign declares none"):
        validate_attention_config({"name": "lsh", "estimator": "sampling", "n_tables": 2, "min_collisions": 2},
                                  {"name": "sparse_sign"})
