"""synthetic_ny_adj: "which adjective came right before the N-th mention of New York?" (SPEC section 5).

A sample is a short story about one person in which "New York" appears `n_mentions` times, each time
right after a different adjective, with `filler_sentences` neutral sentences after every mention. The
answer sits far from the question, so a sparse attention that loses the link between "second mention"
and its adjective fails, while the other adjectives in the text are plausible distractors.
"""
import random
import re
from dataclasses import dataclass, replace
from typing import Callable, List, Optional, Tuple, TypeVar

T = TypeVar("T")

# Common adjectives that are a single token after a space for SmolLM2 / Llama-3 style BPE, so the
# greedy answer is one step and choice scores compare like with like. None is a prefix of another
# word of this file, none is "new" (it would read as part of "New York").
ADJECTIVES = (
    "bright", "quiet", "busy", "cold", "warm", "rainy", "sunny", "noisy", "crowded", "empty",
    "big", "small", "green", "red", "blue", "dark", "loud", "calm", "wet", "dry",
    "hot", "tired", "happy", "sad", "clean", "dirty", "rich", "poor", "cheap", "huge",
    "tiny", "windy", "snowy", "lively", "sleepy", "golden", "silver", "gray", "pink", "yellow",
    "famous", "strange", "lovely", "gentle", "proud", "brave", "wild", "fancy", "soft", "fresh",
)

NAMES = ("Maya", "Tom", "Lena", "Omar", "Grace", "Ivan", "Nora", "Samir", "Clara", "Jonas")

# Each puts the adjective right before "New York", in a per-sample random order. In the cued format
# the words before the adjective identify the mention, so a sample uses each template at most once.
MENTION_TEMPLATES = (
    "{name} woke up early in {adj} New York.",
    "By noon {name} was walking through {adj} New York.",
    "In a letter, {name} wrote about {adj} New York.",
    "The evening train carried {name} back to {adj} New York.",
    "On the phone, {name} described {adj} New York to a cousin.",
    "From the ferry, {name} looked at {adj} New York.",
    "A postcard on the table showed {adj} New York.",
    "{name} took a photo of {adj} New York.",
    "After lunch, {name} drove across {adj} New York.",
    "A neighbour once painted {adj} New York for {name}.",
    "That winter {name} dreamed of {adj} New York.",
    "The radio host kept talking about {adj} New York.",
)

# Neutral sentences: no "New York", no word of ADJECTIVES (a test checks both).
FILLERS = (
    "The kettle clicked off in the kitchen.",
    "A letter arrived on Tuesday morning.",
    "Somebody had left an umbrella by the door.",
    "The library opened at nine.",
    "Two pigeons argued over a crust of bread.",
    "The radio played a song about the sea.",
    "A man on the corner was selling newspapers.",
    "The clock on the wall ticked steadily.",
    "Someone was practising the piano upstairs.",
    "The bus stopped at every station.",
    "A cat slept on the windowsill.",
    "The waiter brought a cup of tea.",
    "There was a long line at the bakery.",
    "A child dropped a glove on the stairs.",
    "The museum closed early that day.",
    "A taxi honked twice and drove on.",
    "The meeting was moved to Thursday.",
    "Someone had painted the fence again.",
    "A dog waited patiently outside the shop.",
    "The elevator was out of order.",
    "The neighbours were planning a party.",
    "A delivery van blocked the street for a while.",
    "The phone rang, but nobody answered.",
    "The river moved slowly under the bridge.",
    "A student was reading on a bench.",
    "The grocer stacked oranges in a pyramid.",
    "Somebody whistled a tune in the hallway.",
    "The printer ran out of paper.",
    "A group of tourists studied a map.",
    "The doorbell needed a new battery.",
    "Lunch was soup and a sandwich.",
    "The train schedule had changed again.",
    "A painter set up an easel near the fountain.",
    "The window in the office would not close.",
    "An old friend sent a message.",
    "The market sold apples, pears and plums.",
    "A bicycle leaned against the lamp post.",
    "The laundry took longer than expected.",
    "Someone knocked on the wrong door.",
    "The shop on the corner changed its sign.",
)

ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth", "tenth")

