"""`hydra/sweeper=lsh_bitnet`: Hydra's basic grid sweeper plus reference jobs every sweep needs, and our
config checks on every job before the first one starts (identical errors printed once; nothing is
launched if no job is valid; lsh_bitnet.run.sweep.check_jobs), and the launcher's time limit checked before
anything is submitted (lsh_bitnet.run.sweep.check_launcher).

A sweep over LSH knobs (hasher.n_bits x attention.n_tables ...) says nothing without the full-attention
run it is compared with, and that run cannot be a point of the grid (full attention has no n_tables).
`hydra.sweeper.baseline: [attention=full]` adds one job per combination of the swept keys that do not
belong to the attention or hasher groups (one per eval.seq_len, dataset, ...), before the grid.
Hydra finds this plugin because the repository root is on sys.path (launch.py lives there).
"""
import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.config_store import ConfigStore
from hydra.core.override_parser.types import Override

# Overrides of these keys describe the attention being measured; the baseline replaces them.
ATTENTION_KEYS = ("attention", "hasher", "variant")


@dataclass
class LSHBitnetSweeperConf:
    _target_: str = "hydra_plugins.lsh_bitnet_sweeper.BaselineSweeper"
    max_batch_size: Optional[int] = None
    params: Optional[Dict[str, str]] = None
    baseline: List[str] = field(default_factory=list)  # e.g. [attention=full]; empty = the plain grid


ConfigStore.instance().store(group="hydra/sweeper", name="lsh_bitnet", node=LSHBitnetSweeperConf,
                             provider="lsh_bitnet")


def _attention_key(override: Override) -> bool:
    key = override.get_key_element().lstrip("+~")
    return key.split(".")[0].split("@")[0] in ATTENTION_KEYS


class BaselineSweeper(BasicSweeper):
    def __init__(self, max_batch_size: Optional[int], params: Optional[Dict[str, str]] = None,
                 baseline: Optional[List[str]] = None) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.baseline = list(baseline or [])

    def split_arguments(self, overrides: List[Override], max_batch_size: Optional[int]) -> List[List[List[str]]]:
        (grid,) = BasicSweeper.split_arguments(overrides, None)
        jobs = []
        if self.baseline:
            rest = [o for o in overrides if not _attention_key(o)]
            (settings,) = BasicSweeper.split_arguments(rest, None) if rest else ([[]],)
            for setting in settings:
                job = list(setting) + self.baseline
                if sorted(job) not in [sorted(j) for j in jobs + grid]:  # the user swept it already
                    jobs.append(job)
        jobs += grid
        if max_batch_size is None:
            return [jobs]
        return list(BasicSweeper.split_overrides_to_chunks(jobs, max_batch_size))

    def validate_batch_is_legal(self, batch) -> None:
        from lsh_bitnet.run.sweep import check_jobs, check_launcher

        # Here, not in a callback: Hydra turns a callback's exception into a warning and submits anyway.
        check_launcher(self.config.hydra.get("launcher"))  # a SweepError: one line, exit 1, nothing submitted
        super().validate_batch_is_legal(batch)  # Hydra's own: every job composes
        check_jobs(self.hydra_context.config_loader, self.config, batch)
