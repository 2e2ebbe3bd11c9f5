"""metric=synthetic_accuracy on dataset=synthetic_ny_adj: which adjective came right before the N-th mention of
New York? Greedy exact match (`accuracy`) and the most likely adjective (`choice_accuracy`), SPEC section 5.

The task, torch-free; the evaluation is lsh_bitnet/tasks/_synthetic.py, the samples lsh_bitnet/data/synthetic.py.
"""
from pathlib import Path
from typing import Any, Dict

from lsh_bitnet.config import SyntheticAccuracyMetricConfig, SyntheticDatasetConfig
from lsh_bitnet.data.synthetic import check_synthetic_config
from lsh_bitnet.registry import TASKS
from lsh_bitnet.tasks.base import DatasetOption, GenerationTask, SampleRecords, register_dataset, samples_needed

DATASET = register_dataset(DatasetOption("synthetic_ny_adj", SyntheticDatasetConfig, check=check_synthetic_config))


@TASKS.register
class SyntheticAccuracy(GenerationTask):
    name = "synthetic_accuracy"
    metric_schema = SyntheticAccuracyMetricConfig
    datasets = (DATASET.name,)
    record = SampleRecords((("accuracy", "correct"), ("choice_accuracy", "choice_correct")))
    primary, higher_is_better = "accuracy", True
    extra_y = ("choice_accuracy",)  # the multiple-choice score reads differently: a panel of its own
    values = ("accuracy", "choice_accuracy", "n_samples")
    y_columns = ("accuracy", "choice_accuracy")

    def make_items(self, cfg, tokenizer, cache_dir: Path, data: Any):
        from lsh_bitnet.data.synthetic import make_samples

        return make_samples(cfg.dataset, tokenizer=tokenizer, stop=samples_needed(cfg.eval))

    def evaluate(self, cfg, model, tokenizer, samples, sink=None) -> Dict[str, Any]:
        from lsh_bitnet.tasks._synthetic import evaluate_synthetic

        return evaluate_synthetic(model, tokenizer, samples, cfg.metric, cfg.eval, sink=sink)
