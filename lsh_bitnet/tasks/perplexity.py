"""metric=perplexity: exp(mean next-token NLL) over non-overlapping eval.seq_len windows of a text (SPEC section 5).

The task, torch-free; the evaluation is lsh_bitnet/tasks/_perplexity.py. It accepts every text dataset (a
registered DatasetOption with a `text` loader, a plug-in's too) and registers the built-in ones.
"""
from pathlib import Path
from typing import Any, Dict, List, Optional

from lsh_bitnet.config import (Enwik8DatasetConfig, PerplexityMetricConfig, TextFileDatasetConfig,
                               Wikitext2DatasetConfig, Wikitext103DatasetConfig)
from lsh_bitnet.data import text as T
from lsh_bitnet.errors import require
from lsh_bitnet.registry import TASKS
from lsh_bitnet.tasks.base import DatasetOption, Task, WindowRecords, register_dataset

for _option in (
        DatasetOption("wikitext103", Wikitext103DatasetConfig, check=T.check_wikitext, text=T.load_wikitext,
                      source=T.wikitext_source, splits=T.SPLITS),
        DatasetOption("wikitext2", Wikitext2DatasetConfig, check=T.check_wikitext, text=T.load_wikitext,
                      source=T.wikitext_source, splits=T.SPLITS),
        DatasetOption("enwik8", Enwik8DatasetConfig, check=T.check_enwik8, text=T.load_enwik8,
                      source=T.enwik8_source, splits=T.SPLITS),
        DatasetOption("text_file", TextFileDatasetConfig, check=T.check_text_file, text=T.load_text_file,
                      source=T.text_file_source, splits=(T.TEXT_FILE_SPLIT,)),
):
    register_dataset(_option)


def _needed_tokens(eval_cfg) -> Optional[int]:
    """Tokens perplexity reads with eval.max_batches set (None = the whole text): windows x seq_len."""
    if eval_cfg.max_batches is None:
        return None
    return (eval_cfg.get("batch_offset", 0) + eval_cfg.max_batches * eval_cfg.batch_size) * eval_cfg.seq_len


@TASKS.register
class Perplexity(Task):
    name = "perplexity"
    metric_schema = PerplexityMetricConfig
    record = WindowRecords()
    primary, higher_is_better = "perplexity", False
    values = ("perplexity", "bits_per_byte")
    y_columns = ("perplexity", "nll", "bits_per_byte")

    def accepts(self, dataset: DatasetOption) -> bool:
        return dataset.is_text

    def check_data(self, cfg, cache_dir: Path) -> str:
        """The text, read and checked (exists, UTF-8, non-empty, long enough) before any model loads."""
        text = T.load_text(cfg.dataset, cache_dir)
        path, max_chars = cfg.dataset.get("path"), cfg.dataset.get("max_chars")
        where = f"dataset={cfg.dataset.name}" + (f" (dataset.path={path})" if path else "")
        require(bool(text.strip()), f"{where} holds no text (empty or whitespace only): point dataset.path at a "
                                    f"non-empty UTF-8 file" + (" or raise dataset.max_chars" if max_chars else ""))
        # A token covers at least one byte: fewer bytes than eval.seq_len can never fill one window.
        n_bytes = len(text.encode())
        require(n_bytes >= cfg.eval.seq_len,
                f"{where} has {n_bytes} bytes, fewer than one window of eval.seq_len={cfg.eval.seq_len} tokens: lower "
                f"eval.seq_len or use a longer text")
        return text

    def check_protocol(self, cfg) -> None:
        """eval.sparse_from=N splits each window: positions < N dense (the prompt), N on by the rule; it goes with
        attention.apply_to=decode, both ways."""
        from lsh_bitnet.config import config_value

        n, seq_len = config_value(cfg.eval, "sparse_from"), cfg.eval.seq_len
        decode = str(config_value(cfg.attention, "apply_to", "all")) == "decode"
        require(n is not None or not decode,
                f"attention.apply_to=decode with metric=perplexity needs eval.sparse_from=N, where the prompt ends "
                f"in each window (positions < N attend fully, N on use the rule): e.g. eval.sparse_from="
                f"{seq_len // 2} of eval.seq_len={seq_len}; or attention.apply_to=all")
        if n is None:
            return
        require(decode, f"eval.sparse_from={n} needs attention.apply_to=decode (the dense-prefill protocol it "
                        f"measures): set attention.apply_to=decode, or eval.sparse_from=null")
        require(1 <= n < seq_len, f"eval.sparse_from must be in [1, eval.seq_len={seq_len}) (got {n}): positions "
                                  f"before it are the prompt, at least one, and at least one position is sparse")

    def check_positions(self, cfg, max_positions: int, model_name: str) -> List[str]:
        """Windows past the model's positions are an error: beyond them perplexity measures RoPE extrapolation."""
        require(cfg.eval.seq_len <= max_positions,
                f"eval.seq_len={cfg.eval.seq_len} is above the model's {max_positions} positions "
                f"(max_position_embeddings of {model_name}): beyond them RoPE extrapolates and perplexity "
                f"measures that, not attention; set eval.seq_len <= {max_positions}")
        return []

    def make_items(self, cfg, tokenizer, cache_dir: Path, text: str):
        """The token stream of the text (tokenised once per sweep, cached), cut to the windows evaluated."""
        from lsh_bitnet.data import token_stream

        return token_stream(text, tokenizer, cache_dir, tokenizer_id=str(cfg.model.name_or_path or cfg.model.name),
                            max_tokens=_needed_tokens(cfg.eval))

    def evaluate(self, cfg, model, tokenizer, stream, sink=None) -> Dict[str, Any]:
        from lsh_bitnet.tasks._perplexity import evaluate_perplexity

        return evaluate_perplexity(model, stream, cfg.eval, sink=sink, seed=cfg.seed)
