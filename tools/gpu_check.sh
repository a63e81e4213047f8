#!/usr/bin/env bash
# The GPU check (tools/gpu_check.py): build, CUDA tests, compute-sanitizer, ptxas report and benchmarks on one
# GPU in at most 8 minutes, into one results file. PYTHON names the Python that holds torch (default python3).
#   bash tools/gpu_check.sh [--out FILE] [--logs DIR] [--phases build,tests,benchmarks] [--dry-run]
cd "$(dirname "$0")/.." || exit 2
exec "${PYTHON:-python3}" tools/gpu_check.py "$@"
