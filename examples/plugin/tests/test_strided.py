"""attention=strided against its naive definition, through lsh-bitnet's harness (docs/EXTENDING.md)."""
import pytest

from lsh_bitnet.testing import check_rule

import lsh_bitnet_example  # noqa: F401  (registers the rule when the package is imported without lsh-bitnet's loader)


def naive_strided(q, keys, head, spec, hasher):
    """C(i): the last key of every block of `stride` positions (keys are V(i) in order: index = position)."""
    return {j for j in range(len(keys)) if j % spec.stride == spec.stride - 1}


@pytest.mark.parametrize("fields", [dict(stride=4), dict(stride=3, local_window=0, sink_tokens=2),
                                    dict(stride=1, include_self=False, local_window=0), dict(stride=50)])
def test_strided_matches_its_naive_definition(fields):
    check_rule("strided", naive_strided, selection_ops=lambda visible: 0, **fields)


def test_the_harness_catches_an_off_by_one():
    def off_by_one(q, keys, head, spec, hasher):
        return {j for j in range(len(keys)) if j % spec.stride == 0}

    with pytest.raises(AssertionError, match="differ"):
        check_rule("strided", off_by_one, stride=4, local_window=0)
