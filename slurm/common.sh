# shellcheck shell=bash
# Shared helpers for the slurm/*.sbatch scripts. Source it:
#   source "$MS2DIST_REPO/slurm/common.sh"
#
# The training code never reads SLURM variables: everything SLURM knows is turned into
# `accelerate launch` flags here. Pitfalls this file exists for:
# * `$SLURM_NODEID` expanded once in the batch shell makes every node machine rank 0:
#   the launch line is single-quoted and expanded by each srun task itself.
# * every node needs the same head address: `scontrol show hostnames | head -n1`,
#   and a failed lookup stops the job (never a silent fallback to localhost).
# * accelerate/torchrun turn a worker's exit status 75 into 1, so "preempted" is
#   recognised by the PREEMPTED marker the trainer writes into --out (or status 75
#   when nothing sat in between), and by the signal the batch shell itself received.

ms2_log() { printf '[ms2dist %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
ms2_die() { ms2_log "FATAL: $*"; exit 1; }

# Repository root: $MS2DIST_REPO, else the submit directory when it is a checkout.
# (sbatch copies the script into its spool dir, so the script's own path is no help.)
ms2_repo() {
  local r=${MS2DIST_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
  [ -f "$r/slurm/common.sh" ] || ms2_die "cannot find the ms2dist checkout (set MS2DIST_REPO; tried $r)"
  (cd "$r" && pwd)
}

# Interpreter and launcher: the checkout's .venv when there is one.
#   MS2DIST_PYTHON / MS2DIST_ACCELERATE override.
ms2_tools() {
  local repo
  repo=$(ms2_repo)
  if [ -z "${MS2DIST_PYTHON:-}" ]; then
    if [ -x "$repo/.venv/bin/python" ]; then MS2DIST_PYTHON=$repo/.venv/bin/python
    else MS2DIST_PYTHON=$(command -v python3); fi
  fi
  if [ -z "${MS2DIST_ACCELERATE:-}" ]; then
    if [ -x "$repo/.venv/bin/accelerate" ]; then MS2DIST_ACCELERATE=$repo/.venv/bin/accelerate
    else MS2DIST_ACCELERATE=$(command -v accelerate || true); fi
  fi
  [ -n "$MS2DIST_PYTHON" ] || ms2_die "no python found (set MS2DIST_PYTHON)"
  [ -n "$MS2DIST_ACCELERATE" ] || ms2_die "no accelerate found (set MS2DIST_ACCELERATE)"
  export MS2DIST_PYTHON MS2DIST_ACCELERATE
}

# Launch config for NODES x PROCS_PER_NODE when MS2DIST_LAUNCH_CONFIG_FILE is unset:
# no GPU -> cpu_multiprocess, several nodes -> multi_node, several GPUs -> multi_gpu,
# one GPU -> single_gpu_p100 (fp16; set the file for bf16 cards).
ms2_default_launch_config() {
  local nodes=$1 gpus=$2
  if [ -n "${MS2DIST_LAUNCH_CONFIG_FILE:-}" ]; then printf '%s\n' "$MS2DIST_LAUNCH_CONFIG_FILE"
  elif [ "$gpus" -eq 0 ]; then printf '%s\n' launch_configs/cpu_multiprocess.yaml
  elif [ "$nodes" -gt 1 ]; then printf '%s\n' launch_configs/multi_node.yaml
  elif [ "$gpus" -gt 1 ]; then printf '%s\n' launch_configs/multi_gpu.yaml
  else printf '%s\n' launch_configs/single_gpu_p100.yaml
  fi
}

# First node of the allocation. Fails loudly.
ms2_head_node() {
  [ -n "${SLURM_JOB_NODELIST:-}" ] || ms2_die "SLURM_JOB_NODELIST is empty: not inside a SLURM allocation?"
  local head
  head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" 2>/dev/null | head -n1) || true
  [ -n "$head" ] || ms2_die "scontrol show hostnames '$SLURM_JOB_NODELIST' gave no head node"
  case "$head" in *[][,\ ]*) ms2_die "scontrol show hostnames '$SLURM_JOB_NODELIST' gave a malformed head node '$head'" ;; esac
  printf '%s\n' "$head"
}

# Address the other nodes use to reach the head node's rendezvous:
# $MS2DIST_MAIN_IP, else the head's NodeAddr from slurmctld (= its hostname on most
# clusters; 127.0.0.1 on slurm/local-cluster.sh's two-node simulation), else its name.
ms2_head_addr() {
  local head=$1 addr
  if [ -n "${MS2DIST_MAIN_IP:-}" ]; then printf '%s\n' "$MS2DIST_MAIN_IP"; return; fi
  addr=$(scontrol show node "$head" 2>/dev/null | tr ' ' '\n' | sed -n 's/^NodeAddr=//p' | head -n1)
  [ -n "$addr" ] || addr=$head
  case "$addr" in
    localhost | 127.*)
      # Only acceptable when every node of the job is this one machine.
      if [ "${SLURM_JOB_NUM_NODES:-1}" -gt 1 ] && [ "${MS2DIST_ALLOW_LOOPBACK:-0}" != 1 ]; then
        ms2_die "head node $head resolves to loopback $addr in a ${SLURM_JOB_NUM_NODES}-node job (set MS2DIST_MAIN_IP, or MS2DIST_ALLOW_LOOPBACK=1 for a one-machine simulation)"
      fi
      ;;
  esac
  printf '%s\n' "$addr"
}

