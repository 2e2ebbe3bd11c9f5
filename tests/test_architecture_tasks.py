"""Tasks own their names: no module but the task's compares against a registered task (metric) or dataset name,
and nothing guesses a record's kind from its keys but the one fallback (tasks/_records.guess_record_kind).

What was spelled across the code base before tasks were objects (runner's two if-chains, validate's
METRIC_DATASETS / IGNORED_BY_METRIC, console.PRIMARY, pareto.PRIMARY_Y, collect.METRIC_VALUES, `"nll" in
record` in samples / items / paired, dataset names in data/) is what this test refuses to see come back.
"""
import ast
import sys
from pathlib import Path
from typing import Dict, List, Set

from conftest import REPO_ROOT
from lsh_bitnet.registry import TASKS
from lsh_bitnet.tasks.base import task_named, tasks

SOURCES = [*sorted((REPO_ROOT / "lsh_bitnet").rglob("*.py")), *sorted((REPO_ROOT / "hydra_plugins").rglob("*.py")),
           REPO_ROOT / "launch.py"]
FALLBACK = ("lsh_bitnet/tasks/_records.py", "guess_record_kind")  # the one function that reads kinds off records
COMPARISONS = (ast.Eq, ast.NotEq, ast.In, ast.NotIn)
# The schemas' home: config.SCHEMAS names each schema's ConfigStore entry (schema/<group>/<name>), a table of
# schemas, not of facts about tasks. Comparisons there are still refused.
SCHEMA_STORE = "lsh_bitnet/config.py"


def _strings(node: ast.AST) -> Set[str]:
    """The string constants an operand spells: itself, or the members of a literal tuple / list / set / dict."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}
    if isinstance(node, ast.Dict):
        return {k.value for k in node.keys if isinstance(k, ast.Constant) and isinstance(k.value, str)}
    return set()


def violations(source: str, path: str, owned: Dict[str, Set[str]], record_keys: Set[str]) -> List[str]:
    """`path:line: what` for each comparison against a name `path` does not own (owned: name -> owner paths), each
    per-name table or list (a literal spelling two or more names, e.g. {"perplexity": ..., "passkey_accuracy":
    ...} or ("wikitext2", "enwik8")) and each `"<record key>" in x` outside FALLBACK."""
    tree = ast.parse(source)
    found = []
    fallback_lines: Set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and (path, node.name) == FALLBACK:
            fallback_lines |= set(range(node.lineno, node.end_lineno + 1))
    foreign = {name for name, owners in owned.items() if path not in owners}
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and any(isinstance(op, COMPARISONS) for op in node.ops):
            operands = [node.left, *node.comparators]
            spelled = set().union(*(_strings(o) for o in operands)) & foreign
            if spelled:
                found.append(f"{path}:{node.lineno}: compares against {sorted(spelled)}: ask the task (registry)")
            sniffed = _strings(node.left) & record_keys
            if sniffed and any(isinstance(op, (ast.In, ast.NotIn)) for op in node.ops) \
                    and node.lineno not in fallback_lines:
                found.append(f"{path}:{node.lineno}: guesses the record kind from {sorted(sniffed)}: ask the task's "
                             f"record kind (tasks.base.record_kind)")
        if isinstance(node, (ast.Dict, ast.Tuple, ast.List, ast.Set)) and len(_strings(node) & set(owned)) >= 2 \
                and (_strings(node) & foreign) and path != SCHEMA_STORE:
            found.append(f"{path}:{node.lineno}: a table or list of {sorted(_strings(node) & set(owned))}: "
                         f"a per-task (per-dataset) fact belongs to the Task (DatasetOption)")
    return found


def _ownership():
    """name -> the source files allowed to spell it: a task's name its own module; a dataset option's name the
    modules of the tasks that accept it (they register it)."""
    owned: Dict[str, Set[str]] = {}
    for task in tasks():
        module = str(Path(sys.modules[type(task).__module__].__file__).resolve().relative_to(REPO_ROOT))
        owned.setdefault(task.name, set()).add(module)
        for dataset in task.dataset_names():
            owned.setdefault(dataset, set()).add(module)
    return owned


def test_no_module_spells_a_task_or_dataset_name_it_does_not_own():
    builtin = {"perplexity", "synthetic_accuracy", "passkey_accuracy"}
    assert builtin <= set(TASKS.names()), "the built-in tasks are registered objects"
    owned = _ownership()
    record_keys = {key for task in tasks() for key in task.record.keys()}
    assert {"nll", "correct"} <= record_keys
    found = []
    for path in SOURCES:
        found += violations(path.read_text(), str(path.relative_to(REPO_ROOT)), owned, record_keys)
    assert not found, "\n".join(found)


def test_the_check_sees_what_it_refuses():
    """The scanner itself, on the shapes it exists to catch (so the test above cannot pass by seeing nothing)."""
    owned = {"perplexity": {"lsh_bitnet/tasks/perplexity.py"}, "wikitext2": {"lsh_bitnet/tasks/perplexity.py"},
             "passkey_accuracy": {"lsh_bitnet/tasks/passkey_accuracy.py"}}
    keys = set(task_named("perplexity").record.keys()) | set(task_named("passkey_accuracy").record.keys())
    source = '''
if cfg.metric.name == "perplexity": pass
if metric in ("passkey_accuracy", "other"): pass
if name != "wikitext2": pass
PRIMARY = {"perplexity": "perplexity", "passkey_accuracy": "accuracy"}
if "nll" in record or "correct" not in record: pass
def guess_record_kind(records):
    return "nll" in records[0]
'''
    found = violations(source, "lsh_bitnet/report/x.py", owned, keys)
    assert [f.split(":")[1] for f in found] == ["2", "3", "4", "5", "6", "6", "8"], found  # 8: not THE fallback
    assert violations(source, "lsh_bitnet/tasks/perplexity.py", owned, set()) == [
        "lsh_bitnet/tasks/perplexity.py:3: compares against ['passkey_accuracy']: ask the task (registry)",
        "lsh_bitnet/tasks/perplexity.py:5: a table or list of ['passkey_accuracy', 'perplexity']: "
        "a per-task (per-dataset) fact belongs to the Task (DatasetOption)"]
    assert not [f for f in violations(source, FALLBACK[0], owned, keys) if ":8:" in f]  # the fallback may
