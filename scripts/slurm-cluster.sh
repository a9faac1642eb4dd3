#!/usr/bin/env bash
# A real single-node SLURM (munged, slurmctld, slurmd from the Debian packages) for trying the
# `localsynth slurm` commands and for the tests marked `slurm`. Everything it writes (config,
# state, spool, logs, pid files) lives under one state folder; daemons are stopped by the PIDs in
# their pid files, never by name.
#
#   scripts/slurm-cluster.sh start  [STATE_DIR]   install when missing (root), write config, start, wait for the node
#   scripts/slurm-cluster.sh stop   [STATE_DIR]   stop the daemons this script started
#   scripts/slurm-cluster.sh status [STATE_DIR]   daemons and the node state
#
# STATE_DIR defaults to $LOCALSYNTH_SLURM_DIR or /tmp/localsynth-slurm. Clients need
#   export SLURM_CONF=STATE_DIR/slurm.conf
# Ports: SLURM_CTLD_PORT (default 6817) and SLURM_D_PORT (default 6818).
set -uo pipefail

cmd="${1:-status}"
state="${2:-${LOCALSYNTH_SLURM_DIR:-/tmp/localsynth-slurm}}"
ctld_port="${SLURM_CTLD_PORT:-6817}"
d_port="${SLURM_D_PORT:-6818}"
wait_s="${SLURM_START_WAIT_S:-60}"
conf="$state/slurm.conf"
export SLURM_CONF="$conf"
# munged runs as the user munge, which may not reach into STATE_DIR (a private temp folder):
# its socket, pid and log live in a folder of their own, named in STATE_DIR/munge-dir.
munge_dir="$(cat "$state/munge-dir" 2>/dev/null || true)"

die() { echo "slurm-cluster: $*" >&2; exit 2; }

# The PID in a pid file, if that process is alive and is the named program.
pid_of() {
  local file="$1" name="$2" pid
  [ -s "$file" ] || return 1
  pid="$(tr -dc 0-9 <"$file")"
  [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] || return 1
  [ "$(cat "/proc/$pid/comm")" = "$name" ] || return 1
  echo "$pid"
}

install_packages() {
  local missing=()
  for prog in munged slurmctld slurmd sbatch; do command -v "$prog" >/dev/null || missing+=("$prog"); done
  [ "${#missing[@]}" -eq 0 ] && return 0
  [ "$(id -u)" = 0 ] || die "missing ${missing[*]}; install as root: apt-get install --no-install-recommends slurmctld slurmd slurm-client munge"
  command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them; install SLURM and munge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null; } \
    || die "apt-get could not install slurmctld slurmd slurm-client munge"
}

write_config() {
  local host node cpus mem
  host="$(hostname -s)"
  node="$(slurmd -C | head -n1)"
  cpus="$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node")"
  mem="$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node")"
  mkdir -p "$state"/{ctld,spool,log}
  if [ -z "$munge_dir" ] || [ ! -d "$munge_dir" ]; then
    munge_dir="$(mktemp -d "${TMPDIR:-/tmp}/localsynth-munge.XXXXXX")"
    echo "$munge_dir" >"$state/munge-dir"
  fi
  cat >"$conf" <<CONF
# Written by scripts/slurm-cluster.sh: one node, root, no systemd, cgroups or accounting.
ClusterName=localsynth
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$d_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$munge_dir/munge.socket
CredType=cred/munge
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/spool
SlurmctldPidFile=$state/slurmctld.pid
SlurmdPidFile=$state/slurmd.pid
SlurmctldLogFile=$state/log/slurmctld.log
SlurmdLogFile=$state/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
# CR_CPU, not memory: with memory as a resource jobs ran one at a time.
SelectTypeParameters=CR_CPU
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Finished jobs stay visible to squeue / scontrol for an hour (there is no sacct here).
MinJobAge=3600
# Scheduling passes every second instead of every 3 s.
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SlurmdParameters=config_overrides
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=10
MpiDefault=none
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
}

start() {
  install_packages
  if pid_of "$state/slurmctld.pid" slurmctld >/dev/null; then
    echo "slurm-cluster: already running (SLURM_CONF=$conf)"; return 0
  fi
  write_config
  if ! pid_of "$munge_dir/munged.pid" munged >/dev/null; then
    local key=/etc/munge/munge.key
    if [ ! -s "$key" ]; then
      [ "$(id -u)" = 0 ] || die "no munge key at $key; create it as root with mungekey"
      mungekey --create --keyfile "$key" 2>/dev/null || dd if=/dev/urandom of="$key" bs=1 count=1024 2>/dev/null
      chown munge:munge "$key" 2>/dev/null; chmod 600 "$key"
    fi
    chown munge:munge "$munge_dir" 2>/dev/null || true
    chmod 700 "$munge_dir"
    local runas=()
    id munge >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && runas=(runuser -u munge --)
    "${runas[@]}" munged --socket="$munge_dir/munge.socket" --pid-file="$munge_dir/munged.pid" \
      --log-file="$munge_dir/munged.log" --seed-file="$munge_dir/munged.seed" --force \
      || die "munged did not start; see $munge_dir/munged.log"
  fi
  slurmctld -f "$conf" || die "slurmctld did not start; see $state/log/slurmctld.log"
  slurmd -f "$conf" || die "slurmd did not start; see $state/log/slurmd.log"
  local deadline=$((SECONDS + wait_s)) node_state
  while [ "$SECONDS" -lt "$deadline" ]; do
    node_state="$(timeout 5 sinfo -h -o %T 2>/dev/null | head -n1)"
    case "$node_state" in idle*|mixed*|allocated*) echo "slurm-cluster: up (SLURM_CONF=$conf)"; return 0 ;; esac
    sleep 1
  done
  die "the node did not become idle within ${wait_s} s (last state: '${node_state:-none}'); see $state/log"
}

stop_one() {
  local file="$1" name="$2" pid
  pid="$(pid_of "$file" "$name")" || return 0
  kill -TERM "$pid"
  for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.2; done
  kill -KILL "$pid" 2>/dev/null || true
}

stop() {
  stop_one "$state/slurmd.pid" slurmd
  stop_one "$state/slurmctld.pid" slurmctld
  if [ -n "$munge_dir" ]; then
    stop_one "$munge_dir/munged.pid" munged
    rm -rf "$munge_dir" "$state/munge-dir"
  fi
  echo "slurm-cluster: stopped"
}

status() {
  local any=1
  for pair in "$state/slurmctld.pid slurmctld" "$state/slurmd.pid slurmd" "${munge_dir:-/nonexistent}/munged.pid munged"; do
    set -- $pair
    if pid="$(pid_of "$1" "$2")"; then echo "$2: running (pid $pid)"; any=0; else echo "$2: not running"; fi
  done
  [ "$any" = 0 ] && timeout 5 sinfo 2>&1
  echo "SLURM_CONF=$conf"
}

case "$cmd" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  *) die "unknown command '$cmd'; use start, stop or status" ;;
esac
