"""Sweep plumbing: deterministic job directory names and the end-of-sweep summary.

A job of a sweep never raises out of the task function (launch.py records the failure in its
results.json and returns), so one failing job never stops or hides the others, whatever the launcher.
At the end of the sweep `SweepSummary` reads every results.json under the sweep dir, prints one line,
and exits non-zero if any job failed.
"""
import hashlib
import json
import re
import sys
from pathlib import Path
from typing import Any, List, Tuple

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

# Long override lists would exceed the 255-byte file name limit: keep a readable head + hash.
MAX_DIRNAME = 240
RESOLVER = "job_dirname"


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
    if not OmegaConf.has_resolver(RESOLVER):
        OmegaConf.register_new_resolver(RESOLVER, job_dirname)


def sweep_status(sweep_dir: Path) -> Tuple[List[Path], List[Tuple[Path, str]]]:
    ok, failed = [], []
    for path in sorted(Path(sweep_dir).rglob("results.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            failed.append((path.parent, f"unreadable results.json: {exc}"))
            continue
        if record.get("status") == "ok":
            ok.append(path.parent)
        else:
            error = (record.get("error") or {}).get("summary") or f"status {record.get('status')!r}"
            failed.append((path.parent, error))
    return ok, failed


class SweepSummary(Callback):
    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        ok, failed = sweep_status(sweep_dir)
        line = f"[lsh-bitnet] sweep {sweep_dir}: {len(ok)} ok, {len(failed)} failed"
        if failed:
            line += ": " + "; ".join(f"{p.name} ({err})" for p, err in failed)
        print(line, flush=True)
        if failed:
            # SystemExit passes through Hydra's run_and_report, which only catches Exception.
            sys.exit(1)
