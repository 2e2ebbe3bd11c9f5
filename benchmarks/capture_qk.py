"""Capture the post-RoPE queries and keys every layer's attention receives, for offline studies of rules.

    OMP_NUM_THREADS=1 python benchmarks/capture_qk.py OUT.pt dataset=text_file dataset.path=... \
        eval.seq_len=1024 eval.batch_offset=0 eval.max_batches=1

Writes {"query": [(Hq, T, D) float16 per layer], "key": [(Hkv, T, D)], "centers": (n_layers, Hkv, D) | None}
for one window (the first of eval.batch_offset), run under attention=full. Tuning windows only: what is studied
here chooses settings.
"""
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))


def main(argv):
    from conftest import compose_config

    import lsh_bitnet.attention.registry as registry
    from lsh_bitnet.attention import patch_model
    from lsh_bitnet.attention.centering import centers_for_run
    from lsh_bitnet.data import token_stream
    from lsh_bitnet.models import load_model_cached
    from lsh_bitnet.run.runner import default_cache_dir

    out_path, overrides = argv[0], argv[1:]
    cfg = compose_config(["attention=full", "model=smollm2_135m", *overrides])
    cache_dir = default_cache_dir(cfg)
    loaded = load_model_cached(cfg.model, cache_dir)
    ccfg = compose_config(["attention=lsh", "hasher=simhash", "hasher.center=calibration", "model=smollm2_135m",
                           *overrides])
    centers = centers_for_run(ccfg, loaded, cache_dir)
    text = Path(cfg.dataset.path).read_text()
    T, off = int(cfg.eval.seq_len), int(cfg.eval.batch_offset)
    stream = token_stream(text, loaded.tokenizer, cache_dir, tokenizer_id=str(cfg.model.name_or_path or cfg.model.name),
                          max_tokens=T * (off + 1))
    from lsh_bitnet.data import windows

    ids = windows(stream, T)[0][off:off + 1]  # (1, T): the window perplexity evaluates
    captured = {"query": {}, "key": {}}
    inner = registry.sparse_attention_counts

    def capture(query, key, value, key_valid, **kw):
        layer = kw.get("layer_idx", 0)
        captured["query"][layer] = query[0].detach().to(torch.float16).clone()
        captured["key"][layer] = key[0].detach().to(torch.float16).clone()
        return inner(query, key, value, key_valid, **kw)

    registry.sparse_attention_counts = capture
    patch = patch_model(loaded.model, cfg.attention, None)
    with torch.no_grad():
        loaded.model(ids)
    patch.unpatch()
    n = len(captured["query"])
    torch.save({"query": [captured["query"][i] for i in range(n)], "key": [captured["key"][i] for i in range(n)],
                "centers": centers, "window": off, "seq_len": T}, out_path)


if __name__ == "__main__":
    main(sys.argv[1:])