# Prompt formats. Both end where the answer word (after a space) comes, so choice scoring appends
# " " + adjective and generation starts right there.
# - plain: the story, then the question; the model must count mentions to find the answer.
# - cued: the same, and the answer opens by quoting the start of the sentence that holds the asked
#   mention ("... is in \"From the ferry, Tom looked at"), so the model must retrieve the adjective
#   that followed those words far back in the text: a long-range lookup, not counting.
# Measured with full attention on SmolLM2-135M-Instruct (mention 2 of 4, 4 fillers, 40 samples):
# plain (and chat-template or few-shot variants of it) sits at chance (choice_accuracy ~0.25, the
# model cannot count mentions), cued reaches ~1.0; so cued is the default: it is the one whose drop
# under sparse attention measures lost retrieval rather than noise. Pick plain for models that can
# count (dataset.prompt_format=plain, when the config schema has the field).
PROMPT_FORMATS = ("plain", "cued")
PROMPT_FORMAT = "cued"
INSTRUCTION = "Read the story, then answer the question."
QUESTION = "Question: Which adjective came right before the {ordinal} mention of New York?"
ANSWER_LEAD = {
    "plain": "Answer: The adjective right before the {ordinal} mention of New York was",
    "cued": 'Answer: The {ordinal} mention of New York is in the sentence "{cue}',
}


@dataclass
class SyntheticSample:
    prompt: str  # everything the model sees; the answer word comes next
    answer: str  # the adjective right before the mention-th "New York"
    choices: List[str]  # the story's adjectives, in order of mention
    mention: int
    n_mentions: int
    filler_sentences: int
    distance_chars: int  # characters from the answer's first letter to the end of the prompt
    index: int = 0  # position in the dataset (the sample's RNG stream)
    prompt_tokens: Optional[int] = None  # set when generated at dataset.target_tokens (with the tokenizer)


def ordinal(n: int) -> str:
    if n <= len(ORDINALS):
        return ORDINALS[n - 1]
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _format(cfg, prompt_format: Optional[str] = None) -> str:
    """The argument, else cfg.prompt_format where the schema has that field, else PROMPT_FORMAT."""
    fmt = prompt_format or (cfg.get("prompt_format") if hasattr(cfg, "get") else getattr(cfg, "prompt_format", None))
    fmt = fmt or PROMPT_FORMAT
    if fmt not in PROMPT_FORMATS:
        raise ValueError(f"dataset.prompt_format={fmt!r} is not known: allowed {list(PROMPT_FORMATS)}")
    return fmt


def check_synthetic_config(cfg, prompt_format: Optional[str] = None) -> None:
    """Range checks for dataset=synthetic_ny_adj; each error names the key and the fix."""
    n_samples, mention, n_mentions, filler = cfg.n_samples, cfg.mention, cfg.n_mentions, cfg.filler_sentences
    if n_samples < 1:
        raise ValueError(f"dataset.n_samples must be >= 1 (got {n_samples})")
    if not 1 <= n_mentions <= len(ADJECTIVES):
        raise ValueError(f"dataset.n_mentions must be in [1, {len(ADJECTIVES)}] (got {n_mentions}): each "
                         f"mention needs a distinct adjective from a bank of {len(ADJECTIVES)}")
    if not 1 <= mention <= n_mentions:
        raise ValueError(f"dataset.mention must be in [1, dataset.n_mentions={n_mentions}] (got {mention}): "
                         f"it is the 1-based mention whose adjective is asked for")
    if filler < 0:
        raise ValueError(f"dataset.filler_sentences must be >= 0 (got {filler})")
    target = _target_tokens(cfg)
    if target is not None and target < 1:
        raise ValueError(f"dataset.target_tokens must be >= 1 or null (got {target}), e.g. 2048, 4096, 8192")
    if _format(cfg, prompt_format) == "cued" and n_mentions > len(MENTION_TEMPLATES):
        raise ValueError(f"dataset.n_mentions must be <= {len(MENTION_TEMPLATES)} with the cued prompt format "
                         f"(got {n_mentions}): each mention needs its own sentence to be quoted; lower it "
                         f"or set dataset.prompt_format=plain")


def _fillers(rng: random.Random, k: int) -> List[str]:
    """k filler sentences, no repeat before the bank runs out; k + 1 extends the k list."""
    out: List[str] = []
    while len(out) < k:
        bank = list(FILLERS)
        rng.shuffle(bank)
        out.extend(bank)
    return out[:k]


