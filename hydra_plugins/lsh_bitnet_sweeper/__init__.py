"""Hydra's basic sweeper plus lsh-bitnet's config checks on every job before the first one starts.

Hydra instantiates sweepers only from the `hydra_plugins` namespace, so this thin class lives here;
the checks are `lsh_bitnet.sweep.check_jobs`. Selected in conf/config.yaml (hydra.sweeper._target_).
"""
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper


class ValidatingSweeper(BasicSweeper):
    def validate_batch_is_legal(self, batch) -> None:
        super().validate_batch_is_legal(batch)  # Hydra's own: every job composes
        from lsh_bitnet.sweep import check_jobs

        check_jobs(self.hydra_context.config_loader, self.config, batch)
