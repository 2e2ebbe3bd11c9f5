"""--pool-ranges: runs of one config over different item ranges become one row, recomputed from their items."""
import logging
import math

import pandas as pd
import pytest

from lsh_bitnet import stats
from lsh_bitnet.report.collect import main, write_summary
from lsh_bitnet.report.items import item_ranges, primary_value
from test_collect import write
from test_paired import acc_record, passkey, samples


def with_cost(rows, comparisons=20, full=100):
    return [{**r, "comparisons": comparisons, "full_comparisons": full} for r in rows]


def piece(root, name, offset, n, correct, attention="lsh", mac=0.5, hash_ops=1000, seed=0, n_bits=8, **kw):
    rec = acc_record(attention, offset, n, 0.0)  # the pooled row recomputes it
    rec["config"]["hasher"].update(n_bits=n_bits, seed=seed)
    rec["cost"].update(mac_ratio=mac, hash_ops=hash_ops, comparisons=20 * (n - offset),
                       full_comparisons=100 * (n - offset), comparison_ratio=0.2)
    rec["timing"]["eval_s"] = 10.0 * (n - offset)
    write(root, name, rec)
    samples(root, name, with_cost([passkey(i, correct(i)) for i in range(offset, n)], **kw))


def test_pieces_of_one_config_pool_into_one_row_recomputed_from_items(tmp_path, caplog):
    root = tmp_path / "sweep"
    piece(root, "a_0", 0, 10, lambda i: i % 2 == 0, mac=0.4, hash_ops=1000)
    piece(root, "b_10", 10, 15, lambda i: True, mac=0.6, hash_ops=500, comparisons=30)
    piece(root, "c_5", 5, 15, lambda i: i % 2 == 0 or i >= 10)  # repeats 5-14: the first records are kept
    piece(root, "d_other", 0, 10, lambda i: True, n_bits=4)  # another config: its own row
    piece(root, "e_differs", 0, 3, lambda i: False, n_bits=2)
    piece(root, "f_differs", 2, 4, lambda i: True, n_bits=2)  # item 2 answered otherwise: warned
    with caplog.at_level(logging.WARNING, logger="lsh_bitnet.report.collect"):
        write_summary(root, plot=False, pool=True)
    table = pd.read_csv(root / "summary_passkey_accuracy.csv")
    assert len(table) == 3
    row = table[table["n_bits"] == 8].iloc[0]
    assert (row["pooled_runs"], row["pooled_duplicates"], row["items"]) == (3, 10, "0-14")
    assert row["run_dir"] == "a_0 (+2)"
    assert row["accuracy"] == pytest.approx(10 / 15)  # 5 of 0-9, 5 of 10-14
    assert (row["accuracy_ci_low"], row["accuracy_ci_high"]) == pytest.approx(stats.wilson(10, 15))
    assert row["n_samples"] == 15
    assert row["comparison_ratio"] == pytest.approx((10 * 20 + 5 * 30) / (15 * 100))  # from the items
    assert row["mac_ratio"] == pytest.approx((0.4 * 1000 + 0.6 * 500) / 1500)  # weighted by the work pooled
    assert row["hash_ops"] == pytest.approx(1000 + 500)  # c_5 contributed nothing
    assert row["eval_s"] == pytest.approx(100 + 50)
    assert "dataset.n_samples" not in table or table["dataset.n_samples"].isna().all()
    assert "item 2 differs" in caplog.text and "f_differs" in caplog.text
    assert table[table["n_bits"] == 4].iloc[0]["items"] == "0-9"


