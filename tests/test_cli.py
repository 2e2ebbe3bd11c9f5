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


def _jobs(args, baseline):
    from hydra_plugins.lsh_bitnet_sweeper import BaselineSweeper

    sweeper = BaselineSweeper(max_batch_size=None, baseline=baseline)
    (jobs,) = sweeper.split_arguments(OverridesParser.create().parse_overrides(args), None)
    return jobs


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
