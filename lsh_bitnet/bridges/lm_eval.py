"""lm-eval (EleutherAI's lm-evaluation-harness) as an optional dependency: config checks and task lookup.

What `metric=lm_eval` checks, cheapest first (the runner's stages, lsh_bitnet/validate.py):
1. config only, no torch, no lm-eval import: lm-eval is installed in the supported range (else the install
   command), the metric's values are sane (`check_metric_config`);
2. before the model loads: every name in metric.tasks is a task, group or tag lm-eval knows, and a task
   whose documents live on the Hugging Face hub is reachable or cached; offline, a hub task fails here, in
   seconds (a text scan of lm-eval's task files finds its config), with the include-path alternative
   (`check_tasks`).

Task lookup: the bundled tasks (tasks/ at the repo root: lsh_lastword, lsh_choice, lsh_ruler_*) and the
user's metric.include_path are indexed first, without lm-eval's own ~10k task files; lm-eval's own index is
built only when a name is not found there (it takes seconds). Indexes are kept per process, so the jobs of
an in-process sweep build them once.
"""
import importlib.util
import json
import logging
import os
import socket
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from lsh_bitnet.errors import ConfigError, require

log = logging.getLogger(__name__)

INSTALL = "pip install -e '.[lm-eval]'"
# We subclass HFLM and read its internals (_model_call, _model_generate, the per-request cache hook), the
# TaskManager of the 0.4.1x rewrite (include_defaults, task_index entries) and log_samples' fields. They
# are 0.4.x internals, checked against 0.4.13; 0.5 may move them. pyproject.toml pins the same range.
SUPPORTED = ((0, 4, 13), (0, 5, 0))
SUPPORTED_TEXT = ">=0.4.13,<0.5"
BUNDLED_TASKS = Path(__file__).resolve().parents[2] / "tasks"
HUB = ("huggingface.co", 443)
# dataset_path values that name a builder reading local files (with dataset_kwargs.data_files), not the hub
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")


def installed_version() -> Optional[str]:
    if importlib.util.find_spec("lm_eval") is None:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lm_eval")
    except PackageNotFoundError:
        return "unknown"


def _version_tuple(text: str) -> Tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts + [0] * (3 - len(parts)))


def require_lm_eval(what: str = "metric=lm_eval") -> str:
    """The installed lm-eval version; ConfigError with the install command when it is missing or outside
    SUPPORTED. Imports nothing of lm-eval (config checks stay fast)."""
    found = installed_version()
    require(found is not None, f"{what} needs EleutherAI's lm-evaluation-harness, an optional extra: install it "
                               f"with {INSTALL} (lm_eval{SUPPORTED_TEXT})")
    if found != "unknown":
        low, high = SUPPORTED
        require(low <= _version_tuple(found) < high,
                f"{what}: lm_eval {found} is installed; this bridge supports lm_eval{SUPPORTED_TEXT} (it relies "
                f"on 0.4.x internals): {INSTALL}, or pip install 'lm_eval{SUPPORTED_TEXT}'")
    return found


def check_metric_config(metric) -> None:
    """Stage 1 (config only): lm-eval installed, and metric.* values that cannot work."""
    require_lm_eval()
    tasks = list(metric.tasks or [])
    require(bool(tasks) and all(isinstance(t, str) and t.strip() for t in tasks),
            f"metric.tasks must name at least one lm-eval task, e.g. metric.tasks=[lsh_lastword] (got {tasks})")
    require(metric.num_fewshot is None or metric.num_fewshot >= 0,
            f"metric.num_fewshot must be >= 0 or null for each task's default (got {metric.num_fewshot})")
    require(metric.limit is None or metric.limit > 0,
            f"metric.limit must be > 0 (documents per task, or a fraction below 1) or null for all "
            f"(got {metric.limit})")
    require(metric.batch_size >= 1, f"metric.batch_size must be >= 1 (got {metric.batch_size})")
    if metric.include_path:
        path = Path(str(metric.include_path)).expanduser()
        require(path.is_dir(), f"metric.include_path={metric.include_path!r} is not a directory: point it at a "
                               f"directory of lm-eval task YAML files")
    require(metric.metadata is None or hasattr(metric.metadata, "keys"),
            f"metric.metadata must be a mapping (e.g. metric.metadata={{target_tokens:2048}}), got {metric.metadata!r}")


# ----------------------------------------------------------------------------- task lookup
def include_paths(metric) -> List[str]:
    """The bundled tasks, then the user's: lm-eval lets later paths override earlier ones."""
    paths = [str(BUNDLED_TASKS)]
    if metric.get("include_path"):
        paths.append(str(Path(str(metric.include_path)).expanduser().resolve()))
    return paths


