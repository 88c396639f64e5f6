#!/usr/bin/env bash
# A real single-node SLURM cluster on THIS machine (Debian/Ubuntu, root), for testing the
# sbatch scripts in slurm/ without a real cluster.
#
#   bash slurm/local-cluster.sh start     # install (if needed), configure, start, wait for idle
#   eval "$(bash slurm/local-cluster.sh env)"   # export SLURM_CONF for sbatch/srun/squeue
#   bash slurm/local-cluster.sh status
#   bash slurm/local-cluster.sh stop      # cancel jobs, stop slurmd, slurmctld (and munged if
#                                         # this script started it)
#
# Settings (environment):
#   MS2DIST_SLURM_DIR     config/state/logs directory          (default /tmp/ms2dist-slurm)
#   MS2DIST_SLURM_CPUS    CPUs the node advertises             (default: nproc)
#   MS2DIST_SLURM_NODES   1, or 2 to simulate two nodes on this host with two slurmd
#                         (NodeName=<host>-n0,<host>-n1, NodeHostname=<host>, own ports;
#                         needs a slurmd built with --enable-multiple-slurmd)
#   MS2DIST_SLURMCTLD_PORT / MS2DIST_SLURMD_PORT               (default 6817 / 6818)
#   MS2DIST_SLURM_TIMEOUT seconds to wait for the node to be idle (default 60)
#
# Choices that make SLURM run in a container without systemd/cgroups (Debian slurm-wlm
# 22.05): ProctrackType=proctrack/linuxproc, TaskPlugin=task/none,
# SelectType=select/cons_tres, SlurmUser=root, munged started as the munge user.
set -euo pipefail

DIR=${MS2DIST_SLURM_DIR:-/tmp/ms2dist-slurm}
CONF=$DIR/etc/slurm.conf
HOST=$(hostname -s)
CPUS=${MS2DIST_SLURM_CPUS:-$(nproc)}
NODES=${MS2DIST_SLURM_NODES:-1}
CTLD_PORT=${MS2DIST_SLURMCTLD_PORT:-6817}
SLURMD_PORT=${MS2DIST_SLURMD_PORT:-6818}
TIMEOUT=${MS2DIST_SLURM_TIMEOUT:-60}
export SLURM_CONF=$CONF

