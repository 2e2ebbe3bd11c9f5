"""One source of defaults: the schema dataclasses in lsh_bitnet/config.py. The option YAMLs in conf/ hold only
`defaults` lists, comments and interpolations, so a value has one home and a YAML cannot silently disagree with
the schema a plug-in, a test or `dataset=<name>` without YAML would get.

conf/attention and conf/hasher are checked by tests/test_defaults_attention.py; the `# @package _global_` presets
in conf/experiment, conf/variant and conf/task set values on purpose (that is what a preset is).
"""
import dataclasses
from pathlib import Path

import pytest
import yaml

from conftest import CONF_DIR, compose_config
from lsh_bitnet.config import SCHEMAS
from lsh_bitnet.registry import DATASETS, TASKS
from lsh_bitnet.tasks.base import dataset_option, task_named

GROUPS = ("dataset", "metric", "model")  # option files: `defaults: [/schema/<group>@_here_: <schema>, _self_]`
ELSEWHERE = ("attention", "hasher", "hydra")  # other tests' (rules) or Hydra's own
PRESETS = ("experiment", "variant", "task")  # `# @package _global_` presets
HYDRA_ONLY = ("launcher",)  # `# @package _global_` files that set hydra.* only


def _yaml_files():
    """Every YAML under conf/ but those checked elsewhere."""
    return sorted(p.relative_to(CONF_DIR) for p in CONF_DIR.rglob("*.yaml")
                  if p.relative_to(CONF_DIR).parts[0] not in ELSEWHERE)


def _is_interpolation(value) -> bool:
    return isinstance(value, str) and value.startswith("${") and value.endswith("}")


def _values(node, prefix=""):
    """dotted key -> value of every leaf under node (lists are leaves)."""
    if isinstance(node, dict):
        out = {}
        for key, value in node.items():
            out.update(_values(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def _schema_of(path: Path, body: dict):
    """The schema dataclass an option file selects in its defaults list."""
    group = path.parts[0]
    entries = [e for e in body.get("defaults", []) if isinstance(e, dict)]
    picked = [v for e in entries for k, v in e.items() if k == f"/schema/{group}@_here_"]
    assert len(picked) == 1, f"conf/{path}: its defaults list must select one /schema/{group}@_here_ schema"
    return SCHEMAS[group][picked[0]]


@pytest.mark.parametrize("path", _yaml_files(), ids=str)
def test_yaml_holds_no_value_the_schema_holds(path):
    text = (CONF_DIR / path).read_text()
    body = yaml.safe_load(text) or {}
    top = path.parts[0] if len(path.parts) > 1 else None
    if top in PRESETS:
        assert text.startswith("# @package _global_"), f"conf/{path}: a preset is a `# @package _global_` file"
        return
    if top in HYDRA_ONLY:
        ours = sorted(set(body) - {"defaults", "hydra"})
        assert not ours, f"conf/{path} sets {ours}: a launcher preset sets hydra.* only; ours live in config.py"
        return
    if top in GROUPS:
        schema = _schema_of(path, body)
        assert schema.__dataclass_fields__["name"].default == path.stem, \
            f"conf/{path} selects {schema.__name__}, whose `name` is not {path.stem!r}: give the option its own schema"
    else:
        assert str(path) == "config.yaml", f"conf/{path}: no rule says where its values live; add one to this test"
    values = {k: v for k, v in _values({k: v for k, v in body.items() if k not in ("defaults", "hydra")}).items()}
    held = {k: v for k, v in values.items() if not _is_interpolation(v)}
    assert not held, (f"conf/{path} sets {held}: the schema (lsh_bitnet/config.py) is the one source of defaults; "
                      f"move a value that differs into a schema subclass, or make the file a preset that says why")


def test_every_option_file_is_a_registered_task_or_dataset_with_that_schema():
    metrics = {p.stem: _schema_of(p, yaml.safe_load((CONF_DIR / p).read_text()))
               for p in _yaml_files() if p.parts[0] == "metric"}
    assert sorted(metrics) == TASKS.names()
    for name, schema in metrics.items():
        assert task_named(name).metric_schema is schema
    datasets = {p.stem: _schema_of(p, yaml.safe_load((CONF_DIR / p).read_text()))
                for p in _yaml_files() if p.parts[0] == "dataset"}
    assert sorted(datasets) == DATASETS.names()
    for name, schema in datasets.items():
        assert dataset_option(name).schema is schema


@pytest.mark.parametrize("dataset, metric", [("synthetic_ny_adj", "synthetic_accuracy"),
                                             ("passkey", "passkey_accuracy")])
def test_generated_datasets_take_the_run_seed_unless_set_apart(dataset, metric):
    """dataset.seed is the schema's ${seed} (docs/FINDINGS.md's synthetic numbers: dataset.seed=1234, set apart)."""
    assert compose_config([f"dataset={dataset}", f"metric={metric}", "seed=7"]).dataset.seed == 7
    apart = compose_config([f"dataset={dataset}", f"metric={metric}", "seed=7", "dataset.seed=1234"])
    assert apart.dataset.seed == 1234
    schema = dataset_option(dataset).schema
    assert {f.name: f.default for f in dataclasses.fields(schema)}["seed"] == "${seed}"
