"""The one registry: attention rules, hashers, tasks and dataset options, each by its name.

    from lsh_bitnet.registry import RULES, HASHERS, TASKS, DATASETS

    @RULES.register            # the class's `name` attribute is its key: attention=<name>
    class MyRule(Rule): ...

An entry is an object (a Rule, Hasher or Task class; a dataset schema) or a lazy "module:attr" string
loaded on first use (lm-evaluation-harness' registry does the same). Built-ins are the modules of
BUILTIN_PACKAGES, which register themselves when imported; plug-ins arrive through the entry-point group `lsh_bitnet.plugins`: a pip-installed package
declares

    [project.entry-points."lsh_bitnet.plugins"]
    my_package = "my_package.lsh_plugin"        # a module whose import registers things, or
    my_package = "my_package:register"          # a function called with no arguments

and everything it registers is usable on the command line (`attention=my_rule`) with the checks,
suggestions, counting, collector columns and plots a built-in gets (docs/EXTENDING.md).

Torch-free on purpose: the config checks ask the registry before torch is imported. A registered object
keeps torch inside its methods (or behind its own lazy imports).
"""
import difflib
import importlib
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple, Union

from lsh_bitnet.errors import ConfigError

log = logging.getLogger(__name__)

PLUGIN_GROUP = "lsh_bitnet.plugins"


class Registry:
    """name -> object, or "module:attr" loaded on first `get`. `kind` names it in messages ("attention rule"),
    `key` is the config group that selects an entry (attention=<name>)."""

    def __init__(self, kind: str, key: str):
        self.kind, self.key = kind, key
        self._entries: Dict[str, Union[str, Any]] = {}
        self._origin: Dict[str, str] = {}  # name -> "built-in" or the plug-in that registered it
        self._builtins_loaded = False

    def _ensure(self) -> None:
        """Built-ins first (their modules register on import), then every plug-in.

        Re-entrant: a built-in's package imports lsh_bitnet.config first (the schema bases), and config.py lists
        this registry; that inner call imports the remaining built-ins itself. Marked loaded only once they all
        are, so no caller ever sees a partial listing."""
        if not self._builtins_loaded:
            _import_builtins(self)
            self._builtins_loaded = True
        load_plugins()

    def add(self, name: str, target: Union[str, Any], origin: Optional[str] = None) -> None:
        """Register `target` (an object or a lazy "module:attr") as `name`. Names are unique: a plug-in cannot
        silently replace a built-in or another plug-in's entry (that would change numbers behind a known name)."""
        if not isinstance(name, str) or not name.isidentifier():
            raise ValueError(f"{self.kind} name must be an identifier (it is a config option name): got {name!r}")
        if name in self._entries and self._entries[name] is not target and self._origin.get(name) != origin:
            raise ValueError(f"{self.kind} {name!r} is registered twice: by {self._origin.get(name)} and by "
                             f"{origin or 'this call'}; rename one of them")
        self._entries[name] = target
        self._origin[name] = origin or _current_plugin or "built-in"

    def register(self, obj: Any = None, *, name: Optional[str] = None) -> Any:
        """Decorator: `@REG.register` (key = obj.name) or `@REG.register(name="x")`."""
        def decorate(target):
            key = name or getattr(target, "name", None)
            if not key:
                raise ValueError(f"@register of a {self.kind} needs a `name` attribute or name=...: {target!r}")
            self.add(key, target)
            return target
        return decorate(obj) if obj is not None else decorate

    def get(self, name: str) -> Any:
        """The entry for `name`, loaded if lazy; unknown -> ConfigError naming the allowed ones and the closest."""
        self._ensure()
        if name not in self._entries:
            raise ConfigError(self.unknown_message(name))
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attr = target.partition(":")
            target = getattr(importlib.import_module(module), attr)
            self._entries[name] = target
        return target

    def find(self, name: Any) -> Optional[Any]:
        """Like `get`, but None for an unknown name (the report side reads runs of rules it may not have)."""
        if not isinstance(name, str) or name not in self:
            return None
        return self.get(name)

    def unknown_message(self, name: Any) -> str:
        close = difflib.get_close_matches(str(name), self.names(), n=1, cutoff=0.6)
        hint = f"; did you mean {self.key}={close[0]}?" if close else ""
        return (f"{self.key}={name!r} is not a known {self.kind}: allowed {self.names()}{hint} (a plug-in's "
                f"{self.kind}s appear once its package is installed: docs/EXTENDING.md)")

    def names(self) -> List[str]:
        self._ensure()
        return sorted(self._entries)

    def items(self) -> Iterator[Tuple[str, Any]]:
        for name in self.names():
            yield name, self.get(name)

    def origin(self, name: str) -> str:
        return self._origin.get(name, "unknown")

    def __contains__(self, name: object) -> bool:
        self._ensure()
        return name in self._entries


