"""synthetic_ny_adj: "which adjective came right before the N-th mention of New York?" (SPEC section 5).

A sample is a short story about one person in which "New York" appears `n_mentions` times, each time
right after a different adjective, with `filler_sentences` neutral sentences after every mention. The
answer sits far from the question, so a sparse attention that loses the link between "second mention"
and its adjective fails, while the other adjectives in the text are plausible distractors.
"""
import random
import re
from dataclasses import dataclass
from typing import List

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

# Each puts the adjective right before "New York"; cycled in a per-sample random order.
MENTION_TEMPLATES = (
    "{name} woke up early in {adj} New York.",
    "By noon {name} was walking through {adj} New York.",
    "In a letter, {name} wrote about {adj} New York.",
    "The evening train carried {name} back to {adj} New York.",
    "On the phone, {name} described {adj} New York to a cousin.",
    "From the ferry, {name} looked at {adj} New York.",
    "A postcard on the table showed {adj} New York.",
    "{name} took a photo of {adj} New York.",
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

# The chosen prompt format (see PROMPT_FORMATS): the one where full-attention SmolLM2-135M-Instruct
# scored best among those tried, reported in docs. The prompt ends where the answer word (after a
# space) should come, so choice scoring appends " " + adjective and generation starts right there.
PROMPT_FORMAT = "plain"
INSTRUCTION = "Read the story, then answer the question."
QUESTION = "Question: Which adjective came right before the {ordinal} mention of New York?"
ANSWER_LEAD = "Answer: The adjective right before the {ordinal} mention of New York was"
# A worked example about another city, so the prompt holds exactly n_mentions "New York"s (plus the
# question's) and the example's adjectives are outside ADJECTIVES.
EXAMPLE = ("Story: Ben arrived in muddy Paris. The shops were closing. Later he crossed elegant Paris "
           "on foot. A waiter swept the terrace. At dawn he left shiny Paris.\n\n"
           "Question: Which adjective came right before the second mention of Paris?\n"
           "Answer: The adjective right before the second mention of Paris was elegant.\n\n")
PROMPT_FORMATS = ("plain", "one_shot")


@dataclass
class SyntheticSample:
    prompt: str  # everything the model sees; the answer word comes next
    answer: str  # the adjective right before the mention-th "New York"
    choices: List[str]  # the story's adjectives, in order of mention
    mention: int
    n_mentions: int
    filler_sentences: int
    distance_chars: int  # characters from the answer's first letter to the end of the prompt


def ordinal(n: int) -> str:
    if n <= len(ORDINALS):
        return ORDINALS[n - 1]
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def check_synthetic_config(cfg) -> None:
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
    # Seeded by strings (stable across processes): each sample, and each gap within it, has its own
    # stream, so a sample does not depend on n_samples and more filler only appends sentences.
    rng = random.Random(f"synthetic_ny_adj/{seed}/{index}")
    adjectives = rng.sample(ADJECTIVES, n_mentions)
    templates = list(MENTION_TEMPLATES)
    rng.shuffle(templates)
    name = rng.choice(NAMES)

    story = f"This is a story about {name}."
    answer_pos = -1
    for m, adj in enumerate(adjectives):
        sentence = templates[m % len(templates)].format(name=name, adj=adj)
        if m == mention - 1:
            answer_pos = len(story) + 1 + sentence.index(f"{adj} New York")
        gap_rng = random.Random(f"synthetic_ny_adj/{seed}/{index}/gap{m}")
        story = " ".join([story, sentence, *_fillers(gap_rng, filler_sentences)])

    nth = ordinal(mention)
    head = f"{INSTRUCTION}\n\n" + (EXAMPLE if prompt_format == "one_shot" else "") + "Story: "
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format={prompt_format!r} is not known: allowed {list(PROMPT_FORMATS)}")
    prompt = f"{head}{story}\n\n{QUESTION.format(ordinal=nth)}\n{ANSWER_LEAD.format(ordinal=nth)}"
    return SyntheticSample(prompt=prompt, answer=adjectives[mention - 1], choices=adjectives, mention=mention,
                           n_mentions=n_mentions, filler_sentences=filler_sentences,
                           distance_chars=len(prompt) - (len(head) + answer_pos))


def make_samples(cfg, prompt_format: str = PROMPT_FORMAT) -> List[SyntheticSample]:
    """cfg.n_samples samples, deterministic in cfg.seed; the first k are the same for any n_samples >= k."""
    check_synthetic_config(cfg)
    return [make_sample(cfg.seed, i, cfg.mention, cfg.n_mentions, cfg.filler_sentences, prompt_format)
            for i in range(cfg.n_samples)]


def normalize_answer(text: str) -> str:
    """First word of a generated answer, lowercased, without punctuation or whitespace ("" if none)."""
    words = re.findall(r"[a-z0-9]+", text.lower())
    return words[0] if words else ""
