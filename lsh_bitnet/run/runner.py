"""`run(cfg) -> dict`: one evaluation, from a composed config to results.json. Tests call it directly.

Nothing wrong is ever reported as ok. The steps, each leaving a results.json that says how far it got:
 1. config-only checks, torch not imported yet (a bad value fails in well under 2 s);
 2. the job lock: a second sweep into the same directory skips a job another process is running;
 3. resume: skip only when config, code version, data content and weights fingerprint all match an
    `ok` record, else rerun and say which differed;
 4. data (exists, UTF-8, non-empty, long enough) and model geometry (config.json / GGUF metadata)
    checks, before any weights load;
 5. weights, patch, evaluate; a non-finite metric or non-finite logits make the run `failed`.
SIGTERM / SIGINT / SIGHUP make it `interrupted` (signal named) before the process exits with 128 + the
signal number; SIGUSR2 (SLURM's time-limit warning through submitit) is noted so that the SIGTERM at
the limit is named as such.
If the final write fails, the record goes to stderr and the log, and the run raises (exit code != 0).
"""
import json
import logging
import os
import resource
import signal
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional

from omegaconf import DictConfig, OmegaConf

from lsh_bitnet.run.results import (RESULTS_FILE, SCHEMA_VERSION, code_version, config_hash, error_record,
                                nonfinite_paths, provenance, read_results, strict, utc_now, versions,
                                write_json_atomic)
from lsh_bitnet.console import log_job_header, log_model_loaded, log_model_loading, report_job
from lsh_bitnet.run.jobs import fail_on_purpose, job_lock, resume_key, resume_mismatch
from lsh_bitnet.run.signals import RunInterrupted, hydra_config, own_process_job, signals_recorded
from lsh_bitnet.run.sweep import mark_skipped, register_job
from lsh_bitnet.models.cache import check_cache_dir
from lsh_bitnet.tasks.base import Task, task_named
from lsh_bitnet.validate import check_data, check_model_fit, check_seq_len, validate_fast

log = logging.getLogger(__name__)


class NonFiniteMetricError(RuntimeError):
    """A metric (or the logits behind it) is NaN or infinite."""


class ResultsWriteError(OSError):
    """results.json could not be written; the record went to stderr and the log instead."""


def default_cache_dir(cfg: DictConfig) -> Path:
    if cfg.get("cache_dir"):
        return Path(cfg.cache_dir).expanduser()
    return Path(os.environ.get("LSH_BITNET_CACHE", "~/.cache/lsh_bitnet")).expanduser()


def _job_info(output_dir: Path) -> Dict[str, Any]:
    hc = hydra_config()
    if hc is None:
        return {"name": "run", "num": None, "override_dirname": "", "overrides": [], "output_dir": str(output_dir),
                "sweep_id": None}
    return {"name": hc.job.name, "num": hc.job.get("num"), "override_dirname": hc.job.override_dirname,
            "overrides": list(hc.overrides.task), "output_dir": str(output_dir),
            "sweep_id": os.environ.get("LSH_BITNET_SWEEP_ID")}


def hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    return Path(HydraConfig.get().runtime.output_dir)


def _peak_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS; process-wide peak (a sweep in one process only grows).
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _write_final(path: Path, record: Dict[str, Any]) -> None:
    try:
        write_json_atomic(path, record)
    except OSError as exc:
        dump = json.dumps(strict(record), default=str, allow_nan=False)
        message = (f"[lsh-bitnet] could not write {path} ({type(exc).__name__}: {exc}); status "
                   f"{record['status']}, the finished record follows:\n{dump}")
        log.error(message)  # through logging: the console and the job's launch.log (stderr when none is set up)
        raise ResultsWriteError(exc.errno, f"could not write {path}: {exc} (the record is on stderr)") from exc