RULES = Registry("attention rule", "attention")
HASHERS = Registry("hasher", "hasher")
TASKS = Registry("task", "metric")
DATASETS = Registry("dataset", "dataset")  # dataset option name -> its schema dataclass

# Built-ins live one per module in these packages and register themselves on import (`@RULES.register`), so
# a new built-in is one new module: nothing here lists them. Modules named `_x` or `base` are helpers.
BUILTIN_PACKAGES = {"attention rule": "lsh_bitnet.attention.rules", "hasher": "lsh_bitnet.attention.hashers",
                    "task": "lsh_bitnet.tasks", "dataset": "lsh_bitnet.tasks"}  # a task registers its datasets


def _import_builtins(registry: "Registry") -> None:
    import pkgutil

    package = BUILTIN_PACKAGES.get(registry.kind)
    if package is None:
        return
    path = importlib.import_module(package).__path__
    for info in sorted(pkgutil.iter_modules(path), key=lambda i: i.name):
        if not info.name.startswith("_") and info.name != "base":
            importlib.import_module(f"{package}.{info.name}")


# ----------------------------------------------------------------------------- plug-ins
_plugins_loaded = False
_current_plugin: Optional[str] = None
PLUGINS: Dict[str, str] = {}  # entry-point name -> its target, for provenance (results.json versions)
PLUGIN_VERSIONS: Dict[str, Optional[str]] = {}  # the plug-ins' package name -> version


def _entry_points():
    from importlib.metadata import entry_points

    return entry_points(group=PLUGIN_GROUP)


def load_plugins() -> None:
    """Import every `lsh_bitnet.plugins` entry point once. A plug-in that fails to load is an error naming the
    package (a silently missing rule would only surface later as 'not known')."""
    global _plugins_loaded, _current_plugin
    if _plugins_loaded:
        return
    _plugins_loaded = True
    for ep in _entry_points():
        _current_plugin = f"plug-in {ep.name} ({ep.value})"
        try:
            loaded = ep.load()
            if callable(loaded) and not isinstance(loaded, type):
                loaded()
        except Exception as exc:
            raise ConfigError(f"the lsh_bitnet plug-in {ep.name!r} ({ep.value}) failed to load: {type(exc).__name__}: "
                              f"{exc}. Fix or uninstall its package (pip uninstall <package>)") from exc
        finally:
            _current_plugin = None
        PLUGINS[ep.name] = ep.value
        dist = getattr(ep, "dist", None)
        if dist is not None:
            PLUGIN_VERSIONS[dist.metadata["Name"]] = dist.version


def registered_schemas(registry: Registry, schema_attr: str = "schema") -> Dict[str, type]:
    """name -> schema dataclass of every entry (for the ConfigStore and the schema-derived report columns)."""
    out = {}
    for name, entry in registry.items():
        schema = getattr(entry, schema_attr, entry) if schema_attr else entry
        out[name] = schema
    return out


def each(registry: Registry, predicate: Callable[[Any], bool]) -> List[str]:
    """Names whose entry satisfies `predicate` (e.g. the hashed rules)."""
    return [name for name, entry in registry.items() if predicate(entry)]
