"""The lm-eval bridge's parts that need no lm-eval: the cost ledger, the bundled tasks' documents, the
metric's config checks (lm-eval missing -> the install command, at config time)."""
import importlib.util
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, compose_config
from lsh_bitnet.bridges.ledger import CostLedger, assign, split_cost
from lsh_bitnet.data.lastword import FILLER_POOL, OBJECTS, PLACES, choice_docs, lastword_docs
from lsh_bitnet.errors import ConfigError


class Counters:
    """Stands in for the patch's CostMeter: cumulative (comparisons, full_comparisons)."""

    def __init__(self):
        self.comparisons = self.full = 0

    def add(self, comparisons, full):
        self.comparisons += comparisons
        self.full += full

    def __call__(self):
        return self.comparisons, self.full


def test_ledger_charges_each_forward_to_the_requests_it_answered():
    counters = Counters()
    ledger = CostLedger(counters)
    counters.add(10, 20)
    ledger.forward(tokens=5)
    ledger.answered("a")
    counters.add(7, 9)  # one forward, three results (a batch of 3, or lm-eval's one-token logits cache)
    ledger.forward(tokens=6)
    for key in ("b", "c", "d"):
        ledger.answered(key)
    counters.add(4, 4)  # two forwards before their one result (a rolling loglikelihood's windows)
    ledger.forward(tokens=2)
    counters.add(1, 1)
    ledger.forward(tokens=1)
    ledger.answered("e")
    charged, leftover = ledger.settle()
    costs = dict(charged)
    assert costs["a"] == {"comparisons": 10, "full_comparisons": 20, "tokens": 5}
    assert [costs[k]["comparisons"] for k in "bcd"] == [3, 2, 2]  # the remainder to the first
    assert [costs[k]["full_comparisons"] for k in "bcd"] == [3, 3, 3]
    assert costs["e"] == {"comparisons": 5, "full_comparisons": 5, "tokens": 3}
    assert sum(c["comparisons"] for c in costs.values()) == counters.comparisons
    assert leftover == {"comparisons": 0, "full_comparisons": 0, "tokens": 0}
    assert ledger.settle() == ([], leftover)  # settled once


def test_ledger_keeps_what_no_request_took_and_assign_serves_equal_keys_in_order():
    counters = Counters()
    ledger = CostLedger(counters)
    counters.add(3, 3)
    ledger.forward(tokens=1)
    ledger.answered("x")
    counters.add(5, 5)
    ledger.forward(tokens=1)
    ledger.answered("x")
    counters.add(2, 2)
    ledger.forward(tokens=1)  # answered nothing
    charged, leftover = ledger.settle()
    assert leftover["comparisons"] == 2
    costs = assign(["x", "y", "x"], charged, key=lambda r: r)
    assert [c["comparisons"] for c in costs] == [3, 0, 5]


def test_split_cost_sums_exactly():
    shares = split_cost({"comparisons": 10, "full_comparisons": 11, "tokens": 3}, 4)
    assert [s["comparisons"] for s in shares] == [4, 2, 2, 2] and sum(s["tokens"] for s in shares) == 3


