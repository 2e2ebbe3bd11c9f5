"""lsh-bitnet: how much accuracy a pretrained LLM keeps under LSH-sparsified attention, and what it saves."""
__version__ = "0.1.0"
