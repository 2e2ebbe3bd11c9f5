"""Command-line surface: the `lsh-bitnet` console script, `--help` contents, what completion hides, and a
quoting hint after an override Hydra cannot parse.

`python launch.py ...` and `lsh-bitnet ...` are the same program: the console script runs launch.py
from the checkout this package was installed from (`pip install -e .`), so config paths, the job name
(launch.log) and the job directory layout do not depend on how it was started; shell completion
(`lsh-bitnet -sc install=bash`) is installed for `lsh-bitnet`.
"""
import builtins
import sys
from pathlib import Path
from typing import Any, List

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
# Not for users: the ConfigStore schemas (typed defaults of every group option). (The failure test
# hook is an environment variable, lsh_bitnet.run.jobs.FAIL_ENV, so no config key needs hiding.)
HIDDEN_GROUPS = ("schema", "hydra")
GROUPS_RESOLVER, CONFIG_RESOLVER = "lsh_bitnet_groups", "lsh_bitnet_config"


def _hidden(word: str) -> bool:
    word = word.lstrip("+~")
    return word.startswith(tuple(f"{g}/" for g in HIDDEN_GROUPS if g != "hydra") + ("schema=",)) \
        or word == "schema"


def config_groups() -> str:
    """`attention: full, lsh, ...` per user-facing group, from Hydra's own config loader (what --help sees)."""
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.object_type import ObjectType

    loader = GlobalHydra.instance().config_loader()
    lines = []
    for group in sorted(loader.list_groups("")):
        if group in HIDDEN_GROUPS:
            continue
        options = sorted(loader.get_group_options(group, ObjectType.CONFIG))
        if options:
            lines.append(f"  {group}: {', '.join(options)}")
    return "\n".join(lines)


def visible_config(_root_: Any) -> str:
    """The composed config without Hydra's node, as YAML."""
    node = OmegaConf.to_container(_root_, resolve=False)
    node.pop("hydra", None)
    # Hydra fills its help template with string.Template: a literal `$` (the `${seed}` defaults) must be `$$`.
    return OmegaConf.to_yaml(node).rstrip().replace("$", "$$")


def register_help_resolvers() -> None:
    if not OmegaConf.has_resolver(GROUPS_RESOLVER):
        OmegaConf.register_new_resolver(GROUPS_RESOLVER, config_groups)
    if not OmegaConf.has_resolver(CONFIG_RESOLVER):
        OmegaConf.register_new_resolver(CONFIG_RESOLVER, visible_config)


def hide_from_completion() -> None:
    """Shell completion (`python launch.py -sc install=bash`) does not offer schema/*."""
    from hydra.plugins.completion_plugin import CompletionPlugin

    if getattr(CompletionPlugin._query, "_lsh_bitnet", False):
        return
    original = CompletionPlugin._query

    def _query(self, config_name, line: str) -> List[str]:
        return [word for word in original(self, config_name, line) if not _hidden(word)]

    _query._lsh_bitnet = True
    CompletionPlugin._query = _query


def override_hint(override: str) -> str:
    """What to type instead of an override Hydra's grammar refused: its value quoted for Hydra inside shell
    quotes (`~`, spaces, `#`, brackets ... are grammar), or an absolute path for a `~/...` one."""
    key, sep, value = override.partition("=")
    if not sep:
        return ""
    quote = "'" if '"' in value else '"'
    hint = f"quote the value for Hydra, inside shell quotes: '{key}={quote}{value}{quote}'"
    if value.startswith("~"):
        from pathlib import Path

        hint += f", or give an absolute path: {key}={Path(value).expanduser()}"
    return f"\nHint: {hint}"


def add_override_hints() -> None:
    """An override Hydra cannot parse (`dataset.path=~/x.txt`) ends with a hint on how to quote it."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    if getattr(OverridesParser.parse_overrides, "_lsh_bitnet", False):
        return
    original = OverridesParser.parse_overrides

    def parse_overrides(self, overrides):
        try:
            return original(self, overrides)
        except OverrideParseException as exc:
            hint = override_hint(exc.override)
            if not hint:
                raise
            raise OverrideParseException(override=exc.override, message=f"{exc.message}{hint}") from exc.__cause__

    parse_overrides._lsh_bitnet = True
    OverridesParser.parse_overrides = parse_overrides


def explain_refused_overrides() -> None:
    """`attention.n_table=2` (no `+`) on a schema-typed node: Hydra says "Could not override ... To append
    use +attention.n_table=2", and that `+` form is then refused by our own check. Give the plain form
    the hint the `+` form gets (lsh_bitnet.validate.unknown_key_hint): the option that has the key, the
    close spellings, the valid keys. Nodes without a schema (`extra`) keep Hydra's message."""
    from hydra._internal.config_loader_impl import ConfigLoaderImpl
    from hydra.errors import ConfigCompositionException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    original = ConfigLoaderImpl._apply_overrides_to_config
    if getattr(original, "_lsh_bitnet", False):
        return

    def _apply_overrides_to_config(overrides, cfg) -> None:
        try:
            original(overrides, cfg)
        except ConfigCompositionException as exc:
            if not isinstance(exc.__cause__, (ConfigAttributeError, ConfigKeyError)):
                raise
            from lsh_bitnet.validate import refused_key_hint

            refused = next((o for o in overrides if f"'{o.key_or_group}'" in str(exc)), None)
            hint = refused_key_hint(cfg, refused.key_or_group) if refused is not None else None
            if hint is None:
                raise
            raise ConfigCompositionException(f"Could not override {refused.input_line}: {hint}") from None

    _apply_overrides_to_config._lsh_bitnet = True
    ConfigLoaderImpl._apply_overrides_to_config = staticmethod(_apply_overrides_to_config)


def main() -> None:
    """Entry point of the `lsh-bitnet` console script: `python launch.py` with the same arguments."""
    launch = REPO_ROOT / "launch.py"
    if not launch.exists():
        sys.exit(f"lsh-bitnet: {launch} not found: the console script runs the checkout's launch.py, so install "
                 f"the package editable from the repository (pip install -e .) or run `python launch.py` there")
    sys.path.insert(0, str(REPO_ROOT))  # as for `python launch.py`: hydra_plugins/ (the sweeper) is found there
    # Executed as __main__ from its own file name, so Hydra finds conf/ beside it and names the job after it
    # (launch.log), while sys.argv[0] stays the console script (runpy.run_path would set it to launch.py):
    # Hydra's completion installs itself for the program it was started as, `lsh-bitnet -sc install=bash`
    # -> `complete ... lsh-bitnet` (for a `.py` name it would complete `python`).
    code = compile(launch.read_text(), str(launch), "exec")
    exec(code, {"__name__": "__main__", "__file__": str(launch), "__package__": None, "__spec__": None,
                "__builtins__": builtins})