def test_pooled_rows_pair_and_group_like_runs(tmp_path):
    root = tmp_path / "sweep"
    for seed in (0, 1):
        piece(root, f"lsh_s{seed}_0", 0, 5, lambda i: True, seed=seed)
        piece(root, f"lsh_s{seed}_5", 5, 10, lambda i: i != 7, seed=seed)
    piece(root, "full_0", 0, 10, lambda i: i < 5, attention="full")
    assert main([str(root), "--pool-ranges", "--paired-with", "full", "--no-plot"]) == 0
    table = pd.read_csv(root / "summary_passkey_accuracy.csv").set_index("run_dir")
    assert table.loc["lsh_s0_0 (+1)", ["paired_n", "paired_gains", "paired_losses"]].tolist() == [10, 4, 0]
    write_summary(root, out_dir=tmp_path / "g", plot=False, pool=True, group=True)
    grouped = pd.read_csv(tmp_path / "g" / "summary_passkey_accuracy.csv")
    lsh = grouped[grouped["family"] != "full"]
    assert len(lsh) == 1 and lsh.iloc[0]["n_seeds"] == 2 and lsh.iloc[0]["accuracy"] == pytest.approx(0.9)


def test_runs_without_samples_stay_rows_of_their_own(tmp_path):
    root = tmp_path / "sweep"
    piece(root, "a", 0, 5, lambda i: True)
    rec = acc_record("lsh", 5, 10, 0.4)
    rec["config"]["hasher"].update(n_bits=8)
    write(root, "b_no_samples", rec)
    write_summary(root, plot=False, pool=True)
    table = pd.read_csv(root / "summary_passkey_accuracy.csv").set_index("run_dir")
    assert table.loc["b_no_samples", "accuracy"] == 0.4 and math.isnan(table.loc["b_no_samples", "items"])
    assert table.loc["a", "items"] == "0-4"


def test_pooled_perplexity_and_primary_value_of_unequal_windows_are_per_token(tmp_path):
    """Windows of different lengths weigh by their predicted tokens, in pooled rows and in the gap's values."""
    from test_collect import record
    from test_paired import window

    root = tmp_path / "sweep"
    # (index, predicted tokens, NLL per token) of each piece's windows
    pieces = {"a_0": [(0, 12, 1.0), (1, 900, 3.2)], "b_2": [(2, 40, 1.4), (3, 300, 2.6)]}
    for name, rows in pieces.items():
        rec = record("lsh", 0.3, 20.0)
        rec["config"]["eval"]["batch_offset"] = rows[0][0]
        write(root, name, rec)
        samples(root, name, with_cost([window(i, t * p, predicted=t) for i, t, p in rows]))
    rows = [r for piece in pieces.values() for r in piece]
    per_token = sum(t * p for _, t, p in rows) / sum(t for _, t, _ in rows)  # 2.98; over windows: 2.05
    write_summary(root, plot=False, pool=True)
    row = pd.read_csv(root / "summary_perplexity.csv").iloc[0]
    assert row["pooled_runs"] == 2 and row["items"] == "0-3"
    assert row["nll"] == pytest.approx(per_token) and row["perplexity"] == pytest.approx(math.exp(per_token))
    items = {i: window(i, t * p, predicted=t) for i, t, p in rows}
    assert primary_value(items, [0, 1, 2, 3]) == pytest.approx(math.exp(per_token))


def test_item_ranges_reads_as_a_person_would_write_it():
    assert item_ranges([8, 0, 1, 2, 5, 7]) == "0-2, 5, 7-8"
    assert item_ranges([]) == "" and item_ranges([3]) == "3"


def test_an_interrupted_run_pools_its_finished_items_and_is_flagged(tmp_path):
    root = tmp_path / "sweep"
    stopped = acc_record("lsh", 0, 40, 0.0)  # stopped after 0-3 of 0-39, like a time limit
    stopped["config"]["hasher"].update(n_bits=8)
    stopped.update(status="interrupted", error={"type": "RunInterrupted", "message": "SIGTERM"}, cost=None)
    write(root, "a_0_stopped", stopped)
    samples(root, "a_0_stopped", with_cost([passkey(i, i != 1) for i in range(4)]))
    piece(root, "b_40", 40, 50, lambda i: True, mac=0.5)
    piece(root, "c_other", 0, 4, lambda i: True, n_bits=4)
    write_summary(root, plot=False, pool=True)
    table = pd.read_csv(root / "summary_passkey_accuracy.csv")
    row = table[table["n_bits"] == 8].iloc[0]
    assert (row["items"], row["pooled_runs"], row["pooled_partial"], row["status"]) == ("0-3, 40-49", 2, 1, "partial")
    assert row["accuracy"] == pytest.approx(13 / 14)
    assert row["mac_ratio"] == pytest.approx(0.5)  # from the run that reports one
    assert pd.isna(row["hash_ops"])  # a count the interrupted run never reported: not guessed
    assert table[table["n_bits"] == 4].iloc[0]["pooled_partial"] == 0
    assert "a_0_stopped" in pd.read_csv(root / "failed.csv")["run_dir"].tolist()  # still listed as stopped


