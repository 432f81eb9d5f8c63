#!/usr/bin/env bash
# GPU check of the cuda backend, for a machine with an NVIDIA GPU (about 5 minutes).
#
#   bash experiments/gpu_check.sh            # from anywhere; logs also go to $OUT if set
#
# 1. the card, the driver and the Python packages the backend needs (numba / numba-cuda,
#    CuPy, PyTorch); nothing is installed or downloaded: noisysim runs from this checkout
#    (PYTHONPATH), with the packages the machine already has;
# 2. tests/test_cuda.py on the hardware (NOISYSIM_CUDA_HARDWARE=1: no simulator, larger
#    arrays): every kernel against its CPU twin, bit for bit where the CPU is exact;
# 3. `noisysim bench --backend cuda` against a PyTorch CUDA step for bp, anp and danp on
#    3072-1024-1024-1024-10 at B = 1000 (full FP32, TF32 off on both sides).
# Steps are independent: one failing does not stop the others (no `set -e`); the script
# exits non-zero if any step failed.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
PY=${PYTHON:-python3}
LOG_DIR=${OUT:-}
FAILED=()

if [ -n "$LOG_DIR" ]; then exec > >(tee -a "$LOG_DIR/gpu_check.log") 2>&1; else exec 2>&1; fi
step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }
run() {  # run NAME TIMEOUT CMD...: time-limited, output logged, failure remembered
  local name=$1 limit=$2; shift 2
  timeout "$limit" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then FAILED+=("$name (exit $rc)"); echo "--- $name failed (exit $rc)"; fi
  return 0
}

step "card"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
else
  echo "nvidia-smi not found"; FAILED+=("nvidia-smi")
fi

step "python packages"
export PYTHONUNBUFFERED=1
# noisysim runs from this checkout: nothing is installed (the machine may have no index).
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
echo "noisysim from PYTHONPATH=$ROOT"
run versions 120 "$PY" - <<'EOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("numpy", "numba", "cupy", "torch", "pytest"):
    try:
        m = importlib.import_module(name)
        print(name, getattr(m, "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
try:
    from numba import cuda
    print("numba.cuda", getattr(cuda, "implementation", "?"), "available:", cuda.is_available())
except Exception as exc:
    print("numba.cuda MISSING", exc)
from noisysim.backends import cuda_status, resolve_backend
print("cuda_status", cuda_status())
print("auto ->", resolve_backend("auto"))
EOF

step "tests/test_cuda.py on the hardware"
run test_cuda 300 env NOISYSIM_CUDA_HARDWARE=1 "$PY" -m pytest -q -p no:cacheprovider \
  tests/test_cuda.py -rA

step "bench: noisysim cuda vs PyTorch CUDA, 3072-1024-1024-1024-10, B=1000"
for rule in bp anp danp; do
  echo "--- $rule"
  out=$(timeout 180 "$PY" -c 'import sys; from noisysim.cli import main; sys.exit(main())' \
        bench --backend cuda --rule "$rule" --batch 1000 \
        --layers 3072,1024,1024,1024,10 --steps 5 --json 2>&1)
  rc=$?
  if [ $rc -ne 0 ] || ! grep -q '"backend": "cuda"' <<<"$out"; then
    # the CLI may not route --backend cuda yet: call the backend's bench directly
    echo "$out" | tail -2
    echo "(noisysim bench --backend cuda unavailable; python -m noisysim.gpu.bench)"
    run "bench $rule" 180 "$PY" -m noisysim.gpu.bench --rule "$rule" --batch 1000 \
      --layers 3072,1024,1024,1024,10 --steps 5
  else
    echo "$out" | tail -1
  fi
  run "torch $rule" 180 "$PY" -m noisysim.gpu.torch_step --rule "$rule" --batch 1000 \
    --layers 3072,1024,1024,1024,10 --steps 5
done

step "summary"
if command -v nvidia-smi >/dev/null; then
  echo "card: $(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)"
fi
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "all steps passed"
else
  printf 'FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
