#!/usr/bin/env bash
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
#
# polo's whole benchmark suite in one command, from the repository root:
#
#   bench/run_all.sh
#
# 1. configures and builds every benchmark (Release; CUDA on when nvcc and a GPU are present),
# 2. runs every benchmark binary (bench/*_bench.cpp, bench/*_bench.cu) with --benchmark_out=JSON,
# 3. runs bench/torch_baseline.py (eager PyTorch and torch.compile on the same inputs and sizes)
#    when python3 has PyTorch with a CUDA device,
# 4. runs bench/plot.py: tokens.png, seqlen.png (time per token against tokens / sequence length,
#    polo and PyTorch, with the memory floor) and summary.md (polo vs PyTorch ratios; GRPO step vs
#    PPO step in time and memory), and prints the tables.
#
# Results go to bench/results/<device>/ (one folder per device: e.g. nvidia-h100-80gb-hbm3, or
# cpu-<model> without a GPU) with meta.json recording the device, the driver, the commit and the
# date. docs/benchmarks.md explains what is measured and how to read it.
#
# The stages can run in separate invocations over the same results folder (e.g. the polo stages
# on one machine session, the PyTorch stage and the report on the next, with the folder carried
# over): meta.json is merged, not overwritten, and records each invocation under "runs".
#
# Options:
#   --out DIR          results folder (default bench/results/<device>)
#   --build DIR        build folder (default build/bench)
#   --quick            a smoke test: short benchmark times, only the small sizes
#                      (512 x 4096 and 2^16..2^18 tokens), small PyTorch sizes
#   --min-time S       Google Benchmark's --benchmark_min_time per benchmark (default 0.2)
#   --filter REGEX     only benchmarks matching REGEX (--benchmark_filter)
#   --bin-timeout S    stop a benchmark binary after S seconds (default 300): its results
#                      are lost, the other binaries still run (a guard for a time-limited call)
#   --torch-timeout S  stop torch_baseline.py after S seconds (default 480; it rewrites its
#                      JSON after every size, so what it measured is kept)
#   --budget S         finish within S seconds (default: no limit): benchmark binaries and the
#                      PyTorch stage are stopped or skipped so that the report and --tar still
#                      happen in time (for a time-limited machine session); CUDA binaries run
#                      before the CPU ones, so a short budget drops CPU results first
#   --torch-args "..." extra arguments for torch_baseline.py (e.g. "--sweeps headline")
#   --no-build | --no-polo | --no-torch | --no-plot   skip a stage
#   --tar FILE         also pack the results folder into FILE (.tar.gz, paths from the
#                      repository root: unpack it there)
#
# Environment: CMAKE_PREFIX_PATH / benchmark_DIR to find Google Benchmark and Eigen; NVCC (default:
# nvcc on PATH, then /usr/local/cuda/bin/nvcc); CUDA_ARCH (default 90); PYTHON (default python3);
# JOBS (parallel build jobs, default nproc); POLO_COMMIT (the commit to record, when the tree
# being run is a copy whose git metadata is not the commit's).
set -uo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root" || exit 1

out="" build="build/bench" quick=0 min_time=0.2 filter="" torch_args="" tarfile="" bin_timeout=300 torch_timeout=480 budget=0
do_build=1 do_polo=1 do_torch=1 do_plot=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --quick) quick=1; min_time=0.02; shift ;;
    --min-time) min_time=$2; shift 2 ;;
    --filter) filter=$2; shift 2 ;;
    --bin-timeout) bin_timeout=$2; shift 2 ;;
    --torch-timeout) torch_timeout=$2; shift 2 ;;
    --budget) budget=$2; shift 2 ;;
    --torch-args) torch_args=$2; shift 2 ;;
    --tar) tarfile=$2; shift 2 ;;
    --no-build) do_build=0; shift ;;
    --no-polo) do_polo=0; shift ;;
    --no-torch) do_torch=0; shift ;;
    --no-plot) do_plot=0; shift ;;
    -h|--help) awk 'NR > 3 && !/^#/ {exit} NR > 3 {print}' "$0"; exit 0 ;;
    *) echo "run_all.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

python=${PYTHON:-python3}
nvcc=${NVCC:-$(command -v nvcc || true)}
[[ -z "$nvcc" && -x /usr/local/cuda/bin/nvcc ]] && nvcc=/usr/local/cuda/bin/nvcc
cuda=OFF
gpu_name="" driver=""
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu_name=$(nvidia-smi --query-gpu=name --format=csv,noheader | head -1)
  driver=$(nvidia-smi --query-gpu=driver_version --format=csv,noheader | head -1)
  [[ -n "$nvcc" ]] && cuda=ON
fi

