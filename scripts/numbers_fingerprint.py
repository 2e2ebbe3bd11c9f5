"""Record the numbers a refactor must not change: one perplexity run of every rule (and of the lsh
options that take other code paths) on the tiny BitNet model and a fixed text, plus the synthetic task.

    python scripts/numbers_fingerprint.py OUT.json [--compare OTHER.json]

Every metric and every cost count is written; --compare exits 1 on any difference (bit-identical or not).
"""
import argparse
import json
import sys
import tempfile
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RULES = {
    "full": ["attention=full"],
    "window": ["attention=window", "attention.local_window=16"],
    "oracle_topk": ["attention=oracle_topk", "attention.fraction=0.2"],
    "lsh_union": ["attention=lsh", "hasher.n_bits=2", "attention.n_tables=2", "attention.sink_tokens=2"],
    "lsh_m_of_l": ["attention=lsh", "hasher.n_bits=2", "attention.n_tables=4", "attention.min_collisions=2"],
    "lsh_sampling": ["attention=lsh", "hasher.n_bits=2", "attention.n_tables=4", "attention.min_collisions=2",
                     "attention.estimator=sampling"],
    "lsh_bit_sampling": ["attention=lsh", "hasher=bit_sampling", "hasher.n_bits=3", "attention.n_tables=2"],
    "lsh_topk_collisions": ["attention=lsh_topk", "attention.k=null", "attention.fraction=0.2"],
    "lsh_topk_soft": ["attention=lsh_topk", "attention.k=16", "attention.fraction=null", "attention.score=soft"],
    "lsh_forest": ["attention=lsh_forest", "attention.n_trees=2", "attention.max_depth=8",
                   "attention.min_candidates=8"],
    "lsh_prompt_center": ["attention=lsh", "hasher.n_bits=2", "hasher.center=prompt"],
}
TEXT = " ".join(f"Sentence {i} tells of the {['red', 'old', 'calm', 'tall'][i % 4]} river near town {i % 7}."
                for i in range(400))


def _compose(overrides):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


def fingerprint(work: Path) -> dict:
    from lsh_bitnet import config as _schemas  # noqa: F401  (ConfigStore schemas)
    try:
        from lsh_bitnet.run.runner import run
        from lsh_bitnet.run.sweep import register_resolvers
    except ImportError:  # before the run/ layout
        from lsh_bitnet.runner import run
        from lsh_bitnet.sweep import register_resolvers
    register_resolvers()
    text = work / "text.txt"
    text.write_text(TEXT)
    common = ["model=tiny_bitnet", f"cache_dir={work / 'cache'}", "eval.progress=false", "resume=false"]
    out = {}
    for name, overrides in RULES.items():
        cfg = _compose(common + overrides + ["dataset=text_file", f"dataset.path={text}", "metric=perplexity",
                                             "eval.seq_len=128", "eval.max_batches=3", "eval.batch_offset=1"])
        record = run(cfg, output_dir=work / name)
        out[name] = {"metrics": record["metrics"], "cost": {k: v for k, v in record["cost"].items()
                                                            if isinstance(v, (int, float, bool))}}
    for name in ("full", "lsh_union", "oracle_topk"):
        cfg = _compose(common + RULES[name] + ["dataset.n_samples=4"])
        record = run(cfg, output_dir=work / f"synthetic_{name}")
        out[f"synthetic_{name}"] = {"metrics": record["metrics"], "cost": {
            k: v for k, v in record["cost"].items() if isinstance(v, (int, float, bool))}}
    return out


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--compare")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = fingerprint(Path(tmp))
    Path(args.out).write_text(json.dumps(result, indent=1, sort_keys=True))
    if args.compare:
        other = json.loads(Path(args.compare).read_text())
        diffs = [k for k in sorted(set(other) | set(result)) if other.get(k) != result.get(k)]
        print("identical" if not diffs else f"DIFFERENT: {diffs}")
        return 1 if diffs else 0
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
