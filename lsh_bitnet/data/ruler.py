"""RULER's synthetic long-context tasks, generated offline at any length: needle in a haystack (single,
multi-key, multi-value, multi-query), variable tracking, common-words extraction.

Version followed: RULER as released by NVIDIA (Hsieh et al. 2024, "RULER: What's the Real Context Size of
Your Long-Context Language Models?", github.com/NVIDIA/RULER, scripts/data/synthetic and
scripts/eval/synthetic/constants.py), in the form lm-eval 0.4.13 ports it (lm_eval/tasks/ruler): its
prompt templates and answer prefixes, 7-digit numbers as needle values, adjective-noun compounds as
needle keys, the noise haystack ("The grass is green. ..."), one chain of 4 hops with a few-shot example
for variable tracking, 10 common words with a few-shot example for common-words extraction, and its
scoring: string_match_all (the share of reference strings found, case-insensitive, in the prediction),
averaged over documents. What differs, so that nothing is downloaded:
- every haystack is noise (RULER's niah_multikey_1 / multivalue / multiquery use Paul Graham essays);
- common words come from a bundled list of 482 English words (RULER draws them from the `wonderwords`
  package, not a dependency here);
- generation budgets are shorter (`MAX_NEW`: 16 / 48 tokens for one / four needles, RULER's 30 for variable
  tracking, 64 for common words; RULER: 128 / 30 / 120): the answers fit, and CPU runs stay affordable.
`target_tokens` is RULER's max_seq_length: prompt plus generation budget, in the model's tokens; the
prompt is grown until one more haystack unit would pass it.
"""
import random
import re
import string
from typing import Callable, Dict, List, Sequence

from lsh_bitnet.data.lastword import OBJECTS, PLACES
from lsh_bitnet.data.synthetic import ADJECTIVES

FAMILIES = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe")
# Generation budgets (lm-eval's max_gen_toks), each above its answer's length for Llama-3 style BPE (digits
# are one token each): 7 digits; 4 x 7 digits with separators; 5 names; 10 numbered words.
MAX_NEW = {"niah_single": 16, "niah_multikey": 16, "niah_multivalue": 48, "niah_multiquery": 48, "vt": 30, "cwe": 64}
# (keys, values per key, keys asked) of each needle family (RULER's num_needle_k, _v, _q)
NEEDLES = {"niah_single": (1, 1, 1), "niah_multikey": (4, 1, 1), "niah_multivalue": (1, 4, 1),
           "niah_multiquery": (4, 1, 4)}
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. I will quiz "
        "you about the {type_v} afterwards.\n{context}\nWhat are all the special magic {type_v} for {query} "
        "mentioned in the provided text?")
VT = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n{context}\n"
      "Question: Find all variables that are assigned the value {query} in the text above.")
VT_ANSWER = ("Answer: According to the chain(s) of variable assignment in the text above, {n} variables are "
             "assgined the value {query}, they are:")  # sic: RULER's spelling
CWE = ("Below is a numbered list of words. In these words, some appear more often than others. Memorize the ones "
       "that appear most often.\n{context}\nQuestion: What are the 10 most common words in the above list?")
CWE_ANSWER = "Answer: The top 10 words that appear most often in the list are:"
# one string, split: plain words (one is "window", not the attention rule)
NOUNS = tuple(sorted(set(OBJECTS) | set(PLACES) | set(
    "river forest window castle dragon pencil rocket island mountain planet tiger garden engine bridge harbor "
    "meadow orchard village canyon desert valley lantern compass anchor feather marble saddle trumpet tractor "
    "banner".split())))
