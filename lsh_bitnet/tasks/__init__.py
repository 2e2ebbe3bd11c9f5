"""Tasks: what a run evaluates and how it scores it, one registered task per module (perplexity,
synthetic_accuracy, passkey_accuracy); base.py is the interface, `_x` modules are their implementations."""
# First, before any task module: the schema bases, and config.py's registration of every option (which imports
# the task modules itself); see lsh_bitnet/attention/rules/__init__.py for why.
from lsh_bitnet import config as _config  # noqa: F401,E402
