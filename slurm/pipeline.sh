#!/usr/bin/env bash
# Submit the whole pipeline as a chain of SLURM jobs (each starts only if the previous
# one succeeded, --dependency=afterok; requeued/preempted jobs keep their ids, so the
# chain just waits for them):
#
#   pack -> stage1 (array: one task per track) -> assemble -> stage2 (N x G) -> register -> sample
#
#   bash slurm/pipeline.sh --input /data/lpd_5_cleansed --nodes 2 --gpus 8 --partition gpu \
#        --tracking-uri http://mlflow:5000
#   bash slurm/pipeline.sh --skip-pack --data shards/lpd5 --dry-run      # print, submit nothing
#
# Every option also reads an environment variable (in brackets; default after '=').
#   --input DIR         raw songs for `ms2dist pack`          [MS2DIST_INPUT]
#   --name NAME         dataset name                          [MS2DIST_DATASET_NAME=lpd5]
#   --data DIR          shards folder (pack output)           [MS2DIST_DATA=$REPO/shards/$NAME]
#   --skip-pack         use existing shards in --data         (also: no --input given)
#   --run DIR           run root: stage1/ stage2/ samples/ logs/ jobs/
#                                                             [MS2DIST_RUN=$REPO/runs/<date-time>]
#   --preset P          --config of `ms2dist train`           [MS2DIST_PRESET=paper]
#   --tracks LIST       stage-1 tracks                        [MS2DIST_TRACKS=Drums,Piano,Guitar,Bass,Strings]
#   --stage1-mode M     array (one task per track) | single   [MS2DIST_STAGE1_MODE=array]
#   --nodes N           stage-2 nodes                         [MS2DIST_NODES=1]
#   --gpus G            GPUs per node (0 = CPU)               [MS2DIST_GPUS=0]
#   --partition P / --account A / --time T / --qos Q          [MS2DIST_PARTITION, _ACCOUNT, _TIME, _QOS]
#   --launch-config F   accelerate YAML (default: from nodes/GPUs) [MS2DIST_LAUNCH_CONFIG_FILE]
#   --pack-cpus C       CPUs (= pack workers) for the pack job [MS2DIST_PACK_CPUS=8]
#   --tracking-uri URI  MLflow; enables the register step     [MS2DIST_TRACKING_URI]
#   --alias A           alias set on the stage-2 model        [MS2DIST_ALIAS=pipeline]
#   --n N --seed S      samples to generate                   [MS2DIST_N=16, MS2DIST_SEED=0]
#   --dry-run           print the sbatch lines, submit nothing
# MS2DIST_REPO: checkout the jobs run in (default: the one holding this script).
# Extra arguments after `--` go to both `ms2dist train` commands (e.g. --train.lr=3e-4);
# per step, space-separated: MS2DIST_PACK_ARGS, MS2DIST_STAGE1_ARGS, MS2DIST_STAGE2_ARGS.
# Processes per node: MS2DIST_PROCS_PER_NODE, or per stage MS2DIST_STAGE1_PROCS_PER_NODE /
# MS2DIST_STAGE2_PROCS_PER_NODE (default: the node's GPUs, 2 on CPU nodes).
set -euo pipefail