WORDS = tuple(f"{a}-{n}" for a in ADJECTIVES for n in NOUNS)  # RULER's key form: adjective-noun compounds
# Common-words extraction lists single words (RULER: wonderwords' nouns, adjectives, verbs). Ours: everyday
# nouns, plus the adjectives and objects of the other generated tasks; 482 words, nearly all one token for
# SmolLM2 / Llama-3 BPE. Past them (beyond ~16k tokens at 30 / 3 repeats) the list stops growing, as in RULER.
CWE_WORDS = tuple(sorted(set((
    "apple arrow artist autumn bakery balcony bamboo banana barrel basin battery beach beacon bean beard bell "
    "belt bench berry bicycle blade blossom board boat bone boot border bottle boulder bowl bracelet branch bread "
    "brick bridge brush bubble buffalo butter button cabin cable cactus cake camel candy canoe canvas captain "
    "carpet carrot castle cattle ceiling cellar chain chair chalk cheese cherry chest chicken chimney church "
    "circle citizen cliff cloak cloud clover coast coffee collar comet copper corner cotton couch cousin crane "
    "crayon cream creek cricket crown crystal cupboard curtain cushion daisy dancer desk diamond dinner doctor "
    "dolphin donkey door dragon drawer dream dress drum eagle earth elbow emerald engine envelope falcon farmer "
    "fence ferry field finger flag flame flask flower flute forest fork fossil fountain fox frog frost fruit "
    "furnace gallery garlic gate giant ginger glacier glass goat gold goose grain grape grass gravel guard guitar "
    "hammer harbor harp harvest hawk heart hedge hill honey hook horizon horse hotel island ivory jacket jaguar "
    "jelly jewel journey judge jungle kangaroo kernel kitten knight knot ladder lake lamb lantern leaf lemon "
    "letter lever lily lion lizard lobster locket lumber magnet mango maple marble market meadow melon metal "
    "meteor mill mint monkey moon moss motor mountain mouse mud mushroom needle nest net nickel night noodle oak "
    "oar ocean office olive onion orange orchard otter oven owl paddle paint palace panda paper parrot pasta "
    "pearl pebble pencil pepper piano pickle pigeon pillar pilot pine pipe pirate planet plate plum pocket poem "
    "pond poppy potato pottery prairie prince puppet puzzle quarry quilt rabbit raccoon rail rain raven reef "
    "ribbon rice riddle river road robin rocket rope rose ruby saddle sail salmon salt sand satchel scale school "
    "scroll seed shadow shark sheep shell shield ship shovel silk singer sink skate sky sled slope snail snake "
    "soap sock soldier spade spider spine sponge spoon spring square squirrel stable stamp star statue steam "
    "stone stool storm stove straw stream street string sugar summer sunset swan sweater sword table tablet tail "
    "teacher temple tent thread throne thunder tiger timber toast tomato tongue tooth torch tower town toy "
    "tractor trail train treasure tree trophy truck trumpet tulip tunnel turkey turtle valley vase velvet village "
    "vine violet wagon walnut walrus wand water wave whale wheat wheel whistle willow window winter wizard wolf "
    "wool worm yacht yarn zebra"
).split()) | set(ADJECTIVES) | set(OBJECTS) | set(PLACES)))

Tokens = Callable[[str], int]  # text -> its length in the model's tokens


def _number(rng: random.Random) -> str:
    return str(rng.randint(10 ** 6, 10 ** 7 - 1))


def _needle_doc(family: str, n: int, rng: random.Random) -> Dict[str, object]:
    """A needle prompt over n noise units; the needles' positions and values come from rng."""
    n_keys, n_values, n_asked = NEEDLES[family]
    keys = rng.sample(WORDS, n_keys)
    values = [[_number(rng) for _ in range(n_values)] for _ in keys]
    needles = [NEEDLE.format(type_v="numbers", key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    sentences = [NOISE] * n
    for index, needle in zip(sorted(rng.sample(range(n), len(needles)), reverse=True), needles):
        sentences.insert(index, needle)
    asked = rng.sample(range(n_keys), n_asked)
    query = keys[asked[0]] if n_asked == 1 else ", ".join(keys[i] for i in asked[:-1]) + ", and " + keys[asked[-1]]
    answers = [v for i in asked for v in values[i]]
    prompt, type_v = NIAH, "numbers"
    if len(answers) == 1:  # RULER's singular wording for one answer
        prompt = prompt.replace("Some", "A").replace("are all", "is").replace("are", "is")
        type_v = "number"
    text = prompt.format(type_v=type_v, context="\n".join(sentences), query=query)
    lead = (f"The special magic {type_v} for {query} mentioned in the provided text "
            f"{'is' if len(answers) == 1 else 'are'}")
    return {"input": text, "gen_prefix": lead, "outputs": answers}


def _vt_chain(n_noise: int, hops: int, letters: int, rng: random.Random):
    names: List[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choices(string.ascii_uppercase, k=letters))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]} " for j in range(hops)]
    sentences = [NOISE + "\n"] * n_noise
    for offset, position in enumerate(sorted(rng.sample(range(n_noise), len(chain)))):
        sentences.insert(position + offset, chain[offset])
    context = " ".join(sentences).replace(". \n", ".\n")
    return VT.format(context=context, query=value), VT_ANSWER.format(n=hops + 1, query=value), names


