"""One source of defaults for the attention and hasher groups: conf/attention/*.yaml and conf/hasher/*.yaml hold
a defaults list, comments and interpolations only; every value is the schema's (the rule's or hasher's module)."""
import dataclasses
from enum import Enum

import pytest
from omegaconf import OmegaConf

from conftest import CONF_DIR, compose_config
from lsh_bitnet.config import StrEnum
from lsh_bitnet.registry import HASHERS, RULES

GROUPS = {"attention": RULES, "hasher": HASHERS}
FILES = [(group, path) for group in GROUPS for path in sorted((CONF_DIR / group).glob("*.yaml"))]
# Fields whose values form a closed set: Enums, so Hydra refuses any other value at composition.
CLOSED = ("estimator", "engine", "score", "center", "calibration_source")


def _interpolated(raw) -> set:
    return {key for key in raw if key != "defaults" and OmegaConf.is_interpolation(raw, key)}


@pytest.mark.parametrize("group, path", FILES, ids=[f"{g}/{p.stem}" for g, p in FILES])
def test_option_file_holds_no_value_of_its_schema(group, path):
    raw = OmegaConf.load(path)
    schema = GROUPS[group].get(path.stem).schema  # every option file is the registered entry of its name
    fields = {f.name: f for f in dataclasses.fields(schema)}
    assert OmegaConf.to_container(raw.defaults) == [{f"/schema/{group}@_here_": path.stem}, "_self_"]
    assert fields["name"].default == path.stem, f"{schema.__name__}.name must default to the option's name"
    for key in raw:
        if key == "defaults":
            continue
        assert key in fields, f"{path.name}: {key} is no field of {schema.__name__}"
        assert key in _interpolated(raw), (f"{path.name} sets {key}={raw[key]!r}: a value belongs in "
                                           f"{schema.__module__}.{schema.__name__} (the one source of defaults)")


@pytest.mark.parametrize("group, path", FILES, ids=[f"{g}/{p.stem}" for g, p in FILES])
def test_composed_option_is_its_schema_defaults(group, path):
    schema = GROUPS[group].get(path.stem).schema
    composed = OmegaConf.to_container(compose_config([f"{group}={path.stem}"])[group], resolve=True)
    defaults = schema()
    skip = _interpolated(OmegaConf.load(path))
    assert {f.name for f in dataclasses.fields(schema)} == set(composed)
    for f in dataclasses.fields(schema):
        if f.name not in skip:
            assert composed[f.name] == getattr(defaults, f.name), f"{group}={path.stem}: {f.name}"


def test_every_builtin_rule_and_hasher_has_an_option_file():
    for group, registry in GROUPS.items():
        for name, entry in registry.items():
            if entry.__module__.startswith("lsh_bitnet."):
                assert (CONF_DIR / group / f"{name}.yaml").is_file(), f"{group}={name} has no conf/{group}/{name}.yaml"


def test_closed_value_sets_are_enums():
    for registry in GROUPS.values():
        for name, entry in registry.items():
            for f in dataclasses.fields(entry.schema):
                if f.name in CLOSED:
                    assert isinstance(f.type, type) and issubclass(f.type, StrEnum), f"{name}.{f.name}: {f.type}"
                    assert issubclass(f.type, Enum) and f.default in list(f.type)
