#!/usr/bin/env bash
# The GPU check in one command, from the repository root of the GPU machine, with the wheelhouse
# of `make gpu-wheelhouse` carried beside the checkout (.gpu-wheelhouse):
#
#   bash benchmarks/gpu_check.sh               # writes gpu_check.{json,md,log} to $OUT
#   bash benchmarks/gpu_check.sh --dry-run     # the same steps on the CPU, small (CI runs it)
#
# $PYTHON (default python3) runs every step; the other options are benchmarks/gpu_check.py's.
set -euo pipefail
cd "$(dirname "$0")/.."
exec "${PYTHON:-python3}" benchmarks/gpu_check.py "$@"
