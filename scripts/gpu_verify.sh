#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
#
# The whole test suite on a GPU machine, in one go (about 8 minutes on an H100 with 16 cores):
#   1. configures and builds every test and example with CUDA (Release, sm_90 unless CUDA_ARCH),
#   2. runs ctest (every CPU and CUDA test; the CUDA ones run instead of skipping),
#   3. meanwhile runs each CUDA test binary under compute-sanitizer memcheck and racecheck, all
#      in parallel, each bounded by SAN_TIMEOUT seconds (default 300; a run cut short is
#      reported as such, with the assertions it had passed),
#   4. meanwhile runs the example GRPO trainer with its RL math on the GPU
#      (r1zero_cuda grpo --backend cuda, default flags; R1ZERO=0 skips it).
#   Usage: scripts/gpu_verify.sh OUT_DIR        (from anywhere; logs and a summary go to OUT_DIR)
# Knobs (environment):
#   BUILD_DIR=dir    build there (default build/gpu-verify); with PREBUILT=1 use the tests already
#                    built there (e.g. compiled on a machine without a GPU and copied over; ctest
#                    then needs CTEST=0, its files name the build machine's paths)
#   SAN_TESTS="a b"  only these CUDA test binaries under the sanitizers (default: every *_test_cuda)
#   SAN_TOOLS="..."  sanitizer tools (default "memcheck racecheck"); SAN_TIMEOUT seconds per run
#   CTEST=0          skip ctest;  R1ZERO=0  skip the example trainer
#   SAN_ENV="K=V .." environment of the sanitizer runs only (not ctest's), e.g.
#                    "POLO_TEST_CONFIG_STRIDE=8" to sample advantages' every-option loop
#                    (tests/support/polo_test.hpp, config_selected)
#   SAN_SPLIT=1      one sanitizer run per test case instead of per binary, at most nproc at a
#                    time, each bounded by SAN_TIMEOUT (for binaries whose whole run under
#                    racecheck takes longer than a time-limited session allows); the summary
#                    then has one line per test case
# Needs what scripts/test.sh needs (CMake, Ninja, Eigen, Catch2; found through CMAKE_PREFIX_PATH
# when not installed system-wide), nvcc (PATH or /usr/local/cuda) and compute-sanitizer.
set -uo pipefail
out=${1:?usage: scripts/gpu_verify.sh OUT_DIR}
mkdir -p "$out" && out=$(cd "$out" && pwd)
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build/gpu-verify}
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
san=$(command -v compute-sanitizer || echo "$(dirname "$nvcc")/compute-sanitizer")
if [ "${PREBUILT:-0}" != 1 ]; then
cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOLO_ENABLE_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
  -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DPOLO_BUILD_BENCH=OFF >"$out/configure.log" 2>&1 ||
  { tail -30 "$out/configure.log"; exit 1; }
cmake --build $build -j "$(nproc)" >"$out/build.log" 2>&1 || { grep -E "error" "$out/build.log" | head -30; exit 1; }
fi

nvidia-smi --query-gpu=name,driver_version --format=csv,noheader >"$out/gpu.txt" 2>&1
cuda_tests=${SAN_TESTS:-$(cd $build/tests && ls ./*_test_cuda | sed 's|^\./||')}
tools=${SAN_TOOLS:-memcheck racecheck}
pids=()
# (log name, binary, tool, test spec) of every sanitizer run
runs=()
for t in $cuda_tests; do
  if [ "${SAN_SPLIT:-0}" = 1 ]; then
    k=0
    while IFS= read -r name; do
      [ -z "$name" ] && continue
      k=$((k + 1))
      for tool in $tools; do runs+=("$t.case$k.$tool" "$t" "$tool" "\"$name\""); done
    done < <($build/tests/$t --list-test-names-only 2>/dev/null | grep -v '^CUDA device ')  # the main's banner
  else
    for tool in $tools; do runs+=("$t.$tool" "$t" "$tool" ""); done
  fi
done
san_run() {  # log binary tool spec
  env ${SAN_ENV:-} timeout "${SAN_TIMEOUT:-300}" "$san" --tool "$3" --error-exitcode 3 $build/tests/$2 ${4:+"$4"} -d yes \
    >"$out/$1.log" 2>&1
}
if [ "${SAN_SPLIT:-0}" = 1 ]; then
  (
    jobs=$(nproc)
    for ((r = 0; r < ${#runs[@]}; r += 4)); do
      while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
      san_run "${runs[r]}" "${runs[r + 1]}" "${runs[r + 2]}" "${runs[r + 3]}" &
    done
    wait
  ) &
  pids+=($!)
else
  for ((r = 0; r < ${#runs[@]}; r += 4)); do
    san_run "${runs[r]}" "${runs[r + 1]}" "${runs[r + 2]}" "${runs[r + 3]}" &
    pids+=($!)
  done
fi
if [ "${R1ZERO:-1}" != 0 ] && [ -x $build/examples/r1zero_cuda ]; then
  $build/examples/r1zero_cuda grpo --backend cuda --quiet 1 --out "$out/r1zero_cuda" >"$out/r1zero_cuda.log" 2>&1 &
  pids+=($!)
fi
[ "${CTEST:-1}" != 0 ] && (cd $build && ctest -j 4 --output-on-failure >"$out/ctest.log" 2>&1)
wait "${pids[@]}"

{
  echo "device: $(cat "$out/gpu.txt")"
  if [ -f "$out/ctest.log" ]; then
    echo "ctest: $(grep -E 'tests passed|tests failed' "$out/ctest.log")"
    grep -E '\(Failed\)|\*\*\*Failed|Not Run' "$out/ctest.log"
  fi
  for ((r = 0; r < ${#runs[@]}; r += 4)); do
    log="$out/${runs[r]}.log"
    verdict=$(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$log" | tail -1)
    catch=$(grep -E '^(All tests passed|test cases:)' "$log" | tail -1)
    timed=$(grep -cE '^[0-9.]+ s: ' "$log")  # test cases and sections finished (-d yes)
    if grep -q 'SIGTERM' "$log"; then
      # timeout's SIGTERM reached the test: Catch2 reports the interrupted case as failed
      catch="cut short at SAN_TIMEOUT ($timed test cases and sections had finished; Catch2 counts the interrupted one as failed)"
    elif [ -z "$catch" ]; then
      catch="cut short at SAN_TIMEOUT ($timed test cases and sections had finished)"
    fi
    echo "${runs[r + 1]} ${runs[r + 2]}${runs[r + 3]:+ ${runs[r + 3]}}: ${verdict:-no summary} | $catch"
  done
  if [ -f "$out/r1zero_cuda.log" ]; then grep -E '^GRPO:|^base|total wall|error' "$out/r1zero_cuda.log"; fi
  true  # the status is the summary's, not the last grep's (R1ZERO=0 has no trainer log)
} | tee "$out/summary.txt"
