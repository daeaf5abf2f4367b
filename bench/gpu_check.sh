#!/usr/bin/env bash
# The upscaler's whole GPU measurement on one CUDA machine, in under 8 minutes on one H100:
#   bash bench/gpu_check.sh [extra bench/upscale.py arguments, e.g. --compile]
# Builds /tmp/v from this repository: with the machine's own CUDA torch when python3 has one (GPU images are
# often offline), else torch numpy pillow scikit-image from the index. Then prints one table (naive vs
# optimised MP/s, ratio, peak GPU memory, GPU utilisation from nvidia-smi samples) and RealESRGAN_x4plus
# frames/s at 1920x1080, then small images one by one vs sharing batches (bench/batching.py), and runs the CUDA-only tests when the project's dependencies are installable.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PIP_FAST=(--retries 0 --timeout 10 -q --disable-pip-version-check)

if [ ! -x /tmp/v/bin/python ]; then
  if python3 -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    python3 -m venv --system-site-packages /tmp/v
  else
    python3 -m venv /tmp/v
    /tmp/v/bin/pip install "${PIP_FAST[@]}" torch numpy pillow scikit-image
  fi
  # The full install (for the tests) needs an index; without one the benchmark runs from the source tree.
  /tmp/v/bin/pip install "${PIP_FAST[@]}" -e ".[test]" 2>/dev/null \
    || /tmp/v/bin/pip install "${PIP_FAST[@]}" --no-deps --no-build-isolation -e . 2>/dev/null \
    || echo "note: editable install skipped; running from the source tree"
fi

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
/tmp/v/bin/python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'
timeout 330 /tmp/v/bin/python bench/upscale.py --device cuda --x4plus-naive "$@"
timeout 90 /tmp/v/bin/python bench/batching.py --device cuda

if /tmp/v/bin/python -c 'import pydantic_settings, nats, pytest' 2>/dev/null; then
  timeout 120 /tmp/v/bin/python -m pytest tests/upscaler/test_gpu.py -q -p no:cacheprovider
else
  echo "note: tests/upscaler/test_gpu.py not run (the project's dependencies could not be installed here)"
fi