def task_metadata(metric, seed: Optional[int] = None) -> Dict[str, Any]:
    """What every task is given (lm-eval's --metadata): metric.metadata, plus the run's seed for the generated
    tasks unless metric.metadata sets its own."""
    from omegaconf import OmegaConf

    given = metric.get("metadata")
    out = dict(OmegaConf.to_container(given, resolve=True) if OmegaConf.is_config(given) else (given or {}))
    if seed is not None:
        out.setdefault("seed", int(seed))
    return out


_MANAGERS: Dict[str, Any] = {}


def task_manager(paths: List[str], metadata: Dict[str, Any], defaults: bool):
    """A TaskManager over `paths` (and lm-eval's own tasks when `defaults`), built once per process."""
    key = json.dumps([paths, metadata, defaults], sort_keys=True, default=str)
    if key not in _MANAGERS:
        from lm_eval.tasks import TaskManager

        _MANAGERS[key] = TaskManager(include_path=paths, include_defaults=defaults, metadata=metadata)
    return _MANAGERS[key]


def resolve_tasks(metric, metadata: Optional[Dict[str, Any]] = None):
    """The TaskManager that knows every name in metric.tasks: ours alone when it suffices, else with
    lm-eval's own tasks. Unknown names -> ConfigError with close matches and the include-path route."""
    metadata = metadata if metadata is not None else task_metadata(metric)
    names, paths = list(metric.tasks), include_paths(metric)
    local = task_manager(paths, metadata, defaults=False)
    if all(local.match_tasks([n]) for n in names):
        return local
    manager = task_manager(paths, metadata, defaults=True)
    unknown = [n for n in names if not manager.match_tasks([n])]
    if unknown:
        import difflib

        close = sorted({c for n in unknown for c in difflib.get_close_matches(n, manager.all_tasks, 3, 0.75)})
        raise ConfigError(f"metric.tasks: {unknown} is not a task, group or tag lm-eval knows"
                          + (f"; did you mean {close}?" if close else "")
                          + f". Bundled tasks: {sorted(local.all_tasks)}; your own: metric.include_path=<dir of "
                            f"task YAMLs>; lm-eval's: lm-eval ls tasks")
    return manager


def leaf_configs(manager, name: str, seen=None) -> List[Dict[str, Any]]:
    """The raw configs (functions unresolved) of the tasks behind a task, group or tag name."""
    seen = set() if seen is None else seen
    if name in seen:
        return []
    seen.add(name)
    out: List[Dict[str, Any]] = []
    for matched in manager.match_tasks([name]):
        entry = manager.task_index.get(matched)
        if entry is None:
            continue
        kind = entry.kind.name
        if kind in ("TASK", "PY_TASK"):
            out.append({**(entry.cfg or {}), "_yaml_path": str(entry.yaml_path)})
        elif kind == "GROUP":
            subtasks = (entry.cfg or {}).get("task") or []
            for sub in subtasks if isinstance(subtasks, list) else [subtasks]:
                out += leaf_configs(manager, sub, seen) if isinstance(sub, str) else [sub]
        else:  # a tag: the tasks that carry it
            for sub in sorted(entry.tags):
                out += leaf_configs(manager, sub, seen)
    return out


def hub_dataset(cfg: Dict[str, Any]) -> Optional[str]:
    """The hub dataset id a task config downloads, or None when its documents are local or generated."""
    if cfg.get("custom_dataset") or "class" in cfg:
        return None if cfg.get("custom_dataset") else f"(the Python task {cfg.get('task')})"
    path = cfg.get("dataset_path")
    if not path or str(path) in LOCAL_BUILDERS or Path(str(path)).expanduser().exists():
        return None
    return str(path)


