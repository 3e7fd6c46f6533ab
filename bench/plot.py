#!/usr/bin/env python3
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
"""Reads one results folder written by bench/run_all.sh and writes, into the same folder:

  tokens.png   time per token against token count (T = 4096, 2^16 .. 2^24 tokens), one panel per
               primitive and per step: polo CUDA, polo CPU, PyTorch eager, torch.compile, the
               Python loops, and the memory floors (the primitive's bytes over the copy bandwidth
               measured on the GPU, dashed, and on the CPU, dotted)
  seqlen.png   the same against the sequence length T at 2^22 tokens
  summary.md   the tables printed here: a compact table for the README (the largest headline
               size), the primitives' own benchmarks (asynchronous, each beside the copy floor
               its binary measured), polo against PyTorch at the headline sizes (512 x 4096,
               1024 x 8192), and one GRPO step against one PPO step in time and memory

Inputs in the folder: torch_baseline.json (bench/torch_baseline.py), the Google Benchmark JSON
files of polo's benchmarks (any *.json with a "benchmarks" list; the records of
bench/sweep_bench.cu and bench/step_bench.{cu,cpp} are named
`polo_<backend>/<primitive>/<sweep>/<B>/<T>`), and meta.json (device, driver, commit, date).

A ratio "torch/polo" is PyTorch's median time over polo's median time for the same primitive,
the same B x T, on the same device in the same run: above 1 polo is faster. "x floor" is a
time over the memory floor (1.0 = the copy bandwidth).

Without matplotlib the tables are still printed and written; the charts are skipped. Without
torch_baseline.json (no PyTorch, or a CPU-only machine) the tables hold polo's columns only.

Run: python3 bench/plot.py bench/results/<device>
"""

from __future__ import annotations

import glob
import json
import math
import os
import sys

PRIMITIVES = ["group_advantages", "policy_loss", "gae", "whiten", "value_loss", "kl_rewards",
              "grpo_step", "ppo_step"]
TITLES = {
    "group_advantages": "GRPO group advantages + broadcast",
    "policy_loss": "clipped objective + k3 KL, fwd+grad",
    "gae": "GAE",
    "whiten": "masked whitening",
    "value_loss": "value loss, fwd+grad",
    "kl_rewards": "KL reward shaping",
    "grpo_step": "GRPO step (RL math)",
    "ppo_step": "PPO step (RL math + critic tensors)",
}
# Bytes per token and per sequence of each primitive's floor, as bench/torch_baseline.py and
# bench/support/rl_batch.cuh count them (used when torch_baseline.json is absent).
DEFAULT_BYTES_PER_TOKEN = {"group_advantages": 5, "policy_loss": 21, "gae": 17, "whiten": 9, "value_loss": 17,
                           "kl_rewards": 17, "grpo_step": 26, "ppo_step": 94}
DEFAULT_BYTES_PER_SEQ = {"group_advantages": 8, "grpo_step": 8}
TORCH_IMPLS = ["torch_eager", "torch_compile", "torch_loop", "torch_dictloop"]
STYLE = {
    "polo_cuda": dict(color="tab:red", marker="o", lw=2.2, label="polo CUDA"),
    "polo_cpu": dict(color="tab:purple", marker="s", lw=1.2, label="polo CPU"),
    "torch_eager": dict(color="tab:blue", marker="^", lw=1.4, label="PyTorch eager"),
    "torch_compile": dict(color="tab:green", marker="v", lw=1.4, label="torch.compile"),
    "torch_loop": dict(color="tab:gray", marker="x", lw=1.2, label="PyTorch Python loop"),
    "torch_dictloop": dict(color="tab:brown", marker="x", lw=1.2, label="PyTorch dict loop"),
}


def load_json(path):
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        print(f"plot.py: skipping {path}: {e}", file=sys.stderr)
        return None


