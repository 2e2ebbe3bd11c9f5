"""Bridges to other evaluation tools. One adapter per tool, shared by both directions:

- lm_eval: EleutherAI's lm-evaluation-harness. `metric=lm_eval` runs lm-eval tasks on our loaded, patched
  model inside a run (lsh_bitnet/tasks/lm_eval.py); `lsh-bitnet-lm-eval run --model lsh-bitnet ...` (or
  `lm_eval --model lsh-bitnet` once the hook is installed) runs our patched model from lm-eval's CLI
  (lm_eval_model.py). Both go through lm_eval_lm.CountingHFLM, which counts every query-key comparison
  lm-eval's requests cause and charges it to the document that caused it (ledger.py).
"""
