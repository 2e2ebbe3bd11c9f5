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
