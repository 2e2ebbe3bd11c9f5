"""Intervals against known and independently computed values; SampleLog records and partial metrics."""
import itertools
import json
import math

import numpy as np
import pytest

from lsh_bitnet import stats
from lsh_bitnet.run.samples import SampleLog, summarize


# ----------------------------------------------------------------------------- Wilson
def test_wilson_23_of_30_is_the_published_interval():
    low, high = stats.wilson(23, 30)
    assert (round(low, 2), round(high, 2)) == (0.59, 0.88)
    assert low == pytest.approx(0.5907, abs=1e-4) and high == pytest.approx(0.8821, abs=1e-4)


@pytest.mark.parametrize("n", [1, 7, 50])
def test_wilson_at_the_edges_matches_the_closed_form(n):
    z2 = 1.959963984540054 ** 2
    # k = 0: [0, z^2 / (n + z^2)]; k = n mirrors it (the Wilson interval's closed form at the edges).
    assert stats.wilson(0, n) == (0.0, pytest.approx(z2 / (n + z2)))
    assert stats.wilson(n, n) == (pytest.approx(n / (n + z2)), 1.0)
    assert stats.wilson(0, 0) == (None, None)
    with pytest.raises(ValueError, match="outside"):
        stats.wilson(n + 1, n)


def test_normal_quantile():
    assert stats._z(0.95) == pytest.approx(1.959963984540054, abs=1e-9)
    assert stats._z(0.99) == pytest.approx(2.5758293035489, abs=1e-9)


# ----------------------------------------------------------------------------- bootstrap
NLL = [310.2, 280.9, 402.5, 295.0, 350.7]  # per-window NLL sums (nats)
TOKENS = [127, 127, 127, 127, 127]


def test_bootstrap_matches_the_exact_bootstrap_distribution():
    """5 windows have 5^5 equally likely resamples: enumerate them all (no randomness) and compare
    the exact percentile interval with the Monte Carlo one."""
    nll, tok = np.array(NLL), np.array(TOKENS)
    exact = [math.exp(nll[list(i)].sum() / tok[list(i)].sum()) for i in itertools.product(range(5), repeat=5)]
    want_low, want_high = np.quantile(exact, [0.025, 0.975])
    low, high = stats.bootstrap_perplexity(NLL, TOKENS, seed=0, resamples=40000)
    width = want_high - want_low
    assert abs(low - want_low) < 0.03 * width and abs(high - want_high) < 0.03 * width
    point = math.exp(sum(NLL) / sum(TOKENS))
    assert low < point < high


def test_bootstrap_is_fixed_by_its_seed():
    a = stats.bootstrap_perplexity(NLL, TOKENS, seed=7)
    assert a == stats.bootstrap_perplexity(NLL, TOKENS, seed=7)
    assert a != stats.bootstrap_perplexity(NLL, TOKENS, seed=8)
    assert stats.bootstrap_perplexity([5.0], [10]) == (None, None)  # one window: no spread to estimate
    same = stats.bootstrap_perplexity([50.0] * 4, [20] * 4)
    assert same == (pytest.approx(math.exp(2.5)), pytest.approx(math.exp(2.5)))


def test_perplexity_fields():
    f = stats.perplexity_fields(NLL, TOKENS, seed=0)
    assert f["perplexity"] == pytest.approx(math.exp(sum(NLL) / sum(TOKENS)))
    assert f["perplexity_ci_low"] < f["perplexity"] < f["perplexity_ci_high"] and f["n"] == 5


# ----------------------------------------------------------------------------- windows of unequal length
# Perplexity is per token: windows of different lengths (runs pooled over other ranges, a dataset's last short
# window) weigh by their predicted tokens. Here the long windows are the hard ones, so a mean over windows of
# each window's NLL per token (2.04) is far below the pooled one (2.92).
UNEQUAL_TOKENS = [12, 900, 40, 300, 75]
UNEQUAL_NLL = [t * p for t, p in zip(UNEQUAL_TOKENS, [1.0, 3.2, 1.4, 2.6, 2.0])]


def _exact_bootstrap(statistic, n):
    """The 2.5% / 97.5% quantiles over all n^n equally likely resamples of n windows."""
    return np.quantile([statistic(list(i)) for i in itertools.product(range(n), repeat=n)], [0.025, 0.975])


def test_perplexity_of_unequal_windows_is_per_token(tmp_path):
    per_token = sum(UNEQUAL_NLL) / sum(UNEQUAL_TOKENS)
    assert per_token - np.mean([n / t for n, t in zip(UNEQUAL_NLL, UNEQUAL_TOKENS)]) > 0.5  # the data tells them apart
    f = stats.perplexity_fields(UNEQUAL_NLL, UNEQUAL_TOKENS)
    assert f["nll"] == pytest.approx(per_token) and f["perplexity"] == pytest.approx(math.exp(per_token))
    with SampleLog(tmp_path / "samples.jsonl") as log:  # partial metrics, and the collector's pooled ones
        for i, (nll, t) in enumerate(zip(UNEQUAL_NLL, UNEQUAL_TOKENS)):
            log.write({"index": i, "tokens": t + 1, "predicted": t, "nll": nll, "bytes": 4 * t})
        partial = log.partial_metrics()
    assert partial["nll"] == pytest.approx(per_token) and partial["perplexity"] == pytest.approx(math.exp(per_token))


