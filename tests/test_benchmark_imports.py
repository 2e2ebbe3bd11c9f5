"""Every `from lsh_bitnet... import name` in benchmarks/ and scripts/ names something that exists: the scripts are
not run by the suite (they take minutes to hours), and a package refactor once left `bench_rules.py --task passkey`
importing a module that had moved."""
import ast
import importlib
from pathlib import Path

import pytest

from conftest import REPO_ROOT

SCRIPTS = sorted(p for d in ("benchmarks", "scripts") for p in (REPO_ROOT / d).rglob("*.py"))


def _fallbacks(tree):
    """Nodes inside `except ImportError:` handlers: a script's fallback for older layouts (numbers_fingerprint runs
    against old commits too), not what it imports here."""
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ExceptHandler) and isinstance(node.type, ast.Name) and \
                node.type.id in ("ImportError", "ModuleNotFoundError"):
            out |= {id(n) for stmt in node.body for n in ast.walk(stmt)}
    return out


def _imports(path: Path):
    tree = ast.parse(path.read_text(), filename=str(path))
    skip = _fallbacks(tree)
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("lsh_bitnet"):
            yield node.module, [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield from ((a.name, []) for a in node.names if a.name.startswith("lsh_bitnet"))


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_script_imports_exist(path):
    missing = []
    for module, names in _imports(path):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name and not exc.name.startswith("lsh_bitnet"):
                continue  # an optional dependency of that module (lm-eval, ...): not this test's question
            missing.append(f"{module} ({exc})")
            continue
        missing += [f"{module}.{n}" for n in names if n != "*" and not hasattr(mod, n)
                    and importlib.util.find_spec(f"{module}.{n}") is None]
    assert not missing, f"{path.relative_to(REPO_ROOT)} imports what does not exist: {missing}"
