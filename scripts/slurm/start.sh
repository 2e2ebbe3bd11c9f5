#!/usr/bin/env bash
# Start a real single-node SLURM cluster on this machine (Debian/Ubuntu, root or passwordless sudo),
# for running `launch.py -m launcher=slurm ...` sweeps and tests/test_slurm.py without a site cluster.
#
#   bash scripts/slurm/start.sh            # install if missing, configure, start, wait until idle
#   eval "$(bash scripts/slurm/start.sh --env)"   # same, then put the sacct stand-in on PATH here
#   bash scripts/slurm/stop.sh             # cancel jobs, stop the daemons
#   bash scripts/slurm/start.sh --hold PID # same, held open while process PID lives, until
#   bash scripts/slurm/stop.sh --release PID   # stops it only if nobody else holds it (holders.sh)
#
# Idempotent: a second call finds the daemons running and only reprints the environment lines.
# Everything it writes (slurm.conf, state, spool, logs, pid files, bin/sacct) lives in one state
# directory, $LSH_BITNET_SLURM_DIR or /tmp/lsh-bitnet-slurm. The only things outside it: the Debian
# packages, munge's own key/socket, and /etc/slurm/slurm.conf as a symlink to our file (so plain
# `sinfo`/`sbatch` work in every shell) when no real slurm.conf is there already.
# Why each setting: docs/SLURM.md ("A single-node cluster on this machine").
set -euo pipefail

STATE_DIR="${LSH_BITNET_SLURM_DIR:-/tmp/lsh-bitnet-slurm}"
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
READY_TIMEOUT_S=60  # node is idle 1-2 s after slurmd starts; 60 s means something is wrong
ENV_ONLY_STDOUT=0
HOLDER="by-hand"
while (($#)); do
  case "$1" in
    --env) ENV_ONLY_STDOUT=1; shift ;;
    --hold) [[ "${2:-}" =~ ^[0-9]+$ ]] || { echo "[slurm/start] ERROR: --hold needs a pid" >&2; exit 2; }
            HOLDER="$2"; shift 2 ;;
    *) echo "[slurm/start] ERROR: unknown argument '$1' (known: --env, --hold PID)" >&2; exit 2 ;;
  esac
done

log() { if ((ENV_ONLY_STDOUT)); then echo "[slurm/start] $*" >&2; else echo "[slurm/start] $*"; fi; }
die() { echo "[slurm/start] ERROR: $*" >&2; exit 1; }

if [[ $EUID -eq 0 ]]; then SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO=(sudo -n)
else die "needs root (slurmd runs jobs as their user, munged as 'munge'): rerun as root or with sudo"
fi
as_root() { "${SUDO[@]}" "$@"; }
source "$SCRIPT_DIR/holders.sh"
take_cluster_lock

started=$(date +%s.%N)

# ---------------------------------------------------------------- packages
need_install=0
for exe in slurmctld slurmd sbatch scontrol munged; do
  command -v "$exe" >/dev/null || [[ -x /usr/sbin/$exe ]] || need_install=1
done
if ((need_install)); then
  log "installing slurmctld slurmd slurm-client munge (apt-get, --no-install-recommends)"
  apt_install() {
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      slurmctld slurmd slurm-client munge >&2
  }
  # A fresh image may have no package lists yet: update only when the first try fails.
  apt_install || { as_root apt-get update -q >&2 && apt_install; } \
    || die "apt-get install failed: install slurmctld slurmd slurm-client munge by hand"
fi
export PATH="/usr/sbin:/sbin:$PATH"  # daemons live in sbin, which non-login shells may lack

# ---------------------------------------------------------------- munge
# slurm authenticates every RPC with munge; munged refuses to run as root, and wants its socket
# dir owned by 'munge'. The package creates the key on install; recreate it only if it is gone.
if [[ ! -s /etc/munge/munge.key ]]; then
  log "creating /etc/munge/munge.key"
  as_root mungekey --create --force
  as_root chown munge:munge /etc/munge/munge.key
  as_root chmod 0400 /etc/munge/munge.key
fi
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  log "starting munged"
  as_root install -d -o munge -g munge -m 0755 /run/munge
  as_root runuser -u munge -- /usr/sbin/munged 9<&-  # the daemons must not inherit the lock
  touch_marker=1
  for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
  munge -n | unmunge >/dev/null || die "munged does not answer: see /var/log/munge/munged.log"
else
  touch_marker=0
fi

