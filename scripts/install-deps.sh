#!/usr/bin/env bash
# Install the system packages needed to build and test ddunet (Debian/Ubuntu).
# Idempotent: if every package is already installed, apt is not touched at all.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive

PACKAGES=(
  build-essential
  cmake
  libeigen3-dev
  doctest-dev
  libfmt-dev
  libbenchmark-dev
  libstb-dev
  zlib1g-dev
  libcli11-dev
  libopenmpi-dev
  openmpi-bin
)

missing=()
for pkg in "${PACKAGES[@]}"; do
  status="$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)"
  if [[ "$status" != "installed" ]]; then
    missing+=("$pkg")
  fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
  echo "install-deps: all packages already installed (${PACKAGES[*]})"
  exit 0
fi

SUDO=()
if [[ "$(id -u)" -ne 0 ]]; then
  if command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -E)
  else
    echo "install-deps: not root and sudo not available; cannot install: ${missing[*]}" >&2
    exit 1
  fi
fi

echo "install-deps: installing ${missing[*]}"
"${SUDO[@]}" apt-get update
"${SUDO[@]}" apt-get install -y --no-install-recommends "${missing[@]}"
