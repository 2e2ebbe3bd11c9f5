"""The command-line surface: --help, completion, the console script, the sweeper's baseline job, make help."""
import os
import shutil
import subprocess
import sys
import tomllib

import pytest
from hydra.core.override_parser.overrides_parser import OverridesParser

from conftest import CONF_DIR, REPO_ROOT, compose_config


def _py(*args, env=None, timeout=120):
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})}, stdin=subprocess.DEVNULL)


def test_help_has_examples_and_hides_schemas_and_test_hooks():
    out = _py("launch.py", "--help")
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "Examples:" in text and "python launch.py attention=lsh hasher.n_bits=4" in text
    options = sorted(p.stem for p in (CONF_DIR / "attention").glob("*.yaml"))  # a new rule adds its own file only
    assert {"full", "lsh", "lsh_forest", "lsh_topk", "oracle_topk", "window"} <= set(options)
    assert f"  attention: {', '.join(options)}" in text
    assert "schema" not in text and "fail_on_purpose" not in text
    assert "\nhasher:\n  name: simhash\n  n_bits: 8" in text  # the composed config is still shown


def test_cfg_job_shows_no_test_hook():
    out = _py("launch.py", "--cfg", "job")
    assert out.returncode == 0, out.stderr
    assert "fail_on_purpose" not in out.stdout and "\nextra: null" in out.stdout


def test_fail_on_purpose_hook_is_an_environment_variable(monkeypatch):
    from lsh_bitnet.run.jobs import FAIL_ENV, fail_on_purpose

    cfg = compose_config(["seed=1"])
    monkeypatch.delenv(FAIL_ENV, raising=False)
    assert fail_on_purpose(cfg) is None
    monkeypatch.setenv(FAIL_ENV, "seed=0")
    assert fail_on_purpose(cfg) is None
    monkeypatch.setenv(FAIL_ENV, "seed=1")
    assert fail_on_purpose(cfg).startswith(f"{FAIL_ENV}=seed=1: this job fails")
    monkeypatch.setenv(FAIL_ENV, "1")
    assert fail_on_purpose(cfg)


def _complete(line):
    out = _py("launch.py", "-sc", "query=bash", env={"COMP_LINE": f"python launch.py {line}", "COMP_POINT": "200"})
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_completion_offers_no_schema_group_nor_test_hooks():
    assert _complete("sch") == [] and _complete("+sch") == []
    top = _complete("")
    assert "attention=" in top and "fail_on_purpose=" not in top and not any(w.startswith("schema") for w in top)
    options = sorted(p.stem for p in (CONF_DIR / "attention").glob("l*.yaml"))  # a new rule adds its own file only
    assert {"lsh", "lsh_forest", "lsh_topk"} <= set(options)
    assert _complete("attention=l") == [f"attention={o}" for o in options]


def test_console_script_runs_launch_py():
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["lsh-bitnet"] == "lsh_bitnet.cli:main" and scripts["lsh-bitnet-collect"] == "lsh_bitnet.report.collect:main"
    out = _py("-c", "import sys; sys.argv = ['lsh-bitnet', '--help']; from lsh_bitnet.cli import main; main()")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("lsh-bitnet: how much accuracy")


def test_console_script_completion_is_for_lsh_bitnet(tmp_path):
    script = "import sys; sys.argv = ['/venv/bin/lsh-bitnet', *sys.argv[1:]]; from lsh_bitnet.cli import main; main()"
    install = _py("-c", script, "-sc", "install=bash")
    assert install.returncode == 0, install.stderr
    assert "complete -p lsh-bitnet" in install.stdout
    assert install.stdout.rstrip().endswith("-F hydra_bash_completion lsh-bitnet")  # not `python`
    query = _py("-c", script, "-sc", "query=bash", env={"COMP_LINE": "lsh-bitnet attention=l", "COMP_POINT": "22"})
    options = sorted(p.stem for p in (CONF_DIR / "attention").glob("l*.yaml"))
    assert query.stdout.split() == [f"attention={o}" for o in options], query.stderr
    out = _py("-c", script, "eval.seq_len=1", f"hydra.run.dir={tmp_path}")  # the job name is still launch
    assert out.returncode == 1 and (tmp_path / "launch.log").exists()


