"""`run(cfg) -> dict`: one evaluation, from a composed config to results.json. Tests call it directly."""
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.results import (RESULTS_FILE, SCHEMA_VERSION, config_hash, error_record, provenance,
                                read_results, utc_now, versions, write_json_atomic)
from lsh_bitnet.validate import validate_config


def default_cache_dir(cfg: DictConfig) -> Path:
    if cfg.get("cache_dir"):
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()


def _job_info(output_dir: Path) -> Dict[str, Any]:
    try:
        from hydra.core.hydra_config import HydraConfig

        hc = HydraConfig.get()
        return {"name": hc.job.name, "num": hc.job.get("num"), "override_dirname": hc.job.override_dirname,
                "overrides": list(hc.overrides.task), "output_dir": str(output_dir)}
    except ValueError:  # not under Hydra (tests calling run() directly)
        return {"name": "run", "num": None, "override_dirname": "", "overrides": [], "output_dir": str(output_dir)}


def hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS; process-wide peak (a sweep in one process only grows).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def run(cfg: DictConfig, output_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Validate, load, patch, evaluate; always leave a results.json (ok or failed) in output_dir."""
    started = time.perf_counter()
    output_dir = Path(output_dir) if output_dir is not None else hydra_output_dir()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    chash = config_hash(resolved)
    record: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "status": "running", "error": None,
        "job": _job_info(output_dir), "config": resolved, "config_hash": chash,
        "metrics": None, "cost": None, "diagnostics": None, "timing": None, "memory": None,
        "versions": versions(), "provenance": {**provenance(), "started_at": utc_now(), "finished_at": None},
    }
    results_path = output_dir / RESULTS_FILE

    previous = read_results(output_dir)
    if cfg.get("resume", True) and previous and previous.get("status") == "ok" and previous.get("config_hash") == chash:
        print(f"[lsh-bitnet] resume: {results_path} is ok for this config, skipping", flush=True)
        return {**previous, "resumed": True}

    write_json_atomic(results_path, record)
    try:
        validate_config(cfg)  # cheap checks before anything expensive
        if cfg.get("fail_on_purpose"):
            raise RuntimeError("fail_on_purpose=true: this job fails by request (testing failure handling)")
        record.update(_evaluate(cfg, default_cache_dir(cfg)))
        record["status"] = "ok"
    except BaseException as exc:  # KeyboardInterrupt too: the file must say what happened
        record["status"] = "failed"
        record["error"] = error_record(exc)
        raise
    finally:
        record["provenance"]["finished_at"] = utc_now()
        timing = record.get("timing") or {}
        timing["wall_s"] = time.perf_counter() - started
        record["timing"] = timing
        record["memory"] = {**(record.get("memory") or {}), "peak_rss_bytes": _peak_rss_bytes()}
        write_json_atomic(results_path, record)
    return record


def _evaluate(cfg: DictConfig, cache_dir: Path) -> Dict[str, Any]:
    import torch

    from lsh_bitnet.attention import patch_model
    from lsh_bitnet.models import load_model_cached

    torch.manual_seed(cfg.seed)
    loaded = load_model_cached(cfg.model, cache_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    accelerator = torch.cuda.is_available() and next(model.parameters()).is_cuda
    if accelerator:
        torch.cuda.reset_peak_memory_stats()

    patch = patch_model(model, cfg.attention, cfg.hasher)
    try:
        eval_start = time.perf_counter()
        metrics = _run_metric(cfg, model, tokenizer, cache_dir)
        eval_s = time.perf_counter() - eval_start
        cost, diagnostics = patch.cost_summary(), patch.diagnostics_summary()
        compile_timing = patch.timing_summary()  # flex branch: compile_s / compiles, merged into timing below
    finally:
        patch.unpatch()  # the model may be reused by the next job of an in-process sweep
    tokens = metrics.get("tokens") or 0
    return {
        "metrics": metrics, "cost": cost, "diagnostics": diagnostics, "model_info": loaded.info,
        "timing": {"load_s": loaded.info.get("load_s"), "eval_s": eval_s,
                   "tokens_per_s": tokens / eval_s if eval_s > 0 else None, **compile_timing},  # flex branch
        "memory": {"peak_accelerator_bytes": torch.cuda.max_memory_allocated() if accelerator else None},
    }


def _run_metric(cfg: DictConfig, model, tokenizer, cache_dir: Path) -> Dict[str, Any]:
    if cfg.metric.name == "perplexity":
        from lsh_bitnet.data import load_text, token_stream
        from lsh_bitnet.metrics.perplexity import evaluate_perplexity

        text = load_text(cfg.dataset, cache_dir)
        stream = token_stream(text, tokenizer, cache_dir, tokenizer_id=str(cfg.model.name_or_path or cfg.model.name))
        return evaluate_perplexity(model, stream, cfg.eval)
    if cfg.metric.name == "synthetic_accuracy":
        from lsh_bitnet.data.synthetic import make_samples
        from lsh_bitnet.metrics.synthetic import evaluate_synthetic

        return evaluate_synthetic(model, tokenizer, make_samples(cfg.dataset), cfg.metric, cfg.eval)
    raise ValueError(f"metric.name={cfg.metric.name!r} is not known: use metric=perplexity or metric=synthetic_accuracy")
