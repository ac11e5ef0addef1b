#!/usr/bin/env python3
"""Runs the GPU benchmark cases in ddunet (bench_gpu) and PyTorch (torch_reference.py) alternately,
several rounds each, and prints a table of median times, peak memory and the ratios ours / PyTorch
(lower is better). Both sides: same architecture, shapes, thread of work and GPU; PyTorch at its
best (cuDNN benchmark mode, channels-last, fused Adam, TF32 as by default). --ours-variants runs
several flag sets of ours against the same PyTorch runs (one table row each); --confirm-rounds then
gives each case's fastest variant more alternating rounds, so one call both chooses and measures."""
import argparse
import json
import os
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def run(cmd):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.stderr.write(f"failed: {' '.join(cmd)}\n{out.stderr[-2000:]}\n")
        return None
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    return json.loads(lines[-1]) if lines else None


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--ours", required=True, help="path of the bench_gpu executable")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--iters", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--cases", default="unet_train:fp32,unet_train:bf16,ddu_infer:fp32,ddu_infer:bf16")
    ap.add_argument("--ours-args", default="", help="extra flags for bench_gpu only, e.g. '--graph yes'")
    ap.add_argument("--ours-variants", default=None,
                    help="';'-separated flag sets for bench_gpu, each added to --ours-args and run as its own "
                         "row, e.g. ';--graph yes;--half-activations yes' (half activations: bf16/fp16 rows only)")
    ap.add_argument("--confirm-rounds", type=int, default=0,
                    help="after the rounds, this many more alternating rounds of each row's fastest variant "
                         "and PyTorch (its row then holds all its runs; marked * in the table)")
    a = ap.parse_args()
    variants = a.ours_variants.split(";") if a.ours_variants is not None else [""]
    rows = []
    for spec in a.cases.split(","):
        case, dtype = spec.split(":")
        common = ["--case", case, "--dtype", dtype, "--iters", str(a.iters), "--warmup", str(a.warmup)]
        # fp32 has no half activations: those variants would repeat another row.
        mine = [v.strip() for v in variants if dtype != "fp32" or "--half-activations yes" not in v]
        ours, theirs = {v: [] for v in mine}, []

        def alternate(flag_sets, rounds):  # alternate, so drifts of the machine hit both sides
            for _ in range(rounds):
                for v in flag_sets:
                    r = run([a.ours] + common + a.ours_args.split() + v.split())
                    if r: ours[v].append(r)
                r = run([sys.executable, os.path.join(HERE, "torch_reference.py")] + common)
                if r: theirs.append(r)

        alternate(mine, a.rounds)
        ran = [v for v in mine if ours[v]]
        best = min(ran, key=lambda v: statistics.median(r["median_ms"] for r in ours[v])) if ran else None
        if a.confirm_rounds > 0 and best is not None:
            alternate([best], a.confirm_rounds)
        for v in mine:
            flags = (a.ours_args + " " + v).strip() or "default"
            if a.confirm_rounds > 0 and v == best:
                flags = "* " + flags
            if not ours[v] or not theirs:
                rows.append((case, dtype, flags, None, None, None, None))
                continue
            t_o = statistics.median(r["median_ms"] for r in ours[v])
            t_t = statistics.median(r["median_ms"] for r in theirs)
            m_o = max(r["peak_mem_bytes"] for r in ours[v])
            m_t = max(r["peak_mem_bytes"] for r in theirs)
            rows.append((case, dtype, flags, t_o, t_t, m_o, m_t))
            # Host time to enqueue one step: close to the step time means the host, not the GPU, is the limit.
            h_o = statistics.median(r.get("enqueue_ms") or 0.0 for r in ours[v])
            h_t = statistics.median(r.get("enqueue_ms") or 0.0 for r in theirs)
            print(f"{case} {dtype} [{flags}]: {len(ours[v])} runs of ours, {len(theirs)} of PyTorch; host enqueue "
                  f"time per step: ddunet {h_o:.2f} ms, PyTorch {h_t:.2f} ms", file=sys.stderr)
            print(json.dumps({"case": case, "dtype": dtype, "flags": flags, "ours": ours[v], "pytorch": theirs}),
                  file=sys.stderr)
    print(f"{'case':<12} {'dtype':<5} {'ddunet ms':>10} {'PyTorch ms':>11} {'time ratio':>10} "
          f"{'ddunet MiB':>11} {'PyTorch MiB':>12} {'mem ratio':>9}  ddunet flags")
    for case, dtype, flags, t_o, t_t, m_o, m_t in rows:
        if t_o is None:
            print(f"{case:<12} {dtype:<5} {'failed':>10}{'':>58}  {flags}")
            continue
        print(f"{case:<12} {dtype:<5} {t_o:10.2f} {t_t:11.2f} {t_o / t_t:10.2f} {m_o / 2**20:11.0f} "
              f"{m_t / 2**20:12.0f} {m_o / m_t:9.2f}  {flags}")
    return 0 if all(r[3] is not None for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
