"""A task binds a metric to its data: what `metric=<name>` evaluates, and how runs of it are read back.

    from lsh_bitnet.registry import TASKS
    from lsh_bitnet.tasks.base import DatasetOption, SampleRecords, Task, register_dataset

    @TASKS.register                 # key: `name`, the metric option (metric=my_task)
    class MyTask(Task):
        name = "my_task"
        ...

Built-in tasks are the other modules of this package (perplexity, synthetic_accuracy, passkey_accuracy), one
task each; they register on import. Everything that depends on the metric asks the task through the registry
by the name recorded in `config.metric.name`: the config and data checks (validate.py), the runner, the
per-item records (run/samples.py, report/items.py, report/paired.py, report/gap.py), the console line and the
collector's columns and plots. A task module stays torch-free at import (the config checks load it before
torch); its evaluation lives in a module imported inside `evaluate`.
"""
import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Tuple

from lsh_bitnet.config import MetricConfig
from lsh_bitnet.registry import DATASETS, TASKS
from lsh_bitnet.tasks._records import RecordKind, SampleRecords, WindowRecords, guess_record_kind

__all__ = ["DatasetOption", "GenerationTask", "RecordKind", "SampleRecords", "Task", "WindowRecords",
           "dataset_option", "find_task", "record_kind", "register_dataset", "samples_needed", "task_named", "tasks"]


def resolve(target: Any) -> Any:
    """A callable as is; a lazy "module:attr" string imported on first use."""
    if isinstance(target, str):
        module, _, attr = target.partition(":")
        return getattr(importlib.import_module(module), attr)
    return target


# ----------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetOption:
    """One `dataset=<name>` option: its schema and what the data layer needs to know about it.

    `check`, `text` and `source` are callables or lazy "module:attr" strings; none may import torch."""

    name: str  # the option name: dataset=<name>, results.json config.dataset.name
    schema: type  # its dataclass schema (a DatasetConfig subclass whose `name` defaults to `name`)
    check: Any = None  # check(dataset_cfg): cheap checks before anything loads; ValueError naming the key
    text: Any = None  # text(dataset_cfg, split, cache_dir) -> str for a text dataset; None = its task makes items
    source: Any = None  # source(dataset_cfg, cache_dir) -> Optional[Path]: the local file behind it (resume key)
    splits: Tuple[str, ...] = ()  # the values dataset.split may take (() = not split: nothing to check)

    @property
    def is_text(self) -> bool:
        return self.text is not None

    def check_config(self, dataset_cfg) -> None:
        if self.check is not None:
            resolve(self.check)(dataset_cfg)

    def load_text(self, dataset_cfg, split: str, cache_dir: Path) -> str:
        return resolve(self.text)(dataset_cfg, split, cache_dir)

    def source_file(self, dataset_cfg, cache_dir: Path) -> Optional[Path]:
        return resolve(self.source)(dataset_cfg, cache_dir) if self.source is not None else None


def register_dataset(option: DatasetOption) -> DatasetOption:
    """Make `dataset=<option.name>` known (validation, data loading; the integrator's ConfigStore entry)."""
    DATASETS.add(option.name, option)
    return option


def dataset_option(name: Any) -> DatasetOption:
    """The registered option (ConfigError naming the known ones if none); a bare schema registered by a plug-in
    becomes an option without checks whose items its task makes."""
    entry = DATASETS.get(name)
    return entry if isinstance(entry, DatasetOption) else DatasetOption(name=name, schema=entry)


# ----------------------------------------------------------------------------- tasks
def samples_needed(eval_cfg) -> Optional[int]:
    """Items past eval.batch_offset + max_batches * batch_size are never evaluated: not generated (None = all)."""
    if eval_cfg.max_batches is None:
        return None
    return eval_cfg.get("batch_offset", 0) + eval_cfg.max_batches * eval_cfg.batch_size


