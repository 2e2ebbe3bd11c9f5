"""Nothing wrong is ever reported as ok (issue 10): non-finite metrics, damaged caches, unknown `+` keys,
lost writes, signals, stale resumes, reused sweep dirs, concurrent sweeps, checks before loading."""
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import REPO_ROOT, compose_config
from lsh_bitnet.run import results as R
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.run.jobs import FAIL_ENV
from lsh_bitnet.run.runner import NonFiniteMetricError, ResultsWriteError, run
from lsh_bitnet.validate import validate_fast

TEXT = "The quick brown fox jumps over the lazy dog near the river bank. " * 120  # 7.8 KB: > 4096 bytes
TINY_PPL = ["model=tiny_bitnet", "dataset=text_file", "metric=perplexity", "eval.seq_len=32", "eval.max_batches=2",
            "eval.progress=false"]
TINY_SYN = ["model=tiny_bitnet", "dataset.n_samples=2", "metric.max_new_tokens=2", "eval.progress=false"]


def _strict_load(path: Path):
    """json.loads that rejects NaN / Infinity, as jq and JavaScript do."""
    def reject(name):
        raise ValueError(f"bare {name} in {path}")
    return json.loads(path.read_text(), parse_constant=reject)


def _launch(*args, timeout=300, **kw):
    return subprocess.run([sys.executable, "launch.py", *args], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=timeout, **kw)


