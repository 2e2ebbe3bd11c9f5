"""Paired comparisons: the statistics against published figures and closed forms, and the collector's
--paired-with on hand-written runs with samples.jsonl (item matching, overlap of ranges, refusals)."""
import json
import math

import numpy as np
import pytest

from lsh_bitnet import stats
from lsh_bitnet.report.collect import main, write_summary
from lsh_bitnet.report.items import item_ranges, read_items, same_item
from test_collect import record, write


def test_paired_accuracy_difference_is_newcombes_published_interval():
    # Cavo et al. 2012 in Fagerland, Lydersen & Laake, "Statistical Analysis of Contingency Tables",
    # ch. 8: 59 both, 6 only the first, 16 only the second, 80 neither -> -0.0621 (-0.1186 to -0.0046).
    run = [True] * 59 + [True] * 6 + [False] * 16 + [False] * 80
    base = [True] * 59 + [False] * 6 + [True] * 16 + [False] * 80
    delta, low, high = stats.paired_accuracy_difference(run, base)
    assert (round(delta, 4), round(low, 4), round(high, 4)) == (-0.0621, -0.1186, -0.0046)
    # Swapping the runs mirrors the interval.
    back = stats.paired_accuracy_difference(base, run)
    assert back == pytest.approx((-delta, -high, -low))


def test_paired_accuracy_difference_does_not_collapse_where_every_pair_agrees_in_kind():
    delta, low, high = stats.paired_accuracy_difference([True] * 35, [False] * 35)
    assert delta == 1.0 and high == 1.0
    assert 0.8 < low < 0.95  # a bootstrap would say [1, 1]
    same = stats.paired_accuracy_difference([True, False, True], [True, False, True])
    assert same[0] == 0.0 and same[1] < 0.0 < same[2]
    assert math.isnan(stats.paired_accuracy_difference([], [])[0])
    with pytest.raises(ValueError, match="same samples"):
        stats.paired_accuracy_difference([True], [True, False])


def test_paired_accuracy_difference_covers_the_true_difference():
    # Correlated pairs (the usual case: both variants fail on the hard samples): the nominal 95% interval
    # covers p_run - p_base = 0.7 - 0.6 about 95% of the time. Catches a sign slip in the correlation term.
    rng = np.random.default_rng(0)
    cells = np.array([0.55, 0.15, 0.05, 0.25])  # both, run only, base only, neither
    hits = 0
    for _ in range(2000):
        kinds = rng.choice(4, size=60, p=cells)
        run, base = np.isin(kinds, (0, 1)), np.isin(kinds, (0, 2))
        _, low, high = stats.paired_accuracy_difference(run, base)
        hits += low <= 0.1 <= high
    assert 0.93 <= hits / 2000 <= 0.985


def test_paired_perplexity_ratio_cancels_the_spread_between_windows():
    tokens = [1000, 1000, 1000, 1000]
    base = [2000.0, 3500.0, 2600.0, 3100.0]  # windows far apart: perplexity 7.4 to 33
    run = [b + 0.05 * t for b, t in zip(base, tokens)]  # 0.05 nats per token worse on every window
    ratio, low, high = stats.paired_perplexity_ratio(run, base, tokens)
    assert ratio == pytest.approx(math.exp(0.05)) and low == pytest.approx(ratio) and high == pytest.approx(ratio)
    alone = stats.bootstrap_perplexity(run, tokens)
    assert alone[1] / alone[0] > 1.5  # the run's own interval is mostly the windows' spread
    noisy = [r + d for r, d in zip(run, (30.0, -20.0, 10.0, -15.0))]
    ratio, low, high = stats.paired_perplexity_ratio(noisy, base, tokens, seed=3)
    assert low < ratio < high and high / low < 1.05
    assert (ratio, low, high) == stats.paired_perplexity_ratio(noisy, base, tokens, seed=3)
    assert stats.paired_perplexity_ratio([5.0], [4.0], [10])[1:] == (None, None)
    with pytest.raises(ValueError, match="same windows"):
        stats.paired_perplexity_ratio([1.0, 2.0], [1.0], [1, 1])


def test_wilson_bounds_are_exact_at_zero_and_n():
    assert stats.wilson(0, 10)[0] == 0.0 and stats.wilson(10, 10)[1] == 1.0


