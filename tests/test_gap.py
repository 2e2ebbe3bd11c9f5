"""--gap-closed: a run's place between the window and the oracle at its ratio, over the items all three share."""
import math

import pandas as pd
import pytest

from lsh_bitnet.report.collect import main, write_summary
from test_collect import record, write
from test_paired import acc_record, passkey, samples, window


def ppl_run(root, name, attention, ratio, nll_per_token, windows=range(4), **kw):
    write(root, name, record(attention, ratio, math.exp(nll_per_token), **kw))
    samples(root, name, [window(i, nll_per_token * 1023) for i in windows])


def table(root, metric="perplexity"):
    """summary.csv: every column, also those a per-metric table drops for being empty."""
    df = pd.read_csv(root / "summary.csv")
    return df[df["metric"] == metric].set_index("run_dir")


def test_gap_closed_against_matched_references_over_shared_windows(tmp_path):
    root = tmp_path / "sweep"
    ppl_run(root, "full", "full", 1.0, 2.0)
    ppl_run(root, "lsh", "lsh", 0.150, 2.3)
    ppl_run(root, "window", "window", 0.153, 3.0)  # 2% away: matched
    ppl_run(root, "window_far", "window", 0.30, 2.1, attn={"local_window": 256})  # 2x the ratio: ignored
    ppl_run(root, "oracle", "oracle_topk", 0.147, 2.2)
    ppl_run(root, "oracle_better", "oracle_topk", 0.155, 2.1, attn={"fraction": 0.11})  # also matched, and better
    write_summary(root, plot=False, gap=True)
    row = table(root).loc["lsh"]
    # perplexities e^2.3 (run), e^3.0 (window), e^2.1 (the better oracle): (run - window) / (oracle - window)
    want = (math.exp(2.3) - math.exp(3.0)) / (math.exp(2.1) - math.exp(3.0))
    assert row["gap_closed"] == pytest.approx(want)
    assert (row["gap_n"], row["gap_window_run"], row["gap_oracle_run"]) == (4, "window", "oracle_better")
    for ref in ("full", "window", "oracle"):
        assert pd.isna(table(root).loc[ref, "gap_closed"])
    assert "`gap_closed`" in (root / "summary.md").read_text()
    write_summary(root, out_dir=tmp_path / "tight", plot=False, gap=True, gap_tolerance=0.01)  # nothing within 1%
    assert table(tmp_path / "tight").loc["lsh", ["gap_closed", "gap_window_run"]].isna().all()


def test_gap_tolerance_takes_a_reference_exactly_at_it_and_none_beyond(tmp_path):
    """|ratio(ref) - ratio(run)| <= tolerance * ratio(run): at 0.25 of 0.5, refs at 0.625 and 0.375 (exact binary
    fractions) match; the better-scoring refs 2^-20 further out do not."""
    root = tmp_path / "sweep"
    beyond = 2.0 ** -20
    ppl_run(root, "lsh", "lsh", 0.5, 2.3)
    ppl_run(root, "window_edge", "window", 0.625, 3.0)
    ppl_run(root, "window_beyond", "window", 0.625 + beyond, 2.6, attn={"local_window": 80})
    ppl_run(root, "oracle_edge", "oracle_topk", 0.375, 2.2)
    ppl_run(root, "oracle_beyond", "oracle_topk", 0.375 - beyond, 2.0, attn={"fraction": 0.09})
    write_summary(root, plot=False, gap=True, gap_tolerance=0.25)
    row = table(root).loc["lsh"]
    assert (row["gap_window_run"], row["gap_oracle_run"]) == ("window_edge", "oracle_edge")
    assert row["gap_closed"] == pytest.approx((math.exp(2.3) - math.exp(3.0)) / (math.exp(2.2) - math.exp(3.0)))


def test_gap_closed_reads_all_three_on_the_samples_they_share(tmp_path):
    root = tmp_path / "sweep"

    def run(name, attention, ratio, offset, n, correct, **attn):
        rec = acc_record(attention, offset, n, 0.5, **attn)
        rec["cost"]["comparison_ratio"] = ratio
        write(root, name, rec)
        samples(root, name, [passkey(i, correct(i)) for i in range(offset, n)])

    run("mofl", "lsh", 0.168, 0, 10, lambda i: i not in (1, 3))  # 8 of 10
    run("window", "window", 0.165, 0, 5, lambda i: i == 0)  # samples 0-4 only: 1 of 5
    run("oracle", "oracle_topk", 0.163, 0, 20, lambda i: i != 4)  # 0-19: 4 of 5 on 0-4
    assert main([str(root), "--gap-closed", "--no-plot"]) == 0
    row = table(root, "passkey_accuracy").loc["mofl"]
    assert row["gap_n"] == 5  # 0-4, where all three ran
    assert (row["gap_window"], row["gap_oracle"]) == (0.2, 0.8)
    assert row["gap_closed"] == pytest.approx((0.6 - 0.2) / (0.8 - 0.2))  # the run: 3 of 5 on 0-4


def test_gap_closed_from_the_runs_metrics_without_samples_and_refusals(tmp_path, capsys):
    root = tmp_path / "sweep"
    write(root, "lsh", record("lsh", 0.10, 25.0))
    write(root, "window", record("window", 0.10, 40.0))
    write(root, "oracle", record("oracle_topk", 0.10, 20.0))
    write_summary(root, plot=False, gap=True)
    row = table(root).loc["lsh"]
    assert row["gap_closed"] == pytest.approx(0.75) and pd.isna(row["gap_n"])
    assert main([str(root), "--gap-closed", "--gap-tolerance", "5", "--no-plot"]) == 2
    assert "--gap-tolerance 5" in capsys.readouterr().err
