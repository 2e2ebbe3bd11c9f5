"""metric=passkey_accuracy on dataset=passkey: exact match of the greedily generated 5-digit key hidden at a chosen
depth of long filler text (Mohtashami & Jaggi 2023), overall and per depth.

The task, torch-free; the evaluation is lsh_bitnet/tasks/_passkey.py, the samples lsh_bitnet/data/passkey.py.
"""
from pathlib import Path
from typing import Any, Dict

from lsh_bitnet.config import PasskeyAccuracyMetricConfig, PasskeyDatasetConfig
from lsh_bitnet.data.passkey import check_passkey_config
from lsh_bitnet.registry import TASKS
from lsh_bitnet.tasks.base import DatasetOption, GenerationTask, SampleRecords, register_dataset, samples_needed

DATASET = register_dataset(DatasetOption("passkey", PasskeyDatasetConfig, check=check_passkey_config))


@TASKS.register
class PasskeyAccuracy(GenerationTask):
    name = "passkey_accuracy"
    metric_schema = PasskeyAccuracyMetricConfig
    datasets = (DATASET.name,)
    record = SampleRecords((("accuracy", "correct"),))
    primary, higher_is_better = "accuracy", True
    values = ("accuracy", "n_samples")
    # `--metric accuracy` keeps choosing the synthetic task's table (as before tasks were objects); this one is
    # `--metric passkey_accuracy`.
    y_columns = ()

    def make_items(self, cfg, tokenizer, cache_dir: Path, data: Any):
        from lsh_bitnet.data.passkey import make_passkey_samples

        return make_passkey_samples(cfg.dataset, tokenizer, stop=samples_needed(cfg.eval))

    def evaluate(self, cfg, model, tokenizer, samples, sink=None) -> Dict[str, Any]:
        from lsh_bitnet.tasks._passkey import evaluate_passkey

        return evaluate_passkey(model, tokenizer, samples, cfg.metric, cfg.eval, sink=sink)
