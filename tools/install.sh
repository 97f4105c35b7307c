#!/usr/bin/env bash
# Installs everything fastroar needs into .venv at the repository root:
# the system libraries FFCV compiles and links against, torch + torchvision,
# the Python dependencies, and fastroar itself with its compiled extension.
# Idempotent: a second run reuses .venv and skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for pc in opencv4 libturbojpeg; do
  pkg-config --exists "$pc" 2>/dev/null || need_apt+=("$pc")
done
if ! command -v pkg-config >/dev/null || [ ${#need_apt[@]} -gt 0 ]; then
  echo "[install] system packages for FFCV (pkg-config, OpenCV, TurboJPEG)"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq pkg-config libopencv-dev libturbojpeg0-dev >/dev/null
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "[install] creating .venv"
  "$PY" -m venv .venv
fi
VPY=.venv/bin/python
$VPY -m pip install -q --upgrade pip setuptools wheel

# torch first: ffcv imports torch and Pillow at build time without declaring them.
if ! $VPY -c "import torch, torchvision" 2>/dev/null; then
  echo "[install] torch 2.14.1 + torchvision 0.29.1"
  $VPY -m pip install -q torch==2.14.1 torchvision==0.29.1
fi
echo "[install] python dependencies"
$VPY -m pip install -q -r requirements.txt
if ! $VPY -c "import ffcv" 2>/dev/null; then
  echo "[install] ffcv (compiles against OpenCV and TurboJPEG)"
  $VPY -m pip install -q --no-build-isolation ffcv==1.0.2
fi
echo "[install] fastroar (builds fastroar._C)"
$VPY -m pip install -q --no-build-isolation -e .
echo "[install] done: $($VPY -c 'import fastroar, fastroar.engine.kernels; print("fastroar", fastroar.__version__, "extension:", fastroar.engine.kernels.backend())')"