def run(cfg: DictConfig, output_dir: Optional[Path] = None) -> Dict[str, Any]:
    """Validate, load, patch, evaluate; always leave a results.json (ok, failed or interrupted) in output_dir."""
    started = time.perf_counter()
    output_dir = Path(output_dir) if output_dir is not None else hydra_output_dir()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    record: Dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "status": "running", "error": None, "warnings": [],
        "job": _job_info(output_dir), "config": resolved, "config_hash": config_hash(resolved), "resume_key": None,
        "metrics": None, "cost": None, "diagnostics": None, "timing": None, "memory": None,
        "versions": versions(),
        "provenance": {**provenance(), "code_version": code_version(), "started_at": utc_now(), "finished_at": None},
    }
    results_path = output_dir / RESULTS_FILE
    # state["sink"]: the run's SampleLog (samples.jsonl in output_dir); on SIGTERM/SIGINT its
    # .partial_metrics() become the record's metrics.
    state: Dict[str, Any] = {"sink": None, "output_dir": output_dir}

    log_job_header(cfg, record["job"])  # launch.log's first lines: overrides, seed, device, model, output dir
    register_job(output_dir)  # this sweep's summary and exit code count this job (a config error too)
    try:
        config_warnings = validate_fast(cfg)  # config only, torch not imported: fails in < 2 s
        cache_dir = default_cache_dir(cfg)
        check_cache_dir(cache_dir, "cache_dir" if cfg.get("cache_dir") or not os.environ.get("LSH_BITNET_CACHE")
                        else "LSH_BITNET_CACHE")  # /proc/x, a read-only mount: named now, not as an OSError later
    except Exception as exc:
        record.update(status="failed", error=error_record(exc))
        _finish(record, results_path, started)
        raise
    _warn(record, config_warnings)

    with job_lock(output_dir) as holder:
        if holder is not None:  # another process runs this job now: computing it twice helps nobody
            log.warning(f"[lsh-bitnet] skip: {output_dir} is being run by {holder}; not running it twice")
            mark_skipped(output_dir, holder)  # the sweep's summary counts it as skipped, not as done
            return {"status": "locked", "locked_by": holder, "job": record["job"]}
        try:
            record["resume_key"] = resume_key(cfg, record, cache_dir)
        except Exception as exc:  # an unreadable data file, say: recorded like any failure
            record.update(status="failed", error=error_record(exc))
            _finish(record, results_path, started)
            raise
        previous = read_results(output_dir)
        if cfg.get("resume", True) and previous and previous.get("status") == "ok":
            differed = resume_mismatch(previous.get("resume_key"), record["resume_key"])
            if not differed:
                log.info(f"[lsh-bitnet] resume: {results_path} is ok for this config, code, data and weights, "
                         f"skipping")
                return {**previous, "resumed": True}
            log.info(f"[lsh-bitnet] resume: rerunning {output_dir}: {differed} differ from its ok results.json")

        write_json_atomic(results_path, record)
        with signals_recorded(state):
            try:
                if fail_on_purpose(cfg):  # the test hook (environment variable LSH_BITNET_FAIL_ON_PURPOSE)
                    raise RuntimeError(fail_on_purpose(cfg))
                from lsh_bitnet.run.samples import SAMPLES_FILE, SampleLog

                task = task_named(cfg.metric.name)  # what metric=<name> evaluates (lsh_bitnet/tasks)
                # samples.jsonl, flushed per item; records of the task's kind
                state["sink"] = SampleLog(output_dir / SAMPLES_FILE, seed=cfg.seed, kind=task.record)
                _evaluate(cfg, task, cache_dir, record, state)
                record["status"] = "ok"
            except RunInterrupted as exc:
                record.update(status="interrupted", error={**error_record(exc), "signal": signal.Signals(exc.signum).name,
                                                           "cause": exc.cause})
                sink = state.get("sink")
                if sink is not None and len(sink):  # metrics over the samples finished so far
                    record["metrics"] = sink.partial_metrics()
                _finish(record, results_path, started)
                if own_process_job():  # a submitit job: return, so the sweep prints its summary
                    log.warning(f"[lsh-bitnet] job interrupted: {exc}")
                    return record
                # The closing line above says what happened; the shell convention says which signal (130
                # for SIGINT, 143 SIGTERM, 129 SIGHUP), with no traceback (SystemExit passes Hydra silently).
                raise SystemExit(128 + exc.signum) from exc
            except BaseException as exc:
                record.update(status="failed", error=error_record(exc))
                sink = state.get("sink")
                if sink is not None and len(sink):  # metrics over the samples finished so far
                    record["metrics"] = sink.partial_metrics()
                _finish(record, results_path, started)
                raise
            finally:
                if state.get("sink") is not None:
                    state["sink"].close()
        _finish(record, results_path, started)
    return record


def _finish(record: Dict[str, Any], results_path: Path, started: float) -> None:
    record["provenance"]["finished_at"] = utc_now()
    timing = record.get("timing") or {}
    timing["wall_s"] = time.perf_counter() - started
    record["timing"] = timing
    record["memory"] = {**(record.get("memory") or {}), "peak_rss_bytes": _peak_rss_bytes()}
    _write_final(results_path, record)
    report_job(record, results_path)  # one log line: metric with interval, ratios, wall time, path


class _LogitWatch:
    """Counts forward passes whose logits hold NaN/inf (greedy accuracy on NaN logits is 0.0, not NaN)."""

    def __init__(self, model):
        self.calls = self.bad = 0
        head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
        self.handle = head.register_forward_hook(self) if head is not None else None

    def __call__(self, module, inputs, output) -> None:
        import torch

        self.calls += 1
        self.bad += int(not torch.isfinite(output).all())

    def remove(self) -> None:
        if self.handle is not None:
            self.handle.remove()


