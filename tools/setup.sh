#!/usr/bin/env bash
# One-time (and idempotent) set-up on a fresh Debian machine: system packages, the CPU torch
# wheel, then ijtorch with its test extras. Re-running with everything present takes ~1 s.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
APT_PACKAGES="default-jdk-headless libij-java libimglib2-java jython xvfb"
SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

missing=""
for p in $APT_PACKAGES; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
  echo "setup: installing Debian packages:$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing
fi

# torch first, and the CPU build: a bare 'torch' requirement would pull GBs of CUDA wheels.
if ! $PYTHON -c "import torch" 2>/dev/null; then
  echo "setup: installing the CPU torch wheel (torch==2.13.0)"
  $PYTHON -m pip install -q torch==2.13.0
fi

stamp=.ijtorch-setup-stamp
want=$(cat pyproject.toml setup.py | sha256sum | cut -c1-16)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! $PYTHON -c "import ijtorch" 2>/dev/null; then
  echo "setup: installing ijtorch (editable) with test extras"
  $PYTHON -m pip install -q --no-build-isolation -e ".[test]"
  echo "$want" > "$stamp"
fi
