"""Issue 27: the reported work-saving preset, and the offline study's recall against the oracle's keys."""
import importlib.util

import pytest

from conftest import REPO_ROOT, compose_config


def test_work_saving_best_is_the_reported_setting(tmp_path):
    """`+variant=work_saving_best` (scripts depend on the name) composes to the reported setting of docs/FINDINGS.md
    section 6 and validates for the held-out perplexity run."""
    from lsh_bitnet.validate import validate_config

    text = tmp_path / "valid.txt"
    text.write_text("a few words of held-out text\n" * 50)
    cfg = compose_config(["+variant=work_saving_best", "dataset=text_file", f"dataset.path={text}",
                          "metric=perplexity", "eval.seq_len=4096"])
    validate_config(cfg)
    a, h = cfg.attention, cfg.hasher
    assert (a.name, a.n_tables, a.probe_radius, a.fraction, a.k) == ("lsh_probe", 32, 3, 0.085, None)
    assert (a.sink_tokens, a.local_window, a.include_self, a.estimator) == (4, 32, True, "softmax")
    assert (h.name, h.n_bits, h.center, h.rounds) == ("hadamard", 8, "calibration", 1)


def _study():
    spec = importlib.util.spec_from_file_location("study_candidates", REPO_ROOT / "benchmarks/study_candidates.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_study_reports_recall_of_the_oracles_keys(tmp_path, capsys):
    """orecall = share of the oracle's C(i) (same budget) the design keeps; frecall = share inside what its filter
    finds. The oracle keeps all of its own keys; a probe of every bucket finds every key; a strict m-of-L filter
    finds fewer; a design never keeps more of them than its filter found."""
    import torch

    study = _study()
    g = torch.Generator().manual_seed(0)
    T, layers = 64, 30
    data = {"query": [torch.randn(9, T, 64, generator=g).half() for _ in range(layers)],
            "key": [torch.randn(3, T, 64, generator=g).half() for _ in range(layers)],
            "centers": torch.zeros(layers, 3, 64)}
    path = tmp_path / "qk.pt"
    torch.save(data, path)
    study.DESIGNS["test"] = [("oracle f0.2", dict(kind="oracle", f=0.2)),
                             ("probe 4x4 r4 f0.2", dict(kind="probe", K=4, L=4, r=4, f=0.2)),
                             ("filter 4x4 m3 f0.2", dict(kind="filter", K=4, L=4, m=3, f=0.2))]
    study.main([str(path), "--queries", "16", "--designs", "test"])
    rows = {}
    for line in capsys.readouterr().out.splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = dict(orecall=float(cells[7]), frecall=float(cells[8]))
    assert rows["oracle f0.2"] == dict(orecall=1.0, frecall=1.0)
    assert rows["probe 4x4 r4 f0.2"]["frecall"] == 1.0  # radius = bits: every bucket visited
    assert rows["filter 4x4 m3 f0.2"]["frecall"] < 1.0  # random q/k rarely collide in 3 of 4 tables
    for r in rows.values():
        assert 0.0 < r["orecall"] <= r["frecall"] <= 1.0


if __name__ == "__main__":
    pytest.main([__file__])
