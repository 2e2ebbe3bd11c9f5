"""Perplexity over non-overlapping windows (SPEC section 5).

Each window of `eval.seq_len` tokens is evaluated independently (no carried context), predicting
tokens 1..T-1 from their prefix, exactly what `model(x, labels=x)` averages; the remainder of the
stream that does not fill a window is dropped. `eval.batch_offset` skips the first windows (choose
settings on windows 0-7, report on the next ones), then `eval.max_batches` caps how many batches run.
"""
import math
from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from lsh_bitnet.console import progress
from lsh_bitnet.data import windows
from lsh_bitnet.stats import perplexity_fields
from lsh_bitnet.config import config_value

# Positions whose logits are materialised at once. Full logits at 8192 tokens and SmolLM2's 49,152-token
# vocabulary are 1.6 GB in float32 (and the log-softmax makes another copy); 1024 positions keep it
# at 200 MB whatever eval.seq_len is.
LOGIT_CHUNK = 1024
# Config attributes by which a model's head does more than a linear map after the decoder: those
# models get their logits from the model's own forward (full-size logits).
HEAD_POSTPROCESSING = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


def _chunked_head(model):
    """(decoder, lm_head) when logits are a plain linear map of the decoder's last hidden state, else None."""
    get_decoder, get_head = getattr(model, "get_decoder", None), getattr(model, "get_output_embeddings", None)
    if get_decoder is None or get_head is None:
        return None
    config = getattr(model, "config", None)
    if any(getattr(config, attr, None) not in (None, 1, 1.0) for attr in HEAD_POSTPROCESSING):
        return None
    try:
        decoder, head = get_decoder(), get_head()
    except (AttributeError, NotImplementedError, ValueError):  # models without the usual layout
        return None
    if decoder is None or decoder is model or not isinstance(head, torch.nn.Linear):
        return None
    return decoder, head


def window_nll(model, x: torch.Tensor, chunk: int = LOGIT_CHUNK) -> torch.Tensor:
    """(b,) float64 summed next-token NLL of each row of x (b, T), computing at most `chunk` positions' logits at a time."""
    targets = x[:, 1:]  # (b, T-1)
    parts = _chunked_head(model)
    if parts is None:
        logits = model(input_ids=x, use_cache=False).logits[:, :-1]  # (b, T-1, V)
        return _nll(logits, targets)
    decoder, head = parts
    hidden = decoder(input_ids=x, use_cache=False).last_hidden_state[:, :-1]  # (b, T-1, H)
    total = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for start in range(0, hidden.shape[1], chunk):
        total += _nll(head(hidden[:, start:start + chunk]), targets[:, start:start + chunk])
    return total


def _nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    # float32 log-softmax: bf16/fp16 logits would lose the small probabilities NLL is made of.
    nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")  # (b * t,)
    return nll.view(targets.shape).sum(dim=1, dtype=torch.float64)  # (b,)


@torch.inference_mode()
def evaluate_perplexity(model, stream, eval_cfg, sink=None, seed: int = 0) -> Dict[str, Any]:
    """Perplexity with a bootstrap 95% interval over windows; one record per window to `sink` (a SampleLog)."""
    ids, byte_len = windows(stream, eval_cfg.seq_len)  # (N, T), (N, T)
    if ids.shape[0] == 0:
        raise ValueError(
            f"the text has {stream.ids.numel()} tokens, fewer than one window of eval.seq_len="
            f"{eval_cfg.seq_len}: lower eval.seq_len or use a longer text")
    offset = config_value(eval_cfg, "batch_offset", 0) or 0
    if offset >= ids.shape[0]:
        raise ValueError(f"eval.batch_offset={offset} skips every window: the text has {ids.shape[0]} windows "
                         f"of eval.seq_len={eval_cfg.seq_len}; lower eval.batch_offset")
    batches = list(torch.split(torch.arange(offset, ids.shape[0]), eval_cfg.batch_size))
    if eval_cfg.max_batches is not None:
        batches = batches[: eval_cfg.max_batches]
    device = next(model.parameters()).device

    nll_sums, predicted, n_bytes = [], [], []
    bar = progress(batches, desc="perplexity", unit="batch", disable=not config_value(eval_cfg, "progress", True))
    for rows in bar:
        x = ids[rows].to(device)  # (b, T)
        window_sums = window_nll(model, x).tolist()  # (b,)
        records = []
        for row, nll in zip(rows.tolist(), window_sums):
            nll_sums.append(nll)
            predicted.append(ids.shape[1] - 1)
            n_bytes.append(int(byte_len[row].sum()))
            records.append({"index": row, "tokens": ids.shape[1], "predicted": ids.shape[1] - 1,
                            "nll": nll, "bytes": n_bytes[-1]})
        if sink is not None:
            sink.write_batch(records)
        bar.set_postfix(ppl=f"{math.exp(sum(nll_sums) / sum(predicted)):.2f}")

    total_nll, total_bytes = sum(nll_sums), sum(n_bytes)
    return {
        **perplexity_fields(nll_sums, predicted, seed=seed),  # perplexity, nll, *_ci_low/high, n
        "tokens": len(nll_sums) * ids.shape[1],
        "predicted_tokens": sum(predicted),
        "n_windows": len(nll_sums),
        "first_window": offset,
        "bytes": total_bytes,
        # Total NLL in bits over the UTF-8 bytes of the evaluated windows (SPEC section 5).
        "bits_per_byte": total_nll / math.log(2) / total_bytes if total_bytes else None,
    }
