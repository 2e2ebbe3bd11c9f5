"""`--model lsh-bitnet`: our model, loaded and patched from our Hydra config, as an lm-eval model.

    lsh-bitnet-lm-eval --model lsh-bitnet --model_args attention=lsh_topk,hasher.n_bits=8 \
        --tasks lsh_lastword --limit 20     # the bundled tasks/ are on its include path
    lm_eval --model lsh-bitnet ... --include_path tasks   # once `lsh-bitnet-lm-eval --install-hook` ran

`--model_args` are our config overrides, as on our command line: `model=` (default smollm2_135m),
`attention=`, `hasher=`, `attention.k=`, `hasher.n_bits=`, `variant=` (the conf/variant presets), `seed=`,
`model.device=`, `cache_dir=` ... (lm-eval splits the string at commas: list values cannot be given here;
lm-eval's --device is not used: it reads "cuda:0" when none is given). The config is
composed and checked as our runner checks it (an unknown key or value fails before any weights load),
the model is loaded and patched, and lm-eval drives it through the same CountingHFLM as metric=lm_eval.

lm-eval 0.4.13 discovers no models from other packages (no entry-point group; upstream issues #1457,
#3282): the model registers itself when this module is imported. lsh-bitnet-lm-eval is lm-eval's own CLI
with this module imported first; lm_eval_hook.py makes plain `lm_eval` import it too. After lm-eval's
table, the CLI prints the comparison ratio; lm-eval's saved results carry the cost under
config.lsh_bitnet (get_model_info).
"""
import atexit
import logging
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import lm_eval.models  # noqa: F401  lm-eval's own models first: get_model() fills an empty registry only
from lm_eval.api.registry import register_model

from lsh_bitnet.bridges.lm_eval_lm import CountingHFLM

log = logging.getLogger(__name__)
MODEL_NAME = "lsh-bitnet"
CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
# lm-eval passes these to every model (from its --batch_size, --max_batch_size, --device): not config keys
LM_EVAL_ARGS = ("batch_size", "max_batch_size", "device")
_LIVE: List["LSHBitnetLM"] = []


def overrides(model_args: Dict[str, Any]) -> List[str]:
    """--model_args -> Hydra overrides: key=value, with lm-eval's parsed values written back as Hydra reads them."""
    out = []
    for key, value in model_args.items():
        if isinstance(value, bool):
            value = str(value).lower()
        elif value is None:
            value = "null"
        out.append(f"+variant={value}" if key == "variant" else f"{key}={value}")
    return out


def compose(model_args: Dict[str, Any]):
    """Our full config for these model args (metric=lm_eval: the model is evaluated by lm-eval), checked."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from lsh_bitnet import config as _schemas  # noqa: F401  (registers the ConfigStore schemas)
    from lsh_bitnet.run.sweep import register_resolvers
    from lsh_bitnet.validate import validate_fast

    register_resolvers()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["metric=lm_eval", *overrides(model_args)])
    GlobalHydra.instance().clear()
    for warning in validate_fast(cfg):
        log.warning("[lsh-bitnet] %s", warning)
    return cfg


@register_model(MODEL_NAME)
class LSHBitnetLM(CountingHFLM):
    """Our config's model, patched with its attention rule and hasher, as lm-eval's HFLM."""

    def __init__(self, batch_size: Any = 1, max_batch_size: Optional[int] = 64, device: Optional[str] = None,
                 **model_args):
        from lsh_bitnet.attention import patch_model
        from lsh_bitnet.attention.centering import centers_for_run
        from lsh_bitnet.bridges.lm_eval import set_current_tokenizer
        from lsh_bitnet.models import load_model_cached
        from lsh_bitnet.run.runner import default_cache_dir
        from lsh_bitnet.stats import seed_everything
        from lsh_bitnet.validate import check_model_fit

        # lm-eval fills --device with "cuda:0" when none is given, so it cannot say what the user chose: the
        # device is our config's (model.device=, in --model_args; the model presets default to cpu)
        self.cfg = compose(model_args)
        cache_dir = default_cache_dir(self.cfg)
        check_model_fit(self.cfg, cache_dir)  # the rule against the model's shape, before the weights
        seed_everything(self.cfg.seed)
        loaded = load_model_cached(self.cfg.model, cache_dir)
        self.model_info = loaded.info
        self.patch = patch_model(loaded.model, self.cfg.attention, self.cfg.hasher,
                                 centers=centers_for_run(self.cfg, loaded, cache_dir))
        super().__init__(loaded.model, loaded.tokenizer, batch_size=batch_size, max_batch_size=max_batch_size)
        set_current_tokenizer(loaded.tokenizer)
        if not _LIVE:
            atexit.register(_print_summaries)
        _LIVE.append(self)

    def cost(self) -> Dict[str, Any]:
        summary = self.patch.cost_summary()
        summary.pop("per_layer", None)
        return summary

    def describe(self) -> str:
        cost = self.cost()
        ratio = cost.get("comparison_ratio")
        rule = ", ".join(f"{k}={v}" for k, v in _rule(self.cfg).items())
        return (f"lsh-bitnet: {self.model_info.get('description')}, {rule}: {cost['comparisons']:,} of "
                f"{cost['full_comparisons']:,} query-key comparisons, comparison_ratio "
                f"{'n/a' if ratio is None else f'{ratio:.4f}'} (mac_ratio {cost.get('mac_ratio') or 0:.4f}) over "
                f"{len(self.doc_costs)} documents")

    def get_model_info(self) -> Dict[str, Any]:
        """Merged by lm-eval into its results' config (and so into --output_path files)."""
        info = super().get_model_info()
        info["lsh_bitnet"] = {"config": _rule(self.cfg), "model": self.model_info.get("description"),
                              "cost": self.cost()}
        return info


def _rule(cfg) -> Dict[str, Any]:
    """attention (and hasher) with the settings that are the rule's own or differ from the shared defaults."""
    import dataclasses

    from omegaconf import OmegaConf

    from lsh_bitnet.config import AttentionConfig
    from lsh_bitnet.registry import RULES

    shared = {f.name: f.default for f in dataclasses.fields(AttentionConfig)}
    settings = OmegaConf.to_container(cfg.attention, resolve=True)
    out: Dict[str, Any] = {"attention": settings.pop("name")}
    out.update({k: v for k, v in settings.items() if k not in shared or v != shared[k]})
    rule = RULES.find(out["attention"])
    if rule is not None and rule.hashed:  # a hashed rule's codes depend on the hasher
        out.update({f"hasher.{k}": v for k, v in OmegaConf.to_container(cfg.hasher, resolve=True).items()
                    if k in ("name", "n_bits", "seed", "center")})
    return out


CLI = {"print": False}  # set by lsh-bitnet-lm-eval; lm-eval's own CLI is recognised by its program name
CLI_PROGRAMS = ("lm_eval", "lm-eval")  # lm-eval's console scripts (program names, not metric=lm_eval)


def _on_cli() -> bool:
    return CLI["print"] or Path(sys.argv[0]).name in CLI_PROGRAMS


def _print_summaries() -> None:
    """After lm-eval's table (atexit, as its CLI returns): each patched model's comparisons and ratio."""
    for lm in _LIVE:
        try:
            line = lm.describe()
        except Exception as exc:  # never turn a finished evaluation into a failed exit
            line = f"lsh-bitnet: the cost summary failed: {type(exc).__name__}: {exc}"
        if _on_cli():
            print(line, flush=True)  # the CLI's output, beside lm-eval's table (stdout)
        else:
            log.info(line)
