#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
#
# Builds and runs every test (the README's test command; .ci/run calls it). CUDA code is
# compiled too when nvcc is found; CUDA test cases skip themselves on a machine without a GPU.
#   Usage: scripts/test.sh [preset]      (default preset: dev; see CMakePresets.json)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export CUDACXX=/usr/local/cuda/bin/nvcc; fi
preset="${1:-dev}"
cmake --preset "$preset" >/dev/null
cmake --build --preset "$preset"
ctest --preset "$preset"
