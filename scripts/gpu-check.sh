#!/usr/bin/env bash
# One command for a machine with a GPU (or, with --cpu, this machine's CPU): build llama.cpp for it, synthesise
# 3-4 catalog models that fit the device (random weights, exact shapes), measure llama-bench decode (tg128) and
# prefill (pp512) and llama-server's memory, and write a calibration-format CSV plus a `gpumix validate` report.
#
#   scripts/gpu-check.sh                 # auto: CUDA when an NVIDIA driver is present, else the CPU path
#   scripts/gpu-check.sh --cpu           # force the CPU path (tiny models; tests the script without a GPU)
#   scripts/gpu-check.sh --out DIR [--models llama-3.1-8b:q4_k_m ...] [-r 3] [-p 512] [-n 128]
#
# Results go to bench/gpu/results/<backend>-<UTC time>/ (measurements.csv, memory.csv, validate.txt/.json, logs/).
set -euo pipefail
cd "$(dirname "$0")/.."

BACKEND=auto
ARGS=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --cpu) BACKEND=cpu; shift ;;
    --cuda) BACKEND=cuda; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) ARGS+=("$1"); shift ;;
  esac
done
if [[ "$BACKEND" == auto ]]; then
  if [[ -e /proc/driver/nvidia/version ]]; then BACKEND=cuda; else BACKEND=cpu; fi
fi

echo "== 1. python environment (.venv) =="
make -s setup

echo "== 2. llama.cpp for $BACKEND (cached in ~/.cache/gpumix; first build ~10-15 min) =="
if [[ "$BACKEND" == cuda ]] && ! command -v nvcc >/dev/null; then
  echo "error: an NVIDIA driver is present but nvcc (the CUDA toolkit) is not on PATH" >&2
  echo "  hint: install the CUDA toolkit (e.g. apt-get install nvidia-cuda-toolkit) or pass --cpu" >&2
  exit 2
fi
if .venv/bin/python -c 'import sys; from gpumix.launch.llamacpp import BuildOptions, find_llama_cpp
found = find_llama_cpp(BuildOptions(backend=sys.argv[1])); print(f"llama.cpp already built: {found.bin_dir}" if found else "")
sys.exit(0 if found else 1)' "$BACKEND"; then
  :  # built before (or $GPUMIX_LLAMA_CPP_BIN): nothing to do
else
  .venv/bin/gpumix engines install llama.cpp --backend "$BACKEND"
fi

echo "== 3. synthesise, measure, validate =="
exec .venv/bin/python bench/gpu/gpu_check.py --backend "$BACKEND" ${ARGS[@]+"${ARGS[@]}"}
