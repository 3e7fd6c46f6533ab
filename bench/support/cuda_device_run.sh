#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
# Builds and runs polo's CUDA tests (plain, then under compute-sanitizer memcheck and
# racecheck) and CUDA benchmarks on a GPU machine, from the repository root:
#   bench/support/cuda_device_run.sh OUT_DIR "test_targets" "bench_targets"
# e.g. bench/support/cuda_device_run.sh out "advantages_test_cuda" "advantages_bench_cuda"
# Logs and benchmark JSON go to OUT_DIR; a summary is printed last. Expects Catch2, Eigen and
# Google Benchmark findable by CMake (CMAKE_PREFIX_PATH) and nvcc on PATH or at /usr/local/cuda.
set -uo pipefail
set -f  # Catch2 test specs such as ~*every* must reach the binaries unexpanded
out=${1:?out dir}; tests=${2:-}; benches=${3:-}
mkdir -p "$out" && out=$(cd "$out" && pwd)
build=build/device
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOLO_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
  -DCMAKE_CUDA_ARCHITECTURES=90 -DPOLO_BUILD_EXAMPLES=OFF >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
# shellcheck disable=SC2086
cmake --build $build --target $tests $benches -j16 >"$out/build.log" 2>&1 || { grep -E "error" "$out/build.log" | head -30; exit 1; }
summary=()
for t in $tests; do
  $build/tests/$t >"$out/$t.log" 2>&1; rc=$?
  summary+=("$t: rc=$rc $(grep -E '^(All tests passed|test cases:)' "$out/$t.log" | tail -1)")
done
(cd $build && ctest -L cuda --output-on-failure >"$out/ctest.log" 2>&1)
summary+=("ctest -L cuda: $(grep -E 'tests passed|tests failed' "$out/ctest.log")")
for b in $benches; do
  $build/bench/$b --benchmark_counters_tabular=true --benchmark_min_time=0.2 --benchmark_out="$out/$b.json" \
    --benchmark_out_format=json >"$out/$b.txt" 2>&1
  summary+=("$b: rc=$?")
done
# Sanitizers. SAN_TOOLS (default "memcheck racecheck"); SAN_FILTER_<tool>: a Catch2 test spec
# for that tool's runs (default: every case); SAN_TIMEOUT bounds each run (racecheck is slow).
for t in $tests; do
  for tool in ${SAN_TOOLS-memcheck racecheck}; do
    filter_var=SAN_FILTER_$tool
    # shellcheck disable=SC2086
    timeout "${SAN_TIMEOUT:-300}" compute-sanitizer --tool $tool --error-exitcode 3 $build/tests/$t ${!filter_var:-} \
      >"$out/$t.$tool.log" 2>&1; rc=$?
    summary+=("$t under $tool ${!filter_var:-}: rc=$rc $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$out/$t.$tool.log" | tail -1) $(grep -E '^(All tests passed|test cases:)' "$out/$t.$tool.log" | tail -1)")
  done
done
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem --format=csv >"$out/gpu.txt" 2>&1
echo "==== summary"; cat "$out/gpu.txt"; printf '%s\n' "${summary[@]}"
for b in $benches; do echo "==== $b"; grep -E "^BM_|^Benchmark|^-" "$out/$b.txt" | grep -v "^-"; done
