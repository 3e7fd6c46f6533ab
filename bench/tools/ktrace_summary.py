#!/usr/bin/env python3
# SPDX-FileCopyrightText: 2026 The polo authors
# SPDX-License-Identifier: Apache-2.0
"""Summarizes a ktrace CSV (bench/tools/ktrace.cpp): the last iteration's records with their
durations and the gaps before them, and per record name the median duration and gap over the
kept iterations. An iteration starts at each record named like the last iteration's first
(--first REGEX: the name of the call's first record; default: the most frequent first token).

    python3 bench/tools/ktrace_summary.py trace.csv --first 'memset|whiten_rows'
"""
import argparse
import csv
import re
import statistics


def short(name, width):
    name = re.sub(r"polo::(kernels::|detail::)?", "", name)
    name = re.sub(r"\(.*\)$", "", name)  # the argument list
    return name[:width]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--first", required=True, help="regex of the name of an iteration's first record")
    ap.add_argument("--width", type=int, default=90)
    a = ap.parse_args()
    rows = list(csv.DictReader(open(a.csv)))
    for r in rows:
        r["start"], r["end"] = int(r["start_ns"]), int(r["end_ns"])
    rows.sort(key=lambda r: r["start"])
    first = re.compile(a.first)
    starts = [i for i, r in enumerate(rows) if first.search(r["name"])]
    if len(starts) < 3:
        raise SystemExit(f"fewer than 3 records match --first {a.first!r}")
    iters = [rows[s:e] for s, e in zip(starts[:-1], starts[1:])][1:]  # the first may be partial
    periods = [it2[0]["start"] - it1[0]["start"] for it1, it2 in zip(iters, iters[1:])]
    print(f"{len(iters)} iterations; period median {statistics.median(periods) / 1e3:.1f} us "
          f"(min {min(periods) / 1e3:.1f}, max {max(periods) / 1e3:.1f})")
    # per position in the iteration (same sequence each time), median duration and gap
    n = statistics.mode(len(it) for it in iters)
    same = [it for it in iters if len(it) == n]
    print(f"{'#':>2} {'kind':6} {'grid':>6} {'blk':>4} {'reg':>3} {'dur us':>7} {'gap us':>7}  name")
    prev_end = None
    for j in range(n):
        durs = [(it[j]["end"] - it[j]["start"]) / 1e3 for it in same]
        gaps = []
        for k, it in enumerate(same):
            if j > 0:
                gaps.append((it[j]["start"] - it[j - 1]["end"]) / 1e3)
            elif k > 0:
                gaps.append((it[0]["start"] - same[k - 1][-1]["end"]) / 1e3)
        r = same[-1][j]
        gap = statistics.median(gaps) if gaps else float("nan")
        print(f"{j:2d} {r['kind']:6} {r['grid']:>6} {r['block']:>4} {r['regs']:>3} "
              f"{statistics.median(durs):7.1f} {gap:7.1f}  {short(r['name'], a.width)}")


if __name__ == "__main__":
    main()