def samples(root, name, rows):
    (root / name / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"index": 9')


def window(i, nll, predicted=1023):
    return {"index": i, "tokens": 1024, "nll": nll, "predicted": predicted, "bytes": 4000 + i}


def passkey(i, correct, target=None):
    return {"index": i, "tokens": 8197, "prompt_tokens": 8190, "depth": 0.1, "target": target or f"{i:05d}",
            "prediction": "x", "correct": correct}


def acc_record(attention, offset, n, acc, **attn):
    rec = record(attention, 1.0 if attention == "full" else 0.2, attn=attn)
    rec["config"]["metric"]["name"] = "passkey_accuracy"
    rec["config"]["dataset"] = {"name": "passkey", "n_samples": n, "target_tokens": 8192}
    rec["config"]["eval"]["batch_offset"] = offset
    rec["metrics"] = {"accuracy": acc, "n_samples": n - offset}
    return rec


def test_collector_pairs_each_run_with_its_baseline_on_shared_items(tmp_path):
    root = tmp_path / "sweep"
    write(root, "0_full", record("full", 1.0, 20.0))
    samples(root, "0_full", [window(i, 3000.0 + 100 * i) for i in range(4)])
    write(root, "1_lsh", record("lsh", 0.3, 21.0))
    samples(root, "1_lsh", [window(i, 3000.0 + 100 * i + 1023 * 0.04) for i in range(4)])
    write(root, "2_window", record("window", 0.2, 30.0))  # windows 2-5: shares 2 and 3 only
    samples(root, "2_window", [window(i, 3300.0 + 100 * i) for i in range(2, 6)])
    write(root, "3_other_text", record("oracle_topk", 0.1, 22.0))  # same indices, other windows: no pair
    samples(root, "3_other_text", [window(i, 3000.0, predicted=999) for i in range(4)])
    write(root, "4_no_samples", record("lsh", 0.4, 25.0, hasher={"n_bits": 4}))
    write_summary(root, plot=False, paired_with="full")
    import pandas as pd
    table = pd.read_csv(root / "summary_perplexity.csv").set_index("run_dir")
    assert table.loc["1_lsh", "paired_ratio"] == pytest.approx(math.exp(0.04))
    assert table.loc["1_lsh", "paired_n"] == 4 and table.loc["1_lsh", "paired_with"] == "0_full"
    assert table.loc["0_full", "paired_ratio"] == 1.0
    assert table.loc["2_window", "paired_n"] == 2
    assert table.loc["2_window", "paired_ratio"] == pytest.approx(math.exp(300 * 2 / (2 * 1023)))
    for run in ("3_other_text", "4_no_samples"):
        assert pd.isna(table.loc[run, "paired_ratio"]) and pd.isna(table.loc[run, "paired_with"])
    md = (root / "summary.md").read_text()
    assert "Paired with `full`" in md and "paired_ratio" in md


def test_collector_pairs_accuracy_runs_over_different_sample_ranges(tmp_path, capsys):
    root = tmp_path / "sweep"
    write(root, "full_0", acc_record("full", 0, 10, 0.6))
    samples(root, "full_0", [passkey(i, i % 5 < 3) for i in range(10)])
    write(root, "oracle_0", acc_record("oracle_topk", 0, 10, 1.0))
    samples(root, "oracle_0", [passkey(i, True) for i in range(10)])
    write(root, "oracle_5", acc_record("oracle_topk", 5, 15, 1.0))  # samples 5-14: shares 5-9 with full
    samples(root, "oracle_5", [passkey(i, True) for i in range(5, 15)])
    write(root, "oracle_reseeded", acc_record("oracle_topk", 0, 10, 1.0))  # other keys at the same indices
    samples(root, "oracle_reseeded", [passkey(i, True, target="99999") for i in range(10)])
    assert main([str(root), "--paired-with", "full", "--no-plot"]) == 0
    import pandas as pd
    table = pd.read_csv(root / "summary_passkey_accuracy.csv").set_index("run_dir")
    assert table.loc["oracle_0", ["paired_n", "paired_gains", "paired_losses"]].tolist() == [10, 4, 0]
    assert table.loc["oracle_0", "paired_delta"] == pytest.approx(0.4)
    low, high = stats.paired_accuracy_difference([True] * 10, [i % 5 < 3 for i in range(10)])[1:]
    assert (table.loc["oracle_0", "paired_delta_ci_low"], table.loc["oracle_0", "paired_delta_ci_high"]) == \
        pytest.approx((low, high))
    assert table.loc["oracle_5", ["paired_n", "paired_gains"]].tolist() == [5, 2]
    assert pd.isna(table.loc["oracle_reseeded", "paired_delta"])
    assert "paired_delta" in capsys.readouterr().out


def test_paired_baseline_sharing_most_items_then_first_in_natural_order(tmp_path):
    """Several baseline runs qualify: the one sharing the most items; on a tie, the first in natural order
    (9_full before 10_full, which a plain string sort would put first)."""
    import pandas as pd

    root = tmp_path / "sweep"
    for name, n, shift in (("1_full", 2, 0.03), ("10_full", 4, 0.02), ("9_full", 4, 0.0)):
        write(root, name, record("full", 1.0, 20.0))
        samples(root, name, [window(i, 3000.0 + 100 * i + 1023 * shift) for i in range(n)])
    write(root, "11_lsh", record("lsh", 0.3, 21.0))
    samples(root, "11_lsh", [window(i, 3000.0 + 100 * i + 1023 * 0.04) for i in range(4)])
    write_summary(root, plot=False, paired_with="full")
    row = pd.read_csv(root / "summary_perplexity.csv").set_index("run_dir").loc["11_lsh"]
    assert (row["paired_with"], row["paired_n"]) == ("9_full", 4)
    assert row["paired_ratio"] == pytest.approx(math.exp(0.04))


def test_paired_with_refuses_an_unknown_baseline(tmp_path, capsys):
    root = tmp_path / "sweep"
    write(root, "0_full", record("full", 1.0, 20.0))
    assert main([str(root), "--paired-with", "fulll", "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "--paired-with fulll" in err and "families here: full" in err


def test_paired_and_gap_with_grouped_seeds_are_per_seed_figures_then_their_spread(tmp_path):
    root = tmp_path / "sweep"
    write(root, "0_full", record("full", 1.0, 20.0))
    samples(root, "0_full", [window(i, 3000.0 + 100 * i) for i in range(4)])
    for family, shift in (("window", 0.2), ("oracle_topk", 0.0)):  # the gap's references, at ratio 0.3
        write(root, f"ref_{family}", record(family, 0.3, 30.0))
        samples(root, f"ref_{family}", [window(i, 3000.0 + 100 * i + 1023 * shift) for i in range(4)])
    shifts = {0: 0.02, 1: 0.05, 2: 0.11}  # per hash draw: log of its perplexity over full's on every window
    for seed, shift in shifts.items():
        write(root, f"lsh_s{seed}", record("lsh", 0.3 + 0.001 * seed, 21.0 + seed, hasher={"seed": seed}))
        samples(root, f"lsh_s{seed}", [window(i, 3000.0 + 100 * i + 1023 * shift) for i in range(4)])
    for seed in (0, 1):  # draw 1 scored other windows: no paired figure for it, so none for the group
        write(root, f"b4_s{seed}", record("lsh", 0.2, 25.0 + seed, hasher={"n_bits": 4, "seed": seed}))
        samples(root, f"b4_s{seed}", [window(i + 10 * seed, 3000.0 + 100 * i) for i in range(4)])
    assert main([str(root), "--paired-with", "full", "--gap-closed", "--group-seeds", "--no-plot"]) == 0
    import pandas as pd
    table = pd.read_csv(root / "summary_perplexity.csv").set_index("run_dir")
    row = table.loc["lsh_s0 (+2)"]
    ratios = np.exp(list(shifts.values()))
    assert row["n_seeds"] == 3 and row["paired_n"] == 4
    assert row["paired_ratio"] == pytest.approx(ratios.mean())
    assert row["paired_ratio_std"] == pytest.approx(ratios.std(ddof=1))
    assert (row["paired_ratio_min"], row["paired_ratio_max"]) == pytest.approx((ratios.min(), ratios.max()))
    assert pd.isna(row["paired_ratio_ci_low"])  # one run's interval does not describe a mean over draws
    gaps = (ratios - math.exp(0.2)) / (1 - math.exp(0.2))
    assert row["gap_closed"] == pytest.approx(gaps.mean()) and row["gap_closed_std"] == pytest.approx(gaps.std(ddof=1))
    assert table.loc["b4_s0 (+1)", "n_seeds"] == 2 and pd.isna(table.loc["b4_s0 (+1)", "paired_ratio"])
    assert table.loc["0_full", "paired_ratio"] == 1.0
    md = (root / "summary.md").read_text()
    assert "each seed's run is paired on its own" in md


def test_items_are_read_and_matched_by_what_they_are(tmp_path):
    samples(tmp_path, "", [window(0, 1.0), window(1, 2.0)])
    items = read_items(tmp_path)
    assert sorted(items) == [0, 1]  # the line cut short by a kill is skipped
    assert same_item(window(0, 1.0), window(0, 5.0))
    assert not same_item(window(0, 1.0), window(0, 1.0, predicted=1000))
    assert same_item(passkey(3, True), {**passkey(3, False), "tokens": 8200})  # generated tokens differ
    assert not same_item(passkey(3, True), passkey(3, True, target="12345"))
    assert not same_item(window(0, 1.0), passkey(0, True))
    assert read_items(tmp_path / "nowhere") == {}
