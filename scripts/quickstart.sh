#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
#
# The README's main job: installs the build dependencies, builds polo's examples (CPU only,
# Release) and runs the GRPO trainer of examples/r1zero with its default flags: a short
# supervised warm-up gives a base policy, then GRPO trains it on 3-digit addition with
# rule-based rewards and reports held-out pass@1 and cons@k (docs/trainers.md).
#   Usage: scripts/quickstart.sh [grpo|ppo|compare] [--flag value ...]   (see: --help)
# The CSV and PNG files go to $POLO_OUT (default: build/r1zero in the repository root).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
cmake --preset cpu-release -DPOLO_BUILD_TESTS=OFF -DPOLO_BUILD_BENCH=OFF >/dev/null
cmake --build --preset cpu-release --target r1zero
cmd=grpo
case "${1:-}" in grpo | ppo | compare) cmd=$1; shift ;; esac
out=${POLO_OUT:-build/r1zero}
build/cpu-release/examples/r1zero "$cmd" --out "$out" "$@"
case " $* " in *" --help "* | *" -h "*) exit 0 ;; esac
echo "polo quickstart: metrics and plots are in $(cd "$out" && pwd)/"
ls -1 "$out"
