"""lsh-bitnet's worked plug-in (docs/EXTENDING.md): importing it registers

- attention=strided: the Sparse Transformer's fixed pattern (Child et al. 2019): the last key of every block
  of `stride` positions, plus the always-attend sets;
- hasher=sparse_sign: sign bits of sparse random projections (Achlioptas 2003), with its own `density` knob
  and no collision probability (so attention.estimator=sampling refuses it);
- metric=copy_accuracy with dataset=random_copy: random tokens shown twice; the score is whether the model
  predicts the second copy (an induction task: it needs the first copy's keys).
"""
from lsh_bitnet_example import copy_task, sparse_sign, strided  # noqa: F401  (each registers itself)
