#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
#
# The README's main job: builds polo's examples and runs the main one. Any arguments are
# passed to it (try --help).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset cpu-release -DPOLO_BUILD_TESTS=OFF -DPOLO_BUILD_BENCH=OFF >/dev/null
cmake --build --preset cpu-release --target group_advantages_demo
exec build/cpu-release/examples/group_advantages_demo "$@"
