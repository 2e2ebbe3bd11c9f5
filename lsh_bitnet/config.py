"""Typed schemas for every Hydra config group, registered in Hydra's ConfigStore.

Each group option YAML under `conf/<group>/` starts with `defaults: [/schema/<group>@_here_: <schema>, _self_]`, so a
mistyped key, a wrong type or a missing required value fails at composition time, before any model
is loaded, with OmegaConf naming the full key. Values that the type system cannot check (allowed
strings, ranges, cross-group constraints) are checked by `validate(cfg)` in `lsh_bitnet.validate`.
"""
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING


# ----------------------------------------------------------------------------- closed value sets
# StrEnum fields: Hydra rejects any other value at composition (< 1 s, listing the allowed ones), and
# a member is its string everywhere else (comparisons, JSON, getattr(torch, dtype), f-strings).
class StrEnum(str, Enum):  # enum.StrEnum is Python 3.11+; we support 3.10
    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class DType(StrEnum):
    auto = "auto"  # bfloat16 on CUDA, float32 on CPU (models/checks.py resolve_dtype)
    float32 = "float32"
    bfloat16 = "bfloat16"
    float16 = "float16"


class Split(StrEnum):
    train = "train"
    validation = "validation"
    valid = "valid"  # wikitext's own file names say "valid": an alias of validation
    test = "test"
    all = "all"  # dataset=text_file: a single file has no splits


class PromptFormat(StrEnum):
    cued = "cued"
    plain = "plain"


# ----------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING  # option name: smollm2_135m | bitnet_b158_2b4t | tiny_bitnet | hf
    # hub id, or local directory (HF format), or directory holding `gguf_file`
    name_or_path: Optional[str] = None
    gguf_file: Optional[str] = None  # file name inside name_or_path, for GGUF checkpoints
    revision: Optional[str] = None
    dtype: DType = DType.auto  # auto: bfloat16 on CUDA (float32 there falls off fused kernels), float32 on CPU
    device: str = "cpu"  # cpu | cuda | cuda:N | auto
    trust_remote_code: bool = False
    # tiny_bitnet only: shape of the randomly initialised model (2B4T ratios at toy size)
    tiny_hidden_size: int = 128
    tiny_layers: int = 2
    tiny_heads: int = 8
    tiny_kv_heads: int = 2
    tiny_intermediate_size: int = 344
    tiny_vocab_size: int = 512
    tiny_seed: int = 0


# ----------------------------------------------------------------------------- attention
class Estimator(StrEnum):  # how candidates are weighted (SPEC section 7)
    softmax = "softmax"  # plain softmax over C(i)
    sampling = "sampling"  # MagicPIG importance weights exp(s) / p_ij (rules with a collision probability)


class Engine(StrEnum):  # how C(i) is computed, never what (SPEC section 8)
    auto = "auto"  # flex where the rule can run on it and the call is long enough (the rule's threshold), else masked
    masked = "masked"  # dense masked product in query chunks: every rule
    flex = "flex"  # compiled flex_attention over block masks: skips blocks with no candidate


@dataclass
class AttentionConfig:
    """Fields every rule has; each rule's own schema subclasses it in its module under lsh_bitnet/attention/rules/
    (the rule's knobs and any default it sets apart, e.g. window's sink_tokens)."""
    name: str = MISSING  # a registered rule: lsh_bitnet.registry.RULES (attention=<name>)
    # How candidates are weighted (SPEC section 7): softmax | sampling (rules that declare a collision probability).
    estimator: Estimator = Estimator.softmax
    # Always-attend sets (SPEC section 3), shared by every sparse rule; ignored by `full`.
    include_self: bool = True
    sink_tokens: int = 0
    local_window: int = 0
    # Layer indices to patch; null = all layers. Unpatched layers keep full attention.
    layers: Optional[List[int]] = None
    # Queries processed per chunk when building candidate masks: bounds peak memory at
    # O(chunk x keys) per head instead of O(keys^2). null: per device (cpu 256, cuda 1024; kernel.QUERY_CHUNK).
    query_chunk: Optional[int] = None
    # Retrieval diagnostics (recall of true top-k, softmax mass covered) on a sample of queries.
    diagnostics: bool = False
    diagnostics_k: int = 32
    diagnostics_queries: int = 64
    # auto | masked | flex (SPEC section 8): which engines run a rule, and auto's thresholds, are the rule's
    # (lsh_bitnet/attention/rules/<name>.py; README).
    engine: Engine = Engine.auto


# ----------------------------------------------------------------------------- hasher
class Center(StrEnum):  # keys are hashed as k - mu (SPEC section 7)
    none = "none"
    calibration = "calibration"  # mean key per layer and KV head over a calibration text never evaluated
    prompt = "prompt"  # mean key of the prefill: not causal for perplexity (cost.causal=false)


class CalibrationSource(StrEnum):
    auto = "auto"  # the dataset's train split where it has one, else generated text
    train_split = "train_split"
    file = "file"  # hasher.calibration_path
    generated = "generated"  # the synthetic task's filler sentences


@dataclass
class HasherConfig:
    """Fields every hasher has; each hasher's own schema subclasses it in its module under
    lsh_bitnet/attention/hashers/."""
    name: str = MISSING  # a registered hasher: lsh_bitnet.registry.HASHERS (hasher=<name>)
    n_bits: int = 8
    # 0 here; conf/hasher/*.yaml set ${seed} (the run's master seed). Not II("seed") in the schema: a schema
    # built outside Hydra (tests, benchmarks, the Python API) would then hold an unresolvable "${seed}".
    seed: int = 0
    center: Center = Center.none
    calibration_source: CalibrationSource = CalibrationSource.auto
    calibration_path: Optional[str] = None
    calibration_tokens: int = 8192  # tokens of calibration text, run in windows of eval.seq_len


