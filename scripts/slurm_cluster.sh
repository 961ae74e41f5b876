#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the cluster tests (tests/cluster/) and for trying the
# launcher presets locally (docs/clusters.md). Debian's slurm-wlm + munge; loopback addresses only.
#
#   scripts/slurm_cluster.sh install        # apt-get install slurm-wlm munge when absent (root only)
#   scripts/slurm_cluster.sh start DIR      # munged + slurmctld + slurmd, all state under DIR;
#                                           # prints `export SLURM_CONF=DIR/slurm.conf` (eval it)
#   scripts/slurm_cluster.sh stop DIR       # stops the three daemons by the pids in DIR
#   scripts/slurm_cluster.sh why-not        # one line: why a cluster cannot start here (nothing if it can)
#
# The node gets this machine's cores (nproc) and its memory less 1 GiB; one partition, `debug`.
set -euo pipefail

need=(munged slurmctld slurmd sbatch scontrol sinfo)

why_not() {
  if [ "$(uname -s)" != Linux ]; then echo "SLURM test cluster: Linux only"; return; fi
  local missing=()
  for tool in "${need[@]}"; do command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] || missing+=("$tool"); done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "SLURM test cluster: ${missing[*]} not installed (as root: scripts/slurm_cluster.sh install, or apt-get install slurm-wlm munge)"
    return
  fi
  if [ "$(id -u)" != 0 ]; then echo "SLURM test cluster: slurmd must run as root (run the cluster tests as root, as CI does)"; fi
}

install() {
  if [ -z "$(why_not | grep 'not installed' || true)" ]; then return 0; fi
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    echo "slurm_cluster.sh install: not root or no apt-get; the cluster tests will be skipped" >&2
    return 0
  fi
  echo "installing slurm-wlm and munge (apt-get, ~30 s)" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  apt-get install -y -qq slurm-wlm munge >/dev/null
}

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() {  # wait_for SECONDS COMMAND...: retry until it succeeds
  local deadline=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then return 1; fi
    sleep 0.2
  done
}

start() {
  local dir reason host mem_mb
  reason=$(why_not)
  if [ -n "$reason" ]; then echo "$reason" >&2; exit 2; fi
  dir=$(mkdir -p "$1" && cd "$1" && pwd)
  chmod 0755 "$dir"  # munged runs as the munge user and must reach its folder inside
  host=$(hostname -s)
  mem_mb=$(( $(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo) - 1024 ))
  mkdir -p "$dir/munge" "$dir/spool/ctld" "$dir/spool/d" "$dir/log"
  chown munge:munge "$dir/munge" && chmod 0755 "$dir/munge"
  # munged of our own (own socket, pid and log), so the machine's munge setup is left alone.
  su -s /bin/sh munge -c "/usr/sbin/munged --socket=$dir/munge/socket --pid-file=$dir/munge/munged.pid \
      --log-file=$dir/munge/munged.log --seed-file=$dir/munge/seed"
  cat >"$dir/slurm.conf" <<CONF
ClusterName=csdexp
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$(free_port)
SlurmdPort=$(free_port)
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$dir/munge/socket
SlurmUser=root
SlurmdUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
SchedulerParameters=sched_min_interval=100000
ReturnToService=2
JobRequeue=1
KillWait=30
MinJobAge=600
InactiveLimit=0
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
StateSaveLocation=$dir/spool/ctld
SlurmdSpoolDir=$dir/spool/d
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
SlurmdParameters=config_overrides
NodeName=$host NodeAddr=127.0.0.1 CPUs=$(nproc) RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
  export SLURM_CONF="$dir/slurm.conf"
  /usr/sbin/slurmctld -i
  wait_for 20 scontrol ping || { echo "slurmctld did not answer; see $dir/log/slurmctld.log" >&2; stop "$dir"; exit 1; }
  /usr/sbin/slurmd -N "$host"
  if ! wait_for 30 sh -c "sinfo -h -o %t | grep -qx idle"; then
    echo "slurmd did not come up idle; see $dir/log/slurmd.log" >&2; stop "$dir"; exit 1
  fi
  echo "export SLURM_CONF=$dir/slurm.conf"
}

stop_pidfile() {  # stop_pidfile FILE: SIGTERM the pid in FILE, then SIGKILL after 10 s
  local file=$1 pid
  [ -f "$file" ] || return 0
  pid=$(cat "$file" 2>/dev/null || true)
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 0
  kill "$pid" 2>/dev/null || true
  local deadline=$((SECONDS + 10))
  while kill -0 "$pid" 2>/dev/null; do
    if [ $SECONDS -ge $deadline ]; then kill -9 "$pid" 2>/dev/null || true; break; fi
    sleep 0.1
  done
}

stop() {
  local dir=$1
  # Jobs still running are cancelled first, so no job step outlives the cluster.
  if [ -f "$dir/slurm.conf" ]; then SLURM_CONF="$dir/slurm.conf" scancel --user=root >/dev/null 2>&1 || true; fi
  stop_pidfile "$dir/slurmd.pid"
  stop_pidfile "$dir/slurmctld.pid"
  stop_pidfile "$dir/munge/munged.pid"
}

case "${1:-}" in
  install) install ;;
  start) start "${2:?usage: slurm_cluster.sh start DIR}" ;;
  stop) stop "${2:?usage: slurm_cluster.sh stop DIR}" ;;
  why-not) why_not ;;
  *) sed -n '2,12p' "$0" >&2; exit 2 ;;
esac