# One rendezvous port per job, the same on every node (and on every requeue of the job).
ms2_port() {
  if [ -n "${MS2DIST_MAIN_PORT:-}" ]; then printf '%s\n' "$MS2DIST_MAIN_PORT"; return; fi
  local id=${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-0}}
  printf '%s\n' $((20000 + (id + ${SLURM_ARRAY_TASK_ID:-0}) % 20000))
}

# GPUs per node visible to this job (0 on CPU nodes).
ms2_gpus_per_node() {
  if [ -n "${MS2DIST_GPUS_PER_NODE:-}" ]; then printf '%s\n' "$MS2DIST_GPUS_PER_NODE"; return; fi
  local n=${SLURM_GPUS_ON_NODE:-}
  if [ -z "$n" ] && [ -n "${CUDA_VISIBLE_DEVICES:-}" ]; then
    n=$(printf '%s' "$CUDA_VISIBLE_DEVICES" | tr ',' '\n' | grep -c .)
  fi
  if [ -z "$n" ] && command -v nvidia-smi >/dev/null 2>&1; then
    n=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU' || true)
  fi
  printf '%s\n' "${n:-0}"
}

# MLflow tags slurm.job_id / slurm.array_index: the trainer never reads SLURM_*, it reads
# these. An array task is named as squeue/sacct show it (<array job>_<index>).
ms2_export_job_tags() {
  if [ -n "${SLURM_ARRAY_JOB_ID:-}" ] && [ -n "${SLURM_ARRAY_TASK_ID:-}" ]; then
    MS2DIST_JOB_ID=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
    MS2DIST_ARRAY_INDEX=$SLURM_ARRAY_TASK_ID
    export MS2DIST_JOB_ID MS2DIST_ARRAY_INDEX
  elif [ -n "${SLURM_JOB_ID:-}" ]; then
    export MS2DIST_JOB_ID=$SLURM_JOB_ID
    unset MS2DIST_ARRAY_INDEX
  fi
}

