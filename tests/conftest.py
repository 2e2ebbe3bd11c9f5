"""Shared fixtures: compose the real Hydra config (conf/) without running Hydra's app."""
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"
sys.path.insert(0, str(REPO_ROOT))


def compose_config(overrides=(), cache_dir=None, return_hydra_config=False):
    from lsh_bitnet import config as _schemas  # noqa: F401  (ConfigStore schemas)
    from lsh_bitnet.run.sweep import register_resolvers

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        overrides = list(overrides)
        if cache_dir is not None:
            overrides.append(f"cache_dir={cache_dir}")
        return compose(config_name="config", overrides=overrides, return_hydra_config=return_hydra_config)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    """One cache per test session: tiny models and token streams are built once."""
    return tmp_path_factory.mktemp("lsh_bitnet_cache")


def byte_level_bpe(texts, vocab_size):
    """A small byte-level BPE tokenizer trained on `texts` (no hub), with an <eos> token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<eos>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>")
