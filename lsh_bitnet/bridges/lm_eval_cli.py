"""lsh-bitnet-lm-eval: lm-eval's own command line, with `--model lsh-bitnet` registered.

    lsh-bitnet-lm-eval --model lsh-bitnet --model_args attention=window --tasks lsh_lastword --limit 20
    lsh-bitnet-lm-eval run --model hf --model_args pretrained=... --tasks ...   # any lm-eval command
    lsh-bitnet-lm-eval --install-hook      # plain `lm_eval --model lsh-bitnet` works from then on
    lsh-bitnet-lm-eval --uninstall-hook

Arguments go to lm-eval unchanged, except that the bundled offline tasks (tasks/) are its --include_path
when none is given. Without lm-eval installed it exits with the install command. A CLI entry point: it
prints (lm-eval's table; after it, lm_eval_model's comparison summary).
"""
import sys
from typing import List, Optional


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    from lsh_bitnet.bridges.lm_eval import require_lm_eval
    from lsh_bitnet.errors import ConfigError

    try:
        require_lm_eval("lsh-bitnet-lm-eval")
    except ConfigError as exc:
        print(f"lsh-bitnet-lm-eval: {exc}", file=sys.stderr)
        return 2
    if argv[:1] in (["--install-hook"], ["--uninstall-hook"]):
        from lsh_bitnet.bridges.lm_eval_hook import install, uninstall

        path = install() if argv[0] == "--install-hook" else uninstall()
        print(f"{'wrote' if argv[0] == '--install-hook' else 'removed'} {path}")
        return 0
    from lm_eval.__main__ import cli_evaluate

    from lsh_bitnet.bridges import lm_eval_model
    from lsh_bitnet.bridges.lm_eval import BUNDLED_TASKS

    lm_eval_model.CLI["print"] = True
    if "--include_path" not in argv and not any(a.startswith("--include_path=") for a in argv):
        argv += ["--include_path", str(BUNDLED_TASKS)]  # the bundled offline tasks, as metric=lm_eval has them
    sys.argv = ["lm-eval", *argv]
    cli_evaluate()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