def time_unit_seconds(unit):
    return {"ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0}.get(unit, 1e-9)


def polo_records(folder):
    """Records of polo's Google Benchmark files: impl, primitive, sweep, B, T, median_s and the
    counters (x_copy, copy_GBps, peak_bytes, ...)."""
    out = []
    for path in sorted(glob.glob(os.path.join(folder, "*.json"))):
        doc = load_json(path)
        if not isinstance(doc, dict) or not isinstance(doc.get("benchmarks"), list):
            continue
        for b in doc["benchmarks"]:
            if b.get("run_type") == "aggregate" or "error_occurred" in b and b["error_occurred"]:
                continue
            parts = b.get("run_name", b.get("name", "")).split("/")
            if len(parts) < 3 or not parts[0].startswith("polo_"):
                continue
            impl, prim, sweep = parts[0], parts[1], parts[2]
            B = int(b.get("B", parts[3] if len(parts) > 3 and parts[3].isdigit() else 0))
            T = int(b.get("T", parts[4] if len(parts) > 4 and parts[4].isdigit() else 0))
            if "median_us" in b:
                med = float(b["median_us"]) * 1e-6
            else:
                med = float(b["real_time"]) * time_unit_seconds(b.get("time_unit", "ns"))
            rec = dict(impl=impl, primitive=prim, sweep=sweep, B=B, T=T, tokens=B * T, median_s=med,
                       source=os.path.basename(path))
            for k in ("x_copy", "copy_GBps", "peak_bytes", "bytes_per_token", "floor_bytes", "workspace_bytes",
                      "tensor_bytes", "scratch_peak_bytes"):
                if k in b:
                    rec[k] = float(b[k])
            out.append(rec)
    return out


def index(records):
    table = {}
    for r in records:
        if "median_s" not in r:
            continue
        table[(r["primitive"], r["impl"], r["sweep"], int(r["B"]), int(r["T"]))] = r
    return table


def fmt_time(s):
    if s is None:
        return "-"
    if s >= 1.0:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.2f} ms"
    return f"{s * 1e6:.1f} us"


def fmt_ratio(x):
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}x"
    return f"{x:.1f}x" if x >= 10 else f"{x:.2f}x"


def fmt_bytes(n):
    if n is None:
        return "-"
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n:.0f} B"


def polo_x_floor(rec, prim, B, T, copy_bps, bytes_per_token, bytes_per_seq):
    """polo's time over its floor: the x_copy its binary measured, else bytes / copy_bps."""
    if not rec:
        return None
    if "x_copy" in rec:
        return rec["x_copy"]
    if copy_bps and prim in bytes_per_token:
        return rec["median_s"] / ((bytes_per_token[prim] * B * T + bytes_per_seq.get(prim, 0) * B) / copy_bps)
    return None


def headline_table(tab, sizes, copy_bps, bytes_per_token, bytes_per_seq):
    rows = []
    header = ["primitive", "B x T", "polo CUDA", "x floor", "PyTorch eager", "torch.compile", "Python loop",
              "eager/polo", "compile/polo", "loop/polo", "polo CPU", "CPU x copy"]
    for prim in PRIMITIVES:
        for B, T in sizes:
            polo = tab.get((prim, "polo_cuda", "headline", B, T))
            cpu = tab.get((prim, "polo_cpu", "headline", B, T))
            eager = tab.get((prim, "torch_eager", "headline", B, T))
            comp = tab.get((prim, "torch_compile", "headline", B, T))
            loop = tab.get((prim, "torch_loop", "headline", B, T)) or tab.get((prim, "torch_dictloop", "headline", B, T))
            if not (polo or cpu or eager or comp or loop):
                continue
            p = polo["median_s"] if polo else None
            xf = polo_x_floor(polo, prim, B, T, copy_bps, bytes_per_token, bytes_per_seq)

            def ratio(r):
                return r["median_s"] / p if (r and p) else None

            rows.append([prim, f"{B} x {T}", fmt_time(p), fmt_ratio(xf) if xf else "-",
                         fmt_time(eager["median_s"] if eager else None), fmt_time(comp["median_s"] if comp else None),
                         fmt_time(loop["median_s"] if loop else None), fmt_ratio(ratio(eager)),
                         fmt_ratio(ratio(comp)), fmt_ratio(ratio(loop)),
                         fmt_time(cpu["median_s"] if cpu else None),
                         fmt_ratio(cpu["x_copy"]) if cpu and cpu.get("x_copy") else "-"])
    return header, rows


