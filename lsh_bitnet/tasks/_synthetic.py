"""synthetic_accuracy on synthetic_ny_adj (SPEC section 5): greedy generation and choice scoring.

One prefill per sample serves both scores: `model.generate` (greedy, KV cache) returns the logits of
its first step, which are the next-token distribution after the prompt, and its cache, which cropped
back to the prompt lets each multi-token adjective be scored with a few decode steps. Every forward
goes through the model's (possibly patched) attention, cache included.
"""
import copy
import inspect
from typing import Any, Dict, List, Sequence

import torch
import torch.nn.functional as F
from transformers import GenerationConfig

from lsh_bitnet.data.synthetic import SyntheticSample, normalize_answer
from lsh_bitnet.models.kv_cache import cache_arg
from lsh_bitnet.tasks._loop import prompt_token_fields, score_each, select
from lsh_bitnet.stats import accuracy_fields


def _eos_ids(model, tokenizer) -> List[int]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return [] if eos is None else list(eos) if isinstance(eos, (list, tuple)) else [eos]


def cache_kwarg(model) -> str:
    # transformers renamed `past_key_values` to `cache` (5.2x); the old name still works but warns.
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _choice_logprob(model, cache, first_logp: torch.Tensor, ids: List[int], device) -> float:
    """log p(ids | prompt): ids[0] from the prompt's last logits, the rest by decoding on a cache copy."""
    score = first_logp[ids[0]].item()
    if len(ids) > 1:
        x = torch.tensor([ids[:-1]], device=device)  # (1, L-1)
        kwargs = {cache_kwarg(model): copy.deepcopy(cache)}
        logits = model(input_ids=x, use_cache=True, **kwargs).logits[0]  # (L-1, V)
        logp = F.log_softmax(logits.float(), dim=-1)
        score += logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum().item()
    return score


@torch.inference_mode()
def score_sample(model, tokenizer, sample: SyntheticSample, gen_cfg: GenerationConfig) -> Dict[str, Any]:
    device = next(model.parameters()).device
    # The prompt is the start of a document: the tokenizer's own special tokens (a BOS for Llama-3).
    prompt = tokenizer(sample.prompt, return_tensors="pt").input_ids.to(device)  # (1, P)
    n_prompt = prompt.shape[1]
    # a KV cache written in place (models/kv_cache.py): decode steps do not copy the whole cache
    out = model.generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), generation_config=gen_cfg,
                         **cache_arg(model))
    new_ids = out.sequences[0, n_prompt:]  # (G,)
    generated = tokenizer.decode(new_ids, skip_special_tokens=True)
    # float32: bf16 logits would blur the small gaps between competing adjectives.
    first_logp = F.log_softmax(out.logits[0][0].float(), dim=-1)  # (V,)

    cache = out["cache"] if "cache" in out.keys() else out["past_key_values"]
    # Drop the generated tokens (a negative crop removes that many, in old and new transformers):
    # the choices continue the prompt itself.
    extra = cache.get_seq_length() - n_prompt
    if extra > 0:
        cache.crop(-extra)
    conts = [tokenizer(" " + c, add_special_tokens=False).input_ids for c in sample.choices]
    scores = [_choice_logprob(model, cache, first_logp, ids, device) for ids in conts]
    choice = sample.choices[max(range(len(scores)), key=scores.__getitem__)]
    return {
        "generated": generated, "prediction": normalize_answer(generated), "answer": sample.answer,
        "correct": normalize_answer(generated) == sample.answer, "choice": choice,
        "choice_correct": choice == sample.answer, "choice_logprobs": scores, "prompt_tokens": n_prompt,
        # prefill + the generated tokens fed back (the last is never fed) + choice decode steps
        "tokens": n_prompt + max(len(new_ids) - 1, 0) + sum(len(ids) - 1 for ids in conts),
    }


def greedy_config(model, tokenizer, max_new_tokens: int, key: str = "metric.max_new_tokens",
                  logits: bool = False) -> GenerationConfig:
    """Greedy decoding with the KV cache (every step through the patched attention), stopping at EOS."""
    if max_new_tokens < 1:
        raise ValueError(f"{key} must be >= 1 (got {max_new_tokens})")
    eos = _eos_ids(model, tokenizer)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    return GenerationConfig(max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                            eos_token_id=eos or None, pad_token_id=pad, return_dict_in_generate=True,
                            output_logits=logits)


def evaluate_synthetic(model, tokenizer, samples: Sequence[SyntheticSample], metric_cfg, eval_cfg,
                       sink=None) -> Dict[str, Any]:
    """accuracy (greedy exact match of the first word) and choice_accuracy over the samples, with Wilson
    95% intervals; one record per sample to `sink` (a SampleLog).

    Samples are evaluated one at a time (no padding, so the attention sees exactly the prompt);
    eval.batch_offset skips the first ones, eval.max_batches * eval.batch_size caps how many are used."""
    gen_cfg = greedy_config(model, tokenizer, metric_cfg.max_new_tokens, logits=True)
    samples = select(samples, eval_cfg)

    def record(sample: SyntheticSample, row: Dict[str, Any]) -> Dict[str, Any]:
        return {"index": sample.index, "tokens": row["tokens"], "prompt_tokens": row["prompt_tokens"],
                "prediction": row["prediction"], "target": sample.answer, "correct": row["correct"],
                "choice": row["choice"], "choice_correct": row["choice_correct"], "generated": row["generated"]}

    rows = score_each(samples, lambda sample: score_sample(model, tokenizer, sample, gen_cfg), record,
                      ("correct", "choice_correct"), "synthetic", eval_cfg, sink)
    n = len(rows)
    return {
        **accuracy_fields("accuracy", [r["correct"] for r in rows]),
        **accuracy_fields("choice_accuracy", [r["choice_correct"] for r in rows]),
        "n": n,
        "n_samples": n,
        "first_sample": samples[0].index,
        **prompt_token_fields(rows),
        "tokens": sum(r["tokens"] for r in rows),
        "mean_distance_chars": sum(s.distance_chars for s in samples) / n,
        # Filler sentences after each mention (dataset.filler_sentences, or what target_tokens chose).
        "mean_filler_sentences": sum(s.filler_sentences for s in samples) / n,
        "chance_choice_accuracy": sum(1 / len(s.choices) for s in samples) / n,
        # A few raw answers so a surprising number can be read against what the model said.
        "examples": [{k: r[k] for k in ("answer", "generated", "choice")} for r in rows[:5]],
    }