REPO=${MS2DIST_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
INPUT=${MS2DIST_INPUT:-}
NAME=${MS2DIST_DATASET_NAME:-lpd5}
DATA=${MS2DIST_DATA:-}
SKIP_PACK=0
RUN=${MS2DIST_RUN:-}
PRESET=${MS2DIST_PRESET:-paper}
TRACKS=${MS2DIST_TRACKS:-Drums,Piano,Guitar,Bass,Strings}
STAGE1_MODE=${MS2DIST_STAGE1_MODE:-array}
NODES=${MS2DIST_NODES:-1}
GPUS=${MS2DIST_GPUS:-0}
PARTITION=${MS2DIST_PARTITION:-}
ACCOUNT=${MS2DIST_ACCOUNT:-}
TIME=${MS2DIST_TIME:-}
QOS=${MS2DIST_QOS:-}
LAUNCH_CONFIG=${MS2DIST_LAUNCH_CONFIG_FILE:-}
TRACKING_URI=${MS2DIST_TRACKING_URI:-}
ALIAS=${MS2DIST_ALIAS:-pipeline}
N=${MS2DIST_N:-16}
SEED=${MS2DIST_SEED:-0}
PACK_CPUS=${MS2DIST_PACK_CPUS:-8}
DRY_RUN=0
TRAIN_EXTRA=()

die() { echo "pipeline.sh: $*" >&2; exit 2; }
need() { [ $# -ge 2 ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --input) need "$@"; INPUT=$2; shift 2 ;;
    --name) need "$@"; NAME=$2; shift 2 ;;
    --data) need "$@"; DATA=$2; shift 2 ;;
    --skip-pack) SKIP_PACK=1; shift ;;
    --run) need "$@"; RUN=$2; shift 2 ;;
    --preset) need "$@"; PRESET=$2; shift 2 ;;
    --tracks) need "$@"; TRACKS=$2; shift 2 ;;
    --stage1-mode) need "$@"; STAGE1_MODE=$2; shift 2 ;;
    --nodes) need "$@"; NODES=$2; shift 2 ;;
    --gpus) need "$@"; GPUS=$2; shift 2 ;;
    --partition) need "$@"; PARTITION=$2; shift 2 ;;
    --account) need "$@"; ACCOUNT=$2; shift 2 ;;
    --time) need "$@"; TIME=$2; shift 2 ;;
    --qos) need "$@"; QOS=$2; shift 2 ;;
    --launch-config) need "$@"; LAUNCH_CONFIG=$2; shift 2 ;;
    --tracking-uri) need "$@"; TRACKING_URI=$2; shift 2 ;;
    --alias) need "$@"; ALIAS=$2; shift 2 ;;
    --n) need "$@"; N=$2; shift 2 ;;
    --seed) need "$@"; SEED=$2; shift 2 ;;
    --pack-cpus) need "$@"; PACK_CPUS=$2; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    --) shift; TRAIN_EXTRA=("$@"); break ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown option $1 (see --help)" ;;
  esac
done

