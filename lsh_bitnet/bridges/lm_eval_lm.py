"""CountingHFLM: lm-eval's own HFLM around our loaded (and patched) model, counting what each document cost.

lm-eval's `hf` model accepts a loaded `PreTrainedModel`; we pass ours after `patch_model`, so every rule,
hasher and engine runs unchanged and lm-eval tokenises, batches, scores and aggregates exactly as with its
own `hf` model (with attention=full the loglikelihoods are the same; tests/test_lm_eval_bridge.py). On top:

- every forward lm-eval makes (`_model_call` for loglikelihoods, `_model_generate` for generation) records
  what the attention counters (the patch's CostMeter) added;
- every result lm-eval produces passes its cache hook, which names the request it answered;
- after each request type, ledger.CostLedger charges the forwards to the requests, and the requests to
  their documents: `doc_costs[(task, doc_id)]` = comparisons, full_comparisons and tokens fed.

The charges sum exactly to the counters (`unattributed` keeps any forward that answered nothing). Rolling
loglikelihoods (perplexity tasks) run one document at a time, so each document's windows are its own.
"""
from typing import Dict, List, Optional, Tuple

from lm_eval.api.model import CacheHook
from lm_eval.models.huggingface import HFLM

from lsh_bitnet.bridges.ledger import Cost, CostLedger, add_costs, assign, zero_cost

DocKey = Tuple[Optional[str], Optional[int]]  # (task name, doc_id)


def counter_reader(model):
    """() -> cumulative (comparisons, full_comparisons) of the patch on `model`; (0, 0) when unpatched."""
    from lsh_bitnet.attention.patch import attention_modules
    from lsh_bitnet.attention.registry import STATE_ATTR

    modules = attention_modules(model)

    def read() -> Tuple[int, int]:
        meters = {}
        for module in modules:
            state = getattr(module, STATE_ATTR, None)
            if state is not None:
                meters[id(state.meter)] = state.meter
        comparisons = full = 0
        for meter in meters.values():
            for row in meter.per_layer():  # one host sync per forward: the counters live on the device
                comparisons += row[0]
                full += row[1]
        return comparisons, full

    return read


def request_key(kind: str, args) -> Tuple:
    """How a request is named in the ledger: its arguments (generate_until's second one is an unhashable
    dict of generation settings, the same for every request of a task: the context names the request)."""
    return (kind, args[0]) if kind == "generate_until" else (kind, tuple(args))


class _LedgerHook(CacheHook):
    """lm-eval's cache hook, told of every result: it tells the ledger, then any caching hook it wraps."""

    def __init__(self, ledger: CostLedger, inner: Optional[CacheHook] = None):
        super().__init__(None)
        self.ledger, self.inner = ledger, inner

    def add_partial(self, attr: str, req, res) -> None:
        self.ledger.answered(request_key(attr, req))
        if self.inner is not None:
            self.inner.add_partial(attr, req, res)


class CountingHFLM(HFLM):
    """HFLM(pretrained=<loaded model>) that charges every comparison to the document that caused it."""

    def __init__(self, model, tokenizer, batch_size: int = 1, max_length: Optional[int] = None, **kwargs):
        super().__init__(pretrained=model, tokenizer=tokenizer, backend="causal", batch_size=batch_size,
                         max_length=max_length, **kwargs)
        self.ledger = CostLedger(counter_reader(model))
        self.cache_hook = _LedgerHook(self.ledger)
        self.doc_costs: Dict[DocKey, Cost] = {}
        self.unattributed: Cost = zero_cost()

    def set_cache_hook(self, cache_hook) -> None:  # lm-eval's CachingLM installs its own: keep ours in front
        self.cache_hook = _LedgerHook(self.ledger, cache_hook)

    # ------------------------------------------------------------------ forwards
    def _model_call(self, inps, attn_mask=None, labels=None):
        out = super()._model_call(inps, attn_mask=attn_mask, labels=labels)
        self.ledger.forward(tokens=inps.numel())  # (B, T): right padding included, as the attention saw it
        return out

    def _model_generate(self, context, max_length, stop, **generation_kwargs):
        out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        new = max(out.shape[1] - context.shape[1] - 1, 0)  # generated tokens fed back (the last one never is)
        self.ledger.forward(tokens=context.numel() + context.shape[0] * new)
        return out

    # ------------------------------------------------------------------ requests
    def _charge(self, kind: str, requests) -> None:
        charged, leftover = self.ledger.settle()
        for request, cost in zip(requests, assign(requests, charged, lambda r: request_key(kind, r.args))):
            key = (request.task_name, request.doc_id)
            self.doc_costs[key] = add_costs(self.doc_costs.get(key, zero_cost()), cost)
        self.unattributed = add_costs(self.unattributed, leftover)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> List:
        out = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        self._charge("loglikelihood", requests)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> List:
        out: List = []
        for request in requests:  # lm-eval would batch windows of different documents into one forward
            out += super().loglikelihood_rolling([request], disable_tqdm=True)
            self._charge("loglikelihood_rolling", [request])
        return out

    def generate_until(self, requests, disable_tqdm: bool = False) -> List:
        out = super().generate_until(requests, disable_tqdm=disable_tqdm)
        self._charge("generate_until", requests)
        return out

    def total_cost(self) -> Cost:
        total = dict(self.unattributed)
        for cost in self.doc_costs.values():
            total = add_costs(total, cost)
        return total