def _warn(record: Dict[str, Any], warnings: List[str]) -> None:
    """Into results.json's `warnings` and the log (console and launch.log)."""
    for warning in warnings:
        record["warnings"].append(warning)
        log.warning(f"[lsh-bitnet] WARNING: {warning}")


def _evaluate(cfg: DictConfig, task: Task, cache_dir: Path, record: Dict[str, Any], state: Dict[str, Any]) -> None:
    checked = check_data(cfg, cache_dir)  # data before the model (calibration file, the task's): no load wasted
    fit_warnings = check_model_fit(cfg, cache_dir)  # config.json / GGUF cache metadata, before the weights
    from lsh_bitnet.models import is_loaded

    if not is_loaded(cfg.model, cache_dir):  # the next seconds are imports and the load: say so first
        log_model_loading(cfg.model, converting=fit_warnings is None)

    import torch

    from lsh_bitnet.attention import patch_model
    from lsh_bitnet.models import load_model_cached
    from lsh_bitnet.stats import seed_everything

    seed_everything(cfg.seed)  # Python, NumPy and torch global RNGs: `seed` is the master seed
    loaded = load_model_cached(cfg.model, cache_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    record["model_info"] = loaded.info
    log_model_loaded(loaded.info)  # the model as loaded, right under the job's header
    if fit_warnings is None:  # no config.json was on disk before the load: the same checks, now from the model
        text_config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        from lsh_bitnet.attention.checks import validate_attention_config

        validate_attention_config(cfg.attention, cfg.hasher, head_dim=loaded.info.get("head_dim"),
                                  n_layers=loaded.info.get("n_layers"))
        fit_warnings = check_seq_len(cfg, getattr(text_config, "max_position_embeddings", None), cfg.model.name)
    _warn(record, fit_warnings)
    accelerator = accelerator_device(model)
    if accelerator is not None:
        torch.cuda.reset_peak_memory_stats(accelerator)  # the model's GPU: model.device=cuda:1 is not cuda:0

    # mean keys for hasher.center=calibration (SPEC section 7); None otherwise
    from lsh_bitnet.attention.centering import centers_for_run

    patch = patch_model(model, cfg.attention, cfg.hasher, centers=centers_for_run(cfg, loaded, cache_dir),
                        sparse_from=cfg.eval.get("sparse_from"))
    watch = _LogitWatch(model)
    try:
        data_start = time.perf_counter()
        # What the task scores (a token stream, samples): timed apart from the evaluation (timing.data_s), so the
        # first job of a sweep, which tokenises, is not slower in eval_s.
        data = task.make_items(cfg, tokenizer, cache_dir, checked)
        data_s = time.perf_counter() - data_start
        eval_start = time.perf_counter()
        sink = state.get("sink")
        if sink is not None:  # per-sample comparisons in samples.jsonl
            sink.track_cost(patch.cost_summary)
        metrics = task.evaluate(cfg, model, tokenizer, data, sink=sink)
        eval_s = time.perf_counter() - eval_start
        record["cost"], record["diagnostics"] = patch.cost_summary(), patch.diagnostics_summary()
        compile_timing = patch.timing_summary()  # flex engine: compile_s / compiles, merged into timing below
    finally:
        watch.remove()
        patch.unpatch()  # the model may be reused by the next job of an in-process sweep
    tokens = metrics.get("tokens") or 0
    record["provenance"].update(metrics.pop("provenance", None) or {})  # a task's own (Task.evaluate)
    record["metrics"] = metrics
    record["timing"] = {"load_s": loaded.info.get("load_s"), "model_cached": loaded.info.get("model_cached"),
                        "data_s": data_s, "eval_s": eval_s,
                        "tokens_per_s": tokens / eval_s if eval_s > 0 else None, **compile_timing}
    record["memory"] = {"peak_accelerator_bytes": torch.cuda.max_memory_allocated(accelerator)
                        if accelerator is not None else None}
    bad = nonfinite_paths(metrics)
    if bad or watch.bad:
        where = f"metrics {', '.join(bad)} not finite" if bad else "metrics finite"
        raise NonFiniteMetricError(
            f"{where}; {watch.bad} of {watch.calls} forward passes gave NaN/inf logits. Likely causes: damaged "
            f"weights (model cache {loaded.info.get('cache_path') or cfg.model.name_or_path}: delete it to "
            f"rebuild), float16 overflow (model.dtype={cfg.model.dtype}: try bfloat16 or float32), or a bug in "
            f"attention={cfg.attention.name} (compare with attention=full)")


def accelerator_device(model):
    """The CUDA device holding the model's parameters (peak memory is read there), or None on CPU."""
    import torch

    device = next(model.parameters()).device
    return device if device.type == "cuda" and torch.cuda.is_available() else None
