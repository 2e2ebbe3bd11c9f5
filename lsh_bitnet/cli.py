"""Command-line surface: the `lsh-bitnet` console script, `--help` contents, what completion hides, and a
quoting hint after an override Hydra cannot parse.

`python launch.py ...` and `lsh-bitnet ...` are the same program: the console script runs launch.py
from the checkout this package was installed from (`pip install -e .`), so config paths, the job name
(launch.log) and the job directory layout do not depend on how it was started.
"""
import runpy
import sys
from pathlib import Path
from typing import Any, List

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parent.parent
# Not for users: the ConfigStore schemas (typed defaults of every group option) and test hooks.
HIDDEN_GROUPS = ("schema", "hydra")
HIDDEN_KEYS = ("fail_on_purpose",)
GROUPS_RESOLVER, CONFIG_RESOLVER = "lsh_bitnet_groups", "lsh_bitnet_config"


def _hidden(word: str) -> bool:
    word = word.lstrip("+~")
    return word.startswith(tuple(f"{g}/" for g in HIDDEN_GROUPS if g != "hydra") + ("schema=",)) \
        or word == "schema" or word.split("=")[0] in HIDDEN_KEYS


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
    """The composed config without Hydra's node and the test-only keys, as YAML."""
    node = OmegaConf.to_container(_root_, resolve=False)
    for key in ("hydra", *HIDDEN_KEYS):
        node.pop(key, None)
    # Hydra fills its help template with string.Template: a literal `$` (the `${seed}` defaults) must be `$$`.
    return OmegaConf.to_yaml(node).rstrip().replace("$", "$$")


def register_help_resolvers() -> None:
    if not OmegaConf.has_resolver(GROUPS_RESOLVER):
        OmegaConf.register_new_resolver(GROUPS_RESOLVER, config_groups)
    if not OmegaConf.has_resolver(CONFIG_RESOLVER):
        OmegaConf.register_new_resolver(CONFIG_RESOLVER, visible_config)


def hide_from_completion() -> None:
    """Shell completion (`python launch.py -sc install=bash`) offers neither schema/* nor test hooks."""
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


def main() -> None:
    """Entry point of the `lsh-bitnet` console script: `python launch.py` with the same arguments."""
    launch = REPO_ROOT / "launch.py"
    if not launch.exists():
        sys.exit(f"lsh-bitnet: {launch} not found: the console script runs the checkout's launch.py, so install "
                 f"the package editable from the repository (pip install -e .) or run `python launch.py` there")
    sys.argv[0] = str(launch)
    sys.path.insert(0, str(REPO_ROOT))  # as for `python launch.py`: hydra_plugins/ (the sweeper) is found there
    runpy.run_path(str(launch), run_name="__main__")