def readme_table(tab, sizes, copy_bps, bytes_per_token, bytes_per_seq):
    """One row per primitive and per step at the largest headline size: polo CUDA (x floor), then
    each PyTorch implementation as `time (ratio)` with ratio = its time / polo's, and polo CPU."""
    if not sizes:
        return None, None, [], []
    B, T = max(sizes, key=lambda s: s[0] * s[1])
    header = ["", "polo CUDA (x floor)", "PyTorch eager", "torch.compile", "PyTorch loop", "polo CPU"]
    rows = []
    for prim in PRIMITIVES:
        polo = tab.get((prim, "polo_cuda", "headline", B, T))
        cpu = tab.get((prim, "polo_cpu", "headline", B, T))
        others = [tab.get((prim, impl, "headline", B, T)) for impl in ("torch_eager", "torch_compile")]
        others.append(tab.get((prim, "torch_loop", "headline", B, T)) or tab.get((prim, "torch_dictloop", "headline", B, T)))
        if not (polo or cpu or any(others)):
            continue
        p = polo["median_s"] if polo else None
        xf = polo_x_floor(polo, prim, B, T, copy_bps, bytes_per_token, bytes_per_seq)
        cells = [TITLES.get(prim, prim) if prim.endswith("_step") else f"`{prim}`",
                 (fmt_time(p) + (f" ({fmt_ratio(xf)})" if xf else "")) if p else "-"]
        for r in others:
            if not r:
                cells.append("-")
            elif p:
                cells.append(f"{fmt_time(r['median_s'])} ({fmt_ratio(r['median_s'] / p)})")
            else:
                cells.append(fmt_time(r["median_s"]))
        cells.append(fmt_time(cpu["median_s"]) if cpu else "-")
        rows.append(cells)
    # GRPO vs PPO in one sentence per implementation
    notes = []
    for impl, label in (("polo_cuda", "polo CUDA"), ("torch_eager", "PyTorch eager"), ("torch_compile", "torch.compile"),
                        ("polo_cpu", "polo CPU")):
        g = tab.get(("grpo_step", impl, "headline", B, T))
        q = tab.get(("ppo_step", impl, "headline", B, T))
        if not (g and q):
            continue
        txt = f"{label}: a PPO step's RL math takes {fmt_ratio(q['median_s'] / g['median_s'])} the time of a GRPO step's"
        if g.get("peak_bytes") and q.get("peak_bytes"):
            txt += f" and {fmt_ratio(q['peak_bytes'] / g['peak_bytes'])} its memory"
        notes.append(txt + ".")
    return (B, T), header, rows, notes

# The primitives' own benchmarks (bench/<primitive>_bench.cu): the asynchronous call (no host
# synchronization, warm L2) of each at B x T, and the copy floor of its bytes measured by the same
# binary (BM_CopyFloor_<bytes>). Names: (JSON file, benchmark, floor benchmark, what it runs).
OWN_BENCHES = [
    ("group_advantages", "advantages_bench_cuda.json", "BM_GroupAdvantagesTokens_cuda/{B}/{T}/1",
     "BM_CopyFloor_advantage_bytes/{B}/{T}", "G = 16, token broadcast"),
    ("policy_loss", "policy_loss_bench_cuda.json", "BM_PolicyLossKl_cuda/{B}/{T}/1",
     "BM_CopyFloor_policy_loss_bytes/{B}/{T}", "dual clip + k3 KL, nonfinite = error"),
    ("policy_loss", "policy_loss_bench_cuda.json", "BM_PolicyLossKlSkip_cuda/{B}/{T}/1",
     "BM_CopyFloor_policy_loss_bytes/{B}/{T}", "the same, nonfinite = skip"),
    ("gae", "gae_bench_cuda.json", "BM_Gae_cuda/{B}/{T}/1", "BM_CopyFloor_gae_bytes/{B}/{T}", "defaults"),
    ("whiten", "whiten_bench_cuda.json", "BM_Whiten_cuda/{B}/{T}/1", "BM_CopyFloor_whiten_bytes/{B}/{T}",
     "moments + write"),
    ("masked_moments", "whiten_bench_cuda.json", "BM_MaskedMoments_cuda/{B}/{T}/1",
     "BM_CopyFloor_moments_bytes/{B}/{T}", "moments only"),
    ("value_loss", "value_loss_bench_cuda.json", "BM_ValueLoss_cuda/{B}/{T}/1/1",
     "BM_CopyFloor_value_loss_bytes/{B}/{T}", "clipped, loss + gradient"),
]


