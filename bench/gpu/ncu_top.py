#!/usr/bin/env python3
"""Sums the per-launch kernel times of an Nsight Compute CSV (ncu --metrics gpu__time_duration.sum --csv)
by kernel name and prints the 30 largest (scripts/gpu-check.sh part profile)."""
import csv, sys, collections
# Nsight Compute writes "ns" (older versions "nsecond"); everything is summed in microseconds.
US_PER = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
rows = list(csv.reader(open(sys.argv[1])))
hdr = None
tot = collections.Counter(); cnt = collections.Counter()
for r in rows:
    if "Kernel Name" in r: hdr = r; continue
    if not hdr or len(r) != len(hdr): continue
    d = dict(zip(hdr, r))
    if d.get("Metric Name") != "gpu__time_duration.sum": continue
    v = float(d["Metric Value"].replace(",", ""))
    unit = d.get("Metric Unit", "")
    if unit not in US_PER:
        sys.exit(f"ncu_top.py: unknown time unit {unit!r} in {sys.argv[1]}")
    us = v * US_PER[unit]
    name = d["Kernel Name"][:110]
    tot[name] += us; cnt[name] += 1
all_us = sum(tot.values())
print(f"total {all_us/1000:.2f} ms in {sum(cnt.values())} kernels")
for n, us in tot.most_common(30):
    print(f"{us/1000:8.3f} ms {cnt[n]:4d}x  {n}")