def _vt_doc(n: int, rng: random.Random) -> Dict[str, object]:
    """One chain of 4 hops in n noise units, after one worked example (RULER's few-shot, 3-letter names)."""
    example, example_lead, example_names = _vt_chain(5, 4, 3, rng)
    text, lead, names = _vt_chain(n, 4, 5, rng)
    shot = f"{example}\n{example_lead} {' '.join(example_names)}\n\n"
    return {"input": shot + text, "gen_prefix": lead, "outputs": names}


def _cwe_list(n_words: int, common: int, rare: int, rng: random.Random):
    words = rng.sample(CWE_WORDS, n_words)
    listed = words[:10] * common + words[10:] * rare
    rng.shuffle(listed)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(listed)), words[:10]


def _cwe_doc(n: int, rng: random.Random, target_tokens: int) -> Dict[str, object]:
    """10 words repeated often among n - 10 rarer ones, after one worked example (RULER's sizes: 6 and 1
    repeats below 4096 tokens, 30 and 3 from there; the example 3 and 1, or 10 and 3)."""
    big = target_tokens >= 4096
    example, example_answer = _cwe_list(40 if big else 20, 10 if big else 3, 3 if big else 1, rng)
    context, answer = _cwe_list(n, 30 if big else 6, 3 if big else 1, rng)
    shot = CWE.format(context=example) + " " + CWE_ANSWER + " " + " ".join(
        f"{i + 1}. {w}" for i, w in enumerate(example_answer))
    return {"input": shot + "\n" + CWE.format(context=context), "gen_prefix": CWE_ANSWER, "outputs": answer}


def _build(family: str, n: int, rng_state, target_tokens: int) -> Dict[str, object]:
    rng = random.Random()
    rng.setstate(rng_state)  # the same draws for every n tried: only the haystack's size changes
    if family in NEEDLES:
        return _needle_doc(family, n, rng)
    return _vt_doc(n, rng) if family == "vt" else _cwe_doc(n, rng, target_tokens)


def _min_units(family: str) -> int:
    """The smallest haystack: room for every needle (RULER's num_haystack >= its needles), the 5 links of a
    chain, the 10 common words and one rare one."""
    if family in NEEDLES:
        keys, values, _ = NEEDLES[family]
        return keys * values
    return 5 if family == "vt" else 11


def prompt_of(doc: Dict[str, object]) -> str:
    return f"{doc['input']} {doc['gen_prefix']}"  # lm-eval joins them with the task's target_delimiter " "


def generate(family: str, count_tokens: Tokens, target_tokens: int, n_samples: int, seed: int = 0
             ) -> List[Dict[str, object]]:
    """n_samples documents of `family`, each as long as fits target_tokens - MAX_NEW[family] prompt tokens."""
    if family not in FAMILIES:
        raise ValueError(f"RULER family {family!r} is not known: one of {FAMILIES}")
    budget = target_tokens - MAX_NEW[family]
    docs = []
    for index in range(n_samples):
        state = random.Random(f"ruler:{family}:{seed}:{index}").getstate()
        fits = lambda n: count_tokens(prompt_of(_build(family, n, state, target_tokens))) <= budget  # noqa: E731
        low = _min_units(family)
        high = 2 * low
        if not fits(low):
            raise ValueError(f"{family}: target_tokens={target_tokens} leaves no room for a haystack (the prompt "
                             f"alone passes {budget} tokens); raise it")
        cap = len(CWE_WORDS) if family == "cwe" else None  # no more distinct words: the prompt stops there
        while fits(high):  # grow, then bisect: the largest haystack that fits
            if cap is not None and high >= cap:
                low = high = cap
                break
            low, high = high, min(high * 2, cap) if cap is not None else high * 2
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if fits(mid) else (low, mid)
        doc = _build(family, low, state, target_tokens)
        docs.append({"index": index, "family": family, **doc, "length": count_tokens(prompt_of(doc)),
                     "max_length": target_tokens, "haystack": low})
    return docs


# ----------------------------------------------------------------------------- scoring (RULER's)
def postprocess(prediction: str) -> str:
    """RULER's postprocess_pred: strip, and control characters become newlines."""
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def string_match_all(predictions: Sequence[str], references: Sequence[Sequence[str]]) -> float:
    """Mean over documents of the share of a document's references found in its prediction (case-insensitive)."""
    return sum(sum(r.lower() in p.lower() for r in refs) / len(refs)
               for p, refs in zip(predictions, references)) / len(predictions)

