"""Bad inputs and faults (issue 25): each fails early, in one line that names the key and the fix, and
nothing is written through a planted link or recorded under the wrong name."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, compose_config
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.run import results as R
from lsh_bitnet.run.runner import run
from lsh_bitnet.validate import validate_fast

TINY_SYN = ["model=tiny_bitnet", "dataset.n_samples=2", "metric.max_new_tokens=2", "eval.progress=false"]
CALIBRATION = ["attention=lsh", "hasher.center=calibration", "hasher.calibration_source=file",
               "hasher.calibration_tokens=100"]
TEXT = "The river runs past the old mill and the mill wheel turns. " * 30


def _py(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def _no_model_loaded(cache) -> bool:
    return not (Path(cache) / "models").exists()


def _special_paths(tmp_path):
    """name -> (path, words the error must use)."""
    (tmp_path / "dir").mkdir()
    os.mkfifo(tmp_path / "fifo")
    os.symlink(tmp_path / "loop_b", tmp_path / "loop_a")
    os.symlink(tmp_path / "loop_a", tmp_path / "loop_b")
    os.symlink(tmp_path / "gone.txt", tmp_path / "dangling")
    return {"missing": (tmp_path / "none.txt", "does not exist"), "dir": (tmp_path / "dir", "is a directory"),
            "fifo": (tmp_path / "fifo", "is not a regular file (a FIFO)"),
            "device": (Path("/dev/zero"), "is not a regular file (a character device)"),
            "loop": (tmp_path / "loop_a", "is a symlink loop"),
            "dangling": (tmp_path / "dangling", "is a broken symlink")}


# ----------------------------------------------------------------------------- paths: said as what they are
@pytest.mark.parametrize("kind", ["dir", "fifo", "device", "loop", "dangling"])
def test_dataset_path_that_is_no_regular_file_is_named_for_what_it_is(kind, tmp_path):
    path, words = _special_paths(tmp_path)[kind]
    cfg = compose_config(["dataset=text_file", "metric=perplexity", f"dataset.path={path}"])
    with pytest.raises(ValueError, match=f"dataset.path='{path}' {words}".replace("(", r"\(").replace(")", r"\)")):
        validate_fast(cfg)


@pytest.mark.parametrize("kind", ["missing", "dir", "device", "fifo"])
def test_calibration_path_is_checked_with_the_config_before_the_model_loads(kind, tmp_path):
    """/dev/urandom as calibration file hung after the model load; a missing one failed there, key unnamed."""
    path, words = _special_paths(tmp_path)[kind]
    path = Path("/dev/urandom") if kind == "device" else path
    cfg = compose_config(TINY_SYN + CALIBRATION + [f"hasher.calibration_path={path}"], cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match=f"hasher.calibration_path={path} {words.split(' (')[0]}"):
        validate_fast(cfg)
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="hasher.calibration_path"):
        run(cfg, output_dir=tmp_path / "run")
    assert time.perf_counter() - start < 10 and _no_model_loaded(tmp_path / "cache")
    assert R.read_results(tmp_path / "run")["status"] == "failed"
    # only where it is read: the same path with another centre, or a variant without hashing, is no error
    validate_fast(compose_config(TINY_SYN + CALIBRATION + [f"hasher.calibration_path={path}", "hasher.center=none"]))
    validate_fast(compose_config(TINY_SYN + CALIBRATION[1:] + [f"hasher.calibration_path={path}"]))


@pytest.mark.parametrize("content, words", [(b"\xff\xfe caf\xe9 " * 50, "not UTF-8"), (b"  \n\n ", "holds no text")])
def test_calibration_text_is_checked_before_the_model_loads(content, words, tmp_path):
    path = tmp_path / "calib.txt"
    path.write_bytes(content)
    cfg = compose_config(TINY_SYN + CALIBRATION + [f"hasher.calibration_path={path}"], cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=f"hasher.calibration_path=.*{words}"):
        run(cfg, output_dir=tmp_path / "run")
    assert _no_model_loaded(tmp_path / "cache")


def test_text_reader_refuses_devices_and_reads_a_bounded_prefix(tmp_path):
    from lsh_bitnet.data.files import read_text_file

    start = time.perf_counter()
    with pytest.raises(ConfigError, match=r"hasher.calibration_path='/dev/urandom' is not a regular file"):
        read_text_file(Path("/dev/urandom"), key="hasher.calibration_path")  # once: read until memory ran out
    assert time.perf_counter() - start < 1
    path = tmp_path / "t.txt"
    path.write_bytes("aé\r\nb".encode())
    assert read_text_file(path) == "aé\r\nb"  # newlines as on disk
    assert read_text_file(path, max_bytes=2) == "a"  # the character cut at the limit is dropped, not an error
    assert read_text_file(path, max_bytes=3) == "aé"


# ----------------------------------------------------------------------------- the calibration-centre cache
def _damage_random(path):
    path.write_bytes(os.urandom(300))


def _damage_truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _damage_content(path):
    import torch

    torch.save({"centers": torch.full((2, 1, 4), float("nan")), "key": {}}, path)


@pytest.mark.parametrize("damage", [_damage_random, _damage_truncate, _damage_content], ids=["random", "truncated",
                                                                                             "nan"])
def test_damaged_centre_cache_is_named_deleted_and_rebuilt(damage, tmp_path, caplog):
    import torch

    from lsh_bitnet.attention.centering import centers_for_run
    from lsh_bitnet.models import load_model_cached

    cache = tmp_path / "cache"
    cfg = compose_config(TINY_SYN + ["attention=lsh", "hasher.center=calibration", "hasher.calibration_tokens=100",
                                     "hasher.calibration_source=generated", "eval.seq_len=32"], cache_dir=cache)
    loaded = load_model_cached(cfg.model, cache)
    first = centers_for_run(cfg, loaded, cache)
    (path,) = cache.rglob("centers-*.pt")
    damage(path)
    again = centers_for_run(cfg, loaded, cache)  # was: IndexError: pop from empty list, naming no file, forever
    assert torch.equal(again, first)
    assert f"calibration centres cache {path} is damaged" in caplog.text
    assert torch.equal(torch.load(path, weights_only=True)["centers"], first)  # rebuilt in place


# ----------------------------------------------------------------------------- the cache directory
@pytest.mark.parametrize("where", ["proc", "file", "env"])
def test_unusable_cache_dir_is_a_config_error_naming_both_settings(where, tmp_path, monkeypatch):
    (tmp_path / "a_file").write_text("x")
    bad = {"proc": "/proc/x", "file": str(tmp_path / "a_file" / "cache"), "env": "/proc/x"}[where]
    if where == "env":
        monkeypatch.setenv("LSH_BITNET_CACHE", bad)
    cfg = compose_config(TINY_SYN, cache_dir=None if where == "env" else bad)
    with pytest.raises(ConfigError) as info:
        run(cfg, output_dir=tmp_path / "run")
    message = str(info.value)
    assert message.startswith(f"{'LSH_BITNET_CACHE' if where == 'env' else 'cache_dir'}={bad} cannot hold the cache")
    assert "cache_dir=" in message and "LSH_BITNET_CACHE" in message
    assert R.read_results(tmp_path / "run")["status"] == "failed"


# ----------------------------------------------------------------------------- the command line
def test_unquoted_tilde_override_gets_a_quoting_hint(tmp_path):
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = _py("launch.py", "dataset=text_file", "metric=perplexity", "dataset.path=~/x.txt",
              f"hydra.run.dir={tmp_path}/run")
    assert out.returncode == 1 and "LexerNoViableAltException" in out.stderr
    hint = "quote the value for Hydra, inside shell quotes: 'dataset.path=\"~/x.txt\"'"
    assert hint in out.stderr and f"dataset.path={Path('~/x.txt').expanduser()}" in out.stderr, out.stderr
    (parsed,) = OverridesParser.create().parse_overrides(['dataset.path="~/x.txt"'])  # the hint's form parses
    assert parsed.value() == "~/x.txt"


def test_samples_file_planted_as_a_symlink_is_replaced_not_written_through(tmp_path):
    from lsh_bitnet.run.samples import SAMPLES_FILE, SampleLog

    target = tmp_path / "precious.txt"
    target.write_text("keep me\n")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / SAMPLES_FILE).symlink_to(target)
    with SampleLog(run_dir / SAMPLES_FILE) as sink:
        sink.write({"index": 0, "tokens": 3, "correct": True})
    assert target.read_text() == "keep me\n"
    path = run_dir / SAMPLES_FILE
    assert not path.is_symlink() and json.loads(path.read_text())["index"] == 0
    assert path.stat().st_mode & 0o777 == R.file_mode()


def test_collector_that_cannot_write_says_so_in_one_line_with_out(tmp_path, monkeypatch, capsys):
    import pandas as pd

    from lsh_bitnet.report.collect import main
    from test_collect import record, write

    write(tmp_path / "sweep", "a", record("full", 1.0, 20.0))

    def read_only(self, path, *args, **kwargs):  # what a read-only run dir does (root ignores chmod)
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(pd.DataFrame, "to_csv", read_only)
    assert main([str(tmp_path / "sweep"), "--no-plot"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Permission denied" in err and "--out DIR" in err, err


# ----------------------------------------------------------------------------- signals
def test_sigterm_in_a_slurm_job_names_scancel_kill_too(monkeypatch):
    """`scancel -s KILL` reaches the job as SIGTERM (SLURM's cancel), so the recorded cause must say so."""
    from lsh_bitnet.run.signals import RunInterrupted, signals_recorded

    monkeypatch.setenv("SLURM_JOB_ID", "12")
    with pytest.raises(RunInterrupted) as info:
        with signals_recorded({}):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert info.value.signum == signal.SIGTERM and "scancel -s KILL" in info.value.cause
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(RunInterrupted) as info:
        with signals_recorded({}):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(5)
    assert "scancel" not in info.value.cause  # not a SLURM job: no scancel to blame


# ----------------------------------------------------------------------------- sweeps: counts and refusals
def test_sweep_summary_counts_ok_failed_interrupted_and_skipped_apart(tmp_path, monkeypatch, capsys, cache_dir):
    from omegaconf import OmegaConf

    from lsh_bitnet.run import sweep
    from lsh_bitnet.run.jobs import job_lock

    sweep_dir = tmp_path / "sweep"
    members = sweep_dir / sweep.MEMBERS_DIR / "s1"
    members.mkdir(parents=True)
    for name, status in (("a", "ok"), ("b", "failed"), ("c", "interrupted"), ("d", "ok")):
        (sweep_dir / name).mkdir()
        error = None if status == "ok" else {"summary": f"{status} for a reason"}
        R.write_json_atomic(sweep_dir / name / "results.json", {"status": status, "error": error})
        (members / name).write_text(str(sweep_dir / name))
    # d: the runner finds its lock held by another process and skips it; the other process's ok is not ours
    monkeypatch.setattr(sweep, "_member_file", lambda output_dir: members / "d")
    cfg = compose_config(TINY_SYN, cache_dir=cache_dir)
    with job_lock(sweep_dir / "d"):
        assert run(cfg, output_dir=sweep_dir / "d")["status"] == "locked"
    status = sweep.sweep_status(sweep_dir, "s1")
    assert [p.name for p in status.ok] == ["a"] and [p.name for p, _ in status.failed] == ["b"]
    assert [p.name for p, _ in status.interrupted] == ["c"] and [p.name for p, _ in status.skipped] == ["d"]
    monkeypatch.setenv(sweep.SWEEP_ID_ENV, "s1")
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        config = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}}})
        sweep.SweepSummary(collect=False).on_multirun_end(config)
    out = capsys.readouterr().out
    assert info.value.code == 1
    assert "1 ok, 1 failed, 1 interrupted, 1 skipped (another process held their lock)" in out, out
    assert "1 x interrupted for a reason" in out and "1 x run by pid" in out


