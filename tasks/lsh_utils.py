"""Datasets of the bundled tasks, read from the files beside this module (lm-eval's `custom_dataset`: it is
called with the task's metadata and dataset_kwargs, and returns {split: datasets.Dataset}). No network."""
import json
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def _jsonl(name: str) -> dict:
    rows = [json.loads(line) for line in (HERE / f"{name}.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return {"test": datasets.Dataset.from_list(rows, split=datasets.Split.TEST)}


def lsh_lastword(**kwargs) -> dict:
    return _jsonl("lsh_lastword")


def lsh_choice(**kwargs) -> dict:
    return _jsonl("lsh_choice")


# ----------------------------------------------------------------------------- RULER (lsh_bitnet/data/ruler.py)
# Metadata (metric.metadata, or lm-eval's --metadata): target_tokens (RULER's max_seq_length: prompt plus
# generation budget, default 4096), n_samples (default 20), seed (metric=lm_eval passes the run's), tokenizer
# (a name or path; default: the evaluated model's).
RULER_DEFAULTS = {"target_tokens": 4096, "n_samples": 20, "seed": 0}


def _ruler(family: str, kwargs: dict) -> dict:
    from lsh_bitnet.bridges.lm_eval import task_tokenizer
    from lsh_bitnet.data.ruler import generate

    settings = {k: kwargs.get(k, v) for k, v in RULER_DEFAULTS.items()}
    tokenizer = task_tokenizer(kwargs, f"lsh_ruler_{family}")
    docs = generate(family, lambda text: len(tokenizer(text).input_ids), int(settings["target_tokens"]),
                    int(settings["n_samples"]), seed=int(settings["seed"]))
    return {"test": datasets.Dataset.from_list(docs, split=datasets.Split.TEST)}


def lsh_ruler_niah_single(**kwargs) -> dict:
    return _ruler("niah_single", kwargs)


def lsh_ruler_niah_multikey(**kwargs) -> dict:
    return _ruler("niah_multikey", kwargs)


def lsh_ruler_niah_multivalue(**kwargs) -> dict:
    return _ruler("niah_multivalue", kwargs)


def lsh_ruler_niah_multiquery(**kwargs) -> dict:
    return _ruler("niah_multiquery", kwargs)


def lsh_ruler_vt(**kwargs) -> dict:
    return _ruler("vt", kwargs)


def lsh_ruler_cwe(**kwargs) -> dict:
    return _ruler("cwe", kwargs)


def ruler_score(doc: dict, results: list) -> dict:
    """RULER's string_match_all on one document: the share of its answers found in the generated text."""
    from lsh_bitnet.data.ruler import postprocess, string_match_all

    return {"score": string_match_all([postprocess(results[0])], [doc["outputs"]])}