# ----------------------------------------------------------------------------- dataset
@dataclass
class DatasetConfig:
    name: str = MISSING  # wikitext103 | wikitext2 | enwik8 | text_file | synthetic_ny_adj | passkey
    split: Split = Split.test
    path: Optional[str] = None  # local file (text_file, enwik8) or directory (wikitext)
    max_chars: Optional[int] = None  # truncate the text before tokenising (quick runs)


@dataclass
class HubTextDatasetConfig(DatasetConfig):
    hub_id: str = "Salesforce/wikitext"
    hub_config: str = MISSING  # e.g. wikitext-103-raw-v1


@dataclass
class Enwik8DatasetConfig(DatasetConfig):
    name: str = "enwik8"
    # The public zip; only fetched when `path` is null.
    url: str = "http://mattmahoney.net/dc/enwik8.zip"


@dataclass
class SyntheticDatasetConfig(DatasetConfig):
    name: str = "synthetic_ny_adj"
    split: Split = Split.test
    n_samples: int = 100
    mention: int = 2  # ask for the adjective before the N-th mention (1-based)
    n_mentions: int = 4
    filler_sentences: int = 4  # filler sentences between consecutive mentions (distance)
    seed: int = 1234
    # cued: the answer quotes the start of the asked mention's sentence, so the model must copy the
    # adjective from far back (SmolLM2-135M scores 1.0 with full attention); plain: only the ordinal
    # is given, which needs counting mentions (SmolLM2-135M is at chance even with full attention).
    prompt_format: PromptFormat = PromptFormat.cued
    # Long-context mode: the prompt's length in tokens (e.g. 2048, 4096, 8192). Filler sentences are
    # added evenly after every mention until the next one would pass it, so the mentions spread over
    # the whole text; filler_sentences is then ignored. null = filler_sentences decides the length.
    target_tokens: Optional[int] = None


@dataclass
class PasskeyDatasetConfig(DatasetConfig):
    name: str = "passkey"
    split: Split = Split.test
    n_samples: int = 50
    # Prompt length in tokens (instruction + filler + key + question), reached within one filler sentence.
    target_tokens: int = 4096
    # Where the key sentence sits in the filler: 0 = first, 1 = last. A list sweeps depths in one run:
    # sample i gets depth[i % len(depth)], and metrics report accuracy per depth.
    depth: Any = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9])
    # repeat: the classic filler of Mohtashami & Jaggi (2023), five sentences repeated;
    # story: the synthetic task's neutral sentences, shuffled per sample (less repetitive text).
    filler: str = "repeat"
    seed: int = 0


# ----------------------------------------------------------------------------- metric
@dataclass
class MetricConfig:
    name: str = MISSING  # perplexity | synthetic_accuracy | passkey_accuracy
    max_new_tokens: int = 6  # synthetic_accuracy / passkey_accuracy: greedy answer length


# ----------------------------------------------------------------------------- top level
@dataclass
class EvalConfig:
    seq_len: int = 1024
    batch_size: int = 1
    max_batches: Optional[int] = None  # null = every window / sample
    # Skip the first N windows (perplexity) or samples (synthetic, passkey) before max_batches applies:
    # choose settings on windows 0-7 (max_batches=8), report on the next (batch_offset=8).
    batch_offset: int = 0
    progress: bool = True


@dataclass
class Config:
    model: ModelConfig = MISSING
    attention: AttentionConfig = MISSING
    hasher: HasherConfig = MISSING
    dataset: DatasetConfig = MISSING
    metric: MetricConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The run's master seed: hasher.seed and dataset.seed default to ${seed} (conf/hasher, conf/dataset),
    # and it seeds Python's, NumPy's and torch's global RNGs and the perplexity bootstrap. Set a
    # component's seed apart to hold it fixed while `seed` varies (e.g. same samples, new hash functions).
    seed: int = 0
    # Converted weights, tokenised streams and downloads; null = $LSH_BITNET_CACHE or ~/.cache/lsh_bitnet
    cache_dir: Optional[str] = None
    # Skip the job when its output dir already holds an `ok` results.json for the same config.
    resume: bool = True
    # Test hook: raise inside the job (after validation) to exercise failure handling.
    fail_on_purpose: bool = False
    extra: Any = None  # free-form notes copied into results.json


# After the bases: the rule and hasher modules subclass them (rules/__init__.py imports this module first).
from lsh_bitnet.registry import HASHERS, RULES  # noqa: E402


def _registered(registry) -> dict:
    """name -> schema dataclass of every registered rule or hasher (declared in its own module)."""
    return {name: entry.schema for name, entry in registry.items()}


SCHEMAS = {
    "model": {"model": ModelConfig},
    "attention": _registered(RULES),
    "hasher": _registered(HASHERS),
    "dataset": {
        "text": DatasetConfig,
        "hub_text": HubTextDatasetConfig,
        "enwik8": Enwik8DatasetConfig,
        "synthetic": SyntheticDatasetConfig,
        "passkey": PasskeyDatasetConfig,
    },
    "metric": {"metric": MetricConfig},
}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            # Under schema/<group>, so `attention=` lists only the real options in its error message.
            cs.store(group=f"schema/{group}", name=name, node=node)


register_configs()
