"""Make plain `lm_eval --model lsh-bitnet` work: lm-eval 0.4.13 has no plug-in discovery for models.

`lsh-bitnet-lm-eval --install-hook` (lm_eval_cli.py: install()) writes `lsh_bitnet_lm_eval.pth` into the
environment's site-packages. Python runs its one line at start-up; it imports this module only if
lsh_bitnet is importable (so an uninstalled package leaves no start-up error) and `activate()`s an
import hook that costs nothing until `lm_eval.api.registry` is imported. Right after lm-eval's registry
module has run, lm-eval's own model names are registered (as lm-eval does on first use) and `lsh-bitnet`
is added as a lazy entry ("lsh_bitnet.bridges.lm_eval_model:LSHBitnetLM"): nothing of ours loads unless
that model is asked for. `--uninstall-hook` removes the file. Nothing else in lm-eval or the environment
changes.
"""
import importlib.abc
import sys
import sysconfig
from pathlib import Path
from typing import Optional

PTH_NAME = "lsh_bitnet_lm_eval.pth"
PTH_LINE = ("import importlib.util as _u; _u.find_spec('lsh_bitnet') and "
            "__import__('lsh_bitnet.bridges.lm_eval_hook', fromlist=['activate']).activate()\n")
TARGET = "lm_eval.api.registry"
MODEL_NAME = "lsh-bitnet"  # as lm_eval_model.MODEL_NAME (not imported: that module imports lm-eval)
MODEL_TARGET = "lsh_bitnet.bridges.lm_eval_model:LSHBitnetLM"


def _register(registry_module) -> None:
    try:
        import lm_eval.models  # noqa: F401  lm-eval's names first: get_model() fills an empty registry only

        if MODEL_NAME not in registry_module.model_registry:
            registry_module.model_registry.register(MODEL_NAME, target=MODEL_TARGET)
    except Exception:  # never break lm-eval: without the entry it says the model is unknown
        pass


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of lm_eval.api.registry so _register runs after it."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is None or spec.loader is None or not hasattr(spec.loader, "exec_module"):
                continue
            run = spec.loader.exec_module

            def exec_module(module, _run=run):
                _run(module)
                _register(module)

            spec.loader.exec_module = exec_module  # this spec's loader only (one per module file)
            return spec
        return None


def activate() -> None:
    """The .pth line's call, at start-up: watch for lm-eval's registry (or register now if it is loaded)."""
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    if TARGET in sys.modules:
        _register(sys.modules[TARGET])
    else:
        sys.meta_path.insert(0, _Finder())


def pth_path(site_dir: Optional[str] = None) -> Path:
    return Path(site_dir or sysconfig.get_paths()["purelib"]) / PTH_NAME


def install(site_dir: Optional[str] = None) -> Path:
    """Write the .pth (into this interpreter's site-packages unless site_dir is given); returns its path."""
    path = pth_path(site_dir)
    path.write_text(PTH_LINE, encoding="utf-8")
    return path


def uninstall(site_dir: Optional[str] = None) -> Path:
    path = pth_path(site_dir)
    path.unlink(missing_ok=True)
    return path
