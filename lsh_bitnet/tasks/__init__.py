"""Tasks: what a run evaluates and how it scores it, one registered task per module (perplexity,
synthetic_accuracy, passkey_accuracy); base.py is the interface, `_x` modules are their implementations."""