def make_sample(seed: int, index: int, mention: int, n_mentions: int, filler_sentences: int,
                prompt_format: str = PROMPT_FORMAT) -> SyntheticSample:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"dataset.prompt_format={prompt_format!r} is not known: allowed {list(PROMPT_FORMATS)}")
    # Seeded by strings (stable across processes): each sample, and each gap within it, has its own
    # stream, so a sample does not depend on n_samples and more filler only appends sentences.
    rng = random.Random(f"synthetic_ny_adj/{seed}/{index}")
    adjectives = rng.sample(ADJECTIVES, n_mentions)
    templates = list(MENTION_TEMPLATES)
    rng.shuffle(templates)
    name = rng.choice(NAMES)

    head = f"{INSTRUCTION}\n\nStory: "
    story = f"This is a story about {name}."
    answer_pos, cue = -1, ""
    for m, adj in enumerate(adjectives):
        template = templates[m % len(templates)]
        sentence = template.format(name=name, adj=adj)
        if m == mention - 1:
            answer_pos = len(head) + len(story) + 1 + sentence.index(f"{adj} New York")
            cue = template.split("{adj}")[0].format(name=name).rstrip()
        gap_rng = random.Random(f"synthetic_ny_adj/{seed}/{index}/gap{m}")
        story = " ".join([story, sentence, *_fillers(gap_rng, filler_sentences)])

    nth = ordinal(mention)
    prompt = f"{head}{story}\n\n{QUESTION.format(ordinal=nth)}\n{ANSWER_LEAD[prompt_format].format(ordinal=nth, cue=cue)}"
    return SyntheticSample(prompt=prompt, answer=adjectives[mention - 1], choices=adjectives, mention=mention,
                           n_mentions=n_mentions, filler_sentences=filler_sentences,
                           distance_chars=len(prompt) - answer_pos, index=index)


def _target_tokens(cfg) -> Optional[int]:
    return cfg.get("target_tokens") if hasattr(cfg, "get") else getattr(cfg, "target_tokens", None)


def count_tokens(tokenizer, text: str) -> int:
    """Tokens the model sees for a prompt: with the tokenizer's special tokens, as the metrics encode it."""
    return len(tokenizer(text, verbose=False).input_ids)  # verbose=False: no "longer than the model" warning while searching


def fit_to_tokens(build: Callable[[int], T], n_tokens: Callable[[T], int], target: int, key: str,
                  hint: int = 0) -> Tuple[T, int, int]:
    """(item, f, tokens) for the largest f >= 0 with n_tokens(build(f)) <= target.

    build(f) must grow with f (more filler only appends text). Gallops from `hint` (the previous
    sample's f: neighbours need about the same filler), then bisects: a handful of tokenizer calls."""
    def size(f):
        item = build(f)
        return item, n_tokens(item)

    item, n = size(0)
    if n > target:
        raise ValueError(f"{key}={target} is shorter than the prompt without filler ({n} tokens): raise {key}")
    lo, lo_item, lo_n = 0, item, n  # fits
    f = max(hint, 1)
    step = 1
    while True:  # find hi that does not fit, moving lo up on the way
        item, n = size(f)
        if n > target:
            hi = f
            break
        lo, lo_item, lo_n = f, item, n
        f, step = f + step, step * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        item, n = size(mid)
        if n <= target:
            lo, lo_item, lo_n = mid, item, n
        else:
            hi = mid
    return lo_item, lo, lo_n


def make_samples(cfg, prompt_format: Optional[str] = None, tokenizer=None, start: int = 0,
                 stop: Optional[int] = None) -> List[SyntheticSample]:
    """Samples start..min(stop, cfg.n_samples)-1, deterministic in cfg.seed; the first k are the same for any n_samples >= k.

    With cfg.target_tokens set, each sample gets the most filler sentences per gap (the same after every
    mention) whose prompt, in `tokenizer`'s tokens, stays <= target_tokens: the length is reached within
    n_mentions filler sentences and the mentions sit at 0, 1/n, 2/n, ... of the story."""
    check_synthetic_config(cfg, prompt_format)
    fmt = _format(cfg, prompt_format)
    target = _target_tokens(cfg)
    indices = range(start, cfg.n_samples if stop is None else min(stop, cfg.n_samples))
    if target is None:
        return [make_sample(cfg.seed, i, cfg.mention, cfg.n_mentions, cfg.filler_sentences, fmt) for i in indices]
    if tokenizer is None:
        raise ValueError("dataset.target_tokens needs the model's tokenizer to measure prompts: "
                         "call make_samples(cfg, tokenizer=...)")
    samples, hint = [], 0
    for i in indices:
        sample, hint, n = fit_to_tokens(
            lambda f: make_sample(cfg.seed, i, cfg.mention, cfg.n_mentions, f, fmt),
            lambda s: count_tokens(tokenizer, s.prompt), target, "dataset.target_tokens", hint)
        samples.append(replace(sample, prompt_tokens=n))
    return samples


def normalize_answer(text: str) -> str:
    """First word of a generated answer, lowercased, without punctuation or whitespace ("" if none)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""
