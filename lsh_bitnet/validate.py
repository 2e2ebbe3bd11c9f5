"""Checks that need no model: run before anything expensive, each error names the key and the fix.

Types and unknown keys are already rejected by the ConfigStore schemas at composition time; this
module checks values and the combinations of groups.
"""
from omegaconf import DictConfig

from lsh_bitnet.errors import ConfigError  # noqa: F401  (re-exported: callers import it from here too)

METRIC_DATASETS = {
    "perplexity": ("wikitext103", "wikitext2", "enwik8", "text_file"),
    "synthetic_accuracy": ("synthetic_ny_adj",),
    "passkey_accuracy": ("passkey",),
}


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ConfigError(message)


def validate_config(cfg: DictConfig) -> None:
    from lsh_bitnet.attention import validate_attention_config
    from lsh_bitnet.data import check_dataset_config
    from lsh_bitnet.models import check_model_config

    metric, dataset = cfg.metric.name, cfg.dataset.name
    _require(metric in METRIC_DATASETS,
             f"metric={metric!r} is not known: allowed {sorted(METRIC_DATASETS)}")
    fitting_metrics = [m for m, datasets in METRIC_DATASETS.items() if dataset in datasets]
    _require(bool(fitting_metrics), f"dataset={dataset!r} is not known: allowed "
                                    f"{sorted(d for ds in METRIC_DATASETS.values() for d in ds)}")
    _require(dataset in METRIC_DATASETS[metric],
             f"metric={metric} cannot be computed on dataset={dataset}: set dataset= one of "
             f"{list(METRIC_DATASETS[metric])}, or metric={fitting_metrics[0]}")
    # Perplexity predicts seq_len - 1 tokens per window: a window of 1 token predicts nothing.
    _require(cfg.eval.seq_len >= 2, f"eval.seq_len must be >= 2 (got {cfg.eval.seq_len})")
    _require(cfg.eval.batch_size >= 1, f"eval.batch_size must be >= 1 (got {cfg.eval.batch_size})")
    _require(cfg.eval.max_batches is None or cfg.eval.max_batches >= 1,
             f"eval.max_batches must be >= 1 or null for all (got {cfg.eval.max_batches})")
    _require(cfg.eval.get("batch_offset", 0) >= 0,
             f"eval.batch_offset must be >= 0: the windows / samples to skip (got {cfg.eval.get('batch_offset')})")
    check_model_config(cfg.model)
    check_dataset_config(cfg.dataset)
    validate_attention_config(cfg.attention, cfg.hasher)