# Export everything the per-node launch line needs (MS2_* variables) for a job of
# $SLURM_JOB_NUM_NODES nodes x PROCS_PER_NODE processes with LAUNCH_CONFIG.
#   ms2_prepare_launch LAUNCH_CONFIG PROCS_PER_NODE
ms2_prepare_launch() {
  local cfg=$1 per_node=$2 repo
  repo=$(ms2_repo)
  ms2_tools
  case "$cfg" in /*) ;; *) cfg=$repo/$cfg ;; esac
  [ -f "$cfg" ] || ms2_die "launch config $cfg not found"
  [ "$per_node" -ge 1 ] 2>/dev/null || ms2_die "processes per node must be >= 1 (got '$per_node')"
  MS2_REPO=$repo
  MS2_LAUNCH_CONFIG=$cfg
  MS2_NNODES=${SLURM_JOB_NUM_NODES:-1}
  MS2_PROCS_PER_NODE=$per_node
  MS2_WORLD=$((MS2_NNODES * per_node))
  MS2_HEAD_NODE=$(ms2_head_node)
  MS2_MAIN_IP=$(ms2_head_addr "$MS2_HEAD_NODE")
  MS2_MAIN_PORT=$(ms2_port)
  export MS2_REPO MS2_LAUNCH_CONFIG MS2_NNODES MS2_PROCS_PER_NODE MS2_WORLD MS2_HEAD_NODE \
    MS2_MAIN_IP MS2_MAIN_PORT
  # For the trainer's run tags (train --launch-config default).
  export MS2DIST_LAUNCH_CONFIG=${MS2DIST_LAUNCH_CONFIG:-$(basename "$cfg")}
  ms2_export_job_tags
  # accelerate's DeepSpeed config path is relative to the launch directory.
  cd "$repo" || ms2_die "cannot cd to $repo"
  # CPU nodes: the ranks must be told they are CPU ranks (see cpu_multiprocess.yaml);
  # never for DeepSpeed, which it would silently switch off.
  if [ "$(ms2_gpus_per_node)" = 0 ] && ! grep -q '^distributed_type: *DEEPSPEED' "$cfg"; then
    export ACCELERATE_USE_CPU=${ACCELERATE_USE_CPU:-1}
  fi
  # torchrun (inside accelerate launch) forwards these signals to the workers and waits
  # this long for them to checkpoint before SIGKILL (default: SIGUSR1 not forwarded, 30 s).
  export PET_SIGNALS_TO_HANDLE=${PET_SIGNALS_TO_HANDLE:-SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1}
  export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-110}
  export PET_SHUTDOWN_TIMEOUT=$TORCH_ELASTIC_SHUTDOWN_TIMEOUT
  ms2_log "launch: ${MS2_NNODES} node(s) x ${per_node} = world ${MS2_WORLD}; head ${MS2_HEAD_NODE} (${MS2_MAIN_IP}:${MS2_MAIN_PORT}); config ${cfg}"
}

# Run by each srun task (one per node). SINGLE-QUOTED on purpose: $SLURM_NODEID,
# $SLURM_PROCID, $SLURM_LOCALID and $(hostname) are read by the task on its own node.
# shellcheck disable=SC2016
MS2_NODE_LAUNCH='
set -euo pipefail
dev=cpu
if command -v nvidia-smi >/dev/null 2>&1; then
  dev="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | sort | uniq -c | sed "s/^ *//" | paste -sd";" -)"
  [ -n "$dev" ] || dev=cpu
fi
printf "[preflight] host=%s node_rank=%s procid=%s localid=%s machines=%s procs_per_node=%s world=%s head=%s:%s device=%s CUDA_VISIBLE_DEVICES=%s\n" \
  "$(hostname)" "$SLURM_NODEID" "$SLURM_PROCID" "${SLURM_LOCALID:-?}" "$MS2_NNODES" \
  "$MS2_PROCS_PER_NODE" "$MS2_WORLD" "$MS2_MAIN_IP" "$MS2_MAIN_PORT" "$dev" "${CUDA_VISIBLE_DEVICES:-unset}" >&2
if [ "$MS2_NNODES" -gt 1 ]; then
  exec "$MS2DIST_ACCELERATE" launch --config_file "$MS2_LAUNCH_CONFIG" \
    --num_machines "$MS2_NNODES" --num_processes "$MS2_WORLD" \
    --machine_rank "$SLURM_NODEID" \
    --main_process_ip "$MS2_MAIN_IP" --main_process_port "$MS2_MAIN_PORT" \
    --same_network --rdzv_backend static \
    "$@"
else
  exec "$MS2DIST_ACCELERATE" launch --config_file "$MS2_LAUNCH_CONFIG" \
    --num_machines 1 --num_processes "$MS2_WORLD" --machine_rank 0 \
    --main_process_port "$MS2_MAIN_PORT" \
    "$@"
fi
'

# srun one task per node, each running `accelerate launch ... "$@"` with its own rank.
#   ms2_srun_accelerate -m ms2dist train stage2 --out ...
# Runs srun in the background and waits, so the batch shell can take signals.
ms2_srun_accelerate() {
  [ -n "${MS2_WORLD:-}" ] || ms2_die "call ms2_prepare_launch first"
  local extra=()
  # MS2DIST_SRUN_ARGS: extra srun options, split on spaces (e.g. "--cpu-bind=none").
  read -r -a extra <<<"${MS2DIST_SRUN_ARGS:-}"
  srun --nodes="$MS2_NNODES" --ntasks="$MS2_NNODES" --ntasks-per-node=1 \
    --kill-on-bad-exit=1 "${extra[@]}" \
    bash -c "$MS2_NODE_LAUNCH" ms2-node-launch "$@" &
  MS2_STEP_PID=$!
  ms2_wait_step
}

# --- preemption ------------------------------------------------------------------
# With `#SBATCH --signal=B:USR1@120` SLURM signals only the batch shell; the trap
# passes the signal on to every process of the running job steps (scancel without
# --batch/--full = steps only; slurmstepd signals the launcher and all workers), the
# trainer checkpoints and leaves PREEMPTED in its --out, and the job requeues itself.
MS2_GOT_SIGNAL=""
MS2_STEP_PID=""
ms2_on_signal() {
  MS2_GOT_SIGNAL=$1
  ms2_log "got SIG$1: forwarding to the job steps (checkpoint + exit)"
  scancel --signal="$1" "${SLURM_JOB_ID}" 2>/dev/null || {
    [ -n "$MS2_STEP_PID" ] && kill -s "$1" "$MS2_STEP_PID" 2>/dev/null
  } || true
}
ms2_install_traps() {
  trap 'ms2_on_signal USR1' USR1
  trap 'ms2_on_signal TERM' TERM
}

# Wait for the step, surviving the trap interrupting `wait`. Sets MS2_RC.
ms2_wait_step() {
  MS2_RC=0
  while true; do
    set +e
    wait "$MS2_STEP_PID"
    MS2_RC=$?
    set -e
    # wait returns >128 when a trapped signal interrupted it: wait again.
    if [ "$MS2_RC" -gt 128 ] && kill -0 "$MS2_STEP_PID" 2>/dev/null; then continue; fi
    break
  done
  return 0
}

# After the step: exit status 75, a PREEMPTED marker in OUT_DIR, or a signal taken by
# the batch shell -> requeue this job (same job id; --resume auto picks up the checkpoint).
#   ms2_finish OUT_DIR   (exits)
ms2_finish() {
  local out=$1
  if [ "$MS2_RC" -eq 75 ] || [ -e "$out/PREEMPTED" ] || [ -n "$MS2_GOT_SIGNAL" ]; then
    ms2_log "preempted (status $MS2_RC, signal '${MS2_GOT_SIGNAL}', marker $( [ -e "$out/PREEMPTED" ] && cat "$out/PREEMPTED" || echo none)): requeueing job $SLURM_JOB_ID"
    if [ "${MS2DIST_NO_REQUEUE:-0}" = 1 ]; then exit 75; fi
    # (An array task has its own SLURM_JOB_ID: this requeues just that task.)
    scontrol requeue "$SLURM_JOB_ID" || ms2_die "scontrol requeue failed (job without --requeue?)"
    # The requeue kills this shell; should it not, leave with the preemption status.
    sleep 30
    exit 75
  fi
  if [ "$MS2_RC" -ne 0 ]; then ms2_log "step failed with status $MS2_RC"; fi
  exit "$MS2_RC"
}
