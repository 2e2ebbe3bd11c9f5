"""Perplexity over non-overlapping windows (SPEC section 5).

Each window of `eval.seq_len` tokens is evaluated independently (no carried context), predicting
tokens 1..T-1 from their prefix, exactly what `model(x, labels=x)` averages; the remainder of the
stream that does not fill a window is dropped.
"""
import math
from typing import Any, Dict

import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from tqdm.auto import tqdm

from lsh_bitnet.data import windows


@torch.inference_mode()
def evaluate_perplexity(model, stream, eval_cfg: DictConfig) -> Dict[str, Any]:
    ids, byte_len = windows(stream, eval_cfg.seq_len)  # (N, T), (N, T)
    if ids.shape[0] == 0:
        raise ValueError(
            f"the text has {stream.ids.numel()} tokens, fewer than one window of eval.seq_len="
            f"{eval_cfg.seq_len}: lower eval.seq_len or use a longer text")
    batches = list(torch.split(torch.arange(ids.shape[0]), eval_cfg.batch_size))
    if eval_cfg.max_batches is not None:
        batches = batches[: eval_cfg.max_batches]
    device = next(model.parameters()).device

    total_nll, total_predicted, total_bytes = 0.0, 0, 0
    bar = tqdm(batches, desc="perplexity", unit="batch", disable=not eval_cfg.get("progress", True))
    for rows in bar:
        x = ids[rows].to(device)  # (b, T)
        logits = model(input_ids=x, use_cache=False).logits  # (b, T, V)
        # float32 log-softmax: bf16/fp16 logits would lose the small probabilities NLL is made of.
        nll = F.cross_entropy(logits[:, :-1].float().flatten(0, 1), x[:, 1:].flatten(), reduction="sum")
        total_nll += nll.item()
        total_predicted += x[:, 1:].numel()
        total_bytes += int(byte_len[rows].sum())
        bar.set_postfix(ppl=f"{math.exp(total_nll / total_predicted):.2f}")

    mean_nll = total_nll / total_predicted
    n_windows = sum(len(rows) for rows in batches)
    return {
        "perplexity": math.exp(mean_nll),
        "nll": mean_nll,
        "tokens": n_windows * ids.shape[1],
        "predicted_tokens": total_predicted,
        "n_windows": n_windows,
        "bytes": total_bytes,
        # Total NLL in bits over the UTF-8 bytes of the evaluated windows (SPEC section 5).
        "bits_per_byte": total_nll / math.log(2) / total_bytes if total_bytes else None,
    }
