"""Tasks: what a run evaluates and how it scores it (perplexity, the synthetic task, passkey)."""
