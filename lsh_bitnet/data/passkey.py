"""passkey: a random 5-digit key, stated once at a chosen depth of long filler text, asked for at the end.

The task of Mohtashami & Jaggi (2023, "Landmark Attention"), used since to test long-context
retrieval: the key is the only informative sentence in thousands of tokens, so an attention that
loses the link from the question to that one sentence fails outright (chance is 1 in 90,000), while
full attention in a small model copies it. Depth 0 puts the key before all filler, 1 after it.
"""
import random
import re
from dataclasses import dataclass, replace
from typing import List, Optional

from lsh_bitnet.config import PasskeyFiller, config_value
from lsh_bitnet.data.synthetic import FILLERS, count_tokens, fit_to_tokens

INSTRUCTION = ("There is an important piece of information hidden inside a lot of irrelevant text. "
               "Find it and memorize it. I will quiz you about the important information there.")
# The classic filler: five sentences that carry nothing, repeated.
REPEAT_FILLER = ("The grass is green.", "The sky is blue.", "The sun is yellow.", "Here we go.",
                 "There and back again.")
KEY_SENTENCE = "The pass key is {key}. Remember it."
QUESTION = "What is the pass key? The pass key is"
FILLERS_KINDS = tuple(kind.value for kind in PasskeyFiller)  # the schema's Enum: dataset.filler
KEY_DIGITS = 5
MIN_TARGET_TOKENS = 64  # below this the instruction and question leave no room for a haystack


@dataclass
class PasskeySample:
    prompt: str  # the model continues it with the key
    answer: str  # the 5-digit key
    depth: float  # requested depth in [0, 1]
    depth_actual: float  # filler characters before the key sentence / all filler characters
    filler_sentences: int
    index: int
    prompt_tokens: Optional[int] = None




def depths(cfg) -> List[float]:
    """dataset.depth as a list: one number, or a list of them (sample i gets depths[i % len])."""
    depth = config_value(cfg, "depth", 0.5)
    values = list(depth) if hasattr(depth, "__iter__") and not isinstance(depth, str) else [depth]
    if not values:
        raise ValueError("dataset.depth is an empty list: give a number in [0, 1] or a list of them")
    for d in values:
        if isinstance(d, bool) or not isinstance(d, (int, float)) or not 0 <= d <= 1:
            raise ValueError(f"dataset.depth={depth!r}: each depth must be a number in [0, 1] "
                             f"(0 = key before all filler, 1 = right before the question), e.g. dataset.depth=0.5 "
                             f"or dataset.depth=[0.1,0.5,0.9]")
    return [float(d) for d in values]


def check_passkey_config(cfg) -> None:
    """Range checks for dataset=passkey; each error names the key and the fix."""
    if cfg.n_samples < 1:
        raise ValueError(f"dataset.n_samples must be >= 1 (got {cfg.n_samples})")
    if cfg.target_tokens is None or cfg.target_tokens < MIN_TARGET_TOKENS:
        raise ValueError(f"dataset.target_tokens must be >= {MIN_TARGET_TOKENS} (got {cfg.target_tokens}), "
                         f"e.g. 2048, 4096, 8192")
    if config_value(cfg, "filler", "repeat") not in FILLERS_KINDS:
        raise ValueError(f"dataset.filler={config_value(cfg, 'filler')!r} is not known: allowed {list(FILLERS_KINDS)}")
    depths(cfg)


def make_passkey_sample(seed: int, index: int, depth: float, filler_sentences: int,
                        filler: str = "repeat") -> PasskeySample:
    # String seeds: stable across processes, one stream per sample, the key independent of the length.
    rng = random.Random(f"passkey/{seed}/{index}")
    key = str(rng.randint(10 ** (KEY_DIGITS - 1), 10 ** KEY_DIGITS - 1))
    if filler == "repeat":
        sentences = [REPEAT_FILLER[k % len(REPEAT_FILLER)] for k in range(filler_sentences)]
    else:
        bank_rng, sentences = random.Random(f"passkey/{seed}/{index}/filler"), []
        while len(sentences) < filler_sentences:  # shuffled bank after bank: more filler only appends
            bank = list(FILLERS)
            bank_rng.shuffle(bank)
            sentences.extend(bank)
        sentences = sentences[:filler_sentences]
    at = round(depth * filler_sentences)  # filler sentences before the key
    before, after = " ".join(sentences[:at]), " ".join(sentences[at:])
    haystack = " ".join(p for p in (before, KEY_SENTENCE.format(key=key), after) if p)
    filler_chars = len(before) + len(after)
    prompt = f"{INSTRUCTION}\n\n{haystack}\n\n{QUESTION}"
    return PasskeySample(prompt=prompt, answer=key, depth=depth,
                         depth_actual=len(before) / filler_chars if filler_chars else depth,
                         filler_sentences=filler_sentences, index=index)


def make_passkey_samples(cfg, tokenizer, start: int = 0, stop: Optional[int] = None) -> List[PasskeySample]:
    """Samples start..min(stop, n_samples)-1, each with the most filler whose prompt stays <= dataset.target_tokens
    tokens of `tokenizer`; deterministic in dataset.seed, sample i the same for any n_samples > i."""
    check_passkey_config(cfg)
    grid, filler = depths(cfg), config_value(cfg, "filler", "repeat")
    samples, hint = [], 0
    for i in range(start, cfg.n_samples if stop is None else min(stop, cfg.n_samples)):
        depth = grid[i % len(grid)]
        sample, hint, n = fit_to_tokens(lambda f: make_passkey_sample(cfg.seed, i, depth, f, filler),
                                        lambda s: count_tokens(tokenizer, s.prompt), cfg.target_tokens,
                                        "dataset.target_tokens", hint)
        samples.append(replace(sample, prompt_tokens=n))
    return samples


def extract_key(text: str) -> str:
    """The first run of digits in a generated answer ("" if none): ' 71432. Remember' -> '71432'."""
    match = re.search(r"\d+", text)
    return match.group(0) if match else ""
