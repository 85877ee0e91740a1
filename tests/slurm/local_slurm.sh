#!/usr/bin/env bash
# A one-node SLURM cluster on this machine, for the cluster tests (tests/test_slurm_cluster.py).
#
#   tests/slurm/local_slurm.sh start   install Debian's slurmctld, slurmd and munge where apt exists,
#                                      write .slurm/slurm.conf, start munged, slurmctld and slurmd, and
#                                      wait until sinfo shows the node idle
#   tests/slurm/local_slurm.sh stop    stop exactly the daemons `start` started (by their PIDs)
#   tests/slurm/local_slurm.sh status  the node's state
#
# The cluster: one node (this machine's CPUs and memory), no cgroups (proctrack/linuxproc,
# task/none), partition `debug` (default) and partition `urgent`, whose jobs preempt debug's by
# requeueing them (PreemptType=preempt/partition_prio, PreemptMode=REQUEUE). Commands talk to it
# with SLURM_CONF=.slurm/slurm.conf (make slurm prints the line to export).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
DIR="${SFPP_SLURM_DIR:-$ROOT/.slurm}"
CONF="$DIR/slurm.conf"
export SLURM_CONF="$CONF"

say() { echo "local slurm: $*"; }

install_packages() {
  if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v munged >/dev/null \
      && command -v sbatch >/dev/null; then
    return
  fi
  if ! command -v apt-get >/dev/null; then
    say "slurmctld, slurmd and munge are missing and there is no apt-get to install them"; exit 1
  fi
  say "installing slurmctld, slurmd, slurm-client and munge (apt)"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
    slurmctld slurmd slurm-client munge >/dev/null
}

write_conf() {
  mkdir -p "$DIR/state" "$DIR/spool" "$DIR/munge"
  local host cpus memory user
  host="$(hostname -s)"
  cpus="$(nproc)"
  memory="$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))"  # MB, 10 % spare
  user="$(id -un)"
  cat > "$CONF" <<CONF
# Written by tests/slurm/local_slurm.sh: a one-node cluster for the cluster tests.
ClusterName=sfpp-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=$user
SlurmdUser=$user
AuthType=auth/munge
CredType=cred/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
JobRequeue=1
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SlurmctldPort=6817
SlurmdPort=6818
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool
SlurmctldPidFile=$DIR/slurmctld.pid
SlurmdPidFile=$DIR/slurmd.pid
SlurmctldLogFile=$DIR/slurmctld.log
SlurmdLogFile=$DIR/slurmd.log
MinJobAge=600
KillWait=10
NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$memory State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=$host MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
CONF
}

running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

start() {
  install_packages
  write_conf
  if ! running "$DIR/munged.pid"; then
    [ -f /etc/munge/munge.key ] || { say "no /etc/munge/munge.key (reinstall munge)"; exit 1; }
    mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
    if [ "$(id -u)" -eq 0 ]; then
      runuser -u munge -- /usr/sbin/munged --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log" \
        --seed-file="$DIR/munge/munged.seed" --force 2>/dev/null \
        || /usr/sbin/munged --force --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log"
    else
      /usr/sbin/munged --force --pid-file="$DIR/munge/munged.pid" --log-file="$DIR/munge/munged.log"
    fi
    for _ in $(seq 50); do [ -s "$DIR/munge/munged.pid" ] && break; sleep 0.1; done
    cp "$DIR/munge/munged.pid" "$DIR/munged.pid"
  fi
  running "$DIR/slurmctld.pid" || /usr/sbin/slurmctld -i -f "$CONF"
  running "$DIR/slurmd.pid" || /usr/sbin/slurmd -f "$CONF"
  for _ in $(seq 120); do
    state="$(sinfo -h -o %T 2>/dev/null | head -1 || true)"
    if [ "$state" = "idle" ]; then
      say "up: node $(hostname -s) idle; partitions debug (default) and urgent (preempts debug by requeue)"
      say "use it with: export SLURM_CONF=$CONF"
      return
    fi
    sleep 0.5
  done
  say "the node did not become idle (state: ${state:-none}); see $DIR/slurmctld.log and $DIR/slurmd.log"
  exit 1
}

stop() {
  for name in slurmd slurmctld munged; do
    if running "$DIR/$name.pid"; then
      pid="$(cat "$DIR/$name.pid")"
      kill "$pid"
      for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      say "stopped $name ($pid)"
    fi
    rm -f "$DIR/$name.pid"
  done
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) sinfo -N -o "%N %T %c %m %P" ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