slug() { tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+//; s/-+$//'; }
if [[ -n "$gpu_name" ]]; then
  device="$gpu_name"
else
  device="cpu $(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)"
fi
[[ -z "$out" ]] && out="bench/results/$(printf '%s' "$device" | slug)"
mkdir -p "$out"
log() { printf '[run_all] %s\n' "$*"; }

if [[ -n "${POLO_COMMIT:-}" ]]; then
  commit=$POLO_COMMIT
else
  commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
  if [[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]]; then commit="$commit-dirty"; fi
fi
date_utc=$(date -u +%Y-%m-%dT%H:%M:%SZ)
cuda_version=""
[[ -n "$nvcc" ]] && cuda_version=$("$nvcc" --version 2>/dev/null | sed -n 's/.*release \([0-9.]*\).*/\1/p' | head -1)
stages=()
[[ $do_build == 1 ]] && stages+=(build)
[[ $do_polo == 1 ]] && stages+=(polo)
[[ $do_torch == 1 ]] && stages+=(torch)
[[ $do_plot == 1 ]] && stages+=(plot)
t_start=$SECONDS

# meta.json: device, driver, commit, date, compiler, CPU, options at the top (from the invocation
# that ran polo's benchmarks: a new polo run starts a new meta.json); every invocation over the
# folder appended to "runs" (date, commit, stages, wall seconds), so a PyTorch stage run later
# is recorded beside the polo stage it joins, and a commit that differs is flagged.
write_meta() {  # $1: wall seconds so far, or "" at the start
  META_PATH="$out/meta.json" META_FRESH=$do_polo META_WALL="$1" META_DEVICE="$device" META_DRIVER="$driver" \
  META_COMMIT="$commit" META_DATE="$date_utc" META_CUDA_VERSION="$cuda_version" META_CUDA="$cuda" \
  META_CPU="$cpu_model" META_MIN_TIME="$min_time" META_QUICK="$quick" META_STAGES="${stages[*]}" \
  "$python" - <<'PY' || log "could not write $out/meta.json"
import json, os
e = os.environ
path = e["META_PATH"]
meta = {}
if e["META_FRESH"] != "1" and os.path.exists(path):
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        meta = {}
top = dict(device=e["META_DEVICE"], driver=e["META_DRIVER"], commit=e["META_COMMIT"], date=e["META_DATE"],
           cuda_compiler=e["META_CUDA_VERSION"], cuda_benchmarks=e["META_CUDA"], cpu=e["META_CPU"],
           benchmark_min_time=e["META_MIN_TIME"], quick=e["META_QUICK"] == "1")
for k, v in top.items():
    meta.setdefault(k, v)
run = dict(date=e["META_DATE"], commit=e["META_COMMIT"], device=e["META_DEVICE"], driver=e["META_DRIVER"],
           stages=e["META_STAGES"].split(), wall_s=float(e["META_WALL"]) if e["META_WALL"] else None)
if meta.get("commit") != run["commit"]:
    run["commit_differs_from_top"] = True
if meta.get("device") != run["device"]:
    run["device_differs_from_top"] = True
runs = meta.setdefault("runs", [])
if runs and runs[-1].get("date") == run["date"] and runs[-1].get("stages") == run["stages"]:
    runs[-1] = run  # the same invocation, finishing
else:
    runs.append(run)
with open(path + ".tmp", "w") as f:
    json.dump(meta, f, indent=2)
    f.write("\n")
os.replace(path + ".tmp", path)
for k in ("commit", "device"):
    if run.get(k + "_differs_from_top"):
        print(f"[run_all] WARNING: this run's {k} ({run[k]}) differs from the results folder's ({meta.get(k)})")
PY
}
# Seconds left of --budget (a large number without one), and min(a, b).
left() { if [[ $budget -gt 0 ]]; then echo $((budget - (SECONDS - t_start))); else echo 1000000; fi; }
min() { if [[ $1 -lt $2 ]]; then echo "$1"; else echo "$2"; fi; }
cpu_model=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
if [[ $do_polo == 0 ]]; then
  shopt -s nullglob
  polo_json=("$out"/*_bench.json "$out"/*_bench_cuda.json)
  shopt -u nullglob
  [[ ${#polo_json[@]} -eq 0 ]] && log "WARNING: --no-polo and no polo results in $out (a different device or folder?)"
fi
write_meta ""
log "device: $device${driver:+, driver $driver}; commit $commit; results in $out"

# ---- 1. build ---------------------------------------------------------------------------------
if [[ $do_build == 1 ]]; then
  cfg=(-S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DPOLO_BUILD_TESTS=OFF -DPOLO_BUILD_EXAMPLES=OFF
       -DPOLO_BUILD_BENCH=ON "-DPOLO_ENABLE_CUDA=$cuda")
  if [[ $cuda == ON ]]; then cfg+=(-DCMAKE_CUDA_COMPILER="$nvcc" -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}"); fi
  log "configure (CUDA $cuda)"
  cmake "${cfg[@]}" >"$out/configure.log" 2>&1 || { tail -30 "$out/configure.log"; exit 1; }
  jobs=${JOBS:-$(nproc)}
  log "build ($jobs jobs; log in $out/build.log)"
  # Keep going past a benchmark that does not compile: the others still run.
  start=$SECONDS
  # Keep going past a benchmark that does not compile: the others still run. With --budget the
  # build may take 70% of it.
  bt=$(left); [[ $budget -gt 0 ]] && bt=$((budget * 7 / 10))
  timeout "$bt" cmake --build "$build" -j"$jobs" -- -k 0 >"$out/build.log" 2>&1 ||
    { log "some benchmarks failed to build (or the build ran out of --budget):"
      grep -E "error|FAILED" "$out/build.log" | head -20; }
  log "  build: $((SECONDS - start)) s"
fi

# ---- 2. polo's benchmarks ---------------------------------------------------------------------
if [[ $do_polo == 1 ]]; then
  shopt -s nullglob
  bins=()
  # CUDA first (the sweep and the steps first of all), then the CPU binaries.
  for b in "$build"/bench/{step,sweep}_bench_cuda "$build"/bench/*_bench_cuda "$build"/bench/{step,sweep}_bench \
           "$build"/bench/*_bench; do
    [[ -x "$b" ]] || continue
    for x in "${bins[@]}"; do [[ "$x" == "$b" ]] && continue 2; done
    bins+=("$b")
  done
  [[ ${#bins[@]} -eq 0 ]] && log "no benchmark binaries in $build/bench"
  for b in "${bins[@]}"; do
    name=$(basename "$b")
    args=(--benchmark_out="$out/$name.json" --benchmark_out_format=json --benchmark_counters_tabular=true
          --benchmark_min_time="$min_time")
    if [[ -n "$filter" ]]; then
      args+=(--benchmark_filter="$filter")
    elif [[ $quick == 1 ]]; then
      args+=(--benchmark_filter='(/512/4096|/tokens/(16|32|64)/)')  # the small sizes only
    fi
    # Leave 30 s of --budget for the report and the archive.
    t=$(min "$bin_timeout" $(($(left) - 30)))
    if [[ $t -lt 10 ]]; then
      log "skip $name: --budget $budget s is spent"
      continue
    fi
    log "run $name"
    start=$SECONDS
    timeout --signal=KILL "$t" "$b" "${args[@]}" >"$out/$name.txt" 2>&1
    rc=$?
    log "  $name: rc=$rc, $((SECONDS - start)) s"
    if [[ $rc == 137 ]]; then
      log "  $name stopped after $t s (--bin-timeout / --budget); its results are lost"
      rm -f "$out/$name.json"
    fi
    [[ $rc != 0 ]] && tail -5 "$out/$name.txt"
  done
fi

# ---- 3. PyTorch baselines ---------------------------------------------------------------------
if [[ $do_torch == 1 ]]; then
  if "$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
    targs=(--out "$out/torch_baseline.json")
    [[ $quick == 1 ]] && targs+=(--quick)
    # shellcheck disable=SC2206
    [[ -n "$torch_args" ]] && targs+=($torch_args)
    t=$(min "$torch_timeout" $(($(left) - 45)))
    if [[ $t -lt 30 ]]; then
      log "PyTorch baselines skipped: --budget $budget s is spent"
    else
      log "run torch_baseline.py ${targs[*]} (stopped after $t s)"
      start=$SECONDS
      POLO_COMMIT=$commit PYTHONUNBUFFERED=1 timeout "$t" "$python" bench/torch_baseline.py "${targs[@]}" 2>&1 |
        tee "$out/torch_baseline.txt"
      rc=${PIPESTATUS[0]}
      log "  torch_baseline.py: rc=$rc, $((SECONDS - start)) s"
      [[ $rc == 124 ]] && log "  stopped after $t s: torch_baseline.json holds the sizes it finished"
    fi
  else
    log "python3 has no PyTorch with a CUDA device: PyTorch baselines skipped"
  fi
fi

# ---- 4. charts and tables ---------------------------------------------------------------------
if [[ $do_plot == 1 ]]; then
  "$python" bench/plot.py "$out"
fi

write_meta "$((SECONDS - t_start))"
log "done in $((SECONDS - t_start)) s"
if [[ -n "$tarfile" ]]; then
  tar czf "$tarfile" --exclude='*.log' "$out" && log "packed $out into $tarfile"
fi
