"""Sweeps through hydra-submitit-launcher: the launcher presets, and real SLURM job arrays.

The `slurm` tests need a running cluster; on a single machine `bash scripts/slurm/start.sh` starts
one (and `bash scripts/slurm/stop.sh` stops it). Without `sbatch`, or with the cluster down, they are
skipped with that instruction. The preset tests below them need no cluster and always run.
"""
import csv
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from conftest import CONF_DIR, REPO_ROOT
from lsh_bitnet.run.jobs import FAIL_ENV

START_HINT = "start a single-node cluster with `bash scripts/slurm/start.sh` (stop: scripts/slurm/stop.sh)"
READY_STATES = {"idle", "mixed", "allocated", "completing"}  # a busy node still takes (queues) our jobs
SWEEP_TIMEOUT_S = 300  # 3 tiny jobs take ~10 s; the rest is room for other users' jobs ahead in the queue
ACTIVE_STATES = {"PENDING", "RUNNING", "COMPLETING", "CONFIGURING"}
FINISH_GRACE_S = 30  # a task ends ~1 s after its result file is written; more on a loaded box
TINY = ["model=tiny_bitnet", "dataset=synthetic_ny_adj", "metric=synthetic_accuracy", "dataset.n_samples=2",
        "attention=lsh", "eval.progress=false",
        "hydra.launcher.cpus_per_task=1"]  # fits any node; 2 jobs at once on the 2-CPU test box


def _state_dir() -> Path:
    return Path(os.environ.get("LSH_BITNET_SLURM_DIR", "/tmp/lsh-bitnet-slurm"))


def _slurm_env() -> dict:
    """This environment, plus start.sh's sacct stand-in and slurm.conf if the caller did not export them."""
    env = dict(os.environ)
    state = _state_dir()
    if (state / "bin" / "sacct").exists() and str(state / "bin") not in env.get("PATH", "").split(os.pathsep):
        env["PATH"] = f"{state / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    # Only while start.sh's controller runs (stop.sh removes its pid file): a conf naming a dead
    # controller makes every client command hang instead of failing at once.
    if "SLURM_CONF" not in env and (state / "slurm.conf").exists() and (state / "slurmctld.pid").exists():
        env["SLURM_CONF"] = str(state / "slurm.conf")
    return env


def _cluster_skip_reason(env: dict):
    if shutil.which("sbatch", path=env.get("PATH")) is None:
        return f"sbatch not found (SLURM is not installed): {START_HINT}"
    try:  # sinfo blocks for minutes when slurmctld is down: bound it
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], env=env, capture_output=True, text=True, timeout=3)
    except subprocess.TimeoutExpired:
        return f"SLURM controller not answering (sinfo timed out): {START_HINT}"
    states = {s.strip().rstrip("*~#") for s in out.stdout.split()}
    if out.returncode != 0 or not states & READY_STATES:
        why = out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"node state {sorted(states)}"
        return f"SLURM cluster not up ({why}): {START_HINT}"
    return None


@pytest.fixture(scope="module")
def slurm_env():
    env = _slurm_env()
    reason = _cluster_skip_reason(env)
    if reason:
        pytest.skip(reason)
    return env


def _run(args, env, cwd=REPO_ROOT, timeout=SWEEP_TIMEOUT_S):
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


def _results(sweep: Path) -> dict:
    """{job dir name: results.json record} for every job of a sweep."""
    return {p.parent.name: json.loads(p.read_text()) for p in sweep.rglob("results.json")}


def _array_tasks(sweep: Path) -> dict:
    """{array job id: {task ids}} from submitit's per-task folders `.submitit/<ARRAYJOB>_<TASK>/`."""
    tasks = {}
    for d in (sweep / ".submitit").iterdir():
        m = re.fullmatch(r"(\d+)_(\d+)", d.name)
        if m:
            tasks.setdefault(m.group(1), set()).add(int(m.group(2)))
    return tasks


