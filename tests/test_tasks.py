"""Tasks as registered objects: the built-ins describe themselves, a plug-in task with its own dataset option runs
end to end, and the report side reads runs of a task that is not registered here."""
import json
import math
import subprocess
import sys
from dataclasses import dataclass

import pytest
from omegaconf import OmegaConf

from conftest import REPO_ROOT, compose_config
from lsh_bitnet.config import DatasetConfig, MetricConfig
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.registry import DATASETS, TASKS
from lsh_bitnet.tasks.base import (DatasetOption, SampleRecords, Task, WindowRecords, dataset_option, find_task,
                                   record_kind, task_named, tasks)
from lsh_bitnet.validate import validate_fast
from test_collect import record, write
from test_paired import passkey, samples, window


# ----------------------------------------------------------------------------- built-ins
def test_builtin_tasks_describe_themselves():
    assert TASKS.names() == ["lm_eval", "passkey_accuracy", "perplexity", "synthetic_accuracy"]
    for task in tasks():
        schema_name = next(f.default for f in task.metric_schema.__dataclass_fields__.values() if f.name == "name")
        assert schema_name == task.name  # metric=<name> selects this schema
        assert task.primary in task.values and set(task.extra_y) <= set(task.values)
        assert task.dataset_names(), task.name
        for name in task.dataset_names():
            option = dataset_option(name)
            assert option.schema.__dataclass_fields__["name"].default == name
    assert task_named("perplexity").dataset_names() == ["enwik8", "text_file", "wikitext103", "wikitext2"]
    assert isinstance(task_named("perplexity").record, WindowRecords)
    assert task_named("synthetic_accuracy").record.keys() == ("correct", "choice_correct")
    assert find_task("no_such_metric") is None
    with pytest.raises(ConfigError, match=r"metric='perplexty' is not a known task.*did you mean metric=perplexity"):
        task_named("perplexty")