def own_table(folder, sizes):
    """Rows of the primitives' own asynchronous benchmarks at each headline size: time, the copy
    floor its binary measured, and the ratio."""
    docs, rows = {}, []
    for prim, fname, name, floor, what in OWN_BENCHES:
        if fname not in docs:
            doc = load_json(os.path.join(folder, fname))
            docs[fname] = {}
            if isinstance(doc, dict):
                for b in doc.get("benchmarks", []):
                    if b.get("run_type") == "aggregate" or b.get("error_occurred"):
                        continue
                    key = b.get("run_name", b.get("name", "")).replace("/manual_time", "")
                    docs[fname][key] = float(b["real_time"]) * time_unit_seconds(b.get("time_unit", "ns"))
        got = docs[fname]
        cells = [f"`{prim}`", what]
        found = False
        for B, T in sizes:
            t, f = got.get(name.format(B=B, T=T)), got.get(floor.format(B=B, T=T))
            found = found or t is not None
            cells.append(f"{fmt_time(t)} ({fmt_ratio(t / f)})" if t and f else fmt_time(t))
        if found:
            rows.append(cells)
    header = ["primitive", "what"] + [f"{B} x {T} (x floor)" for B, T in sizes]
    return header, rows


def step_table(tab, sizes):
    header = ["B x T", "implementation", "GRPO step", "PPO step", "PPO/GRPO time", "GRPO memory", "PPO memory",
              "PPO/GRPO memory"]
    rows = []
    for B, T in sizes:
        for impl in ("polo_cuda", "polo_cpu", "torch_eager", "torch_compile"):
            g = tab.get(("grpo_step", impl, "headline", B, T))
            p = tab.get(("ppo_step", impl, "headline", B, T))
            if not (g or p):
                continue
            gt = g["median_s"] if g else None
            pt = p["median_s"] if p else None
            gm = g.get("peak_bytes") if g else None
            pm = p.get("peak_bytes") if p else None
            rows.append([f"{B} x {T}", impl, fmt_time(gt), fmt_time(pt), fmt_ratio(pt / gt) if gt and pt else "-",
                         fmt_bytes(gm), fmt_bytes(pm), fmt_ratio(pm / gm) if gm and pm else "-"])
    return header, rows


def markdown(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def plain(header, rows):
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)] if rows else [len(h) for h in header]
    fmt = "  ".join("{:<%d}" % w for w in widths)
    return "\n".join([fmt.format(*header)] + [fmt.format(*r) for r in rows])


