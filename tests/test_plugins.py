"""Plug-ins through the `lsh_bitnet.plugins` entry points: examples/plugin, pip-installed for real (into a
directory of this test session, so no other test sees it), runs its rule, hasher and task through launch.py,
the collector and --paired-with, exactly as a built-in would.
"""
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO_ROOT

EXAMPLE = REPO_ROOT / "examples" / "plugin"
TEXT = " ".join(f"Sentence {i} tells of the {['red', 'old', 'calm', 'tall'][i % 4]} river near town {i % 7}."
                for i in range(300))
TINY = ["model=tiny_bitnet", "dataset=text_file", "metric=perplexity", "eval.seq_len=64", "eval.max_batches=2",
        "eval.progress=false"]


@pytest.fixture(scope="module")
def plugin_path(tmp_path_factory):
    """examples/plugin installed by pip (its pyproject, its entry point) into a directory put on PYTHONPATH."""
    target = tmp_path_factory.mktemp("site")
    source = tmp_path_factory.mktemp("src") / "plugin"  # a copy: setuptools leaves build/ beside what it builds
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    out = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                          "--target", str(target), str(source)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert list(target.glob("lsh_bitnet_example_plugin-*.dist-info/entry_points.txt"))
    return target


def _run(args, plugin_path=None, timeout=600):
    env = dict(os.environ)
    if plugin_path is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(plugin_path), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=timeout)


def test_plugin_options_are_listed_by_help_and_follow_the_run_seed(plugin_path):
    out = _run(["launch.py", "--help"], plugin_path)
    assert out.returncode == 0, out.stderr[-2000:]
    listing = out.stdout.split("== Config groups", 1)[1].split("== Config", 1)[0]  # the group lists only
    groups = {line.split(":")[0].strip(): line for line in listing.splitlines() if ":" in line}
    assert "strided" in groups["attention"] and "sparse_sign" in groups["hasher"]
    cfg = _run(["launch.py", "--cfg", "job", "attention=strided", "hasher=sparse_sign", "seed=7"], plugin_path)
    assert cfg.returncode == 0, cfg.stderr[-2000:]
    assert "stride: 16" in cfg.stdout and "density: 0.3333" in cfg.stdout
    # the option stored from the schema makes hasher.seed follow `seed`, as conf/hasher/*.yaml do
    assert "seed: ${seed}" in cfg.stdout or "seed: 7" in cfg.stdout
    # without the plug-in, the option does not exist and Hydra says which ones do
    missing = _run(["launch.py", "--cfg", "job", "attention=strided"])
    assert missing.returncode != 0 and "strided" in missing.stderr


def test_plugin_checks_run_before_torch_and_name_the_key(plugin_path):
    bad = _run(["launch.py", "attention=strided", "attention.stride=0"], plugin_path)
    assert bad.returncode != 0 and "attention.stride must be >= 1" in bad.stdout + bad.stderr
    sampling = _run(["launch.py", "attention=lsh", "hasher=sparse_sign", "attention.estimator=sampling",
                     "attention.n_tables=2", "attention.min_collisions=2"], plugin_path)
    said = sampling.stdout + sampling.stderr
    assert sampling.returncode != 0 and "hasher=sparse_sign declares none" in said