def test_task_modules_and_checks_import_no_torch():
    code = ("import sys; from lsh_bitnet.registry import TASKS, DATASETS; TASKS.names(); DATASETS.names(); "
            "import lsh_bitnet.validate, lsh_bitnet.data; print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["False", "False"], out.stderr[-2000:]


def test_record_kind_falls_back_to_what_the_records_hold():
    synthetic = [{"index": 0, "correct": True, "choice_correct": False}]
    assert record_kind("no_such_metric", [window(0, 1.0)]).keys() == ("nll",)
    assert record_kind("no_such_metric", synthetic) is task_named("synthetic_accuracy").record  # holds the most
    assert record_kind("no_such_metric", [passkey(0, True)]) is task_named("passkey_accuracy").record
    lm_eval = [{"index": 0, "correct": True, "target": "x", "prompt_hash": "ab12"}]
    assert record_kind("no_such_metric", lm_eval) is task_named("lm_eval").record
    assert record_kind("no_such_metric", [{"index": 0, "score": 0.5}]) is None
    assert record_kind("perplexity", []) is task_named("perplexity").record  # the task's, records or not


# ----------------------------------------------------------------------------- a plug-in task
@dataclass
class CountDatasetConfig(DatasetConfig):
    name: str = "count_lines"
    n_samples: int = 3


@dataclass
class NextTokenMetricConfig(MetricConfig):
    name: str = "next_token"
    min_prompt: int = 2


class NextToken(Task):
    """Does the model's argmax continue "1 2 3 ... n" with the next number? (A plug-in's task, for the test.)"""

    name = "next_token"
    metric_schema = NextTokenMetricConfig
    datasets = ("count_lines",)
    record = SampleRecords((("hit_rate", "hit"),))
    primary = "hit_rate"
    values = ("hit_rate", "n_samples")
    ignores = ("eval.seq_len",)

    def check_config(self, cfg):
        if cfg.metric.min_prompt < 1:
            raise ConfigError(f"metric.min_prompt must be >= 1 (got {cfg.metric.min_prompt})")

    def make_items(self, cfg, tokenizer, cache_dir, data):
        return [" ".join(str(i) for i in range(1, cfg.metric.min_prompt + k + 1)) for k in range(cfg.dataset.n_samples)]

    def evaluate(self, cfg, model, tokenizer, items, sink=None):
        import torch

        from lsh_bitnet.stats import accuracy_fields

        hits, tokens = [], 0
        for index, text in enumerate(items):
            ids = tokenizer(text, return_tensors="pt").input_ids  # (1, P)
            with torch.no_grad():
                guess = int(model(input_ids=ids).logits[0, -1].argmax())
            hit = guess == tokenizer(f" {len(text.split()) + 1}", add_special_tokens=False).input_ids[0]
            hits.append(hit)
            tokens += ids.shape[1]
            if sink is not None:
                sink.write({"index": index, "tokens": ids.shape[1], "prompt_tokens": ids.shape[1], "target": text,
                            "prediction": guess, "hit": hit})
        return {**accuracy_fields("hit_rate", hits), "n_samples": len(hits), "tokens": tokens}


@pytest.fixture
def plugin(monkeypatch):
    """NextToken and its dataset registered as a plug-in's entry point would register them (undone afterwards)."""
    TASKS.names(), DATASETS.names()  # built-ins and installed plug-ins first
    monkeypatch.setitem(TASKS._entries, NextToken.name, NextToken)
    monkeypatch.setitem(DATASETS._entries, "count_lines", DatasetOption("count_lines", CountDatasetConfig))


def plugin_config(cache_dir=None, **dataset):
    cfg = compose_config(["model=tiny_bitnet", "eval.progress=false"], cache_dir=cache_dir)
    cfg.dataset = OmegaConf.merge(OmegaConf.structured(CountDatasetConfig), dataset)
    cfg.metric = OmegaConf.structured(NextTokenMetricConfig)
    return cfg


def test_plugin_task_with_its_own_dataset_is_checked_like_a_builtin(plugin):
    assert validate_fast(plugin_config()) == []
    cfg = plugin_config()
    cfg.eval.seq_len = 64
    assert validate_fast(cfg) == ["eval.seq_len=64 is ignored by metric=next_token: it does not change this run "
                                  "(results with different eval.seq_len are the same measurement)"]
    cfg.metric.min_prompt = 0
    with pytest.raises(ConfigError, match="metric.min_prompt must be >= 1"):
        validate_fast(cfg)
    wrong = compose_config(["metric=perplexity"])
    wrong.dataset = OmegaConf.structured(CountDatasetConfig)
    with pytest.raises(ConfigError, match=r"metric=perplexity cannot be computed on dataset=count_lines: set "
                                          r"dataset= one of \['enwik8', .*\], or metric=next_token"):
        validate_fast(wrong)


def test_plugin_task_runs_end_to_end_and_its_records_pool(plugin, cache_dir, tmp_path):
    from lsh_bitnet.console import job_line
    from lsh_bitnet.run.runner import run
    from lsh_bitnet.run.samples import summarize

    result = run(plugin_config(cache_dir, n_samples=3), output_dir=tmp_path)
    assert result["status"] == "ok" and result["metrics"]["n_samples"] == 3
    lines = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [r["index"] for r in lines] == [0, 1, 2] and all("comparisons" in r for r in lines)
    pooled = summarize(lines, kind=NextToken.record)
    assert pooled["hit_rate"] == result["metrics"]["hit_rate"] and pooled["n_samples"] == 3
    assert "hit_rate " in job_line(result, tmp_path / "results.json")  # the task's primary field


def test_report_reads_runs_of_a_task_not_registered_here(tmp_path):
    """A plug-in's runs collected where the plug-in is not installed: the table, pooling and pairing fall back to
    the records' kind; records of an unknown kind leave the item-level columns empty instead of failing."""
    from lsh_bitnet.console import metric_text
    from lsh_bitnet.report.collect import write_summary

    root = tmp_path / "sweep"
    for name, attention, nll in (("0_full", "full", 2.0), ("1_window", "window", 2.5)):
        rec = record(attention, 1.0 if attention == "full" else 0.2)
        rec["config"]["metric"] = {"name": "ppl_plugin"}
        write(root, name, rec)
        cost = {"comparisons": 1000 if attention == "full" else 200, "full_comparisons": 1000}
        samples(root, name, [{**window(0, nll), **cost}, {**window(1, nll), **cost}])
    rec = record("window", 0.2)
    rec["config"]["metric"] = {"name": "score_plugin"}
    write(root, "2_scores", rec)
    samples(root, "2_scores", [{"index": 0, "score": 0.5}])
    write_summary(root, plot=False, paired_with="full", pool=True)
    table = {row["run_dir"]: row for row in _csv(root / "summary_ppl_plugin.csv")}
    assert float(table["1_window"]["paired_ratio"]) == pytest.approx(math.exp(1.0 / 2046))  # 0.5 nats a window more
    assert table["1_window"]["items"] == "0-1"
    assert (root / "summary_score_plugin.md").is_file()
    assert metric_text({"perplexity": 20.0, "n": 2}, "ppl_plugin").startswith("perplexity 20")


def _csv(path):
    import csv

    with open(path, newline="") as f:
        return list(csv.DictReader(f))
