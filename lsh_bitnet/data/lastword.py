"""The bundled lm-eval tasks' documents: `lsh_lastword` (LAMBADA-style) and `lsh_choice` (multiple choice).

Both ship in the repository as JSONL under tasks/ (scripts/make_lm_eval_tasks.py writes them from this
module; a test checks the files still equal what it generates), so `metric=lm_eval` runs with no network.

A document is a short story in which four people each leave a different object in a different place,
the statements spread between neutral filler sentences; then one of the four goes back to one place:

    ... In the garage, Nora left the lamp. The grocer stacked oranges in a pyramid. ... Later, Nora went back
    to the garage for what was left there. In the garage, Nora left the lamp

- lsh_lastword: predict the last word (" lamp") from the rest, as LAMBADA does (lm-eval's lambada_openai
  prompt: text without its last word, target " " + last word; acc = greedy match).
- lsh_choice: the story, then "Question: What did Nora leave in the garage?" and the answer's opening
  ("Answer: In the garage, Nora left the"); the choices are the story's four objects.

The answer is stated once, on average well over a hundred tokens before the end, beside three
distractors of the same form: an attention that drops the link between person, place and object
loses it. Objects and places are one token after a space for SmolLM2 / Llama-3 style BPE.
"""
import random
import re
from typing import Dict, List

from lsh_bitnet.data.synthetic import FILLERS, NAMES

OBJECTS = ("key", "book", "hat", "cup", "phone", "bag", "coat", "ring", "lamp", "box", "map", "pen", "watch",
           "ball", "knife", "spoon", "clock", "shoe", "card", "ticket", "wallet", "camera", "kettle", "basket",
           "bottle", "candle", "mirror", "pillow", "radio", "umbrella", "violin", "guitar", "jacket", "notebook",
           "glove", "helmet", "blanket", "ladder", "bucket")
PLACES = ("kitchen", "garage", "attic", "basement", "bedroom", "office", "garden", "car", "closet", "studio",
          "shed", "porch", "library", "bathroom")
PEOPLE = 4  # statements per story: the answer and three distractors
FILLERS_PER_GAP = (3, 6)  # neutral sentences after each statement (inclusive range)
LEAVE = "In the {place}, {name} left the {obj}."
# The ending quotes the start of the asked statement, so the last word is a retrieval from far back
# (as in the synthetic task's cued format), not a guess: SmolLM2-135M answers most with full attention.
RETURN = "Later, {name} went back to the {place} for what was left there. In the {place}, {name} left the {obj}"
QUESTION = "Question: What did {name} leave in the {place}?\nAnswer: In the {place}, {name} left the"
# The synthetic task's neutral sentences, less those naming an object or a place of this task or saying
# "left" ("Somebody had left an umbrella by the door" would be a fifth, unaskable statement).
_TAKEN = set(OBJECTS) | set(PLACES) | {"left"}
FILLER_POOL = tuple(f for f in FILLERS if not _TAKEN & set(re.findall(r"[a-z]+", f.lower())))
N_DOCS = 200
SEEDS = {"lsh_lastword": 2801, "lsh_choice": 2802}  # one stream of stories per task


def story(rng: random.Random) -> Dict[str, object]:
    """One story: its sentences up to the return, who returns where, the objects in order of statement."""
    names = rng.sample(NAMES, PEOPLE)
    objects = rng.sample(OBJECTS, PEOPLE)
    places = rng.sample(PLACES, PEOPLE)
    sentences: List[str] = []
    for name, obj, place in zip(names, objects, places):
        sentences.append(LEAVE.format(name=name, obj=obj, place=place))
        sentences += rng.sample(FILLER_POOL, rng.randint(*FILLERS_PER_GAP))
    asked = rng.randrange(PEOPLE)
    return {"body": " ".join(sentences), "name": names[asked], "place": places[asked], "object": objects[asked],
            "objects": objects, "answer_index": asked}


def lastword_docs(n: int = N_DOCS, seed: int = SEEDS["lsh_lastword"]) -> List[Dict[str, object]]:
    """LAMBADA-style documents: `text` ends with the target word (the task splits it off, as lambada does)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        s = story(rng)
        text = s["body"] + " " + RETURN.format(name=s["name"], place=s["place"], obj=s["object"])
        docs.append({"id": i, "text": text})
    return docs


def choice_docs(n: int = N_DOCS, seed: int = SEEDS["lsh_choice"]) -> List[Dict[str, object]]:
    """Multiple-choice documents: `query` (story and question), `choices` (the four objects), `gold` (index)."""
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        s = story(rng)
        query = s["body"] + "\n" + QUESTION.format(name=s["name"], place=s["place"])
        docs.append({"id": i, "query": query, "choices": list(s["objects"]), "gold": s["answer_index"]})
    return docs


GENERATORS = {"lsh_lastword": lastword_docs, "lsh_choice": choice_docs}
