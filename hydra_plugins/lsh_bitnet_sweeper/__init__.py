"""`hydra/sweeper=lsh_bitnet`: Hydra's basic grid sweeper plus reference jobs every sweep needs, and our
config checks on every job before the first one starts (identical errors printed once; nothing is
launched if no job is valid; lsh_bitnet.run.sweep.check_jobs), and the launcher's time limit checked before
anything is submitted (lsh_bitnet.run.sweep.check_launcher).

A sweep over LSH knobs (hasher.n_bits x attention.n_tables ...) says nothing without the full-attention
run it is compared with, and that run cannot be a point of the grid (full attention has no n_tables).
`hydra.sweeper.baseline: [attention=full]` adds one job per combination of the swept keys that do not
belong to the attention or hasher groups (one per eval.seq_len, dataset, ...), before the grid; a list
of lists adds several (`[[attention=full], [+variant=window]]`). `+baselines=true` on the command line
(the top-level key `baselines`) adds REFERENCES: full attention, and the window and oracle at a fixed
budget (conf/variant/window.yaml: 4 sinks + 32 local; oracle10.yaml: the best 10% of causal keys).
Hydra finds this plugin because the repository root is on sys.path (launch.py lives there).
"""
import itertools
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override

# Overrides of these keys describe the attention being measured; the baseline replaces them.
ATTENTION_KEYS = ("attention", "hasher", "variant")
# `+baselines=true`: the references every sweep can be read against, one job each per setting.
REFERENCES = [["attention=full"], ["+variant=window"], ["+variant=oracle10"]]


@dataclass
class LSHBitnetSweeperConf:
    _target_: str = "hydra_plugins.lsh_bitnet_sweeper.BaselineSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    # e.g. [attention=full] (one job per setting) or [[attention=full], [+variant=window]]; empty = the plain grid
    baseline: List[Any] = field(default_factory=list)


ConfigStore.instance().store(group="hydra/sweeper", name="lsh_bitnet", node=LSHBitnetSweeperConf,
                             provider="lsh_bitnet")


def _attention_key(override: Override) -> bool:
    key = override.get_key_element().lstrip("+~")
    return key.split(".")[0].split("@")[0] in ATTENTION_KEYS


def _identity(job: List[str]) -> tuple:
    """What a job runs, for spotting a reference the grid already holds: `+variant=full` is attention=full,
    and a job that overrides no attention key runs the default, full attention."""
    words = sorted({"attention=full" if w.lstrip("+") == "variant=full" else w.lstrip("+") for w in job})
    attention = [w for w in words if w.split("=")[0].split(".")[0] in ATTENTION_KEYS]
    return tuple(w for w in words if w not in attention), tuple(attention or ["attention=full"])


class BaselineSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 baseline: Optional[List[Any]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        baseline = [list(b) if not isinstance(b, str) else b for b in (baseline or [])]
        # [attention=full] is one job of several overrides; [[...], [...]] several jobs
        self.baselines = [baseline] if baseline and isinstance(baseline[0], str) else baseline

    def references(self) -> List[List[str]]:
        """hydra.sweeper.baseline's jobs, plus REFERENCES when the sweep sets `+baselines=true`."""
        refs = list(self.baselines)
        config = getattr(self, "config", None)
        if config is not None and config.get("baselines"):
            refs += [r for r in REFERENCES if r not in refs]
        return refs

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        (grid,) = BasicSweeper.split_arguments(overrides, None)
        jobs = []
        references = self.references()
        if references:
            rest = [o for o in overrides if not _attention_key(o)]
            (settings,) = BasicSweeper.split_arguments(rest, None) if rest else ([[]],)
            for setting in settings:
                for reference in references:
                    job = list(setting) + list(reference)
                    if _identity(job) not in [_identity(j) for j in jobs + grid]:  # the user swept it already
                        jobs.append(job)
        jobs += grid
        if max_batch_size is None:
            return [jobs]
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))

    def validate_batch_is_legal(self, batch) -> None:
        from lsh_bitnet.console import config_errors_in_one_line
        from lsh_bitnet.run.sweep import check_jobs, check_launcher

        # Here, not in a callback: Hydra turns a callback's exception into a warning and submits anyway.
        check_launcher(self.config.hydra.get("launcher"))  # a SweepError: one line, exit 1, nothing submitted
        super().validate_batch_is_legal(batch)  # Hydra's own: every job composes
        with config_errors_in_one_line("[lsh-bitnet] sweep: "):  # no traceback under the listed errors
            check_jobs(self.hydra_context.config_loader, self.config, batch)
