"""experiment=magicpig_grid and experiment=lsh_topk_grid compose, and every job of their sweeps validates."""
import pytest

from conftest import compose_config


@pytest.mark.parametrize("experiment", ["magicpig_grid", "lsh_topk_grid"])
def test_rule_presets_compose_and_validate(experiment):
    from lsh_bitnet.validate import validate_config

    cfg = compose_config([f"experiment={experiment}"], return_hydra_config=True)
    assert cfg.hydra.sweep.dir == f"multirun/{experiment}" and cfg.dataset.name == "wikitext2"
    variants = str(cfg.hydra.sweeper.params["+variant"]).split(",")
    assert {"full", "oracle10_sw"} <= set(variants)  # the baseline and the oracle at the matched budget
    seen = set()
    for variant in variants:
        job = compose_config([f"experiment={experiment}", f"+variant={variant}"])
        validate_config(job)
        seen.add(job.attention.name)
        if job.attention.name in ("lsh", "lsh_topk"):
            assert job.hasher.center == "calibration" and job.attention.sink_tokens == 4
            if job.attention.name == "lsh_topk":
                assert job.attention.fraction in (0.05, 0.07, 0.1) and job.attention.score in ("collisions", "soft")
            else:
                assert job.attention.min_collisions in (2, 3) and job.attention.estimator in ("softmax", "sampling")
    assert {"full", "oracle_topk", "window"} <= seen and seen & {"lsh", "lsh_topk"}


def test_new_fields_reject_bad_values():
    from lsh_bitnet.validate import ConfigError, validate_config

    bad = [(["attention=lsh", "attention.n_tables=4", "attention.min_collisions=5"], "attention.min_collisions"),
           (["attention=oracle_topk", "attention.estimator=sampling"], "attention.estimator=sampling needs"),
           (["attention=lsh_topk", "attention.k=4", "attention.fraction=0.1"], "exactly one of attention.k"),
           (["attention=lsh", "hasher.calibration_source=file"], "hasher.calibration_path")]
    for overrides, message in bad:
        cfg = compose_config(overrides + ["dataset=wikitext2", "metric=perplexity"])
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            validate_config(cfg)


def test_closed_value_sets_are_refused_at_composition():
    """estimator, score, center... are Enums: a value outside the set fails when the config is composed, naming
    the key and the allowed values (as model.dtype does), before any check runs."""
    refused = [(["attention=lsh", "attention.estimator=magic"], "attention.estimator", "[softmax, sampling]"),
               (["attention=lsh_topk", "attention.score=hamming"], "attention.score", "[collisions, soft]"),
               (["attention=lsh", "attention.engine=fast"], "attention.engine", "[auto, masked, flex]"),
               (["attention=lsh", "hasher.center=median"], "hasher.center", "[none, calibration, prompt]"),
               (["hasher.calibration_source=web"], "hasher.calibration_source", "[auto, train_split, file, generated]")]
    for overrides, key, allowed in refused:
        with pytest.raises(Exception) as err:
            compose_config(overrides)
        text = str(err.value) + str(err.value.__cause__ or "")
        assert key in text and allowed in text, text
