#!/usr/bin/env bash
# One check of a GPU machine, no network needed (under 8 minutes on one GPU):
#   1. packages a bare machine lacks come from a local wheel folder (--wheels DIR);
#   2. the model tests (tests/test_models.py, tests/test_grouped.py) pass;
#   3. bench/gpu_bench.py: stage-1 (VRAE phase, refine phase separate and grouped) and
#      stage-2 training steps of `paper` in fp32, bf16 and fp16 (grad scaling), as one table
#      of phrases/s, achieved TFLOP/s and peak GPU memory;
#   4. bench/gpu_trainers.py: the real trainers (`ms2dist train stage1`, then `stage2`,
#      under `accelerate launch`) for --steps steps per phase of `paper`, per precision, on
#      synthetic songs packed by `ms2dist pack`: the same figures from the trainer's logs.
#
#   bash bench/gpu_check.sh [--wheels DIR] [--device cuda|cpu] [--quick] [--steps N]
#
# --device cpu --quick runs the same path on CPU in seconds (CI: tests/test_gpu_check.py).
# Tracking is never touched: nothing here talks to MLflow.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS="" DEVICE="cuda" QUICK="" STEPS=200
while [ $# -gt 0 ]; do
  case "$1" in
    --wheels) WHEELS="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --quick) QUICK="--quick"; shift ;;
    --steps) STEPS="$2"; shift 2 ;;
    *) echo "gpu_check.sh: unknown argument '$1' (use --wheels DIR, --device, --quick, --steps N)" >&2
       exit 2 ;;
  esac
done
PY="${PYTHON:-python3}"

if ! "$PY" -c "import torch" 2>/dev/null; then
  echo "gpu_check.sh: '$PY' has no PyTorch; install it (or set PYTHON=/path/to/python)" >&2
  exit 2
fi
missing=$("$PY" - <<'EOF'
import importlib.util
need = {"numpy": "numpy", "safetensors": "safetensors", "webdataset": "webdataset",
        "pypianoroll": "pypianoroll", "mido": "mido", "pytest": "pytest", "yaml": "pyyaml",
        "accelerate": "accelerate", "tqdm": "tqdm", "matplotlib": "matplotlib"}
print(" ".join(p for m, p in need.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
  if [ -z "$WHEELS" ]; then
    echo "gpu_check.sh: missing packages: $missing; pass --wheels DIR (a folder of wheels," \
         "e.g. from 'pip download -d DIR $missing')" >&2
    exit 2
  fi
  "$PY" -m pip install --no-index --find-links "$WHEELS" $missing
fi
if [ "$DEVICE" = "cuda" ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
  echo "gpu_check.sh: --device cuda but torch.cuda.is_available() is False (use --device cpu)" >&2
  exit 2
fi

echo "== model tests ($DEVICE)"
TESTS="tests/test_grouped.py tests/test_models.py"
[ -n "$QUICK" ] && TESTS="tests/test_grouped.py"  # the CPU run of CI has its own full suite
# shellcheck disable=SC2086
MS2DIST_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider $TESTS
# The generation modes on the device (their data-free test; the rest needs ../shared/data).
MS2DIST_TEST_DEVICE="$DEVICE" "$PY" -m pytest -q -p no:cacheprovider tests/test_modes.py \
  -k test_device
echo "== training steps per precision ($DEVICE)"
"$PY" bench/gpu_bench.py --device "$DEVICE" --steps "$STEPS" $QUICK
echo "== the trainers per precision ($DEVICE)"
"$PY" bench/gpu_trainers.py --device "$DEVICE" --steps "$STEPS" $QUICK
