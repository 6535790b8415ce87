#!/usr/bin/env bash
# Set up a fresh Debian machine for this project: system packages, a virtual
# environment in .venv, and an editable install that compiles the C kernels.
#   bash scripts/setup.sh                      development install: runtime, tests, trainer, the
#                                              real-model corpus (tests/realmodels)
#   EDGE_EXTRAS=dev bash scripts/setup.sh      the same without torch, Lightning and the corpus
# (A device needs neither: `pip install .` is the device install.)
set -euo pipefail
cd "$(dirname "$0")/.."

# chromium: the console's browser tests (tests/console, playwright drives /usr/bin/chromium).
APT_PACKAGES=(build-essential cmake python3-venv python3-dev gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user mosquitto postgresql chromium iproute2 systemd)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "==> installing system packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "==> installing edge-runtime[${EDGE_EXTRAS:-dev,trainer,corpus}] (compiles the C kernels)"
.venv/bin/python -m pip install -q -e ".[${EDGE_EXTRAS:-dev,trainer,corpus}]"
.venv/bin/edge isa
