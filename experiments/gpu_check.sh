#!/usr/bin/env bash
# GPU check of the cuda backend, for a machine with an NVIDIA GPU (at most 5 minutes).
#
#   bash experiments/gpu_check.sh            # from anywhere; logs also go to $OUT if set
#
# Needs numpy, numba, numba-cuda, CuPy, PyTorch and pytest on the machine; installs and
# downloads nothing (noisysim runs from this checkout through PYTHONPATH).
# 1. the card and the packages;
# 2. the hardware twin tests (NOISYSIM_CUDA_HARDWARE=1: no simulator; every test that
#    `pytest tests -k cuda` selects): every CUDA kernel against its CPU twin, the engine
#    tests (rules, failures, resume, the launch budget) on the cuda backend, the reductions'
#    order, the compiled machine code, graph runs against plain runs;
# 3. one table: per row, noisysim's cuda step and the PyTorch step (noisysim.gpu.torch_step)
#    on the same GPU, their ratio, noisysim's GPU-busy fraction and launches per step, and
#    noisysim's step replayed as a CUDA graph (python -m noisysim.gpu.check);
# 4. the main job on cpu, cuda, cuda with CUDA graphs (backend.graphs) and auto: final test
#    accuracies and wall times;
# 5. cpu against cuda step times from 0.016 to 16 GFLOP per step, and the size from which
#    cuda wins (python -m noisysim.gpu.check --crossover: auto's threshold).
# Steps are independent: one failing does not stop the others (no `set -e`); the script
# exits non-zero if any step failed. The whole script stays within BUDGET_S (300 s): every
# step's time limit is cut to what is left, and a step with under 10 s left is skipped.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$(pwd)
PY=${PYTHON:-python3}
LOG_DIR=${OUT:-}
FAILED=()
BUDGET_S=${BUDGET_S:-300}
DEADLINE=$(( $(date +%s) + BUDGET_S ))

if [ -n "$LOG_DIR" ]; then exec > >(tee -a "$LOG_DIR/gpu_check.log") 2>&1; else exec 2>&1; fi
step() { echo; echo "=== $* ($(date +%H:%M:%S))"; }
left() { echo $(( DEADLINE - $(date +%s) )); }
cap() {  # cap LIMIT: LIMIT, or the seconds left in the budget if fewer
  local l; l=$(left); [ "$l" -lt "$1" ] && echo "$l" || echo "$1"
}
run() {  # run NAME TIMEOUT CMD...: time-limited, output logged, failure remembered
  local name=$1 limit; limit=$(cap "$2"); shift 2
  if [ "$limit" -lt 10 ]; then FAILED+=("$name (skipped: budget spent)"); echo "--- $name skipped: the ${BUDGET_S} s budget is spent"; return 0; fi
  timeout "$limit" "$@"
  local rc=$?
  if [ "$rc" -ne 0 ]; then FAILED+=("$name (exit $rc)"); echo "--- $name failed (exit $rc)"; fi
  return 0
}

step "card and packages"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader
else
  echo "nvidia-smi not found"; FAILED+=("nvidia-smi")
fi
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
run versions 30 "$PY" - <<'PYEOF'
import importlib, sys
print("python", sys.version.split()[0])
for name in ("numpy", "numba", "numba_cuda", "cupy", "torch", "pytest"):
    try:
        print(name, getattr(importlib.import_module(name), "__version__", "?"))
    except Exception as exc:
        print(name, "MISSING", type(exc).__name__, exc)
from noisysim.backends import cuda_status
print("cuda_status", cuda_status())
PYEOF

step "hardware twin tests"
# -k cuda: every test of the cuda backend (the cuda half of the engine, rule, hardware and
# pass tests through their `backend` fixture, the kernel twins, the reductions' order, the
# conv kernels, the machine-code checks, the graph runs); the CPU half already ran in CI.
# -v: each test's result as it ends, so a run cut by the time limit still shows them.
run twin_tests 130 env NOISYSIM_CUDA_HARDWARE=1 "$PY" -m pytest -v --tb=line -rfEs \
  -p no:cacheprovider tests -k cuda

step "step times: noisysim cuda vs PyTorch"
run table 80 "$PY" -m noisysim.gpu.check --steps 5

step "main job: cpu, cuda, cuda with graphs, auto (10 epochs)"
TMP=$(mktemp -d)
for backend in cpu cuda cuda-graphs auto; do
  start=$(date +%s.%N)
  graphs=false; [ "$backend" = cuda-graphs ] && graphs=true
  limit=$(cap 40)
  if [ "$limit" -lt 10 ]; then FAILED+=("main job $backend (skipped: budget spent)"); continue; fi
  out=$(timeout "$limit" "$PY" -m noisysim.cli run --main --backend "${backend%-graphs}" \
        --set train.epochs=10 --set backend.graphs=$graphs --out "$TMP/$backend" 2>&1)
  rc=$?
  end=$(date +%s.%N)
  [ $rc -ne 0 ] && FAILED+=("main job $backend (exit $rc)")
  echo "--- $backend: $(echo "$end - $start" | bc) s (exit $rc)"
  echo "$out" | grep -iE "accuracy|rule|backend" | tail -8
done
rm -rf "$TMP"

step "auto's crossover: noisysim's step on cpu and on cuda (what is left of the budget)"
run crossover 40 "$PY" -m noisysim.gpu.check --crossover --steps 3

step "summary ($(( BUDGET_S - $(left) )) s of the ${BUDGET_S} s budget)"
if [ ${#FAILED[@]} -eq 0 ]; then
  echo "all steps passed"
else
  printf 'FAILED: %s\n' "${FAILED[@]}"
  exit 1
fi