def draw(tab, records, sweep, xkey, folder, copy_bps, bytes_per_token, bytes_per_seq, fname):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot.py: matplotlib is not installed; skipping the charts", file=sys.stderr)
        return None
    prims = [p for p in PRIMITIVES if any(r["primitive"] == p and r["sweep"] == sweep for r in records)]
    if not prims:
        return None
    cols = 4
    rows = math.ceil(len(prims) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    for ax, prim in zip(axes.flat, prims):
        for impl in ["polo_cuda", "polo_cpu"] + TORCH_IMPLS:
            pts = sorted((r[xkey], r["median_s"] * 1e9 / r["tokens"]) for r in records
                         if r["primitive"] == prim and r["impl"] == impl and r["sweep"] == sweep and r.get("tokens"))
            if pts:
                ax.plot([x for x, _ in pts], [y for _, y in pts], **STYLE.get(impl, {}), ms=4)
        # GPU floor: the primitive's bytes over the GPU copy bandwidth (PyTorch's measurement, else
        # polo's copy kernel); CPU floor: each polo CPU record's bytes over the memcpy bandwidth its
        # binary measured at that size.
        gpu_pts = sorted({(r[xkey], r["B"], r["T"]) for r in records
                          if r["primitive"] == prim and r["sweep"] == sweep and r["impl"] != "polo_cpu"})
        if copy_bps and prim in bytes_per_token and gpu_pts:
            fl = [(x, (bytes_per_token[prim] + bytes_per_seq.get(prim, 0) / T) / copy_bps * 1e9) for x, _, T in gpu_pts]
            ax.plot([x for x, _ in fl], [y for _, y in fl], color="black", ls="--", lw=1.0, label="memory floor (GPU)")
        cpu_fl = sorted((r[xkey], r["floor_bytes"] / (r["copy_GBps"] * 1e9) * 1e9 / r["tokens"]) for r in records
                        if r["primitive"] == prim and r["sweep"] == sweep and r["impl"] == "polo_cpu"
                        and r.get("copy_GBps") and r.get("floor_bytes") and r.get("tokens"))
        if cpu_fl:
            ax.plot([x for x, _ in cpu_fl], [y for _, y in cpu_fl], color="tab:purple", ls=":", lw=1.0,
                    label="memory floor (CPU memcpy)")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(TITLES.get(prim, prim), fontsize=9)
        ax.set_xlabel("tokens (B x T)" if xkey == "tokens" else "sequence length T", fontsize=8)
        ax.set_ylabel("ns per token", fontsize=8)
        ax.grid(True, which="both", alpha=0.25)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(prims):]:
        ax.axis("off")
    handles, labels = {}, {}
    for ax in axes.flat:
        for h, l in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(l, h)
    fig.legend(list(handles.values()), list(handles.keys()), loc="lower center", ncol=len(handles), fontsize=8,
               frameon=False)
    meta = load_json(os.path.join(folder, "meta.json")) or {}
    title = "polo vs PyTorch: " + ("token sweep (T = 4096)" if sweep == "tokens" else "sequence-length sweep (2^22 tokens)")
    title += "; ns per token, lower is better"
    if meta.get("device"):
        title += (f" -- {meta['device']}" + (f", driver {meta['driver']}" if meta.get("driver") else "")
                  + f", {(meta.get('commit') or '?')[:10]}, {meta.get('date', '')}")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.05, 1, 0.96))
    path = os.path.join(folder, fname)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv):
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    folder = argv[1]
    torch_doc = load_json(os.path.join(folder, "torch_baseline.json")) or {}
    records = list(torch_doc.get("results", []))
    records = [r for r in records if "median_s" in r]
    records += polo_records(folder)
    tab = index(records)
    bytes_per_token = torch_doc.get("bytes_per_token") or DEFAULT_BYTES_PER_TOKEN
    bytes_per_seq = torch_doc.get("bytes_per_seq") or DEFAULT_BYTES_PER_SEQ
    copy_bps = (torch_doc.get("meta") or {}).get("copy_bytes_per_s")
    copy_from = "the PyTorch process (a device-to-device copy of 1 GiB)"
    if not copy_bps:
        gb = [r["copy_GBps"] for r in records if r.get("copy_GBps") and r["impl"] == "polo_cuda"]
        copy_bps = max(gb) * 1e9 if gb else None
        copy_from = "polo's CUDA benchmark binaries (the copy kernel at the largest size)"
    sizes = sorted({(r["B"], r["T"]) for r in records if r["sweep"] == "headline"})

    meta = load_json(os.path.join(folder, "meta.json")) or {}
    head = ["# polo vs PyTorch", ""]
    if meta:
        tmeta = torch_doc.get("meta") or {}
        head.append(f"Device {meta.get('device') or '?'}, driver {meta.get('driver') or '-'}, commit "
                    f"{meta.get('commit') or '?'}, {meta.get('date') or '?'}; "
                    + (f"PyTorch {tmeta.get('torch', '?')} (run {tmeta.get('date', '?')})." if tmeta
                       else "no PyTorch results in this folder."))
    if copy_bps:
        head.append(f"Copy bandwidth (read + write) measured in {copy_from}: {copy_bps * 1e-9:.0f} GB/s; "
                    "the charts' memory floor is bytes / this bandwidth.")
    head.append("")
    h1, r1 = headline_table(tab, sizes, copy_bps, bytes_per_token, bytes_per_seq)
    h2, r2 = step_table(tab, sizes)
    rsize, h0, r0, notes = readme_table(tab, sizes, copy_bps, bytes_per_token, bytes_per_seq)
    checks = torch_doc.get("checks", [])
    print("\n".join(head))
    if rsize:
        print(f"For the README ({rsize[0]} x {rsize[1]}; PyTorch cells: time (PyTorch time / polo CUDA time)):")
        print(plain(h0, r0))
        for n in notes:
            print(n)
        print()
    h3, r3 = own_table(folder, sizes)
    if r3:
        print("The primitives' own benchmarks (asynchronous, warm L2; x floor: over the copy of the same bytes "
              "in the same binary):")
        print(plain(h3, r3))
        print()
    print("Per primitive (median; ratio = PyTorch time / polo time, above 1 polo is faster):")
    print(plain(h1, r1))
    print()
    print("One GRPO step against one PPO step (RL math; memory = inputs + outputs + workspace at peak):")
    print(plain(h2, r2))
    if checks:
        bad = [c for c in checks if not c.get("ok")]
        print(f"\nPyTorch baseline numerical checks: {len(checks) - len(bad)}/{len(checks)} ok")
    md = list(head)
    if rsize:
        md += ["## For the README", "",
               f"{rsize[0]} x {rsize[1]} tokens (fp32, ~10% padding), one {meta.get('device', 'device')}; median "
               "time per call; in parentheses: polo's time over the memory floor (`x floor`), and for PyTorch its "
               "time over polo CUDA's (above 1, polo is faster). Steps: the RL math of one step "
               "(docs/benchmarks.md).", "", markdown(h0, r0), ""]
        md += [f"- {n}" for n in notes] + ([""] if notes else [])
    if r3:
        md += ["## The primitives' own benchmarks", "",
               "Each primitive's own benchmark binary (bench/<primitive>_bench.cu), asynchronous mode: no host "
               "synchronization (the statistics stay on the device), Google Benchmark's time per call (the "
               "L2 flushed before each, outside the timed region); `x floor` is that time over a copy of the "
               "primitive's bytes measured by the same binary. The table above times the same primitives "
               "the suite's way (a host synchronization per call, the L2 flushed before each too).", "",
               markdown(h3, r3), ""]
    md += ["## Per primitive", "",
           "Median times; `eager/polo` is PyTorch eager's time over polo's (above 1, polo is faster); "
           "`x floor` is polo's time over the memory floor measured in the same binary; `CPU x copy` "
           "is polo CPU's (mean) time over memcpy of the same bytes.", "",
           markdown(h1, r1), "", "## GRPO step against PPO step", "",
           "The RL math of one step for the same batch (docs/benchmarks.md says what each step contains "
           "and how the critic's pass is modelled). Memory: bytes of the step's tensors plus, for polo "
           "CUDA, the peak of its scratch; for PyTorch, the step's inputs plus the peak it allocates.", "",
           markdown(h2, r2), ""]
    charts = []
    for sweep, xkey, fname in (("tokens", "tokens", "tokens.png"), ("seqlen", "T", "seqlen.png")):
        p = draw(tab, records, sweep, xkey, folder, copy_bps, bytes_per_token, bytes_per_seq, fname)
        if p:
            charts.append(os.path.basename(p))
    if charts:
        md += ["## Charts", ""] + [f"![{c}]({c})" for c in charts] + [""]
    if checks:
        md += ["## Numerical checks of the PyTorch baselines", "", markdown(
            ["check", "relative error", "tolerance", "ok"],
            [[c["check"], f"{c['rel_err']:.2e}", f"{c['tol']:g}", "yes" if c["ok"] else "NO"] for c in checks]), ""]
    with open(os.path.join(folder, "summary.md"), "w") as f:
        f.write("\n".join(md))
    print(f"\nwrote {os.path.join(folder, 'summary.md')}" + (f" and {', '.join(charts)}" if charts else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