# ---------------------------------------------------------------- slurm.conf
as_root mkdir -p "$STATE_DIR"/{state,spool,log,bin}
((touch_marker)) && as_root touch "$STATE_DIR/munged.started-by-us"  # stop.sh stops munged only then
HOST="$(hostname -s)"
CPUS="$(nproc)"
MEM_MIB=$(( $(awk '/^MemTotal:/ {print $2}' /proc/meminfo) / 1024 * 90 / 100 ))  # 10% for the OS
CONF="$STATE_DIR/slurm.conf"
as_root tee "$CONF.new" >/dev/null <<EOF
# Written by scripts/slurm/start.sh: a single-node test cluster. Rewritten on every start.
ClusterName=lsh-bitnet
SlurmctldHost=${HOST}(127.0.0.1)
SlurmUser=root
AuthType=auth/munge
# No systemd / cgroups in these containers: track processes by /proc, no task containment.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# No slurmdbd: scripts/slurm/sacct answers submitit's sacct polls from scontrol instead.
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, each job asks for the whole node's memory and jobs run one at a time.
DefMemPerCPU=1024
# A request that can never fit (too many CPUs) fails at sbatch instead of pending forever.
EnforcePartLimits=ALL
ReturnToService=2
# Keep finished jobs visible to scontrol (and so to the sacct stand-in) for an hour.
MinJobAge=3600
MailProg=/bin/true
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
StateSaveLocation=${STATE_DIR}/state
SlurmdSpoolDir=${STATE_DIR}/spool
SlurmctldPidFile=${STATE_DIR}/slurmctld.pid
SlurmdPidFile=${STATE_DIR}/slurmd.pid
SlurmctldLogFile=${STATE_DIR}/log/slurmctld.log
SlurmdLogFile=${STATE_DIR}/log/slurmd.log
NodeName=${HOST} NodeAddr=127.0.0.1 CPUs=${CPUS} RealMemory=${MEM_MIB} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
as_root mv "$CONF.new" "$CONF"

# Clients read /etc/slurm/slurm.conf unless SLURM_CONF is set; link it when it is free or ours.
if [[ ! -e /etc/slurm/slurm.conf || -L /etc/slurm/slurm.conf ]]; then
  as_root mkdir -p /etc/slurm
  as_root ln -sfn "$CONF" /etc/slurm/slurm.conf
else
  log "/etc/slurm/slurm.conf is a real file, left alone: use SLURM_CONF=$CONF (printed below)"
fi
export SLURM_CONF="$CONF"

# ---------------------------------------------------------------- sacct stand-in
as_root install -m 0755 "$SCRIPT_DIR/sacct" "$STATE_DIR/bin/sacct"

# ---------------------------------------------------------------- daemons
alive() {  # alive PIDFILE NAME: the pid in it runs, and is that daemon (pids get reused)
  [[ -s "$1" ]] && [[ "$(cat "/proc/$(cat "$1")/comm" 2>/dev/null)" == "$2"* ]]
}
if alive "$STATE_DIR/slurmctld.pid" slurmctld; then log "slurmctld already running (pid $(cat "$STATE_DIR/slurmctld.pid"))"
else log "starting slurmctld"; as_root slurmctld -f "$CONF" 9<&-
fi
if alive "$STATE_DIR/slurmd.pid" slurmd; then log "slurmd already running (pid $(cat "$STATE_DIR/slurmd.pid"))"
else log "starting slurmd"; as_root slurmd -f "$CONF" 9<&-
fi

# sinfo blocks for minutes when slurmctld is not answering: always under `timeout`.
deadline=$(( $(date +%s) + READY_TIMEOUT_S ))
state=""
while (( $(date +%s) < deadline )); do
  state="$(timeout 3 sinfo -h -o %T 2>/dev/null | head -1 || true)"
  case "$state" in idle|mixed|allocated) break ;; esac
  sleep 0.2
done
case "$state" in
  idle|mixed|allocated) ;;
  *) tail -n 20 "$STATE_DIR"/log/slurmctld.log "$STATE_DIR"/log/slurmd.log >&2 || true
     die "node not ready after ${READY_TIMEOUT_S}s (sinfo state: '${state:-no answer}'); logs above" ;;
esac
elapsed=$(awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
add_holder "$HOLDER" || exit 1  # add_holder said why
log "cluster up in ${elapsed}s: node ${HOST}, ${CPUS} CPUs, ${MEM_MIB} MiB, partition debug ($state);" \
    "held by: $(live_holders | tr '\n' ' ')"

# The only line a caller must apply: submitit polls `sacct`, which this cluster lacks.
env_lines="export PATH=\"$STATE_DIR/bin:\$PATH\" SLURM_CONF=\"$CONF\""
if ((ENV_ONLY_STDOUT)); then echo "$env_lines"
else
  echo "# run this in your shell (or: eval \"\$(bash scripts/slurm/start.sh --env)\"):"
  echo "$env_lines"
fi