def test_plugin_rule_and_hasher_run_collect_and_pair_with_full(plugin_path, tmp_path, cache_dir):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    sweep = tmp_path / "sweep"
    out = _run(["launch.py", "-m", *TINY, f"dataset.path={text}", f"cache_dir={cache_dir}",
                "attention=full,strided,lsh", "hasher=sparse_sign", "hasher.n_bits=2", f"hydra.sweep.dir={sweep}"],
               plugin_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    records = {json.loads(p.read_text())["config"]["attention"]["name"]: json.loads(p.read_text())
               for p in sweep.rglob("results.json")}
    assert set(records) == {"full", "strided", "lsh"} and all(r["status"] == "ok" for r in records.values())
    strided, lsh = records["strided"]["cost"], records["lsh"]["cost"]
    assert 0 < strided["comparison_ratio"] < 1 and strided["selection_ops"] == 0 and strided["hash_ops"] == 0
    assert 0 < lsh["comparison_ratio"] < 1 and lsh["hash_ops"] > 0  # the plug-in hasher's ops_for, counted
    assert records["strided"]["versions"].get("plugins", {}).get("example") == "lsh_bitnet_example"

    collected = _run(["-m", "lsh_bitnet.collect", str(sweep), "--paired-with", "full", "--no-plot"], plugin_path)
    assert collected.returncode == 0, collected.stderr[-3000:]
    rows = {r["attention"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert rows["lsh"]["family"] == "lsh/sparse_sign" and rows["strided"]["family"] == "strided"
    assert float(rows["strided"]["paired_n"]) == 2 and rows["strided"]["paired_with"]
    assert float(rows["strided"]["stride"]) == 16 and rows["lsh"]["density"] != ""  # columns from the plug-in's schemas

    # a reader without the plug-in still collects the runs (its rules are unknown there, not fatal)
    plain = _run(["-m", "lsh_bitnet.collect", str(sweep), "--no-plot", "--out", str(tmp_path / "plain")])
    assert plain.returncode == 0, plain.stderr[-3000:]
    assert {r["attention"] for r in csv.DictReader((tmp_path / "plain" / "summary.csv").open())} == set(records)


def test_plugin_task_with_its_own_dataset_runs_collects_and_pairs(plugin_path, tmp_path, cache_dir):
    sweep = tmp_path / "task"
    out = _run(["launch.py", "-m", "model=tiny_bitnet", "metric=copy_accuracy", "dataset=random_copy",
                "dataset.n_samples=3", "dataset.length=12", "eval.progress=false", f"cache_dir={cache_dir}",
                "attention=full,strided", f"hydra.sweep.dir={sweep}"], plugin_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    records = [json.loads(p.read_text()) for p in sweep.rglob("results.json")]
    assert len(records) == 2 and all(r["status"] == "ok" and r["metrics"]["n_samples"] == 3 for r in records)
    assert all(len((Path(r["job"]["output_dir"]) / "samples.jsonl").read_text().splitlines()) == 3 for r in records)
    collected = _run(["-m", "lsh_bitnet.collect", str(sweep), "--paired-with", "full", "--no-plot"], plugin_path)
    assert collected.returncode == 0, collected.stderr[-3000:]
    rows = {r["attention"]: r for r in csv.DictReader((sweep / "summary.csv").open())}
    assert rows["strided"]["metric"] == "copy_accuracy" and float(rows["strided"]["paired_n"]) == 3
    assert rows["strided"]["paired_delta"] != ""
    bad = _run(["launch.py", "metric=copy_accuracy", "dataset=random_copy", "dataset.length=1"], plugin_path)
    assert bad.returncode != 0 and "dataset.length must be >= 2" in bad.stdout + bad.stderr


def test_the_example_plugins_own_tests_pass_with_lsh_bitnet_testing(plugin_path):
    """examples/plugin/tests: its rule against its naive definition (lsh_bitnet.testing.check_rule), its hasher's
    nesting and seeding: what docs/EXTENDING.md tells a plug-in author to run."""
    out = _run(["-m", "pytest", "-q", "-p", "no:cacheprovider", str(EXAMPLE / "tests")], plugin_path)
    assert out.returncode == 0, (out.stdout + out.stderr)[-3000:]
    assert " passed" in out.stdout and "failed" not in out.stdout


def test_a_plugin_that_fails_to_load_is_named(tmp_path):
    site = tmp_path / "site"
    dist = site / "broken_plugin-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lsh_bitnet.plugins]\nbroken = no_such_module_anywhere\n")
    out = _run(["launch.py", "--cfg", "job"], site)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "plug-in 'broken'" in said and "pip uninstall" in said


def test_registry_refuses_a_second_entry_under_a_taken_name():
    from lsh_bitnet.attention.rules.window import WindowAttention
    from lsh_bitnet.registry import RULES, Registry

    RULES.names()  # built-ins registered
    with pytest.raises(ValueError, match="registered twice"):
        RULES.add("window", type("Impostor", (WindowAttention,), {}), origin="plug-in impostor")
    fresh = Registry("thing", "thing")
    with pytest.raises(ValueError, match="identifier"):
        fresh.add("not a name", object())
    assert Path(REPO_ROOT / "docs" / "EXTENDING.md").exists()
