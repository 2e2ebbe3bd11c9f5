"""Write the bundled lm-eval tasks' data files (tasks/<task>.jsonl) from lsh_bitnet.data.lastword.

    python scripts/make_lm_eval_tasks.py          # rewrite them
    python scripts/make_lm_eval_tasks.py --check  # exit 1 if a file differs from what the generator gives

tests/test_lm_eval_tasks.py runs the check, so the files and the generator cannot drift apart.
"""
import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from lsh_bitnet.data.lastword import GENERATORS  # noqa: E402


def render(task: str) -> str:
    return "".join(json.dumps(doc, ensure_ascii=False) + "\n" for doc in GENERATORS[task]())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="compare instead of writing")
    args = parser.parse_args()
    stale = []
    for task in GENERATORS:
        path = ROOT / "tasks" / f"{task}.jsonl"
        text = render(task)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(str(path))
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path} ({text.count(chr(10))} documents)")
    if stale:
        print(f"stale: {', '.join(stale)}: run python scripts/make_lm_eval_tasks.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
