#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
#
# Installs, from Debian's packages, whatever polo's build, tests and benchmarks need and this
# machine lacks. Nothing is downloaded from anywhere else. Safe to run repeatedly.
#   Usage: scripts/install-deps.sh [extra-debian-package ...]
set -euo pipefail

pkgs=(cmake ninja-build g++ make libeigen3-dev catch2 libbenchmark-dev "$@")
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "polo: installing ${missing[*]} from Debian's packages" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# nvcc is optional: CUDA code is compiled when it is found (CUDA >= 12.2; Debian 12's
# nvidia-cuda-toolkit is older, so polo looks for NVIDIA's toolkit in /usr/local/cuda).
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then
  echo "polo: nvcc found at /usr/local/cuda/bin (add it to PATH, or set CUDACXX)" >&2
fi