class Task:
    """The interface (docs/EXTENDING.md). Class attributes describe the task; methods run it."""

    name: str = ""  # metric=<name>: the registry key, results.json config.metric.name
    metric_schema: type = MetricConfig  # the metric group's schema: a MetricConfig subclass with its own fields
    datasets: Tuple[str, ...] = ()  # the dataset options it accepts (`accepts` may decide otherwise)
    record: RecordKind = SampleRecords()  # the kind of per-item record it writes to samples.jsonl
    primary: str = ""  # its primary metrics field: the console line, the table's first value, the frontier's y
    higher_is_better: bool = True  # the direction of `primary` (and of `y_columns`)
    extra_y: Tuple[str, ...] = ()  # more metrics fields plotted beside the primary one, one panel each
    values: Tuple[str, ...] = ()  # the metrics fields the collector's Markdown table shows
    y_columns: Tuple[str, ...] = ()  # fields `lsh-bitnet-collect --metric FIELD` takes as the frontier's y
    ignores: Tuple[str, ...] = ()  # config keys it never reads: set away from their default, a recorded warning

    def accepts(self, dataset: DatasetOption) -> bool:
        """Whether it can be computed on `dataset`."""
        return dataset.name in self.datasets

    def dataset_names(self) -> List[str]:
        """The registered dataset options it accepts (for messages)."""
        return [name for name in DATASETS.names() if self.accepts(dataset_option(name))]

    def check_config(self, cfg) -> None:
        """Checks of the composed config that only this task needs; torch-free; ConfigError naming the key."""

    def check_protocol(self, cfg) -> None:
        """attention.apply_to / eval.sparse_from (SPEC section 3, "Phases"). A task that generates nothing and cuts
        no windows has no decode phase: apply_to=decode would leave every query dense."""
        from lsh_bitnet.config import config_value
        from lsh_bitnet.errors import require

        require(config_value(cfg.eval, "sparse_from") is None,
                f"eval.sparse_from={cfg.eval.sparse_from} is for metric=perplexity (the prompt's end in a window); "
                f"metric={self.name} does not cut windows: set eval.sparse_from=null")
        require(str(config_value(cfg.attention, "apply_to", "all")) == "all",
                f"attention.apply_to=decode makes only generated tokens sparse, and metric={self.name} generates "
                f"nothing: every query would attend fully; set attention.apply_to=all (or use metric=perplexity "
                f"with eval.sparse_from=N, or a generation metric such as passkey_accuracy)")

    def check_data(self, cfg, cache_dir: Path) -> Any:
        """The data, checked before any model loads; returns what `make_items` reads (None: nothing yet)."""
        return None

    def check_positions(self, cfg, max_positions: int, model_name: str) -> List[str]:
        """Its lengths against the model's positions (known > 0): raises for a run that cannot be right, returns
        warnings for one that can."""
        return []

    def make_items(self, cfg, tokenizer, cache_dir: Path, data: Any) -> Any:
        """What `evaluate` scores (a token stream, samples); timed apart from it (timing.data_s)."""
        raise NotImplementedError

    def evaluate(self, cfg, model, tokenizer, items: Any, sink=None) -> Dict[str, Any]:
        """The metrics dict of results.json (with a `tokens` count); one record of kind `record` per item to
        `sink` (a run/samples.py SampleLog) as soon as the item is scored. A "provenance" dict among the
        metrics (e.g. an outside harness's version and task versions) is moved to results.json provenance.
        Records that already carry every cost key (run/samples.py COST_KEYS) keep their own charges."""
        raise NotImplementedError

    def data_label(self, flat: Dict[str, Any]) -> Optional[str]:
        """The collector's `data` column for a run of this task (flat: its config as dotted keys), or None for
        the default: the dataset option, the file behind it and the split."""
        return None

    def data_fingerprint(self, cfg, cache_dir: Path) -> Dict[str, Any]:
        """What identifies the data in the resume key (run/jobs.py): a changed fingerprint reruns the job.
        Default: the dataset's (its source file's size and hash, or its generator config); a task whose items
        come from elsewhere (files of an outside harness) fingerprints those."""
        from lsh_bitnet.data.text import data_fingerprint

        return data_fingerprint(cfg.dataset, cache_dir)


class GenerationTask(Task):
    """A task that prompts and greedily generates an answer: metric.max_new_tokens, no windows."""

    ignores = ("eval.seq_len", "dataset.max_chars")

    def check_config(self, cfg) -> None:
        from lsh_bitnet.errors import require

        require(cfg.metric.max_new_tokens >= 1,
                f"metric.max_new_tokens must be >= 1 (got {cfg.metric.max_new_tokens}): the answer is generated")

    def check_protocol(self, cfg) -> None:
        """Either apply_to: the prompt is the prefill, the generated answer the decode phase."""
        from lsh_bitnet.config import config_value
        from lsh_bitnet.errors import require

        require(config_value(cfg.eval, "sparse_from") is None,
                f"eval.sparse_from={cfg.eval.sparse_from} is for metric=perplexity; metric={self.name} generates its "
                f"answer after the prompt: set eval.sparse_from=null (attention.apply_to=decode makes the prompt "
                f"dense and the answer sparse)")

    def check_positions(self, cfg, max_positions: int, model_name: str) -> List[str]:
        """A generated answer that runs past the positions is a warning: the prompt itself fits, and the last
        few RoPE positions extrapolate."""
        target, new_tokens = cfg.dataset.get("target_tokens"), cfg.metric.get("max_new_tokens")
        if target and new_tokens and target + new_tokens > max_positions:
            return [f"dataset.target_tokens={target} plus metric.max_new_tokens={new_tokens} runs past the "
                    f"{max_positions} positions of {model_name}: the answer's last tokens sit at positions the "
                    f"model was not trained on; dataset.target_tokens={max_positions - new_tokens} keeps it inside"]
        return []


_instances: Dict[Any, Task] = {}


def _instance(entry: Any) -> Task:
    """Registered entries are Task classes (or instances); one instance each (tasks hold no state)."""
    if not isinstance(entry, type):
        return entry
    if entry not in _instances:
        _instances[entry] = entry()
    return _instances[entry]


def task_named(name: Any) -> Task:
    """The task of `metric=<name>`; ConfigError naming the known ones (and the closest) if none."""
    return _instance(TASKS.get(name))


def find_task(name: Any) -> Optional[Task]:
    """The task, or None for a name not registered here (the report side reads runs of plug-ins it may lack)."""
    entry = TASKS.find(name)
    return None if entry is None else _instance(entry)


def tasks() -> List[Task]:
    return [_instance(entry) for _, entry in TASKS.items()]


def record_kind(metric: Any, records: Iterable[Dict[str, Any]] = ()) -> Optional[RecordKind]:
    """The record kind of a run of `metric`: its task's, else the guess from what the records hold."""
    task = find_task(metric)
    if task is not None:
        return task.record
    return guess_record_kind(records, [t.record for t in tasks()])