@pytest.fixture
def text_file(tmp_path):
    path = tmp_path / "text.txt"
    path.write_text(TEXT, encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- item 1: finite metrics, strict JSON
def test_results_json_is_strict_json_with_mode_0644(tmp_path):
    old = os.umask(0o022)
    try:
        R.write_json_atomic(tmp_path / "results.json", {"m": {"ppl": float("nan"), "x": [float("inf"), 1.5]}})
    finally:
        os.umask(old)
    record = _strict_load(tmp_path / "results.json")
    assert record == {"m": {"ppl": "NaN", "x": ["Infinity", 1.5]}}
    assert (tmp_path / "results.json").stat().st_mode & 0o777 == 0o644
    assert R.nonfinite_paths({"a": {"b": float("-inf")}, "c": [0.0, float("nan")]}) == ["a.b", "c[1]"]


@pytest.mark.parametrize("overrides", [TINY_PPL, TINY_SYN], ids=["perplexity", "synthetic"])
def test_nan_weight_makes_the_run_failed_not_ok(overrides, text_file, cache_dir, tmp_path):
    import torch

    from lsh_bitnet.models import load_model_cached

    cfg = compose_config(overrides + [f"dataset.path={text_file}"] * ("metric=perplexity" in overrides),
                         cache_dir=cache_dir)
    model = load_model_cached(cfg.model, cache_dir).model
    weight = model.model.norm.weight
    saved = weight.detach().clone()
    try:
        with torch.no_grad():
            weight[0] = float("nan")
        with pytest.raises(NonFiniteMetricError) as err:
            run(cfg, output_dir=tmp_path / "run")
    finally:
        with torch.no_grad():
            weight.copy_(saved)
    record = _strict_load(tmp_path / "run" / "results.json")
    assert record["status"] == "failed"
    assert "NaN/inf logits" in record["error"]["message"] and "model cache" in str(err.value)
    if "metric=perplexity" in overrides:
        assert record["metrics"]["perplexity"] == "NaN"  # kept, as a string: strict JSON
    # the same config with healthy weights is ok: the check is not always-on
    assert run(cfg, output_dir=tmp_path / "run2")["status"] == "ok"


# ----------------------------------------------------------------------------- item 2: caches
def _tiny_entry(cache_dir):
    from lsh_bitnet.models.checks import as_config
    from lsh_bitnet.models.tiny import tiny_cache_entry

    cfg = as_config(compose_config(["model=tiny_bitnet"]).model)
    return cfg, tiny_cache_entry(cfg, cache_dir)


def _damage_overwrite(entry):
    path = entry / "model.safetensors"
    header = 8 + int.from_bytes(path.read_bytes()[:8], "little")
    with open(path, "r+b") as f:  # 50 KB of garbage after the header: header and size intact
        f.seek(header + 1000)
        f.write(os.urandom(50_000))


def _damage_truncate(entry):
    path = entry / "model.safetensors"
    os.truncate(path, path.stat().st_size // 2)


def _damage_meta(entry):
    (entry / "lsh_bitnet_meta.json").unlink()


def _damage_config(entry):
    (entry / "config.json").write_text("{garbage")


@pytest.mark.parametrize("damage", [_damage_overwrite, _damage_truncate, _damage_meta, _damage_config],
                         ids=["overwritten", "truncated", "no-meta", "garbage-config"])
def test_damaged_model_cache_entry_is_detected_and_rebuilt(damage, tmp_path, caplog):
    import torch

    from lsh_bitnet.models import cache, load_model

    cfg, entry = _tiny_entry(tmp_path)
    first = load_model(cfg, tmp_path)
    assert first.info["loaded_from"] == "tiny-build" and cache.entry_problem(entry) is None
    damage(entry)
    assert cache.entry_problem(entry) is not None
    caplog.clear()
    with caplog.at_level("INFO", logger="lsh_bitnet"):
        again = load_model(cfg, tmp_path)
    said = [r.getMessage() for r in caplog.records if "model cache" in r.getMessage()]
    assert again.info["loaded_from"] == "tiny-build", "a damaged entry must be rebuilt, not loaded"
    assert len(said) == 1 and f"model cache {entry} is damaged" in said[0] and "\n" not in said[0]  # one line
    assert cache.entry_problem(entry) is None
    assert load_model(cfg, tmp_path).info["loaded_from"] == "tiny-cache"
    # Against a fresh build (not `first`: its tensors are mmapped from the file the damage rewrote).
    reference = load_model(cfg, tmp_path / "fresh")
    for a, b in zip(reference.model.parameters(), again.model.parameters()):
        assert torch.equal(a, b)


def test_leftover_conversion_tmp_dir_of_a_dead_process_is_removed(tmp_path):
    from lsh_bitnet.models import cache

    models = tmp_path / "models"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    import socket

    leftover = models / f".tmp-demo-abc-{socket.gethostname()}-{dead.pid}-x1y2"
    alive = models / f".tmp-demo-abc-{socket.gethostname()}-{os.getpid()}-x1y2"
    for d in (leftover, alive):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"0" * 100)
    cache.check_or_discard(models / "demo-abc")
    assert not leftover.exists() and alive.exists()


def test_swapped_token_cache_file_is_rebuilt(tmp_path, caplog):
    from conftest import byte_level_bpe
    from lsh_bitnet.data import tokens as K

    tok = byte_level_bpe([TEXT], 300)
    text_a, text_b = TEXT, "Completely different words about rivers and mountains. " * 50
    a = K.token_stream(text_a, tok, tmp_path, "t")
    K.token_stream(text_b, tok, tmp_path, "t")
    files = sorted((tmp_path / "tokens").glob("*.pt"), key=lambda p: p.stat().st_mtime_ns)
    assert len(files) == 2
    files[0].write_bytes(files[1].read_bytes())  # A's cache file now holds B's (valid) stream
    K._MEMORY.clear()
    with caplog.at_level("WARNING", logger="lsh_bitnet"):
        again = K.token_stream(text_a, tok, tmp_path, "t")
    assert "does not match (text_sha256" in caplog.text
    assert again.ids.tolist() == a.ids.tolist()


# ----------------------------------------------------------------------------- item 3: unknown keys with +
@pytest.mark.parametrize("override, valid", [
    ("+attention.n_table=4", "attention.n_tables"),
    ("+hasher.nbits=2", "hasher.n_bits"),
    ("+eval.seqlen=64", "eval.seq_len"),
])
def test_unknown_key_added_with_plus_is_rejected_with_suggestion(override, valid):
    cfg = compose_config(["attention=lsh", override])
    with pytest.raises(ConfigError) as err:
        validate_fast(cfg)
    assert f"did you mean {valid}?" in str(err.value)
    assert override[1:].split("=")[0] in str(err.value)


def test_unknown_key_of_another_option_names_that_option():
    with pytest.raises(ConfigError, match="attention.n_trees exists with attention=lsh_forest"):
        validate_fast(compose_config(["attention=lsh", "+attention.n_trees=3"]))
    with pytest.raises(ConfigError, match="attention.n_tables exists with attention=lsh"):
        validate_fast(compose_config(["+attention.n_table=4"]))  # default attention=full has no n_tables


@pytest.mark.parametrize("args, hint", [
    # every rule with n_tables is named (lsh, lsh_probe, lsh_topk today): the message is read off the registry
    (["attention.n_table=2"], "attention=full has no field 'n_table'; attention.n_tables exists with "
                              "attention=lsh or "),
    (["attention=lsh", "attention.n_table=2"], "attention=lsh has no field 'n_table'; did you mean attention.n_tables?"),
    (["sed=1"], "the top level has no field 'sed'; did you mean seed?"),
])
def test_unknown_key_without_plus_gets_the_hint_of_the_plus_form(args, hint):
    out = _launch(*args, "--cfg", "job", timeout=60)
    assert out.returncode == 1 and hint in out.stderr, out.stderr[-2000:]
    assert "To append to your config use +" not in out.stderr  # that form would be refused as well
    assert "use +extra.note=x" in _launch("extra.note=x", "--cfg", "job", timeout=60).stderr  # free-form: Hydra's advice


def test_free_form_extra_and_declared_keys_pass():
    assert validate_fast(compose_config(["attention=lsh", "extra={note: hi, any: {nested: 1}}"])) == []


@pytest.mark.parametrize("args, message, recorded", [
    (["attention=lsh", "+attention.n_table=4"], "did you mean attention.n_tables?", True),
    (["eval.seq_len=1"], "eval.seq_len must be >= 2", True),
    (["attention=lsh", "attention.layers=[]"], "attention.layers=[] patches no layer", True),
    (["model.dtype=fp16"], "expected one of [auto, float32, bfloat16, float16]", False),  # refused at composition
    (["attention=lsh", "hasher.n_bits=100"], "hasher.n_bits must be in [0, 62]", True),
    (["attention=lsh", "attention.engine=flex", "attention.min_collisions=2"],
     "attention.engine=flex cannot run attention.min_collisions=2", True),
    (["attention=oracle_topk", "attention.k=8", "attention.fraction=0.1"], "needs exactly one of attention.k", True),
    (["attention=lsh", "hasher.center=mean"], "expected one of [none, calibration, prompt]", False),  # an Enum
], ids=["plus-typo", "seq_len", "layers", "dtype", "n_bits", "flex-m-of-L", "k-and-fraction", "center"])
def test_cli_value_error_fails_fast_without_importing_torch(args, message, recorded, tmp_path):
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-X", "importtime", "launch.py", *args, f"hydra.run.dir={tmp_path}/run",
                          f"cache_dir={tmp_path}/cache"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    elapsed = time.perf_counter() - start
    assert out.returncode != 0
    # Hydra's composition errors go to stderr; ours are the run's closing log line (stdout), no traceback
    assert message in out.stdout + out.stderr, out.stdout[-2000:] + out.stderr[-2000:]
    imported = {line.split("|")[-1].strip() for line in out.stderr.splitlines() if line.startswith("import time:")}
    assert "torch" not in imported and "transformers" not in imported, "config errors must not import torch"
    assert elapsed < 10, elapsed  # 1-1.5 s measured (load 9 on 2 cores); room for a loaded CI box
    if recorded:
        assert _strict_load(tmp_path / "run" / "results.json")["status"] == "failed"


def test_every_registered_rule_and_hasher_runs():
    """The registry is the one list the torch-free checks and the implementations share: every hasher it names
    builds and hashes, and every rule's engines are engines that exist."""
    import torch

    from lsh_bitnet.attention.checks import ENGINES
    from lsh_bitnet.attention.hashers import build_hasher
    from lsh_bitnet.registry import HASHERS, RULES

    for name in HASHERS.names():
        assert build_hasher(name, 2, 8, 1, 1, 0, 0).codes(torch.randn(1, 1, 3, 8)).shape == (1, 1, 3, 1), name
    for name, rule in RULES.items():
        assert "masked" in rule.engines and set(rule.engines) <= set(ENGINES), name


def test_importing_the_checks_imports_no_torch():
    code = ("import sys; import lsh_bitnet.attention.checks, lsh_bitnet.validate; "
            "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_public_names_register_the_attention_function():
    out = subprocess.run([sys.executable, "-c", "from lsh_bitnet.attention import patch_model; "
                          "from transformers import AttentionInterface; "
                          "print('lsh_bitnet' in AttentionInterface._global_mapping)"],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "True", out.stderr[-2000:]


# ----------------------------------------------------------------------------- item 4: lost writes, signals
def test_failed_final_write_puts_the_record_in_the_log_and_raises(text_file, cache_dir, tmp_path, monkeypatch, caplog):
    import lsh_bitnet.run.runner as runner

    calls = []
    real = runner.write_json_atomic

    def flaky(path, payload):
        calls.append(payload["status"])
        if payload["status"] != "running":
            raise OSError(28, "No space left on device")
        real(path, payload)

    monkeypatch.setattr(runner, "write_json_atomic", flaky)
    cfg = compose_config(TINY_PPL + [f"dataset.path={text_file}"], cache_dir=cache_dir)
    with pytest.raises(ResultsWriteError), caplog.at_level("ERROR", logger="lsh_bitnet"):
        run(cfg, output_dir=tmp_path)
    err = "\n".join(r.getMessage() for r in caplog.records if r.levelname == "ERROR")
    assert "No space left on device" in err
    dumped = json.loads(err[err.index("{"):].strip())
    assert dumped["status"] == "ok" and dumped["metrics"]["perplexity"] > 1
    assert calls == ["running", "ok"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_is_recorded_as_interrupted(sig, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "launch.py", "model=tiny_bitnet", "dataset.n_samples=100000",
                             "metric.max_new_tokens=4", "eval.progress=false", f"hydra.run.dir={run_dir}",
                             f"cache_dir={cache_dir}"], cwd=REPO_ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until the evaluation itself runs
        record = R.read_results(run_dir)
        if record and record["status"] == "running":
            break
        time.sleep(0.2)
    time.sleep(5)  # model loaded, samples being scored
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=60)
    record = _strict_load(run_dir / "results.json")
    assert record["status"] == "interrupted", stderr[-2000:]
    assert record["error"]["signal"] == sig.name
    assert proc.returncode == 128 + sig  # the shell's convention: 143, 130, 129
    assert "Traceback" not in stderr, stderr[-3000:]  # the closing line says it all
    last = stdout.rstrip().splitlines()[-1]  # the job's log ends with its closing line, not a traceback
    closing = f"[lsh-bitnet] interrupted | RunInterrupted: {sig.name} received"
    assert last.split(" - ", 1)[-1].startswith(closing), stdout[-2000:]


# ----------------------------------------------------------------------------- item 5: resume key
def test_resume_reruns_when_code_or_data_changed(text_file, cache_dir, tmp_path, monkeypatch, caplog):
    cfg = compose_config(TINY_PPL + [f"dataset.path={text_file}"], cache_dir=cache_dir)
    assert run(cfg, output_dir=tmp_path)["status"] == "ok"
    assert run(cfg, output_dir=tmp_path).get("resumed") is True

    monkeypatch.setitem(R._CODE_VERSION, "value", "0123abc+dirty.feedbeef")
    caplog.set_level("INFO", logger="lsh_bitnet")
    caplog.clear()
    again = run(cfg, output_dir=tmp_path)
    assert not again.get("resumed") and "code version differ" in caplog.text

    text_file.write_text(TEXT.replace("fox", "cat"), encoding="utf-8")
    caplog.clear()
    again = run(cfg, output_dir=tmp_path)
    assert not again.get("resumed") and "data content differ" in caplog.text
    assert run(cfg, output_dir=tmp_path).get("resumed") is True


def test_weights_fingerprint_changes_with_local_checkpoint(tmp_path):
    from lsh_bitnet.run.jobs import resume_mismatch
    from lsh_bitnet.models.checks import weights_fingerprint

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "model.safetensors").write_bytes(b"a" * 1000)
    cfg = compose_config(["model=hf", f"model.name_or_path={tmp_path}"]).model
    before = weights_fingerprint(cfg)
    (tmp_path / "model.safetensors").write_bytes(b"b" * 1000)
    after = weights_fingerprint(cfg)
    assert before != after
    key = {"config_hash": "c", "code_version": "v", "data": {}}
    assert resume_mismatch({**key, "weights": before}, {**key, "weights": after}) == "weights"
    assert resume_mismatch({**key, "weights": after}, {**key, "weights": after}) is None


# ----------------------------------------------------------------------------- item 6: sweeps
def test_job_locked_by_another_process_is_skipped_not_computed(text_file, cache_dir, tmp_path, caplog):
    from lsh_bitnet.run.jobs import job_busy, job_lock

    cfg = compose_config(TINY_PPL + [f"dataset.path={text_file}"], cache_dir=cache_dir)
    with job_lock(tmp_path) as holder:
        assert holder is None
        child = subprocess.run([sys.executable, "-c", "import sys; from lsh_bitnet.run.jobs import job_busy; "
                                f"sys.exit(0 if job_busy({str(tmp_path)!r}) else 1)"], cwd=REPO_ROOT)
        assert child.returncode == 0  # another process sees the job busy
        out = run(cfg, output_dir=tmp_path)
    assert out["status"] == "locked" and "being run by pid" in caplog.text
    assert not (tmp_path / "results.json").exists()  # nothing computed twice
    assert not job_busy(tmp_path)
    assert run(cfg, output_dir=tmp_path)["status"] == "ok"


def test_stale_failed_job_in_reused_sweep_dir_does_not_fail_a_new_sweep(tmp_path, cache_dir):
    sweep = tmp_path / "sweep"
    common = ["-m", *TINY_SYN, "attention=lsh", f"hydra.sweep.dir={sweep}", f"cache_dir={cache_dir}"]
    # seed=1 names its own job dir: the failure stays on disk beside the second sweep's jobs
    first = _launch(*common, "hasher.n_bits=2", "seed=1", env={**os.environ, FAIL_ENV: "1"})
    assert first.returncode != 0 and "0 ok, 1 failed" in first.stdout, first.stdout[-2000:] + first.stderr[-2000:]
    second = _launch(*common, "hasher.n_bits=2,4")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "2 ok, 0 failed" in second.stdout
    statuses = sorted(json.loads(p.read_text())["status"] for p in sweep.rglob("results.json"))
    assert statuses == ["failed", "ok", "ok"]  # the stale failure is still on disk, just not this sweep's


def test_sweep_checks_every_job_before_launching_and_groups_errors(tmp_path):
    sweep = tmp_path / "sweep"
    out = _launch("-m", "dataset=text_file", "metric=perplexity", "dataset.path=/nonexistent/x.txt",
                  "hasher.n_bits=2,4,8", f"hydra.sweep.dir={sweep}", timeout=120)
    assert out.returncode != 0
    assert "3 of 3 jobs have config errors" in out.stderr and out.stderr.count("3 job(s): ") == 1, out.stderr[-3000:]
    assert "nothing was launched" in out.stderr
    assert not list(sweep.rglob("results.json"))


def test_submitit_time_limit_it_cannot_honour_is_rejected():
    from omegaconf import OmegaConf

    from lsh_bitnet.run.sweep import check_launcher

    slurm = "hydra_plugins.hydra_submitit_launcher.submitit_launcher.SlurmLauncher"
    with pytest.raises(ConfigError, match="timeout_min>=3"):
        check_launcher(OmegaConf.create({"_target_": slurm, "timeout_min": 1, "signal_delay_s": 120}))
    check_launcher(OmegaConf.create({"_target_": slurm, "timeout_min": 3, "signal_delay_s": 120}))
    preset = compose_config(["launcher=slurm", "hydra.launcher.timeout_min=2"], return_hydra_config=True).hydra.launcher
    check_launcher(preset)  # the preset's signal delay leaves a 2-minute job its time
    with pytest.raises(ConfigError, match="timeout_min>=2"):
        check_launcher({**preset, "timeout_min": 1})


# ----------------------------------------------------------------------------- item 8: checks before loading
def _no_model_loaded(cache):
    return not (Path(cache) / "models").exists()


@pytest.mark.parametrize("overrides, key", [
    (["attention=lsh", "attention.layers=[]"], "attention.layers=[]"),
    (["model=tiny_bitnet", "attention=lsh", "attention.layers=[0,5]"], "attention.layers"),
    (["model=tiny_bitnet", "attention=lsh", "hasher=bit_sampling", "hasher.n_bits=20"], "head_dim"),
    (TINY_PPL + ["eval.seq_len=5000"], "max_position"),
])
def test_model_dependent_errors_come_before_the_weights_load(overrides, key, text_file, tmp_path):
    cfg = compose_config(overrides + [f"dataset.path={text_file}"] * ("metric=perplexity" in overrides),
                         cache_dir=tmp_path / "cache")
    with pytest.raises(ConfigError, match=key.replace("[", r"\[").replace("]", r"\]")):
        run(cfg, output_dir=tmp_path / "run")
    assert _no_model_loaded(tmp_path / "cache")
    assert _strict_load(tmp_path / "run" / "results.json")["status"] == "failed"


@pytest.mark.parametrize("content, key", [("", "holds no text"), ("\n  \n", "holds no text"),
                                          (b"\xff\xfe caf\xe9", "not UTF-8"), ("short", "fewer than one window")])
def test_data_errors_come_before_the_model_loads(content, key, tmp_path):
    path = tmp_path / "data.txt"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    cfg = compose_config(TINY_PPL + [f"dataset.path={path}"], cache_dir=tmp_path / "cache")
    with pytest.raises(ValueError, match=key):
        run(cfg, output_dir=tmp_path / "run")
    assert _no_model_loaded(tmp_path / "cache")


def test_field_the_metric_ignores_is_a_recorded_warning(cache_dir, tmp_path):
    cfg = compose_config(TINY_SYN + ["eval.seq_len=64", "dataset.n_samples=1"], cache_dir=cache_dir)
    record = run(cfg, output_dir=tmp_path)
    assert record["status"] == "ok"
    saved = _strict_load(tmp_path / "results.json")
    assert any("eval.seq_len=64 is ignored by metric=synthetic_accuracy" in w for w in saved["warnings"])
    assert validate_fast(compose_config(TINY_SYN)) == []  # defaults warn about nothing


def test_offline_hub_dataset_fails_fast_with_local_path_fix(tmp_path, monkeypatch):
    from lsh_bitnet.data import load_text
    from lsh_bitnet.models import checks

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf"))
    checks.hub_reachable.cache_clear()
    cfg = compose_config(["dataset=wikitext2", "metric=perplexity"])
    import datasets  # noqa: F401  (its import, torch's included, is a fixed cost; the retries must not happen)

    start = time.perf_counter()
    with pytest.raises(RuntimeError, match="dataset.path=DIR"):
        load_text(cfg.dataset, tmp_path)
    assert time.perf_counter() - start < 5
    checks.hub_reachable.cache_clear()


# ----------------------------------------------------------------------------- item 9: prefix tokenisation
def test_max_batches_tokenises_only_a_prefix_equal_to_the_full_streams_start(tmp_path):
    from conftest import byte_level_bpe
    from lsh_bitnet.data import tokens as K

    tok = byte_level_bpe([TEXT], 300)
    line = "Some words of a long document, then a newline.\n"
    text = line * 40_000  # ~2 MB
    prefix = K.token_stream(text, tok, tmp_path, "t", max_tokens=256)
    assert not (tmp_path / "tokens").exists()  # prefixes are not written to the disk cache
    full = K._tokenize(text, tok)
    assert 256 <= len(prefix) <= len(full) / 10  # one modest piece, not the whole text
    assert prefix.ids[:256].tolist() == full.ids[:256].tolist()
    assert prefix.byte_len[:256].tolist() == full.byte_len[:256].tolist()
    assert math.isclose(len(full), len(text) / len(line) * len(tok(line.strip()).input_ids), rel_tol=0.2)


# ----------------------------------------------------------------------------- item 7 without a cluster
class _FakeJob:
    def __init__(self, job_id, state, tmp_path, fail=True):
        from types import SimpleNamespace

        self.job_id, self.state, self.fail = job_id, state, fail
        self.paths = SimpleNamespace(stderr=tmp_path / f"{job_id}_0_log.err")

    def fake_results(self):  # what submitit's Job.results does for a job that died / finished
        import submitit

        if self.fail:
            raise submitit.core.utils.UncompletedJobError(f"Job {self.job_id} has not produced any output")
        return ["fine"]

    def submission(self):
        from types import SimpleNamespace

        return SimpleNamespace(args=(["hasher.n_bits=4"],))


@pytest.mark.parametrize("state, status", [("OUT_OF_MEMORY", "failed"), ("CANCELLED by 0", "interrupted"),
                                           ("TIMEOUT", "interrupted")])
def test_job_dead_without_result_is_recorded_and_does_not_end_the_sweep(state, status, tmp_path, capsys, monkeypatch):
    import submitit
    from omegaconf import OmegaConf

    from lsh_bitnet.run.sweep import dead_jobs_recorded

    monkeypatch.setattr(submitit.Job, "results", lambda job: job.fake_results())

    job_dir = tmp_path / "hasher.n_bits=4"
    job_dir.mkdir()
    running = {"status": "running", "error": None,
               "provenance": {"slurm_job_id": "12", "slurm_array_job_id": "7", "slurm_array_task_id": "1"}}
    R.write_json_atomic(job_dir / "results.json", running)
    other = tmp_path / "other"
    other.mkdir()
    R.write_json_atomic(other / "results.json", {**running, "provenance": {"slurm_array_job_id": "7",
                                                                             "slurm_array_task_id": "0"}})
    config = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}})
    with dead_jobs_recorded(config):
        (dead,) = submitit.Job.results(_FakeJob("7_1", state, tmp_path))
        assert submitit.Job.results(_FakeJob("7_0", "COMPLETED", tmp_path, fail=False)) == ["fine"]
    assert dead.return_value["status"] == status  # COMPLETED for Hydra: the sweep goes on to its summary
    record = _strict_load(job_dir / "results.json")
    assert record["status"] == status and record["error"]["slurm_state"] == state
    assert "7_1" in record["error"]["message"] and "log" in record["error"]["message"]
    assert _strict_load(other / "results.json")["status"] == "running"  # another task: untouched
    assert f"job 7_1 {status}" in capsys.readouterr().err
    with pytest.raises(submitit.core.utils.UncompletedJobError):  # restored outside the launcher
        submitit.Job.results(_FakeJob("7_1", state, tmp_path))


