"""Rules and hashers as registered objects (issue 24): a schema per rule, hashers that own their collision
probability, and a report side that asks the registry and survives rules it does not have."""
from dataclasses import dataclass

import pandas as pd
import pytest

import test_collect
from lsh_bitnet import config
from lsh_bitnet.attention.checks import validate_attention_config
from lsh_bitnet.attention.hashers.base import Hasher
from lsh_bitnet.attention.rules.base import HashedRule
from lsh_bitnet.attention.spec import SparseSpec
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.registry import HASHERS, RULES


def plug_in(monkeypatch, registry, entry):
    """Register `entry` for this test only (as a plug-in's import would)."""
    monkeypatch.setitem(registry._entries, entry.name, entry)
    monkeypatch.setitem(registry._origin, entry.name, "plug-in test")


@dataclass
class ToyHasherConfig(config.HasherConfig):
    name: str = "toy_hasher"


class ToyHasher(Hasher):
    """A family that declares no collision probability: bit = first coordinate > 0."""
    name, schema = "toy_hasher", ToyHasherConfig

    @classmethod
    def ops_for(cls, n_bits, head_dim, n_tables):
        return n_bits * n_tables

    def bits(self, x):
        return (x[..., :1] > 0)[..., None, :].expand(*x.shape[:-1], self.n_tables, self.n_bits)


@dataclass
class ToyRuleConfig(config.AttentionConfig):
    name: str = "toy_rule"
    n_tables: int = 2


class ToyRule(HashedRule):
    name, schema = "toy_rule", ToyRuleConfig


def test_a_knob_the_rule_does_not_declare_raises():
    with pytest.raises(ConfigError, match="attention.n_tables is not a key of attention=window"):
        SparseSpec("window", n_tables=2)
    with pytest.raises(ConfigError, match="attention.min_candidates is not a key of attention=lsh"):
        SparseSpec.from_config({"name": "lsh", "min_candidates": 8})
    spec = SparseSpec("lsh", n_tables=2)
    spec.min_collisions = 2  # its own knob: fine
    with pytest.raises(ConfigError, match="attention=lsh has no knob 'k'"):
        spec.k = 4
    assert SparseSpec(**SparseSpec("lsh_forest", n_trees=2).__dict__) == SparseSpec("lsh_forest", n_trees=2)


def test_sampling_refuses_a_hasher_without_a_collision_probability(monkeypatch):
    plug_in(monkeypatch, HASHERS, ToyHasher)
    attention = {"name": "lsh", "n_tables": 2, "estimator": "sampling"}
    validate_attention_config({**attention, "estimator": "softmax"}, {"name": "toy_hasher"})  # softmax: fine
    validate_attention_config(attention, {"name": "simhash"})  # a family with one: fine
    with pytest.raises(ConfigError, match=r"hasher=toy_hasher declares none.*one of \['bit_sampling', 'simhash'\]"):
        validate_attention_config(attention, {"name": "toy_hasher"})


def test_hasher_checks_and_cost_are_the_hashers_own():
    with pytest.raises(ConfigError, match="hasher.n_bits=20 > head_dim=16"):
        validate_attention_config({"name": "lsh"}, {"name": "bit_sampling", "n_bits": 20}, head_dim=16)
    validate_attention_config({"name": "lsh"}, {"name": "simhash", "n_bits": 20}, head_dim=16)
    with pytest.raises(ConfigError, match="attention.max_depth=20 > head_dim=16"):
        validate_attention_config({"name": "lsh_forest", "max_depth": 20}, {"name": "bit_sampling"}, head_dim=16)
    assert HASHERS.get("simhash").ops_for(4, 16, 2) == 4 * 16 * 2 and HASHERS.get("bit_sampling").ops_for(4, 16, 2) == 8


def test_a_plugged_in_rule_gets_its_family_and_columns(monkeypatch):
    from lsh_bitnet.report.pareto import family_of, is_full
    from lsh_bitnet.report.runs import keys_read

    plug_in(monkeypatch, RULES, ToyRule)
    monkeypatch.setitem(config.SCHEMAS["attention"], "toy_rule", ToyRuleConfig)
    assert family_of("toy_rule", "simhash") == "toy_rule/simhash"  # hashed: one frontier per hasher
    assert {"attention.n_tables", "hasher.n_bits", "hasher.seed"} <= keys_read("toy_rule")
    assert family_of("window", "simhash") == "window" and is_full("full") and not is_full("toy_rule/simhash")
    validate_attention_config({"name": "toy_rule", "engine": "masked"}, {"name": "simhash"})
    with pytest.raises(ConfigError, match=r"attention.engine=flex cannot run attention=toy_rule: .*\['masked', 'auto'\]"):
        validate_attention_config({"name": "toy_rule", "engine": "flex"}, {"name": "simhash"})


def test_report_survives_runs_of_a_rule_not_installed(tmp_path, monkeypatch):
    """Results of a plug-in rule that is not installed here: one family per name, every knob shown, last in plots."""
    from lsh_bitnet.report.collect import write_summary
    from lsh_bitnet.report.pareto import _family_sort_key, family_of

    assert "gone_rule" not in RULES
    assert family_of("gone_rule", "simhash") == "gone_rule"
    assert _family_sort_key("gone_rule") > _family_sort_key("oracle_topk") > _family_sort_key("full")
    monkeypatch.setitem(test_collect.VARIANT_FIELDS, "gone_rule", {"budget": 3})
    root = tmp_path / "runs"
    test_collect.write(root, "0_full", test_collect.record("full", 1.0, 20.0))
    test_collect.write(root, "1_gone", test_collect.record("gone_rule", 0.3, 24.0, attn={"budget": 3}))
    test_collect.write(root, "2_gone", test_collect.record("gone_rule", 0.2, 25.0, attn={"budget": 2}))
    test_collect.write(root, "3_window", test_collect.record("window", 0.3, 30.0))
    test_collect.write(root, "4_oracle", test_collect.record("oracle_topk", 0.3, 21.0))
    out = write_summary(root, plot=False, gap=True)
    table = pd.read_csv(out["summary.csv"]).set_index("run_dir")
    assert table.loc["1_gone", "family"] == "gone_rule" and table.loc["1_gone", "budget"] == 3
    assert table.loc["1_gone", "gap_closed"] == pytest.approx((24.0 - 30.0) / (21.0 - 30.0))
