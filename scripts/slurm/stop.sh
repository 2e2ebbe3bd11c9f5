#!/usr/bin/env bash
# Stop the single-node cluster that scripts/slurm/start.sh started (same state directory:
# $LSH_BITNET_SLURM_DIR or /tmp/lsh-bitnet-slurm). Safe to run when nothing is running.
#
# Order matters: cancel jobs first (a job outlives the Hydra process that submitted it), then the
# daemons by the pids in their pid files, never by name, so another cluster on the box is untouched.
# The state directory stays (job ids keep counting up across restarts); delete it by hand to reset.
#
#   bash scripts/slurm/stop.sh                 # stop, whoever holds the cluster
#   bash scripts/slurm/stop.sh --release PID   # PID lets go; stop only if no other holder is left
set -uo pipefail

RELEASE=""
case "${1:-}" in
  "") ;;
  --release) [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "[slurm/stop] ERROR: --release needs a pid" >&2; exit 2; }
             RELEASE="$2" ;;
  *) echo "[slurm/stop] ERROR: unknown argument '$1' (known: --release PID)" >&2; exit 2 ;;
esac

STATE_DIR="${LSH_BITNET_SLURM_DIR:-/tmp/lsh-bitnet-slurm}"
CONF="$STATE_DIR/slurm.conf"
TERM_GRACE_S=5  # slurmd ignores SIGTERM while it retries a dead controller: SIGKILL after this

if [[ $EUID -eq 0 ]]; then SUDO=(); else SUDO=(sudo -n); fi
as_root() { "${SUDO[@]}" "$@"; }
log() { echo "[slurm/stop] $*"; }
export PATH="/usr/sbin:/sbin:$PATH"
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/holders.sh"
take_cluster_lock

[[ -z "$RELEASE" ]] || remove_holder "$RELEASE"
others="$(live_holders | tr '\n' ' ')"
if [[ -n "$RELEASE" && -n "$others" ]]; then  # their jobs may be running: no scancel either
  log "released by $RELEASE; still held by: ${others}(left running)"; exit 0
fi
if [[ -z "$RELEASE" ]]; then
  [[ -z "$others" || "$others" == "by-hand " ]] || log "stopping although still held by: $others"
  as_root rm -rf "$HOLDERS_DIR"
fi

if [[ -f "$CONF" ]] && command -v scancel >/dev/null; then
  # Every job of every user on this throwaway cluster; bounded, as scancel hangs without slurmctld.
  SLURM_CONF="$CONF" timeout 5 "${SUDO[@]}" scancel --quiet --partition debug 2>/dev/null || true
  sleep 0.5  # let slurmd deliver the signals before it goes away itself
fi

stop_pidfile() {  # stop_pidfile NAME FILE
  local name="$1" file="$2" pid
  [[ -s "$file" ]] || { log "$name: no pid file, not running"; return 0; }
  pid="$(cat "$file")"
  # A stale pid file may name a pid reused by something else: only signal the daemon itself.
  if [[ "$(cat "/proc/$pid/comm" 2>/dev/null)" != "$name"* ]]; then
    log "$name: pid $pid is gone (stale pid file)"; as_root rm -f "$file"; return 0
  fi
  as_root kill -TERM "$pid" 2>/dev/null
  for _ in $(seq $((TERM_GRACE_S * 10))); do as_root kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if as_root kill -0 "$pid" 2>/dev/null; then
    log "$name: pid $pid ignored SIGTERM for ${TERM_GRACE_S}s, sending SIGKILL"
    as_root kill -KILL "$pid" 2>/dev/null
  fi
  as_root rm -f "$file"
  log "$name: stopped (pid $pid)"
}

# slurmd first: stopped after slurmctld, it would spin retrying the controller.
stop_pidfile slurmd "$STATE_DIR/slurmd.pid"
stop_pidfile slurmctld "$STATE_DIR/slurmctld.pid"

# munged is shared with anything else using munge on the box: stop it only if start.sh started it.
if [[ -f "$STATE_DIR/munged.started-by-us" ]]; then
  stop_pidfile munged /run/munge/munged.pid
  as_root rm -f "$STATE_DIR/munged.started-by-us"
fi

# Drop our /etc/slurm/slurm.conf link so clients fail at once ("no config") instead of hanging.
if [[ -L /etc/slurm/slurm.conf && "$(readlink /etc/slurm/slurm.conf)" == "$CONF" ]]; then
  as_root rm -f /etc/slurm/slurm.conf
fi
exit 0