def test_sweep_status_counts_only_this_sweeps_registered_jobs(tmp_path, monkeypatch):
    from lsh_bitnet.run.sweep import MEMBERS_DIR, sweep_status

    for name, status in (("old", "failed"), ("a", "ok"), ("b", "ok")):
        (tmp_path / name).mkdir()
        R.write_json_atomic(tmp_path / name / "results.json", {"status": status, "error": None})
    members = tmp_path / MEMBERS_DIR / "s1"
    members.mkdir(parents=True)
    for i, name in enumerate(("a", "b")):
        (members / str(i)).write_text(str(tmp_path / name))
    (members / "2").write_text(str(tmp_path / "died"))  # registered, killed before its first write
    status = sweep_status(tmp_path, "s1")
    assert sorted(p.name for p in status.ok) == ["a", "b"] and status.older == 1
    assert [(p.name, e.split(":")[0]) for p, e in status.failed] == [("died", "no results.json")]
    status = sweep_status(tmp_path)  # no sweep id (the collector's view): every job in the dir
    assert len(status.ok) == 2 and [p.name for p, _ in status.failed] == ["old"] and status.older == 0
    monkeypatch.chdir(tmp_path.parent)  # a relative sweep dir (hydra.sweep.dir=multirun/x): jobs register absolute
    status = sweep_status(Path(tmp_path.name), "s1")
    assert len(status.ok) == 2 and status.older == 1
