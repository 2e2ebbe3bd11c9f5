"""lsh-bitnet's Hydra plugins. Hydra instantiates sweepers and launchers only from the `hydra_plugins`
namespace, so these thin classes live here; their logic is in `lsh_bitnet.run.slurm`.

(The sweeper, with its config checks before launch, is hydra_plugins/lsh_bitnet_sweeper.)
- SlurmLauncher / LocalLauncher: hydra-submitit-launcher's, except that a job which dies without a
  result (scancel, time limit, out of memory, node failure) no longer aborts the whole sweep with a
  traceback: its results.json is marked with the SLURM state, one line says so, and the sweep goes
  on to its summary (conf/launcher/*.yaml); and (SlurmLauncher) sbatch refusing the array, or no SLURM
  here, ends the sweep with one line naming the hydra.launcher field or the fix, not a traceback.
"""
from typing import Any, Sequence

from hydra_plugins.hydra_submitit_launcher import submitit_launcher as _plugin


class _DeadJobsRecorded:
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from lsh_bitnet.run.slurm import dead_jobs_recorded

        with dead_jobs_recorded(self.config):
            return super().launch(job_overrides, initial_job_idx)


class SlurmLauncher(_DeadJobsRecorded, _plugin.SlurmLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Any:
        from lsh_bitnet.run.slurm import submission_explained

        with submission_explained(self.config.hydra.get("launcher")):
            return super().launch(job_overrides, initial_job_idx)


class LocalLauncher(_DeadJobsRecorded, _plugin.LocalLauncher):
    pass