def _jobs(args, baseline, config=None):
    from hydra_plugins.lsh_bitnet_sweeper import BaselineSweeper

    sweeper = BaselineSweeper(max_batch_size=None, baseline=baseline)
    sweeper.config = config  # BasicSweeper.setup sets it to the sweep's composed config
    (jobs,) = sweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return jobs


def test_plus_baselines_adds_full_window_and_oracle_per_setting():
    args = ["attention=lsh", "hasher.n_bits=4,8", "eval.seq_len=128,256", "+baselines=true"]
    config = compose_config(args[:1] + ["eval.seq_len=128", "+baselines=true"])
    assert config.baselines is True
    jobs = _jobs(args, [], config)
    references = [j for j in jobs if "attention=lsh" not in j]
    assert references == [["eval.seq_len=128", "+baselines=True", r] for r in
                          ("attention=full", "+variant=window", "+variant=oracle10")] + \
                         [["eval.seq_len=256", "+baselines=True", r] for r in
                          ("attention=full", "+variant=window", "+variant=oracle10")]
    assert len(jobs) == 6 + 4
    assert len(_jobs(args, [], compose_config(["attention=lsh"]))) == 4  # without it: the plain grid
    # a reference the grid already runs is not added twice (the default attention is full)
    plain = _jobs(["dataset.n_samples=10,20", "+baselines=true"], [], config)
    assert not any("attention=full" in j for j in plain) and len(plain) == 2 + 4
    # the key names no job directory and no config hash: a run with and without it is the same run
    from lsh_bitnet.run.results import config_hash
    from omegaconf import OmegaConf

    with_it, without = (OmegaConf.to_container(compose_config(a), resolve=True) for a in (["+baselines=true"], []))
    assert config_hash(with_it) == config_hash(without)
    hydra = compose_config(["+baselines=true"], return_hydra_config=True).hydra
    assert "baselines" in hydra.job.config.override_dirname.exclude_keys


def test_baseline_jobs_one_per_setting_before_the_grid():
    jobs = _jobs(["dataset=wikitext2", "hasher.n_bits=2,4", "attention.n_tables=1,4", "eval.seq_len=128,256"],
                 ["attention=full"])
    assert jobs[:2] == [["dataset=wikitext2", "eval.seq_len=128", "attention=full"],
                        ["dataset=wikitext2", "eval.seq_len=256", "attention=full"]]
    assert len(jobs) == 2 + 8 and all("attention=full" not in j for j in jobs[2:])
    assert len(_jobs(["hasher.n_bits=2,4"], [])) == 2  # no baseline asked: the plain grid
    assert _jobs(["attention=full,lsh"], ["attention=full"]) == [["attention=full"], ["attention=lsh"]]  # no twin


@pytest.mark.parametrize("preset", sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml")))
def test_every_sweep_preset_includes_full_attention(preset):
    hydra = compose_config([f"experiment={preset}"], return_hydra_config=True).hydra
    params = dict(hydra.sweeper.params or {})
    variants = str(params.get("+variant", "")).split(",")
    assert "full" in variants or "attention=full" in list(hydra.sweeper.get("baseline") or []), preset


@pytest.mark.skipif(shutil.which("make") is None, reason="no make")
def test_make_help_lists_targets():
    out = subprocess.run(["make", "-s", "help"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "make test-fast" in out.stdout and "make test-slurm" in out.stdout and "make quickstart" in out.stdout


def test_docs_name_no_machine_paths():
    """Commands and links in the docs must work from a user's clone: no absolute paths of the machine the
    measurements ran on (they are written relative to the repository, or with a variable such as $WIKITEXT2)."""
    import re

    pattern = re.compile(r"(?<![\w.$])/(work|home|root|scratch|mnt)/|=\.\.\./")
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        bad = [f"{doc.name}:{i}: {line.strip()[:80]}" for i, line in enumerate(doc.read_text().splitlines(), 1)
               if pattern.search(line)]
        assert not bad, bad

