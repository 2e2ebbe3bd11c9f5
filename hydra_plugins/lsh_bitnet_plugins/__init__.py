"""lsh-bitnet's Hydra plugins. Hydra instantiates sweepers and launchers only from the `hydra_plugins`
namespace, so these thin classes live here; their logic is in `lsh_bitnet.sweep`.

- ValidatingSweeper: Hydra's basic sweeper plus our config checks on every job before the first
  starts (conf/config.yaml, hydra.sweeper._target_).
- SlurmLauncher / LocalLauncher: hydra-submitit-launcher's, except that a job which dies without a
  result (scancel, time limit, out of memory, node failure) no longer aborts the whole sweep with a
  traceback: its results.json is marked with the SLURM state, one line says so, and the sweep goes
  on to its summary (conf/launcher/*.yaml).
"""
from typing import Any, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _plugin


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch) -> None:
        super().validate_batch_is_legal(batch)  # Hydra's own: every job composes
        from lsh_bitnet.sweep import check_jobs

        check_jobs(self.hydra_context.config_loader, self.config, batch)


class _DeadJobsRecorded:
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from lsh_bitnet.sweep import dead_jobs_recorded

        with dead_jobs_recorded(self.config):
            return super().launch(job_overrides, initial_job_idx)


class SlurmLauncher(_DeadJobsRecorded, _plugin.SlurmLauncher):
    pass


class LocalLauncher(_DeadJobsRecorded, _plugin.LocalLauncher):
    pass