def _fake_slurm(tmp_path, sbatch_stderr: str) -> dict:
    """srun and sbatch stand-ins on PATH: sbatch leaves a mark that it was called, prints stderr, fails."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    lines = " ".join(repr(line) for line in sbatch_stderr.splitlines())  # 'single-quoted' for sh
    (bin_dir / "sbatch").write_text(f"#!/bin/sh\ntouch {tmp_path}/sbatch_called\nprintf '%s\\n' {lines} >&2\nexit 1\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"}


SWEEP = ["-m", "launcher=slurm", "hasher.n_bits=2,4", "attention=lsh", *TINY_SYN]


def test_launcher_time_limit_is_refused_before_submission(tmp_path):
    env = _fake_slurm(tmp_path, "sbatch: error: not expected")
    out = _py("launch.py", *SWEEP, "hydra.launcher.timeout_min=1", f"hydra.sweep.dir={tmp_path}/sweep", env=env)
    assert out.returncode == 1, out.stderr[-2000:]
    assert "hydra.launcher.timeout_min=1 with hydra.launcher.signal_delay_s=30" in out.stderr
    assert "Traceback" not in out.stderr and "UserWarning" not in out.stderr, out.stderr[-3000:]
    assert not (tmp_path / "sbatch_called").exists()  # nothing submitted


@pytest.mark.parametrize("stderr, env, words", [
    ("sbatch: error: CPU count per node can not be satisfied\n"
     "sbatch: error: Batch job submission failed: Requested node configuration is not available", {},
     ["sbatch refused the sweep (CPU count per node can not be satisfied", "hydra.launcher.cpus_per_task=64"]),
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
     {"SLURM_CONF": "/nonexistent/slurm.conf"},
     ["sbatch cannot reach the SLURM controller", "SLURM_CONF=/nonexistent/slurm.conf, which does not exist",
      "bash scripts/slurm/start.sh"]),
], ids=["cpus", "dead-controller"])
def test_sbatch_refusal_is_one_line_naming_the_launcher_field_or_the_fix(stderr, env, words, tmp_path):
    env = {**_fake_slurm(tmp_path, stderr), **env}
    out = _py("launch.py", *SWEEP, "hydra.launcher.cpus_per_task=64", f"hydra.sweep.dir={tmp_path}/sweep", env=env)
    assert out.returncode == 1 and (tmp_path / "sbatch_called").exists()
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    (line,) = [line for line in out.stderr.splitlines() if line.startswith("sbatch ")]  # sbatch's own lines aside
    assert all(w in line for w in words) and line.endswith("Nothing was submitted"), line