_REACHABLE: Dict[str, bool] = {}


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when HF_HUB_OFFLINE / HF_DATASETS_OFFLINE say so, or huggingface.co:443 does not answer in time."""
    if any(os.environ.get(k, "").strip().lower() in ("1", "true", "yes", "on")
           for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
        return False
    if "hub" not in _REACHABLE:
        try:
            socket.create_connection(HUB, timeout=timeout).close()
            _REACHABLE["hub"] = True
        except OSError:
            _REACHABLE["hub"] = False
    return _REACHABLE["hub"]


def hub_cached(dataset_id: str) -> bool:
    """Whether a copy of the hub dataset is on disk (the hub cache or the datasets cache)."""
    hub = Path(os.environ.get("HF_HUB_CACHE") or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "hub")
    datasets_cache = Path(os.environ.get("HF_DATASETS_CACHE")
                          or Path(os.environ.get("HF_HOME", "~/.cache/huggingface")) / "datasets")
    names = [hub.expanduser() / f"datasets--{dataset_id.replace('/', '--')}",
             datasets_cache.expanduser() / dataset_id.replace("/", "___")]
    return any(p.is_dir() and any(p.iterdir()) for p in names)


def _offline_lookup(names: List[str]) -> Optional[Dict[str, List[Dict[str, Any]]]]:
    """Offline, the configs of lm-eval's own tasks named in `names`, found by a text scan of its task files
    (under a second) instead of its full index (parsing ~14k YAML files: tens of seconds on a busy machine).
    None when a name is not a plain task there (a group, a tag, a typo): the full index decides then."""
    import re

    root = Path(importlib.util.find_spec("lm_eval").origin).parent / "tasks"
    found: Dict[str, List[Dict[str, Any]]] = {}
    files = sorted(root.rglob("*.yaml"))
    for name in names:
        line = re.compile(rf"^task:\s*['\"]?{re.escape(name)}['\"]?\s*$", re.M)
        paths = [f for f in files if name in f.name or name in f.read_text(errors="ignore")]
        paths = [f for f in paths if line.search(f.read_text(errors="ignore"))]
        if not paths:
            return None
        from lm_eval.tasks._yaml_loader import load_yaml

        found[name] = [load_yaml(paths[0], resolve_func=False)]
    return found


def check_tasks(metric) -> None:
    """Stage 2 (before the model loads): every task is known, and its documents can be read."""
    local = task_manager(include_paths(metric), task_metadata(metric), defaults=False)
    missing = [n for n in metric.tasks if not local.match_tasks([n])]
    configs = _offline_lookup(missing) if missing and not hub_reachable() else None
    if configs is None:
        manager = resolve_tasks(metric)
        configs = {name: leaf_configs(manager, name) for name in metric.tasks}
    needs_hub = {}
    for name, leaves in configs.items():
        for cfg in leaves:
            dataset = hub_dataset(cfg)
            if dataset is not None and not hub_cached(dataset):
                needs_hub.setdefault(name, dataset)
    if needs_hub and not hub_reachable():
        listed = ", ".join(f"{name} (dataset_path={dataset})" for name, dataset in needs_hub.items())
        raise ConfigError(
            f"metric.tasks: {listed} read their documents from the Hugging Face hub, which cannot be reached "
            f"(offline, or HF_HUB_OFFLINE/HF_DATASETS_OFFLINE set) and holds no cached copy. Run tasks whose "
            f"data is local instead: metric.include_path=<dir of task YAMLs with local data files> (lm-eval's "
            f"--include_path), or the bundled offline tasks in {BUNDLED_TASKS} (e.g. metric.tasks=[lsh_lastword]); "
            f"or run once online so the dataset is cached")


def tasks_fingerprint(metric) -> Dict[str, Any]:
    """The resume key's data part for metric=lm_eval: the content hash of every file on the include paths
    (task YAMLs, their Python, their data files: editing one reruns the job) and lm-eval's version. Hub
    datasets are named by id in their task configs; the bundled tasks are also in the code version."""
    import hashlib

    digest = hashlib.sha256()
    for root in include_paths(metric):
        base = Path(root)
        for path in sorted(p for p in base.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
            digest.update(str(path.relative_to(base)).encode() + b"\0" + path.read_bytes() + b"\0")
    return {"lm_eval": installed_version(), "tasks": list(metric.tasks), "include_files": digest.hexdigest()[:16]}


# ----------------------------------------------------------------------------- generated tasks
# The tokenizer of the model under evaluation, for generated tasks that size their prompts in its tokens
# (lsh_ruler_*): set by whoever hands a model to lm-eval (tasks/_lm_eval.py, lm_eval_model.py). A task's
# metadata `tokenizer` (a name or local path) takes precedence.
_CURRENT: Dict[str, Any] = {}


def set_current_tokenizer(tokenizer) -> None:
    _CURRENT["tokenizer"] = tokenizer


def task_tokenizer(metadata: Dict[str, Any], task: str):
    """The tokenizer a generated task sizes its prompts with: metadata `tokenizer` (or lm-eval's
    `pretrained`), else the model under evaluation's; ConfigError when there is neither."""
    name = metadata.get("tokenizer") or metadata.get("pretrained")
    if isinstance(name, str) and name:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(name)
    require("tokenizer" in _CURRENT,
            f"{task} sizes its prompts in the evaluated model's tokens and found no tokenizer: run it through "
            f"metric=lm_eval or --model lsh-bitnet, or pass one: --metadata '{{\"tokenizer\": \"<name or path>\"}}'")
    return _CURRENT["tokenizer"]
