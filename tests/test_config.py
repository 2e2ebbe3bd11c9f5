"""Bad input fails fast, before any model loads, with a message naming the key."""
import subprocess
import sys
import time

import pytest
from omegaconf.errors import OmegaConfBaseException
from hydra.errors import ConfigCompositionException, HydraException

from conftest import REPO_ROOT, compose_config
from lsh_bitnet.run.runner import run
from lsh_bitnet.validate import validate_config


def _launch(*args, timeout=60):
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_default_config_composes_to_offline_default():
    cfg = compose_config()
    assert cfg.model.name == "smollm2_135m"
    assert cfg.attention.name == "full"
    assert cfg.dataset.name == "synthetic_ny_adj" and cfg.metric.name == "synthetic_accuracy"


@pytest.mark.parametrize("overrides, key", [
    (["attention=lssh"], "attention"),                       # unknown option
    (["eval.seq_len=long"], "eval.seq_len"),                 # wrong type
    (["attention=lsh", "attention.n_trees=3"], "n_trees"),   # key of another variant
    (["hasher.nbits=4"], "nbits"),                           # mistyped key
])
def test_composition_errors_name_the_key(overrides, key):
    with pytest.raises((HydraException, OmegaConfBaseException, ConfigCompositionException)) as err:
        compose_config(overrides)
    text = str(err.value) + str(err.value.__cause__ or "")
    assert key in text


def test_unknown_option_lists_allowed_values_fast():
    start = time.perf_counter()
    out = _launch("attention=lssh")
    assert time.perf_counter() - start < 15
    assert out.returncode != 0
    for option in ("full", "lsh", "lsh_forest", "oracle_topk", "window"):
        assert option in out.stderr
    assert "schema" not in out.stderr.split("Available options")[1].split("Config search path")[0]


@pytest.mark.parametrize("overrides, key", [
    (["dataset=text_file", "metric=perplexity"], "dataset.path"),           # missing required path
    (["dataset=text_file", "metric=perplexity", "dataset.path=/nonexistent/x.txt"], "dataset.path"),
    (["model=hf", "model.name_or_path=/nonexistent/model_dir"], "model.name_or_path"),
    (["metric=perplexity"], "dataset"),                                     # synthetic data, text metric
    (["eval.seq_len=1"], "eval.seq_len"),
    (["attention=lsh", "hasher=bit_sampling", "hasher.n_bits=-1"], "hasher.n_bits"),
    (["attention=lsh", "attention.n_tables=0"], "attention.n_tables"),
    (["attention=oracle_topk", "attention.k=8", "attention.fraction=0.5"], "attention"),
])
def test_value_errors_name_the_key_before_loading(overrides, key, tmp_path):
    cfg = compose_config(overrides, cache_dir=tmp_path)
    import lsh_bitnet.attention, lsh_bitnet.data, lsh_bitnet.models  # noqa: F401,E401  (import time is not validation time)
    start = time.perf_counter()
    with pytest.raises(Exception) as err:
        validate_config(cfg)
    assert time.perf_counter() - start < 2, "validation must not load anything"
    assert key in str(err.value)


def test_failed_validation_still_writes_failed_results(tmp_path):
    cfg = compose_config(["dataset=text_file", "metric=perplexity", "dataset.path=/nonexistent/x.txt"],
                         cache_dir=tmp_path / "cache")
    with pytest.raises(Exception):
        run(cfg, output_dir=tmp_path / "run")
    import json
    record = json.loads((tmp_path / "run" / "results.json").read_text())
    assert record["status"] == "failed"
    assert "dataset.path" in record["error"]["message"]
    assert record["config"]["dataset"]["path"] == "/nonexistent/x.txt"
    assert record["versions"]["torch"] and record["versions"]["transformers"]


def test_cli_missing_path_fails_fast_with_key(tmp_path):
    start = time.perf_counter()
    out = _launch("dataset=text_file", "metric=perplexity", f"hydra.run.dir={tmp_path}/run",
                  f"cache_dir={tmp_path}/cache")
    assert out.returncode != 0
    assert time.perf_counter() - start < 30
    assert "dataset.path" in out.stdout + out.stderr  # a config error: the run's one closing (log) line


@pytest.mark.parametrize("experiment, sweep_dir, dataset", [
    ("quickstart", "multirun/quickstart", "synthetic_ny_adj"),
    ("quickstart_long", "multirun/quickstart_long", "synthetic_ny_adj"),
    ("bucket_simhash", "multirun/bucket_simhash", "wikitext2"),
    ("bucket_bit_sampling", "multirun/bucket_bit_sampling", "wikitext2"),
    ("forest", "multirun/forest_simhash", "wikitext2"),
    ("baselines", "multirun/baselines", "wikitext2"),
])
def test_experiment_presets_win_over_the_primary_config(experiment, sweep_dir, dataset):
    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.hydra.sweep.dir == sweep_dir  # not the primary config's dated default
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN" and cfg.hydra.sweeper.params
    assert cfg.dataset.name == dataset


def test_quickstart_is_the_short_cut_of_the_long_tour():
    """`make quickstart`'s sweep took 1 min 6 s on 2 idle cores (README; 2 min 19 s with set-up): 5 jobs of 16 samples that still
    tell the story (full, window, plain LSH buckets, LSH top-k, oracle); the 7-job tour is kept by name."""
    from lsh_bitnet.data.synthetic import make_samples  # noqa: F401  (the task the presets run)

    short = compose_config(["experiment=quickstart"], return_hydra_config=True)
    long = compose_config(["experiment=quickstart_long"], return_hydra_config=True)
    variants = str(short.hydra.sweeper.params["+variant"]).split(",")
    assert variants == ["full", "window", "lsh_simhash4", "ltk_soft_f10_raw", "oracle10"]
    assert short.dataset.n_samples * len(variants) <= 100
    assert len(str(long.hydra.sweeper.params["+variant"]).split(",")) == 7 and long.dataset.n_samples == 30
    job = compose_config(["experiment=quickstart", "+variant=ltk_soft_f10_raw"])
    assert job.hasher.center == "none" and job.attention.name == "lsh_topk"  # no calibration pass to wait for