def test_bootstrap_of_unequal_windows_resamples_tokens_with_their_windows():
    nll, tok = np.array(UNEQUAL_NLL), np.array(UNEQUAL_TOKENS, dtype=float)
    want_low, want_high = _exact_bootstrap(lambda i: math.exp(nll[i].sum() / tok[i].sum()), 5)
    low, high = stats.bootstrap_perplexity(UNEQUAL_NLL, UNEQUAL_TOKENS, seed=0, resamples=40000)
    width = want_high - want_low
    assert abs(low - want_low) < 0.03 * width and abs(high - want_high) < 0.03 * width


def test_paired_ratio_of_unequal_windows_is_per_token():
    tok = np.array(UNEQUAL_TOKENS, dtype=float)
    base = np.array(UNEQUAL_NLL)
    run = base + tok * np.array([0.30, 0.01, 0.20, 0.02, 0.10])  # worse by much on the short windows only
    ratio, low, high = stats.paired_perplexity_ratio(run.tolist(), base.tolist(), UNEQUAL_TOKENS, resamples=40000)
    assert ratio == pytest.approx(math.exp((run.sum() - base.sum()) / tok.sum()))  # 1.026; per window: 1.134
    want_low, want_high = _exact_bootstrap(lambda i: math.exp((run[i].sum() - base[i].sum()) / tok[i].sum()), 5)
    width = want_high - want_low
    assert abs(low - want_low) < 0.03 * width and abs(high - want_high) < 0.03 * width


# ----------------------------------------------------------------------------- SampleLog
def test_sample_log_flushes_each_record_and_counts_cost(tmp_path):
    totals = {"comparisons": 100, "full_comparisons": 200}
    log = SampleLog(tmp_path / "samples.jsonl")
    log.track_cost(lambda: dict(totals))
    for i, (nll, correct) in enumerate([(3.0, True), (5.0, False), (4.0, True)]):
        totals["comparisons"] += 10 * (i + 1)
        totals["full_comparisons"] += 40
        log.write({"index": i, "tokens": 9, "predicted": 8, "nll": nll, "bytes": 30})
        lines = (tmp_path / "samples.jsonl").read_text().splitlines()  # readable before close: flushed
        assert len(lines) == i + 1 and json.loads(lines[-1])["comparisons"] == 10 * (i + 1)
        assert json.loads(lines[-1])["full_comparisons"] == 40
    partial = log.partial_metrics()
    log.close()
    assert partial["partial"] is True and partial["n"] == 3 and partial["n_windows"] == 3
    assert partial["perplexity"] == pytest.approx(math.exp(12.0 / 24))
    assert partial["bits_per_byte"] == pytest.approx(12.0 / math.log(2) / 90)


def test_summarize_bits_per_byte_is_in_bits():
    """NLL sums of 30 ln 2 and 10 ln 2 nats are 40 bits, over 40 bytes: exactly 1 bit per byte (in nats, 0.69)."""
    records = [{"index": 0, "tokens": 9, "predicted": 8, "nll": 30 * math.log(2), "bytes": 20},
               {"index": 1, "tokens": 9, "predicted": 8, "nll": 10 * math.log(2), "bytes": 20}]
    assert summarize(records)["bits_per_byte"] == pytest.approx(1.0, rel=1e-12)
    assert summarize([{**r, "bytes": 0} for r in records])["bits_per_byte"] is None  # no bytes: no figure


def test_summarize_accuracies_with_wilson():
    records = [{"index": i, "correct": i < 23, "choice_correct": i < 29} for i in range(30)]
    out = summarize(records)
    assert out["accuracy"] == pytest.approx(23 / 30) and out["n"] == 30
    assert (out["accuracy_ci_low"], out["accuracy_ci_high"]) == stats.wilson(23, 30)
    assert (out["choice_accuracy_ci_low"], out["choice_accuracy_ci_high"]) == stats.wilson(29, 30)


def test_seed_everything_seeds_the_global_generators():
    import random

    import torch

    draws = []
    for _ in range(2):
        stats.seed_everything(11)
        draws.append((random.random(), np.random.rand(), torch.rand(1).item()))
    assert draws[0] == draws[1]
    stats.seed_everything(12)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) != draws[0]


def test_a_batch_shares_its_cost_and_sums_exactly(tmp_path):
    totals = {"comparisons": 0, "full_comparisons": 0}
    with SampleLog(tmp_path / "s.jsonl") as log:
        log.track_cost(lambda: dict(totals))
        totals.update(comparisons=101, full_comparisons=300)
        log.write_batch([{"index": i, "correct": True} for i in range(3)])
    rows = [json.loads(x) for x in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["comparisons"] for r in rows] == [35, 33, 33] and [r["full_comparisons"] for r in rows] == [100] * 3