log() { printf '[local-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

node_names() {
  if [ "$NODES" -le 1 ]; then
    echo "$HOST"
  else
    local i
    for ((i = 0; i < NODES; i++)); do echo "$HOST-n$i"; done
  fi
}

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

ensure_packages() {
  local missing=()
  command -v slurmctld >/dev/null 2>&1 || missing+=(slurm-wlm)
  command -v munged >/dev/null 2>&1 || missing+=(munge)
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || die "need root to apt-get install ${missing[*]}"
  log "installing ${missing[*]} (apt-get)"
  export DEBIAN_FRONTEND=noninteractive
  # Install straight away when the package lists are there; update only if that fails.
  if ! apt-get install -y -q --no-install-recommends "${missing[@]}" >"$DIR/log/apt.log" 2>&1; then
    apt-get update -q >>"$DIR/log/apt.log" 2>&1
    apt-get install -y -q --no-install-recommends "${missing[@]}" >>"$DIR/log/apt.log" 2>&1 \
      || die "apt-get install failed, see $DIR/log/apt.log"
  fi
}

munge_ok() { munge -n 2>/dev/null | unmunge >/dev/null 2>&1; }

ensure_munge() {
  munge_ok && return 0
  if [ ! -s /etc/munge/munge.key ]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null 2>&1; then
      mungekey --create --keyfile=/etc/munge/munge.key
    else
      dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key 2>/dev/null
    fi
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge
  log "starting munged as user munge"
  if command -v runuser >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged
  else
    su -s /bin/sh munge -c /usr/sbin/munged
  fi
  touch "$DIR/run/munged.started-by-us"
  local i
  for ((i = 0; i < 50; i++)); do munge_ok && return 0; sleep 0.1; done
  die "munged does not answer (see /var/log/munge/munged.log)"
}

write_conf() {
  mkdir -p "$DIR/etc" "$DIR/state" "$DIR/spool" "$DIR/log" "$DIR/run"
  local tmp=$DIR/etc/slurm.conf.new nodes_line node i
  {
    cat <<EOF
# Written by slurm/local-cluster.sh -- single machine test cluster. Do not edit: rewritten.
ClusterName=ms2dist
SlurmctldHost=$HOST
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also delays a requeued job's restart (default 120 s): 10 s for tests.
AuthInfo=cred_expire=10
CredType=cred/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SwitchType=switch/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
StateSaveLocation=$DIR/state
SlurmdSpoolDir=$DIR/spool/%n
SlurmctldPidFile=$DIR/run/slurmctld.pid
SlurmdPidFile=$DIR/run/slurmd-%n.pid
SlurmctldLogFile=$DIR/log/slurmctld.log
SlurmdLogFile=$DIR/log/slurmd-%n.log
SlurmctldDebug=info
SlurmdDebug=info
ReturnToService=2
JobRequeue=1
# Fast turn-around for tests: short timers, no accounting.
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
SchedulerParameters=sched_interval=2
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
EOF
    if [ "$NODES" -le 1 ]; then
      echo "NodeName=$HOST CPUs=$CPUS State=UNKNOWN"
    else
      i=0
      for node in $(node_names); do
        echo "NodeName=$node NodeHostname=$HOST NodeAddr=127.0.0.1 Port=$((SLURMD_PORT + 10 + i)) CPUs=$CPUS State=UNKNOWN"
        i=$((i + 1))
      done
    fi
    nodes_line=$(node_names | paste -sd, -)
    echo "PartitionName=debug Nodes=$nodes_line Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO"
  } >"$tmp"
  if [ -f "$CONF" ] && cmp -s "$tmp" "$CONF"; then
    rm -f "$tmp"
    return 1 # unchanged
  fi
  mv "$tmp" "$CONF"
  return 0 # changed
}

own_daemons_alive() {
  local node
  pid_alive "$DIR/run/slurmctld.pid" || return 1
  for node in $(node_names); do pid_alive "$DIR/run/slurmd-$node.pid" || return 1; done
}

ctld_up() { pid_alive "$DIR/run/slurmctld.pid" && scontrol ping 2>/dev/null | grep -q UP; }

all_idle() {
  local states
  states=$(sinfo -h -N -o '%N %T' 2>/dev/null) || return 1
  [ -n "$states" ] || return 1
  # idle, or mixed/allocated if jobs are already running
  ! echo "$states" | awk '{print $2}' | grep -qvE '^(idle|mixed|allocated|completing)$'
}

start() {
  local t0 changed=0
  t0=$(date +%s)
  mkdir -p "$DIR/log" "$DIR/run"
  ensure_packages
  ensure_munge
  write_conf && changed=1
  if [ "$changed" -eq 1 ] && { ctld_up || pid_alive "$DIR/run/slurmctld.pid"; }; then
    log "slurm.conf changed: restarting daemons"
    stop_daemons
  fi
  if ! pid_alive "$DIR/run/slurmctld.pid"; then
    log "starting slurmctld"
    # -c: start with a clean state (no jobs from an earlier life of this test cluster)
    slurmctld -c -f "$CONF"
  fi
  local node
  for node in $(node_names); do
    if ! pid_alive "$DIR/run/slurmd-$node.pid"; then
      log "starting slurmd ($node)"
      mkdir -p "$DIR/spool/$node"
      if [ "$NODES" -le 1 ]; then
        slurmd -f "$CONF"
      else
        slurmd -f "$CONF" -N "$node"
      fi
    fi
  done
  local deadline=$(($(date +%s) + TIMEOUT)) resumed=0 grace=$(($(date +%s) + 5))
  # "idle" must come from OUR daemons: a slurmctld that died on a port already taken
  # (another cluster on the same ports) leaves sinfo answering from the other cluster.
  until all_idle && own_daemons_alive; do
    if [ "$(date +%s)" -ge "$grace" ] && ! own_daemons_alive; then
      tail -n 5 "$DIR/log/slurmctld.log" >&2 || true
      die "slurmctld/slurmd of $DIR are not running (ports $CTLD_PORT/$SLURMD_PORT taken by another cluster? logs in $DIR/log)"
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
      sinfo -N -l >&2 || true
      tail -n 20 "$DIR/log/slurmctld.log" >&2 || true
      die "nodes not idle after ${TIMEOUT}s (logs in $DIR/log)"
    fi
    # A node remembered as down/drained from an earlier run: resume it once.
    if [ "$resumed" -eq 0 ] && sinfo -h -N -o '%T' 2>/dev/null | grep -qE 'down|drain'; then
      scontrol update NodeName="$(node_names | paste -sd, -)" State=RESUME 2>/dev/null || true
      resumed=1
    fi
    sleep 0.5
  done
  log "up in $(($(date +%s) - t0)) s: $(sinfo -h -N -o '%N:%T' | paste -sd' ' -)"
  log "use it with:  export SLURM_CONF=$CONF"
}

stop_pidfile() {
  local f=$1 name=$2 pid i
  pid_alive "$f" || { rm -f "$f"; return 0; }
  pid=$(cat "$f")
  log "stopping $name (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 100; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$pid" 2>/dev/null; then
    log "$name did not exit in 10 s: SIGKILL"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$f"
}

stop_daemons() {
  local f
  if ctld_up; then scancel --user="$(id -un)" 2>/dev/null || true; fi
  for f in "$DIR"/run/slurmd-*.pid; do
    [ -e "$f" ] || continue
    stop_pidfile "$f" "slurmd $(basename "$f" .pid | sed 's/^slurmd-//')"
  done
  stop_pidfile "$DIR/run/slurmctld.pid" slurmctld
}

stop() {
  stop_daemons
  if [ -e "$DIR/run/munged.started-by-us" ]; then
    stop_pidfile /run/munge/munged.pid munged
    rm -f "$DIR/run/munged.started-by-us"
  fi
  log "stopped"
}

status() {
  local f rc=0
  echo "SLURM_CONF=$CONF"
  if munge_ok; then echo "munged: running"; else echo "munged: NOT running"; rc=1; fi
  if pid_alive "$DIR/run/slurmctld.pid"; then
    echo "slurmctld: running (pid $(cat "$DIR/run/slurmctld.pid"))"
  else
    echo "slurmctld: NOT running"; rc=1
  fi
  for node in $(node_names); do
    f=$DIR/run/slurmd-$node.pid
    if pid_alive "$f"; then echo "slurmd $node: running (pid $(cat "$f"))"
    else echo "slurmd $node: NOT running"; rc=1; fi
  done
  if [ "$rc" -eq 0 ]; then
    sinfo -N -o '%N %P %T %c' || rc=1
    squeue || true
  fi
  return "$rc"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  restart) stop; start ;;
  status) status ;;
  env) echo "export SLURM_CONF=$CONF" ;;
  *) echo "usage: $0 start|stop|restart|status|env" >&2; exit 2 ;;
esac