# ----------------------------------------------------------------------------- bundled tasks
def test_bundled_task_files_are_what_the_generator_writes():
    out = subprocess.run([sys.executable, "scripts/make_lm_eval_tasks.py", "--check"], cwd=REPO_ROOT,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


def test_lastword_documents_state_the_answer_once_beside_three_distractors():
    for doc in lastword_docs(50):
        context, answer = doc["text"].rsplit(" ", 1)
        assert answer in OBJECTS
        statement = re.search(r"In the (\w+), (\w+) left the " + answer + r"\.", context)
        assert statement is not None, doc["text"]
        assert len(re.findall(r"In the \w+, \w+ left the \w+\.", context)) == 4
        assert context.endswith(f"In the {statement.group(1)}, {statement.group(2)} left the")
        assert context.count(f" {answer}") == 1  # stated once: only the statement holds it
    for doc in choice_docs(50):
        assert len(set(doc["choices"])) == 4 and doc["choices"][doc["gold"]] in doc["query"]


def test_filler_sentences_name_no_object_or_place():
    words = {w for s in FILLER_POOL for w in re.findall(r"[a-z]+", s.lower())}
    assert not words & (set(OBJECTS) | set(PLACES) | {"left"}) and len(FILLER_POOL) >= 20


# ----------------------------------------------------------------------------- config time
def test_metric_lm_eval_selects_its_dataset():
    cfg = compose_config(["metric=lm_eval", "metric.tasks=[lambada_openai,hellaswag]", "metric.num_fewshot=5",
                          "metric.limit=10", "metric.batch_size=2", f"metric.include_path={REPO_ROOT / 'tasks'}"])
    assert cfg.dataset.name == "lm_eval" and list(cfg.metric.tasks) == ["lambada_openai", "hellaswag"]
    assert cfg.metric.num_fewshot == 5 and cfg.metric.limit == 10 and cfg.metric.batch_size == 2


def test_without_lm_eval_the_metric_fails_at_config_time_with_the_install_command(monkeypatch):
    from lsh_bitnet.validate import validate_fast

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "lm_eval" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[lm-eval\]'"):
        validate_fast(compose_config(["metric=lm_eval"]))


@pytest.mark.parametrize("override, message", [
    ("metric.tasks=[]", "metric.tasks must name"),
    ("metric.limit=0", "metric.limit must be > 0"),
    ("metric.batch_size=0", "metric.batch_size must be >= 1"),
    ("metric.include_path=/no/such/dir", "is not a directory"),
])
def test_metric_values_that_cannot_work_fail_at_config_time(override, message):
    from lsh_bitnet.validate import validate_fast

    if importlib.util.find_spec("lm_eval") is None:
        pytest.skip("lm-eval is an optional extra: pip install -e '.[lm-eval]' (the check needs it installed)")
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate_fast(compose_config(["metric=lm_eval", override]))


def test_editing_a_task_file_on_the_include_path_changes_the_resume_key(tmp_path):
    from lsh_bitnet.run.jobs import resume_key

    (tmp_path / "mine.yaml").write_text("task: mine\n")
    (tmp_path / "mine.jsonl").write_text('{"text": "a b"}\n')
    cfg = compose_config(["model=tiny_bitnet", "metric=lm_eval", f"metric.include_path={tmp_path}"])
    record = {"config_hash": "h", "provenance": {"code_version": "c"}}
    before = resume_key(cfg, record, tmp_path)
    (tmp_path / "mine.jsonl").write_text('{"text": "a c"}\n')
    assert resume_key(cfg, record, tmp_path)["data"] != before["data"]  # the job reruns, not resumes


def test_lm_eval_records_are_one_document_only_where_the_prompt_hash_agrees():
    """Two lm-eval documents can share a target (a choice letter, a number): pairing runs (--paired-with) must
    also match lm-eval's prompt hash, which the task's record kind does and a plain sample kind does not."""
    from lsh_bitnet.tasks.base import task_named

    kind = task_named("lm_eval").record
    a = {"index": 0, "correct": True, "target": "B", "prompt_hash": "p0"}
    assert kind.same_item(a, dict(a, correct=False))
    assert not kind.same_item(a, dict(a, prompt_hash="p1"))


def test_the_eval_keys_lm_eval_decides_are_recorded_as_ignored():
    from lsh_bitnet.validate import ignored_field_warnings

    warnings = ignored_field_warnings(compose_config(["metric=lm_eval", "eval.seq_len=512", "eval.max_batches=3"]))
    assert any(w.startswith("eval.seq_len=512 is ignored by metric=lm_eval") for w in warnings)
    assert any(w.startswith("eval.max_batches=3 is ignored") for w in warnings)


def test_a_forked_worker_stops_quietly_on_sigterm():
    """lm-eval's bootstrap pool forks workers inside a run and stops them with SIGTERM: a worker must die of
    it, not raise the run's RunInterrupted (a traceback per worker, and code running on in the fork)."""
    import os
    import signal
    import time

    from lsh_bitnet.run.signals import signals_recorded

    with signals_recorded({}):
        pid = os.fork()
        if pid == 0:  # the worker
            try:
                time.sleep(30)
            finally:
                os._exit(3)  # reached only if the signal raised instead of stopping the process
        time.sleep(0.5)
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM


def _sample(doc_id, metrics, resps):
    return {"doc_id": doc_id, "target": f"t{doc_id}", "prompt_hash": f"p{doc_id}", "doc_hash": f"d{doc_id}",
            "metrics": list(metrics), "filtered_resps": resps, **metrics}


def test_lm_eval_results_become_our_metrics_records_and_provenance():
    from lsh_bitnet.bridges.lm_eval_results import INDEX_STRIDE, convert

    results = {
        "results": {"a": {"alias": "a", "acc,none": 0.5, "acc_stderr,none": 0.25},
                    "b": {"alias": "b", "score,none": 0.75, "score_stderr,none": "N/A"},
                    "g": {"alias": "g", "acc,none": 0.6}},
        "groups": {"g": {"acc,none": 0.6, "acc_stderr,none": "N/A"}},
        "samples": {"a": [_sample(1, {"acc": 0}, [(-2.0, False), (-1.0, False)]),
                          _sample(0, {"acc": 1}, [(-1.0, True), (-3.0, False)])],
                    "b": [_sample(0, {"score": 1.0}, ["42"]), _sample(1, {"score": 0.5}, ["7"])]},
        "configs": {"a": {"task": "a", "metadata": {"version": 1.0, "config_source": "/here/a.yaml"}}},
        "versions": {"a": 1.0}, "lm_eval_version": "0.4.13", "config": {"random_seed": 0},
    }
    costs = {("a", 0): {"comparisons": 3, "full_comparisons": 5, "tokens": 2}}
    metrics, records, provenance = convert(results, costs)
    assert [r["index"] for r in records] == [0, 1, INDEX_STRIDE, INDEX_STRIDE + 1]
    a0, a1, b0, b1 = records
    assert a0["correct"] is True and a1["correct"] is False and "correct" not in b1  # b's scores are not 0/1
    assert a0["loglikelihoods"] == [-1.0, -3.0] and a0["prediction"] == 0 and b0["generated"] == "42"
    assert (a0["comparisons"], a0["full_comparisons"], a1["comparisons"]) == (3, 5, 0)
    assert metrics["accuracy"] == (1 + 0 + 1 + 0.5) / 4 and metrics["n_samples"] == 4
    assert metrics["tasks"]["a"]["acc_ci_low"] == pytest.approx(0.5 - 1.959964 * 0.25, abs=1e-6)
    assert metrics["tasks"]["b"]["score_stderr"] is None and metrics["tasks"]["b"]["score_ci_low"] is None
    assert metrics["groups"] == {"g": {"acc": 0.6}} and "a/acc" in metrics and "b/score" in metrics
    moved = dict(results, configs={"a": {"task": "a", "metadata": {"version": 1.0, "config_source": "/there"}}})
    assert convert(moved, costs)[2]["lm_eval"]["tasks"]["a"]["config_hash"] == provenance["lm_eval"]["tasks"]["a"][
        "config_hash"]  # the same task config read from another checkout
    single = convert(dict(results, results={"a": results["results"]["a"]}, samples={"a": results["samples"]["a"]}),
                     costs)[0]
    assert single["accuracy"] == 0.5 and single["primary_metric"] == "a/acc"
    assert (single["accuracy_ci_low"], single["accuracy_ci_high"]) != (0.0, 1.0)  # Wilson over the 0/1 documents
