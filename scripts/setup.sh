#!/usr/bin/env bash
# Sets up a fresh Debian/Ubuntu machine for stisr-lightning: system packages, a venv, the suite (editable).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

# postgresql: server binaries for the shared-store test (tests/test_sweep_postgres.py); about 13 s to install.
APT_PACKAGES=(tesseract-ocr tesseract-ocr-eng fonts-dejavu-core fonts-liberation2 fonts-freefont-ttf fonts-urw-base35 wamerican
              postgresql)
missing=()
for package in "${APT_PACKAGES[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch and torchvision must be a matched pair: PyPI's newest torchvision does not import beside other torch builds.
.venv/bin/python -c "import torch, torchvision" 2>/dev/null || \
  .venv/bin/pip install -q torch==2.14.1 torchvision==0.29.1 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/pip install -q -e ".[dev]" 2>&1 | grep -v "^WARNING: Location" || true
.venv/bin/python -c "import torch, torchvision, lightning, rapidocr, onnx2torch; print('setup ok: torch', torch.__version__)"