def _job_states(job_id: str, env: dict) -> dict:
    """{ARRAYJOB_TASK: State} from the sacct stand-in of this repo (reads `scontrol -o show job`).

    Hydra returns as soon as every result file is written; the task itself is still RUNNING (or
    COMPLETING) while its Python exits and srun cleans up, so poll until no task is left active.
    """
    deadline = time.monotonic() + FINISH_GRACE_S
    while True:
        out = _run(["bash", str(REPO_ROOT / "scripts/slurm/sacct"), "-o", "JobID,State,NodeList", "--parsable2",
                    "-j", job_id], env, timeout=30)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "JobID|State|NodeList", out.stdout
        states = {row.split("|")[0]: row.split("|")[1] for row in lines[1:]}
        if not ACTIVE_STATES & set(states.values()) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


# ----------------------------------------------------------------------------- real SLURM
@pytest.mark.slurm
def test_sweep_runs_as_one_job_array_and_collects(slurm_env, tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    out = _run([sys.executable, "launch.py", "-m", "launcher=slurm", *TINY, "hasher.n_bits=2,4,8",
                f"cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"], slurm_env)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]

    # One sbatch call for the whole sweep: one array job id, tasks 0..2, each task a SLURM array task.
    tasks = _array_tasks(sweep)
    assert len(tasks) == 1 and list(tasks.values())[0] == {0, 1, 2}, tasks
    (array_id,) = tasks
    script = (sweep / ".submitit" / array_id / f"{array_id}_submission.sh").read_text()
    assert re.search(r"#SBATCH --array=0-2%\d+", script), script
    assert "export OMP_NUM_THREADS=1" in script  # the preset's setup line made it into the batch script
    assert _job_states(array_id, slurm_env) == {f"{array_id}_{i}": "COMPLETED" for i in range(3)}

    records = _results(sweep)
    assert len(records) == 3, sorted(records)
    for name, record in records.items():
        assert record["status"] == "ok", (name, record.get("error"))
        assert record["provenance"]["slurm_job_id"], name  # ran inside a SLURM job, not in this process
    assert sorted(r["provenance"]["slurm_array_task_id"] for r in records.values()) == ["0", "1", "2"]
    assert sorted(r["config"]["hasher"]["n_bits"] for r in records.values()) == [2, 4, 8]

    collected = _run([sys.executable, "-m", "lsh_bitnet.report.collect", str(sweep), "--no-plot"], slurm_env, timeout=120)
    assert collected.returncode == 0, collected.stderr[-3000:]
    with open(sweep / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(int(r["n_bits"]) for r in rows) == [2, 4, 8], rows
    assert all(r["status"] == "ok" for r in rows), rows


@pytest.mark.slurm
def test_failing_job_is_recorded_failed_and_slurm_says_failed(slurm_env, tmp_path, cache_dir):
    # The plugin's own preset, not ours: `hydra/launcher=submitit_slurm` must work directly too.
    sweep = tmp_path / "sweep"
    out = _run([sys.executable, "launch.py", "-m", "hydra/launcher=submitit_slurm", *TINY, "hasher.n_bits=4",
                "seed=0,1", f"cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"],
               {**slurm_env, FAIL_ENV: "seed=1"})  # the test hook: the job with seed=1 fails
    log = out.stdout[-3000:] + out.stderr[-3000:]
    assert out.returncode != 0, log  # lsh_bitnet.run.sweep: a sweep with a failed job exits non-zero, at the end

    records = {r["config"]["seed"]: r for r in _results(sweep).values()}
    assert set(records) == {0, 1}, log
    assert records[0]["status"] == "ok", records[0].get("error")
    assert records[1]["status"] == "failed"
    assert FAIL_ENV in json.dumps(records[1]["error"])
    # launch.py catches the error so the array goes on, and exits 1 once submitit has saved the job's
    # result: SLURM records the failure, and submitit's log ends with it.
    (array_id,) = _array_tasks(sweep)
    states = _job_states(array_id, slurm_env)
    assert [states[k] for k in sorted(states)] == ["COMPLETED", "FAILED"], states


def _wait_running(sweep: Path, proc, n_samples: int, timeout: float = 180) -> dict:
    """The results.json of the job with dataset.n_samples == n_samples, once it says running."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        for record in _results(sweep).values():
            if record["config"]["dataset"]["n_samples"] == n_samples and record["status"] == "running":
                return record
        time.sleep(0.5)
    raise AssertionError(f"no running job with n_samples={n_samples} after {timeout} s")


LONG = 100000  # tiny-model samples: hours of work, so only a signal ends the job


@pytest.mark.slurm
def test_scancel_of_one_task_is_recorded_interrupted_and_the_sweep_summarises(slurm_env, tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([sys.executable, "launch.py", "-m", "launcher=slurm", *TINY, f"dataset.n_samples=2,{LONG}",
                             f"cache_dir={cache_dir}", f"hydra.sweep.dir={sweep}"], cwd=REPO_ROOT, env=slurm_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        record = _wait_running(sweep, proc, LONG)
        time.sleep(3)  # well into the evaluation
        prov = record["provenance"]
        task = f"{prov['slurm_array_job_id']}_{prov['slurm_array_task_id']}"
        subprocess.run(["scancel", task], env=slurm_env, check=True, timeout=30)
        out, err = proc.communicate(timeout=SWEEP_TIMEOUT_S)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0, out[-2000:] + err[-2000:]
    assert "1 ok, 0 failed, 1 interrupted" in out, out[-2000:] + err[-3000:]  # the summary line, not a traceback
    assert "Traceback" not in err, err[-3000:]
    records = {r["config"]["dataset"]["n_samples"]: r for r in _results(sweep).values()}
    assert records[2]["status"] == "ok"
    cancelled = records[LONG]
    assert cancelled["status"] == "interrupted", cancelled["error"]
    assert cancelled["error"].get("signal") == "SIGTERM" or "CANCELLED" in cancelled["error"].get("slurm_state", "")
    collected = _run([sys.executable, "-m", "lsh_bitnet.report.collect", str(sweep), "--no-plot"], slurm_env, timeout=120)
    assert collected.returncode == 0, collected.stderr[-2000:]
    assert f"n_samples={LONG}" in (sweep / "failed.csv").read_text()


@pytest.mark.slurm
def test_time_limit_is_recorded_interrupted_naming_the_limit(slurm_env, tmp_path, cache_dir):
    # The shortest limit SLURM has (1 minute; signal_delay_s=0 so the check accepts it): the job is
    # stopped by SLURM's SIGTERM at the limit, within its ~30 s enforcement tick.
    sweep = tmp_path / "sweep"
    started = time.monotonic()
    out = _run([sys.executable, "launch.py", "-m", "launcher=slurm", *TINY, f"dataset.n_samples={LONG}",
                "hydra.launcher.timeout_min=1", "hydra.launcher.signal_delay_s=0", f"cache_dir={cache_dir}",
                f"hydra.sweep.dir={sweep}"], slurm_env)
    elapsed = time.monotonic() - started
    assert out.returncode != 0
    assert "0 ok, 0 failed, 1 interrupted" in out.stdout, out.stdout[-2000:] + out.stderr[-3000:]
    (record,) = _results(sweep).values()
    assert record["status"] == "interrupted", record["error"]
    error = record["error"]
    assert "time limit" in error.get("cause", "") or "TIMEOUT" in error.get("slurm_state", ""), error
    assert elapsed >= 60, f"a 1-minute limit must give the job its minute (ended after {elapsed:.0f} s)"


DYING_APP = '''
import os
import hydra

@hydra.main(version_base="1.3", config_path=".", config_name="app")
def main(cfg):
    if cfg.die:
        os._exit(3)  # dies without a result file, like an OOM kill or a segfault
    open(f"done_{cfg.die}", "w").close()

if __name__ == "__main__":
    main()
'''


@pytest.mark.slurm
def test_job_dying_without_result_ends_the_sweep_instead_of_hanging(slurm_env, tmp_path):
    # submitit learns of such a death only from `sacct`; without one the sweep would wait forever.
    if shutil.which("sacct", path=slurm_env["PATH"]) is None:
        pytest.skip(f"no sacct on PATH (start.sh puts a stand-in in {_state_dir() / 'bin'}): {START_HINT}")
    (tmp_path / "app.py").write_text(textwrap.dedent(DYING_APP))
    (tmp_path / "app.yaml").write_text("die: false\n")
    sweep = tmp_path / "sweep"
    out = _run([sys.executable, "app.py", "-m", "hydra/launcher=submitit_slurm", "hydra.launcher.timeout_min=5",
                "die=false,true", f"hydra.sweep.dir={sweep}"], slurm_env, cwd=tmp_path, timeout=180)
    assert out.returncode != 0
    assert "UncompletedJobError" in out.stderr and "FAILED" in out.stderr, out.stderr[-3000:]
    assert (tmp_path / "done_False").exists()  # the healthy job of the same array still ran


def _holders_sh(state_dir: Path, commands: str, env=None) -> subprocess.CompletedProcess:
    """Run `commands` in bash with scripts/slurm/holders.sh sourced for `state_dir` (as_root: plain)."""
    script = (f'STATE_DIR="{state_dir}"; as_root() {{ "$@"; }}; '
              f'source "{REPO_ROOT}/scripts/slurm/holders.sh"; {commands}')
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30, env=env)


@pytest.mark.slurm
def test_a_ci_run_that_lets_go_leaves_the_cluster_to_its_other_holders(slurm_env):
    # Two CI runs on one machine share its one cluster: the first to end must not stop it under the other.
    if not _holders_sh(_state_dir(), "live_holders").stdout.split():
        pytest.skip(f"the running cluster has no holder (started by an older start.sh): {START_HINT}")
    holders = _state_dir() / "holders"
    other, dead = subprocess.Popen(["sleep", "300"]), subprocess.Popen(["sleep", "300"])
    try:
        for proc in (other, dead):
            out = _run(["bash", "scripts/slurm/start.sh", "--hold", str(proc.pid)], slurm_env, timeout=90)
            assert out.returncode == 0, out.stderr[-2000:]
            assert (holders / str(proc.pid)).exists()
        dead.kill()
        dead.wait()  # killed before it could let go: it must not hold the cluster any more
        out = _run(["bash", "scripts/slurm/stop.sh", "--release", str(other.pid)], slurm_env, timeout=90)
        assert out.returncode == 0 and "still held by" in out.stdout, out.stdout + out.stderr
        assert not (holders / str(other.pid)).exists() and not (holders / str(dead.pid)).exists()
        assert _cluster_skip_reason(slurm_env) is None  # the controller still answers
    finally:
        other.kill()
        dead.kill()


# ----------------------------------------------------------------------------- no cluster needed
def test_cluster_holders_count_only_live_processes_and_by_hand(tmp_path):
    alive, dead = subprocess.Popen(["sleep", "300"]), subprocess.Popen(["sleep", "300"])
    try:
        out = _holders_sh(tmp_path, f"add_holder {alive.pid} && add_holder {dead.pid} && add_holder by-hand")
        assert out.returncode == 0, out.stderr
        dead.kill()
        dead.wait()
        (tmp_path / "holders" / "1").write_text("12345\n")  # pid 1 is alive, but started at another time
        out = _holders_sh(tmp_path, "live_holders")
        assert sorted(out.stdout.split()) == sorted([str(alive.pid), "by-hand"]), out.stderr
        assert sorted(p.name for p in (tmp_path / "holders").iterdir()) == sorted([str(alive.pid), "by-hand"])
        out = _holders_sh(tmp_path, f"remove_holder {alive.pid}; live_holders")
        assert out.stdout.split() == ["by-hand"]
        out = _holders_sh(tmp_path, f"add_holder {dead.pid}")  # a dead process cannot take a hold
        assert out.returncode != 0 and "no such process" in out.stderr
    finally:
        alive.kill()
        dead.kill()


def test_cluster_scripts_refuse_unknown_arguments_before_touching_anything():
    for script, args in [("start.sh", ["--hold", "abc"]), ("start.sh", ["--bogus"]), ("stop.sh", ["--release"]),
                         ("stop.sh", ["--bogus"])]:
        out = subprocess.run(["bash", f"scripts/slurm/{script}", *args], cwd=REPO_ROOT, capture_output=True,
                             text=True, timeout=30)
        assert out.returncode == 2 and "ERROR" in out.stderr and args[0].lstrip("-") in out.stderr, (script, out)


# ----------------------------------------------------------------------------- presets (no cluster needed)
def _hydra_launcher(overrides):
    from lsh_bitnet import config as _schemas  # noqa: F401  (ConfigStore schemas)
    from lsh_bitnet.run.sweep import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    return cfg.hydra.launcher


def test_slurm_preset_composes_with_its_documented_fields():
    launcher = _hydra_launcher(["launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.cpus_per_task=3"])
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.timeout_min * 60 >= launcher.signal_delay_s + 60
    assert launcher.mem_gb and launcher.array_parallelism >= 1 and launcher.gpus_per_node is None
    assert launcher.setup == ["export OMP_NUM_THREADS=3"]  # follows cpus_per_task
    assert launcher.submitit_folder.endswith("/.submitit/%j")


def test_local_preset_and_plugin_presets_compose():
    local = _hydra_launcher(["launcher=local"])
    assert local._target_.endswith("LocalLauncher") and local.timeout_min >= 1
    plugin = _hydra_launcher(["hydra/launcher=submitit_slurm"])
    assert plugin._target_.endswith("SlurmLauncher")
    assert _hydra_launcher([]).get("_target_", "").endswith("BasicLauncher")  # no launcher: in-process


def test_sacct_stand_in_answers_submitits_query_from_scontrol(tmp_path):
    # A fake scontrol: one finished array task, one still pending group, one plain job.
    fake = tmp_path / "scontrol"
    fake.write_text(textwrap.dedent("""\
        #!/bin/sh
        case "$4" in
          7) echo "JobId=8 ArrayJobId=7 ArrayTaskId=1 JobName=a b JobState=FAILED NodeList=vm ExitCode=3:0"
             echo "JobId=7 ArrayJobId=7 ArrayTaskId=2-4%2 JobName=x JobState=PENDING NodeList=(null) ExitCode=0:0" ;;
          9) echo "JobId=9 JobName=x JobState=COMPLETED NodeList=vm ExitCode=0:0" ;;
          *) echo "slurm_load_jobs error: Invalid job id specified" >&2; exit 1 ;;
        esac
        """))
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}"}
    out = subprocess.run(["bash", str(REPO_ROOT / "scripts/slurm/sacct"), "-o", "JobID,State,NodeList",
                          "--parsable2", "-j", "7", "-j", "9,404"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["JobID|State|NodeList", "7_1|FAILED|vm", "7_[2-4]|PENDING|None assigned",
                                       "9|COMPLETED|vm"]
    # submitit's own parser expands the pending group into tasks 2, 3 and 4.
    from submitit.slurm.slurm import SlurmInfoWatcher

    info = SlurmInfoWatcher().read_info(out.stdout)
    assert {k: v["State"] for k, v in info.items()} == {"7_1": "FAILED", "7_2": "PENDING", "7_3": "PENDING",
                                                        "7_4": "PENDING", "9": "COMPLETED"}