def test_a_run_in_pieces_pools_to_what_one_run_over_all_its_items_reports(tmp_path, cache_dir):
    """Real runs (tiny BitNet, perplexity, a hashed rule): windows 0-2 and 3-5 pooled against one run of 0-5."""
    from conftest import compose_config
    from lsh_bitnet.run.runner import run
    from test_eval_records import TEXT, TINY

    text = tmp_path / "tiny.txt"
    text.write_text(TEXT, encoding="utf-8")
    rule = TINY + [f"dataset.path={text}", "attention=lsh", "hasher=simhash", "hasher.n_bits=2",
                   "attention.n_tables=2"]
    root = tmp_path / "sweep"
    pieces = {"piece_0": ["eval.max_batches=3"], "piece_3": ["eval.batch_offset=3", "eval.max_batches=3"]}
    for name, extra in pieces.items():
        run(compose_config(rule + extra, cache_dir=cache_dir), output_dir=root / name)
    whole = run(compose_config(rule + ["eval.max_batches=6"], cache_dir=cache_dir), output_dir=tmp_path / "whole")
    full = TINY + [f"dataset.path={text}", "attention=full", "eval.max_batches=6"]
    full_record = run(compose_config(full, cache_dir=cache_dir), output_dir=root / "full")
    write_summary(root, plot=False, pool=True, paired_with="full")
    table = pd.read_csv(root / "summary_perplexity.csv")
    row = table[table["attention"] == "lsh"].iloc[0]
    assert (row["items"], row["pooled_runs"]) == ("0-5", 2)
    for key in ("perplexity", "perplexity_ci_low", "perplexity_ci_high", "nll", "bits_per_byte"):
        assert row[key] == pytest.approx(whole["metrics"][key], rel=1e-9), key
    for key in ("comparisons", "full_comparisons", "hash_ops", "selection_ops"):
        assert row[key] == whole["cost"][key], key
    for key in ("comparison_ratio", "mac_ratio"):
        assert row[key] == pytest.approx(whole["cost"][key], rel=1e-12), key
    assert row["paired_n"] == 6
    assert row["paired_ratio"] == pytest.approx(
        math.exp(whole["metrics"]["nll"] - full_record["metrics"]["nll"]), rel=1e-9)


def test_pooled_decode_protocol_rows_read_the_decode_ratio_from_their_items(tmp_path):
    """attention.apply_to=decode: the items carry the decode phase's counts, and the pooled comparison ratio is
    theirs (as each run's cost.comparison_ratio is), not the total's with the dense prompt."""
    root = tmp_path / "sweep"
    for name, offset, n in (("a_0", 0, 4), ("b_4", 4, 6)):
        piece(root, name, offset, n, lambda i: True)
        samples(root, name, [{**r, "decode_comparisons": 1 + i, "decode_full_comparisons": 10}
                             for i, r in enumerate(with_cost([passkey(i, True) for i in range(offset, n)]), offset)])
    write_summary(root, plot=False, pool=True)
    row = pd.read_csv(root / "summary_passkey_accuracy.csv").iloc[0]
    assert row["items"] == "0-5"
    assert row["comparison_ratio"] == pytest.approx(sum(range(1, 7)) / 60)
