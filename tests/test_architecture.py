"""One name, one object, one place: outside a rule's or hasher's own module (and the registry), no module of
lsh_bitnet compares anything with that rule's or hasher's name, or lists such names; everything else asks
lsh_bitnet.registry (Rule.hashed, .dense, .family, ...). A new rule then needs no edit elsewhere."""
import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PACKAGE = REPO / "lsh_bitnet"
EXEMPT = {PACKAGE / "registry.py"}  # the registry holds names by design


def _names():
    """Every rule and hasher name: the option files of the attention and hasher groups (the command line's
    names) and every registered entry; name -> the file declaring it (None where nothing is registered)."""
    names = {p.stem: None for group in ("attention", "hasher") for p in (REPO / "conf" / group).glob("*.yaml")}
    try:
        from lsh_bitnet.registry import HASHERS, RULES

        for registry in (RULES, HASHERS):
            for name, entry in registry.items():
                names[name] = Path(sys.modules[entry.__module__].__file__).resolve()
    except ImportError:  # a layout without rule modules: every comparison with a name is out of place
        pass
    return names


def _strings(node):
    """The literal strings an expression holds: "x", ("x", "y"), ["x"], {"x"}, {"x": ...} keys."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [s for e in node.elts for s in _strings(e)]
    if isinstance(node, ast.Dict):
        return [s for k in node.keys if k is not None for s in _strings(k)]
    return []


def violations(path: Path, names: dict):
    """`file:line: why` for every use of a name outside its owner's file, once per (line, name)."""
    found = {}

    def flag(node, name, how):
        if names.get(name) != path:
            where = path.relative_to(REPO) if REPO in path.parents else path.name
            found.setdefault((node.lineno, name), f"{where}:{node.lineno}: {how} {name!r}")

    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Compare) and any(isinstance(op, (ast.Eq, ast.NotEq, ast.In, ast.NotIn))
                                                 for op in node.ops):
            for operand in (node.left, *node.comparators):
                for text in _strings(operand):
                    if text in names:
                        flag(node, text, "compares with")
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.args
              and node.func.attr in ("startswith", "endswith")):
            for text in _strings(node.args[0]):
                for name in names:
                    if text and (name.startswith(text) if node.func.attr == "startswith" else name.endswith(text)):
                        flag(node, name, f"{node.func.attr}({text!r}) selects")
        elif isinstance(node, (ast.Tuple, ast.List, ast.Set, ast.Dict)):
            for text in _strings(node):
                if text in names:
                    flag(node, text, "lists")
    return [found[k] for k in sorted(found)]


def test_no_module_compares_with_a_rule_or_hasher_name():
    names = _names()
    found = [v for path in sorted(PACKAGE.rglob("*.py")) if path.resolve() not in EXEMPT
             for v in violations(path.resolve(), names)]
    assert not found, "ask lsh_bitnet.registry instead of comparing names:\n" + "\n".join(found)


def test_the_check_sees_what_it_must(tmp_path):
    """The scanner itself: each form is caught outside the owner, and the owner may use its own name."""
    src = tmp_path / "mod.py"
    src.write_text('a == "lsh"\nb in ("x", "window")\nc.startswith("lsh")\nd = {"full": 1}\ne != "fine"\n'
                   'f = "simhash"  # a plain value, not a comparison\n')
    names = {"lsh": None, "lsh_topk": None, "window": None, "full": None, "simhash": None}
    lines = [v.split(":")[1] for v in violations(src, {**names, "lsh": None})]
    assert lines == ["1", "2", "3", "3", "4"]
    assert [v.split(":")[1] for v in violations(src, {**names, "lsh": src, "lsh_topk": src})] == ["2", "4"]


def test_rules_and_hashers_answer_the_config_questions_without_torch():
    """Every registered rule and hasher loads, and answers what the config checks ask, before torch does."""
    import subprocess

    code = ("import sys; from lsh_bitnet.registry import HASHERS, RULES; "
            "from lsh_bitnet.attention.checks import validate_attention_config; "
            "[(r.refusal(r.schema(), 'flex'), r.family('simhash'), r.hashed and r.hash_shape(r.schema())) "
            "for _, r in RULES.items()]; "
            "[(h.schema(), h.log_p_collision, h.ops_for(4, 64, 2)) for _, h in HASHERS.items()]; "
            "validate_attention_config({'name': 'lsh_forest'}, {'name': 'bit_sampling'}, head_dim=64); "
            "print(len(RULES.names()) >= 6, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "False"], out.stderr[-2000:]
