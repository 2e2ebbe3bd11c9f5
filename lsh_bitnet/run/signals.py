"""Signals during a run: SIGTERM / SIGINT / SIGHUP become `RunInterrupted` (recorded `interrupted`, signal
and likely cause named; outside a submitit job the process then exits 128 + the signal number with one
closing line); SIGUSR2, submitit's "time limit in signal_delay_s" warning, is only noted.

A SLURM job cancelled with `scancel -s KILL` sees SIGTERM too: SLURM stops every cancelled job with
SIGTERM and sends SIGKILL only KillWait seconds later, so the cause names that case.

submitit ignores SIGTERM in its jobs and treats SIGUSR2 as "timed out" (ending the job at once, before
the limit, when no requeue is allowed); while a run is in progress these handlers replace both.
"""
import logging
import os
import signal
import threading
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator

from lsh_bitnet.run.results import utc_now

log = logging.getLogger(__name__)

# When this process started (imported by launch.py at start-up): with the launcher's timeout_min it
# tells a SIGTERM at the SLURM time limit from a scancel when no SIGUSR2 warning came first.
PROCESS_START = time.time()
# SLURM enforces limits on a ~30 s tick; a SIGTERM this close to (or after) the limit is the limit.
TIME_LIMIT_SLACK_S = 15


class RunInterrupted(KeyboardInterrupt):
    """A signal stopped the run; KeyboardInterrupt so that `except Exception` never swallows it."""

    def __init__(self, signum: int, cause: str):
        self.signum, self.cause = signum, cause
        super().__init__(f"{signal.Signals(signum).name} received ({cause}): the run stopped before it finished")


def hydra_config():
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get()
    except ValueError:  # not under Hydra (tests calling run() directly)
        return None


def own_process_job() -> bool:
    """True for a sweep job that runs in a process of its own (submitit: SLURM or local): an
    interrupted job there returns its record so the sweep can print its summary; in an in-process
    sweep a signal must stop the whole sweep instead."""
    hc = hydra_config()
    try:
        return hc is not None and bool(os.environ.get("SUBMITIT_EXECUTOR")) and hc.mode.name == "MULTIRUN"
    except Exception:
        return False


def _time_limit_reached() -> bool:
    hc = hydra_config()
    try:
        timeout_min = hc.launcher.get("timeout_min") if hc is not None and own_process_job() else None
    except Exception:
        timeout_min = None
    return bool(timeout_min) and time.time() - PROCESS_START >= timeout_min * 60 - TIME_LIMIT_SLACK_S


@contextmanager
def signals_recorded(state: Dict[str, Any]) -> Iterator[None]:
    """SIGTERM / SIGINT / SIGHUP raise RunInterrupted; SIGUSR2 (submitit's "time limit in signal_delay_s") is noted."""
    if threading.current_thread() is not threading.main_thread():  # signal handlers: main thread only
        yield
        return

    owner = os.getpid()

    def stop(signum, frame):
        if os.getpid() != owner:  # a forked worker (lm-eval's bootstrap pool): its pool stops it, quietly
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)
            return
        if signum == signal.SIGINT:
            cause = "Ctrl-C or kill -INT"
        elif signum == signal.SIGHUP:
            cause = "the terminal or SSH session closed (hangup), or kill -HUP; nohup, tmux or a scheduler avoid it"
        elif state.get("time_limit_warned") or _time_limit_reached():
            cause = "the SLURM time limit was reached (hydra.launcher.timeout_min)"
        elif os.environ.get("SLURM_JOB_ID"):
            cause = ("scancel (`scancel -s KILL` too: SLURM sends a cancelled job SIGTERM, then SIGKILL after "
                     "KillWait), preemption or kill -TERM")
        else:
            cause = "kill -TERM, a scheduler's stop or a system shutdown"
        raise RunInterrupted(signum, cause)

    def warn(signum, frame):
        state["time_limit_warned"] = utc_now()
        log.warning(f"[lsh-bitnet] {signal.Signals(signum).name}: the SLURM time limit is near; the job is stopped "
                    f"(and recorded interrupted) when it is reached")

    wanted = {signal.SIGTERM: stop, signal.SIGINT: stop, signal.SIGHUP: stop, signal.SIGUSR2: warn}
    previous = {sig: signal.signal(sig, handler) for sig, handler in wanted.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
