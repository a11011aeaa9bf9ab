#!/usr/bin/env bash
# Set up medpredict in ./.venv on a fresh machine.
#   ./scripts/setup.sh          the library, CLI and every optional feature
#   ./scripts/setup.sh dev      the same plus the test tools
# PyTorch: a machine with an NVIDIA GPU gets PyPI's default (CUDA) build; a CPU-only
# machine gets torch==2.13.0, installed first so that nothing pulls a multi-GB CUDA build.
# Set MEDPREDICT_TORCH to choose another requirement (e.g. "torch==2.5.1").
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-all}"
python="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    torch_spec="${MEDPREDICT_TORCH:-torch}"
  else
    torch_spec="${MEDPREDICT_TORCH:-torch==2.13.0}"
  fi
  echo "setup: installing $torch_spec"
  pip install -q "$torch_spec"
fi
echo "setup: installing medpredict[$extras]"
pip install -q -e ".[$extras]"
case "$extras" in
  all|dev|*robustness*)
    # MedMNIST-C corruptions: without its declared dependencies, which would replace torch
    # (and pull torchvision); the image libraries it needs come with the robustness extra.
    echo "setup: installing medmnistc (--no-deps)"
    pip install -q --no-deps "medmnistc==0.1.0" ;;
esac
.venv/bin/medpredict --version
