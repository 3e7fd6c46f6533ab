#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
#
# Per-kernel breakdown of CUDA benchmark cases with Nsight Compute (ncu), on the GPU machine:
# for each case, the kernels of one timed call (after the benchmark's warm-up call), each with
# its duration, registers per thread, achieved occupancy and DRAM throughput. What the
# benchmarks' medians cannot say: which launch of a primitive's chain costs what.
#
#   Usage: bench/kernel_times.sh BUILD_DIR OUT_DIR 'binary:filter:skip:count' ...
#     binary   a benchmark binary under BUILD_DIR/bench (e.g. gae_bench_cuda)
#     filter   its --benchmark_filter (one case, e.g. 'BM_Gae_cuda/1024/8192/1/')
#     skip     kernels to skip before recording (the warm-up call's and earlier cases')
#     count    kernels to record
#   Writes OUT_DIR/<binary>.<n>.csv (ncu's raw CSV) and prints a table per case.
# ncu serializes the kernels it profiles, so durations exclude the gaps between launches; the
# sum is a lower bound of the call's time. Clocks are left alone (--clock-control none).
set -euo pipefail
build=${1:?usage: bench/kernel_times.sh BUILD_DIR OUT_DIR binary:filter:skip:count ...}
out=${2:?OUT_DIR}
shift 2
mkdir -p "$out"
ncu=$(command -v ncu || echo /usr/local/cuda/bin/ncu)
metrics=gpu__time_duration.sum,launch__registers_per_thread,sm__warps_active.avg.pct_of_peak_sustained_active,dram__throughput.avg.pct_of_peak_sustained_elapsed,launch__grid_size,launch__block_size
n=0
for spec in "$@"; do
  IFS=: read -r bin filter skip count <<<"$spec"
  n=$((n + 1))
  csv="$out/$bin.$n.csv"
  "$ncu" --clock-control none --csv --page raw --metrics "$metrics" --launch-skip "$skip" --launch-count "$count" \
    "$build/bench/$bin" --benchmark_filter="$filter" --benchmark_min_time=0.000001 >"$csv" 2>"$out/$bin.$n.err" || {
    echo "ncu failed for $spec:"; tail -5 "$out/$bin.$n.err"; continue; }
  echo "== $bin $filter (kernels $skip..$((skip + count - 1)))"
  python3 - "$csv" <<'EOF'
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r]
hdr = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
h = rows[hdr]
col = {k: h.index(k) for k in h}
def get(r, k):
    return r[col[k]].replace(",", "") if k in col else ""  # ncu writes 1,024
total = 0.0
print(f"{'kernel':60s} {'us':>9s} {'regs':>5s} {'occ%':>6s} {'dram%':>6s} {'grid':>8s} {'block':>6s}")
for r in rows[hdr + 2:]:
    if len(r) != len(h):
        continue
    name = r[col["Kernel Name"]][:60]
    try:
        t = float(get(r, "gpu__time_duration.sum")) / 1000.0  # ns -> us
    except ValueError:
        continue
    total += t
    print(f"{name:60s} {t:9.2f} {get(r, 'launch__registers_per_thread'):>5s} "
          f"{get(r, 'sm__warps_active.avg.pct_of_peak_sustained_active'):>6.6s} "
          f"{get(r, 'dram__throughput.avg.pct_of_peak_sustained_elapsed'):>6.6s} "
          f"{get(r, 'launch__grid_size'):>8s} {get(r, 'launch__block_size'):>6s}")
print(f"{'sum':60s} {total:9.2f}")
EOF
done
