"""lsh-bitnet entrypoint: `python launch.py [group=option ...] [key=value ...]`, `-m` for sweeps.

A thin Hydra wrapper: composition, output directory and sweeps are Hydra's; the work is
`lsh_bitnet.runner.run(cfg)`, which tests call directly.
"""
import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from lsh_bitnet import config as _schemas  # noqa: F401  (registers the ConfigStore schemas)
from lsh_bitnet.cli import hide_from_completion
from lsh_bitnet.console import install_progress
from lsh_bitnet.runner import run
from lsh_bitnet.sweep import register_resolvers

register_resolvers()
hide_from_completion()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> dict:
    install_progress()  # bars on a terminal; log lines in launch.log, SLURM logs and pipes
    if HydraConfig.get().mode != RunMode.MULTIRUN:
        return run(cfg)  # a single run raises: Hydra prints the error and exits 1
    try:
        return run(cfg)
    except Exception as exc:  # recorded in results.json and in the job's closing log line; the sweep goes on
        return {"status": "failed", "error": f"{type(exc).__name__}: {exc}"}


if __name__ == "__main__":
    main()
