#!/usr/bin/env bash
# Copies the header-only dependencies (and libz/libstb) into .deps/ so they can travel to a GPU
# machine that has no package manager (see scripts/gpu-check.sh). Run on a machine where
# scripts/install-deps.sh has run. .deps/ is git-ignored.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
rm -rf .deps && mkdir -p .deps/include .deps/lib .deps/cuda-include
cp -r /usr/include/eigen3 .deps/eigen3
rm -rf .deps/eigen3/unsupported
cp -r /usr/include/fmt /usr/include/doctest /usr/include/stb /usr/include/CLI .deps/include/
cp /usr/include/zlib.h /usr/include/zconf.h .deps/include/
cp -L /lib/x86_64-linux-gnu/libz.so.1 .deps/lib/libz.so.1
cp -L "$(find /usr/lib -name 'libstb.so' | head -1)" .deps/lib/libstb.so
cp .deps/lib/libstb.so .deps/lib/libstb.so.0  # its SONAME, which the loader looks for
# cuDNN and NCCL headers, in case the GPU machine's pip packages ship libraries only.
cp /usr/local/cuda/include/cudnn*.h /usr/local/cuda/include/nccl.h .deps/cuda-include/
du -sh .deps
