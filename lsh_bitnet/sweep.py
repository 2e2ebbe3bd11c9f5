"""Sweep plumbing: deterministic job directory names and the end-of-sweep summary.

A job of a sweep never raises out of the task function (launch.py records the failure in its
results.json and returns), so one failing job never stops or hides the others, whatever the launcher.
At the end of the sweep `SweepSummary` reads the results.json of *this* sweep's jobs (a reused sweep
dir may hold older ones), prints one count line, the failures grouped by identical error, and the
collected table, and exits non-zero if any of this sweep's jobs failed.
"""
import hashlib
import json
import logging
import re
import sys
import time
from pathlib import Path
from typing import Any, List, Optional, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.console import group_failures

# Long override lists would exceed the 255-byte file name limit: keep a readable head + hash.
MAX_DIRNAME = 240
RESOLVER = "job_dirname"
# A job belongs to this sweep when Hydra wrote its .hydra/ files after the sweep started; the slack
# covers clocks of SLURM nodes a little behind the submitting host's.
CLOCK_SLACK_S = 5.0
SWEEP_LOG = "sweep.log"


def job_dirname(override_dirname: str) -> str:
    """`attention=lsh,hasher.n_bits=4` -> a safe, deterministic directory name for that job."""
    if not override_dirname:
        return "default"
    # Absolute paths (dataset.path=/data/x/valid.txt) would push the swept keys out of the name:
    # keep their last component, and the hash below keeps two different paths apart.
    shortened = re.sub(r"(?<==)/[^,]*/([^,/]*)", r"\1", override_dirname)
    name = re.sub(r"[^A-Za-z0-9._=,+-]", "_", shortened)
    if shortened != override_dirname or len(name) > MAX_DIRNAME:
        digest = hashlib.sha1(override_dirname.encode()).hexdigest()[:10]
        name = f"{name[:MAX_DIRNAME - 11]}~{digest}"
    return name


def register_resolvers() -> None:
    """Every resolver conf/ uses: job directory names here, --help's in lsh_bitnet.cli."""
    from lsh_bitnet.cli import register_help_resolvers

    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_dirname)
    register_help_resolvers()


def _job_dirs(sweep_dir: Path, since: Optional[float]) -> Tuple[List[Path], int]:
    """(job dirs of the sweep started at `since`, how many older job dirs were left out).

    Every job of a Hydra sweep (resumed ones too) gets its .hydra/ files rewritten when it starts, so
    their time tells this sweep's jobs from a reused dir's older ones. since=None: every job dir.
    """
    dirs = {p.parent for p in sweep_dir.rglob("results.json")}
    dirs |= {p.parent.parent for p in sweep_dir.rglob(".hydra/overrides.yaml") if p.parent.parent != sweep_dir}
    if since is None:
        return sorted(dirs), 0
    mine = []
    for d in sorted(dirs):
        marker = d / ".hydra" / "overrides.yaml"
        stamp = marker if marker.exists() else d / "results.json"
        try:
            if stamp.stat().st_mtime >= since - CLOCK_SLACK_S:
                mine.append(d)
        except OSError:
            continue
    return mine, len(dirs) - len(mine)


def sweep_status(sweep_dir: Path, since: Optional[float] = None) -> Tuple[List[Path], List[Tuple[Path, str]], int]:
    """(ok job dirs, [(failed job dir, one-line error)], older job dirs not counted)."""
    ok, failed = [], []
    dirs, older = _job_dirs(Path(sweep_dir), since)
    for job in dirs:
        try:
            record = json.loads((job / "results.json").read_text())
        except FileNotFoundError:
            failed.append((job, "no results.json: the job died before the runner started"))
            continue
        except (OSError, json.JSONDecodeError) as exc:
            failed.append((job, f"unreadable results.json: {type(exc).__name__}: {exc}"))
            continue
        if record.get("status") == "ok":
            ok.append(job)
        else:
            error = record.get("error")
            summary = error.get("summary") if isinstance(error, dict) else error
            failed.append((job, summary or f"status {record.get('status')!r}"))
    return ok, failed, older


def _logger(sweep_dir: Path) -> logging.Logger:
    """Console and <sweep dir>/sweep.log; not the root logger, which holds the last job's launch.log."""
    log = logging.getLogger("lsh_bitnet.sweep")
    log.setLevel(logging.INFO)
    log.propagate = False
    for handler in list(log.handlers):
        log.removeHandler(handler)
        handler.close()
    console = logging.StreamHandler(sys.stdout)
    console.setFormatter(logging.Formatter("%(message)s"))
    log.addHandler(console)
    try:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        file = logging.FileHandler(sweep_dir / SWEEP_LOG)
        file.setFormatter(logging.Formatter("[%(asctime)s] %(message)s"))
        log.addHandler(file)
    except OSError:
        pass
    return log


class SweepSummary(Callback):
    def __init__(self, collect: bool = True) -> None:
        self.collect = collect
        self.started: Optional[float] = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.started = time.time()

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        log = _logger(sweep_dir)
        ok, failed, older = sweep_status(sweep_dir, self.started)
        if self.collect and (ok or failed):
            self._collect(sweep_dir, log)
        line = f"[lsh-bitnet] sweep {sweep_dir}: {len(ok)} ok, {len(failed)} failed"
        if older:
            line += f" ({older} older job dir(s) in this sweep dir not counted)"
        log.info(line)
        if failed:
            log.info("[lsh-bitnet] failures, grouped by error (full messages: each job's results.json):")
            for entry in group_failures(failed):
                log.info("  %s", entry)
            sys.stdout.flush()
            # SystemExit passes through Hydra's run_and_report, which only catches Exception.
            sys.exit(1)

    @staticmethod
    def _collect(sweep_dir: Path, log: logging.Logger) -> None:
        """The collected tables, as `lsh-bitnet-collect DIR` prints them; a collector error never fails the sweep."""
        try:
            from lsh_bitnet.collect import write_summary

            written = write_summary(sweep_dir)
            tables = [p for name, p in sorted(written.items()) if name.startswith("summary_") and name.endswith(".md")]
            for path in tables:
                log.info("\n## %s\n%s", path.stem.replace("summary_", ""), path.read_text().rstrip())
            log.info("[lsh-bitnet] collected %d files into %s (summary.md, summary.csv, pareto_*.png/pdf/svg)",
                     len(written), sweep_dir)
        except Exception as exc:  # noqa: BLE001  (the sweep's own result must still be reported)
            log.warning("[lsh-bitnet] collector failed (%s: %s); run `lsh-bitnet-collect %s` to retry",
                        type(exc).__name__, exc, sweep_dir)