[ -n "$INPUT" ] || SKIP_PACK=1
DATA=${DATA:-$REPO/shards/$NAME}
RUN=${RUN:-$REPO/runs/$(date +%Y%m%d-%H%M%S)}
case "$DATA" in /*) ;; *) DATA=$REPO/$DATA ;; esac
case "$RUN" in /*) ;; *) RUN=$REPO/$RUN ;; esac
case "$STAGE1_MODE" in array | single) ;; *) die "--stage1-mode array|single" ;; esac
[[ "$NODES" =~ ^[1-9][0-9]*$ ]] || die "--nodes must be a positive integer"
[[ "$GPUS" =~ ^[0-9]+$ ]] || die "--gpus must be an integer >= 0"
if [ "$SKIP_PACK" = 1 ] && [ "$DRY_RUN" = 0 ] && [ ! -d "$DATA" ]; then
  die "no --input to pack and no shards in $DATA"
fi
IFS=, read -r -a TRACK_LIST <<<"$TRACKS"
[ "${#TRACK_LIST[@]}" -ge 1 ] || die "--tracks is empty"

if [ -x "$REPO/.venv/bin/python" ]; then PY=${MS2DIST_PYTHON:-$REPO/.venv/bin/python}
else PY=${MS2DIST_PYTHON:-python3}; fi

mkdir -p "$RUN/logs" "$RUN/jobs"

# A sqlite MLflow store created by several array tasks at once races on its schema
# migration ("duplicate column name: step"): create it here, once, before any job runs.
# (Several nodes writing one sqlite file over NFS is worse: use an MLflow server there.)
EFFECTIVE_URI=${TRACKING_URI:-${MLFLOW_TRACKING_URI:-}}
if [ "$DRY_RUN" = 0 ] && [[ "$EFFECTIVE_URI" == sqlite:* ]]; then
  "$PY" -c 'import sys, mlflow; mlflow.set_tracking_uri(sys.argv[1]); mlflow.search_experiments()' \
    "$EFFECTIVE_URI" >/dev/null 2>&1 || die "cannot initialise MLflow store $EFFECTIVE_URI"
fi

# Settings every job inherits (sbatch copies the submitting environment).
export MS2DIST_REPO=$REPO MS2DIST_RUN=$RUN MS2DIST_DATA=$DATA MS2DIST_PRESET=$PRESET \
  MS2DIST_TRACKS=$TRACKS MS2DIST_PYTHON=$PY
# One pipeline id for every job of this chain: MLflow groups their runs by it.
export MS2DIST_PIPELINE_ID=${MS2DIST_PIPELINE_ID:-$(date +%Y%m%d%H%M%S)-$$}
[ -n "$TRACKING_URI" ] && export MS2DIST_TRACKING_URI=$TRACKING_URI
[ -n "$LAUNCH_CONFIG" ] && export MS2DIST_LAUNCH_CONFIG_FILE=$LAUNCH_CONFIG

# A failed step cancels the steps waiting on it (instead of DependencyNeverSatisfied forever).
COMMON=(--parsable --chdir="$REPO" --kill-on-invalid-dep=yes)
[ -n "$PARTITION" ] && COMMON+=(--partition="$PARTITION")
[ -n "$ACCOUNT" ] && COMMON+=(--account="$ACCOUNT")
[ -n "$TIME" ] && COMMON+=(--time="$TIME")
[ -n "$QOS" ] && COMMON+=(--qos="$QOS")
GPU_ARGS=()
[ "$GPUS" -gt 0 ] && GPU_ARGS=(--gres="gpu:$GPUS")

FAKE_ID=1000
# submit VAR NAME [sbatch args...]: submits, stores the job id in VAR.
# --export=ALL unless the arguments carry their own --export (sites may set SBATCH_EXPORT).
submit() {
  local var=$1 name=$2 id a export=(--export=ALL)
  shift 2
  for a in "$@"; do case "$a" in --export=*) export=() ;; esac; done
  if [ "$DRY_RUN" = 1 ]; then
    FAKE_ID=$((FAKE_ID + 1))
    id=$FAKE_ID
    printf 'sbatch --job-name=%s' "$name" >&2
    printf ' %q' "${COMMON[@]}" "${export[@]}" "$@" >&2
    printf '   # -> job %s\n' "$id" >&2
  else
    id=$(sbatch --job-name="$name" "${COMMON[@]}" "${export[@]}" "$@") || die "sbatch for $name failed"
    id=${id%%;*}
    echo "submitted $name: job $id" >&2
  fi
  printf -v "$var" '%s' "$id"
}

# A small job script for the single-process steps (kept in RUN/jobs for inspection).
job_script() {
  local file=$RUN/jobs/$1.sh
  shift
  {
    echo '#!/usr/bin/env bash'
    echo 'set -euo pipefail'
    printf 'cd %q\n' "$REPO"
    # shellcheck disable=SC2016  # expanded when the job runs
    echo 'echo "[$(date +%T)] $SLURM_JOB_NAME ($SLURM_JOB_ID) on $(hostname)" >&2'
    printf '%s\n' "$@"
  } >"$file"
  chmod +x "$file"
  echo "$file"
}
q() { printf '%q ' "$@"; }

DEP=()
# 1. pack
if [ "$SKIP_PACK" = 0 ]; then
  # shellcheck disable=SC2016  # $SLURM_CPUS_PER_TASK is read when the job runs
  f=$(job_script pack "srun --ntasks=1 $(q "$PY" -m ms2dist pack --input "$INPUT" --name "$NAME" --out "$DATA") ${MS2DIST_PACK_ARGS:-} --workers \"\${SLURM_CPUS_PER_TASK:-1}\"")
  submit PACK ms2-pack --ntasks=1 --cpus-per-task="$PACK_CPUS" \
    --output="$RUN/logs/%x-%j.out" "$f"
  DEP=(--dependency="afterok:$PACK")
fi

# 2. stage 1, 3. assemble
if [ "$STAGE1_MODE" = array ]; then
  submit S1 ms2-stage1 "${DEP[@]}" --array="0-$((${#TRACK_LIST[@]} - 1))" --nodes=1 \
    "${GPU_ARGS[@]}" --output="$RUN/logs/%x-%A_%a.out" \
    "$REPO/slurm/stage1.sbatch" "${TRAIN_EXTRA[@]}"
  FROM=()
  for t in "${TRACK_LIST[@]}"; do FROM+=("$RUN/stage1/$t"); done
  f=$(job_script assemble \
    "srun --ntasks=1 $(q "$PY" -m ms2dist train assemble --out "$RUN/stage1/assembled" --from "${FROM[@]}")")
  submit ASM ms2-assemble --dependency="afterok:$S1" --ntasks=1 \
    --output="$RUN/logs/%x-%j.out" "$f"
  STAGE1_DIR=$RUN/stage1/assembled
else
  # One job trains every track (--array= with no value would be rejected: no array).
  submit S1 ms2-stage1 "${DEP[@]}" --nodes=1 "${GPU_ARGS[@]}" \
    --output="$RUN/logs/%x-%j.out" "$REPO/slurm/stage1.sbatch" "${TRAIN_EXTRA[@]}"
  ASM=$S1
  STAGE1_DIR=$RUN/stage1/all
fi

# 4. stage 2
submit S2 ms2-stage2 --dependency="afterok:$ASM" --nodes="$NODES" "${GPU_ARGS[@]}" \
  --output="$RUN/logs/%x-%j.out" --export="ALL,MS2DIST_STAGE1=$STAGE1_DIR" \
  "$REPO/slurm/stage2.sbatch" "${TRAIN_EXTRA[@]}"

# 5. register: training already registered the model (alias "candidate") when tracking
#    is on; point the pipeline alias at exactly that version.
LAST=$S2
MODEL=$RUN/stage2
if [ -n "$TRACKING_URI" ]; then
  # shellcheck disable=SC2016  # single-quoted lines are expanded when the job runs
  f=$(job_script register \
    "cfg=$(q "$RUN/stage2/model/config.json")" \
    "ver=\$($(q "$PY") -c 'import json,sys; print(json.load(open(sys.argv[1]))[\"meta\"].get(\"registered_version\") or \"\")' \"\$cfg\")" \
    '[ -n "$ver" ] || { echo "stage-2 model in $cfg was not registered (tracking.register off?)" >&2; exit 1; }' \
    'echo "registered: $ver -> alias '"$ALIAS"'" >&2' \
    "srun --ntasks=1 $(q "$PY" -m ms2dist registry promote) \"\${ver%%/*}\" \"\${ver##*/}\" $(q --alias "$ALIAS" --tracking-uri "$TRACKING_URI")")
  submit REG ms2-register --dependency="afterok:$S2" --ntasks=1 \
    --output="$RUN/logs/%x-%j.out" "$f"
  LAST=$REG
  MODEL="models:/midi-sandwich2@$ALIAS"
fi

# 6. sample
SAMPLE_GPU=()
[ "$GPUS" -gt 0 ] && SAMPLE_GPU=(--gres=gpu:1)
submit SAMPLE ms2-sample --dependency="afterok:$LAST" --ntasks=1 "${SAMPLE_GPU[@]}" \
  --output="$RUN/logs/%x-%j.out" \
  --export="ALL,MS2DIST_MODEL=$MODEL,MS2DIST_N=$N,MS2DIST_SEED=$SEED" \
  "$REPO/slurm/sample.sbatch"

cat >&2 <<EOF
pipeline submitted (run root $RUN):
  pack=${PACK:-skipped} stage1=$S1 assemble=${ASM} stage2=$S2 register=${REG:-skipped} sample=$SAMPLE
  logs: $RUN/logs/   watch: squeue -u $(id -un)   cancel all: scancel $S1 $S2 $SAMPLE ${PACK:-} ${REG:-}
EOF
