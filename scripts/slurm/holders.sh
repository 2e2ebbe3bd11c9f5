# Who holds the local cluster open; sourced by start.sh and stop.sh (needs STATE_DIR and as_root).
#
# Several users may share the one cluster of a machine (two CI runs from two clones, a person trying
# sweeps by hand): the first to finish must not stop the daemons under the others. Each holder is a
# file in $STATE_DIR/holders:
#   <pid>    a process (a CI run's shell) that holds it while it lives: `start.sh --hold PID`,
#            let go with `stop.sh --release PID`; the file keeps the process's start time, so a dead
#            holder whose pid was reused does not count, and a holder killed before it could
#            release (SIGKILL skips its exit trap) stops counting when it dies.
#   by-hand  a plain `start.sh`: held until a plain `stop.sh`, which stops whatever holds it.

HOLDERS_DIR="$STATE_DIR/holders"
LOCK_FILE="$STATE_DIR/lock"

take_cluster_lock() {  # one start.sh or stop.sh at a time: they read and change the holders and daemons
  as_root mkdir -p "$STATE_DIR"
  as_root touch "$LOCK_FILE"
  exec 9<"$LOCK_FILE"  # a read-only descriptor is enough for flock, and works for a non-root caller
  flock 9
}

process_start_time() {  # field 22 of /proc/PID/stat; the name in field 2 may hold spaces, so cut after ')'
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  echo "$stat" | cut -d' ' -f20
}

add_holder() {  # add_holder PID|by-hand
  local name="$1" stamp="by-hand"
  if [[ "$name" != "by-hand" ]]; then
    stamp="$(process_start_time "$name")" || { echo "--hold $name: no such process" >&2; return 1; }
  fi
  as_root mkdir -p "$HOLDERS_DIR"
  echo "$stamp" | as_root tee "$HOLDERS_DIR/$name" >/dev/null
}

remove_holder() { as_root rm -f "$HOLDERS_DIR/$1"; }

live_holders() {  # prints the holders that still count, removing the files of dead processes
  local file name
  for file in "$HOLDERS_DIR"/*; do
    [[ -e "$file" ]] || continue
    name="${file##*/}"
    if [[ "$name" == "by-hand" || "$(process_start_time "$name" 2>/dev/null)" == "$(cat "$file")" ]]; then
      echo "$name"
    else
      as_root rm -f "$file"
    fi
  done
}
