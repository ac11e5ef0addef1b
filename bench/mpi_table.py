#!/usr/bin/env python3
"""Reads bench_mpi's JSON lines on stdin and prints the scaling table."""
import json
import sys

rows = [json.loads(l) for l in sys.stdin if l.startswith("{")]
head = ("scaling", "ranks", "image", "grid", "step ms", "MB sent/step", "comm share", "DDU act. MB", "halo act. MB",
        "halo/DDU", "grad MB", "rounds DDU/halo")
print("{:<7} {:>5} {:>9} {:>5} {:>9} {:>13} {:>10} {:>11} {:>12} {:>8} {:>8} {:>15}".format(*head))
for r in rows:
    print("{:<7} {:>5} {:>9} {:>5} {:>9.1f} {:>13.2f} {:>10.3f} {:>11.2f} {:>12.2f} {:>8.1f} {:>8.2f} {:>15}".format(
        r["label"], r["ranks"], r["image"], r["grid"], r["step_ms"], r["sent_bytes_per_step"] / 1e6, r["comm_share"],
        r["ddu_activation_bytes"] / 1e6, r["halo_activation_bytes"] / 1e6, r["halo_over_ddu_activations"],
        r["gradient_bytes"] / 1e6, "{}/{}".format(r["ddu_rounds"], r["halo_rounds"])))
