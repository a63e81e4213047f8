#!/usr/bin/env bash
# The GPU check: one command on a machine with an NVIDIA GPU and no network. Builds against the installed
# torch, runs the CUDA tests, compute-sanitizer (memcheck, racecheck) over the CUDA tests of each kernel,
# and the benchmarks; writes everything to ONE results file (default benchmarks/results/gpu_<gpu>_<date>.md).
#   bash tools/gpu_check.sh [results-file]
# Every step runs even if an earlier one failed; the file records each step's exit status.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr -c 'A-Za-z0-9\n' '_')
OUT=${1:-benchmarks/results/gpu_${gpu:-unknown}_$(date +%Y%m%d).md}
mkdir -p "$(dirname "$OUT")"
export CUDA_HOME=${CUDA_HOME:-/usr/local/cuda} MAX_JOBS=${MAX_JOBS:-8} PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
failed=0

step() {  # step TITLE CMD...: run CMD, append its output (tail) and exit status to the results file
  local title=$1; shift
  local log; log=$(mktemp)
  local t0=$SECONDS
  "$@" >"$log" 2>&1
  local rc=$?
  [ $rc -eq 0 ] || failed=1
  { echo "## $title"; echo; echo "\`$*\` → exit $rc in $((SECONDS - t0)) s"; echo; echo '```'; tail -n 150 "$log"; echo '```'; echo; } >>"$OUT"
  rm -f "$log"
}

{
  echo "# antipasto_ext GPU check"
  echo
  echo "- date: $(date -u +%Y-%m-%dT%H:%MZ)   commit: $(git rev-parse --short HEAD 2>/dev/null)"
  echo "- GPU: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null)"
  echo "- torch: $($PY -c 'import torch; print(torch.__version__, "CUDA", torch.version.cuda)' 2>&1)"
  echo "- nvcc: $("$CUDA_HOME/bin/nvcc" --version 2>&1 | tail -1)"
  echo "- command: bash tools/gpu_check.sh $*"
  echo
} >"$OUT"

step "build" $PY -m pip install --no-build-isolation --no-deps -v .
step "build info" $PY -c "import antipasto_ext as ax; print(ax.build_info())"
# The parity suites parametrize over the CUDA device when one is present (tests/conftest.py DEVICES).
# Tests run from tests/ so the installed package, not the source tree, is imported.
step "CUDA tests" env -C tests $PY -m pytest -q -p no:cacheprovider test_ops.py test_projection.py test_modules.py \
  -k "cuda and not cuda-emulated"
# The fused projection kernel serves <= 16 rows by default; force it for every row count of the tests too.
step "CUDA tests, fused projection at every row count" env -C tests ANTIPASTO_EXT_FUSED_PROJECTION_ROWS=1000000000 \
  $PY -m pytest -q -p no:cacheprovider test_projection.py test_modules.py -k "cuda and not cuda-emulated"
for tool in memcheck racecheck; do
  step "compute-sanitizer $tool: fused projection" compute-sanitizer --tool "$tool" --error-exitcode 1 \
    env -C tests ANTIPASTO_EXT_FUSED_PROJECTION_ROWS=1000000000 $PY -m pytest -q -x -p no:cacheprovider \
    test_projection.py -k "cuda and not cuda-emulated and matches_reference and (bfloat16 or float16)"
done
for kernel in block_cayley gain dplr rot ablate; do
  for tool in memcheck racecheck; do
    step "compute-sanitizer $tool: $kernel" compute-sanitizer --tool "$tool" --error-exitcode 1 \
      env -C tests $PY -m pytest -q -x -p no:cacheprovider test_ops.py -k "cuda and not cuda-emulated and $kernel and float32"
  done
done
step "cost report" $PY benchmarks/cost_report.py --device cuda --dtype bfloat16 --tokens 8192 --out benchmarks/results/gpu_cost
step "Cayley gap" $PY benchmarks/cayley_gap.py --device cuda --dtype bfloat16 --out benchmarks/results/gpu_cayley
echo "results: $OUT"
exit $failed
