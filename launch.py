"""lsh-bitnet entrypoint: `python launch.py [group=option ...] [key=value ...]`, `-m` for sweeps.

A thin Hydra wrapper: composition, output directory and sweeps are Hydra's; the work is
`lsh_bitnet.run.runner.run(cfg)`, which tests call directly.
"""
import atexit
import logging
import os
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lsh_bitnet import config as _schemas  # noqa: F401  (registers the ConfigStore schemas)
from lsh_bitnet.cli import add_override_hints, explain_refused_overrides, hide_from_completion
from lsh_bitnet.console import (install_progress, keep_file_only_lines_off_console, quiet_libraries, report_job,
                                traceback_wanted)
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.run.results import RESULTS_FILE
from lsh_bitnet.run.runner import run
from lsh_bitnet.run.sweep import register_resolvers

register_resolvers()
hide_from_completion()
add_override_hints()  # `dataset.path=~/x.txt`: Hydra's parse error ends with how to quote it
explain_refused_overrides()


# A single run that stopped on a config error exits with this status once Hydra has finished the job.
EXIT_STATUS = {"code": 0}


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    install_progress()  # bars on a terminal; log lines in launch.log, SLURM logs and pipes
    quiet_libraries()
    keep_file_only_lines_off_console()  # the job's header goes to launch.log only
    try:
        record = run(cfg)
    except Exception as exc:  # recorded in results.json and in the job's closing log line
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            if isinstance(exc, ConfigError) and not traceback_wanted():
                # The closing line said it all (the error, its fix, the run dir kept): no traceback, as
                # for Hydra's own composition errors; HYDRA_FULL_ERROR=1 shows it. Exit 1 after the job.
                EXIT_STATUS["code"] = 1
                return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}
            raise  # a single run: Hydra prints the error and its traceback, and exits 1
        if os.environ.get("SUBMITIT_EXECUTOR"):  # a submitit job: make its exit status say so too
            atexit.register(_exit_failed)
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}  # the sweep goes on
    if record.get("resumed"):  # the runner skipped the work: the closing line still says what is there
        report_job(record, Path(HydraConfig.get().runtime.output_dir) / RESULTS_FILE)
    return record


def _exit_failed() -> None:
    """Exit 1 after submitit has saved the job's result, so sacct says FAILED and submitit's log ends
    with the failure, while the sweep still collects every job (submitit reads the saved result)."""
    logging.getLogger("lsh_bitnet").error("[lsh-bitnet] this job failed (error in its results.json): exit status 1")
    for handler in logging.getLogger().handlers + logging.getLogger("submitit").handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)


if __name__ == "__main__":
    main()
    sys.exit(EXIT_STATUS["code"])
