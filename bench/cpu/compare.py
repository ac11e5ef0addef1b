#!/usr/bin/python3
"""ddunet vs PyTorch on the CPU, one command (from the repository root; builds bench_cpu if needed):

    /usr/bin/python3 bench/cpu/compare.py --threads 2 --rounds 3

(about 15 minutes on 2 cores: 3 rounds of (c) and (d), 7 of the kernels and (b))

Needs the project's build dependencies (scripts/install-deps.sh) and PyTorch for /usr/bin/python3:
`apt-get install -y python3-torch libopenblas0` (Debian 12: torch 1.13, CPU build with oneDNN).

Configures and builds bench_cpu in build-bench/ (Release, -DDD_BUILD_BENCH=ON) unless --ours names an
executable, checks that both frameworks compute the same outputs from the same weights (bench_cpu
--export writes its weights, a seeded input and its eval-mode output; torch_cpu.py --check loads them
into the PyTorch model and compares: max|ours - torch| / max|torch| <= 1e-4), then runs every case
on both sides alternately (the side that goes first alternates each round; every run is its own
process, so peak RSS is that case's) and prints the medians over rounds of each run's median time,
the ratios ours / PyTorch (lower is better) against the targets of issue 5, peak resident memory
(getrusage ru_maxrss) and the forward / backward / optimizer split of the training steps.

Cases: (a) kernel:* forward + backward of one op at U-Net shapes, (b) ddu_train: training step of
DDU-Net(3, 32, Y) on 16 circles images (k = 4), (c) unet_train: training step of U-Net(4) base 16
on one RGB 1024 x 1024 image, (d) ddu_infer: inference of DDU-Net(4, 64, Y) on one RGB 2048 x 2048
image, 4x4 grid. `--cases kernel:bn_16_128,unet_train` picks some; `--json PATH` keeps every run.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
import torch_cpu  # noqa: E402  (case names; importing it does not import torch)

TARGETS = {"ddu_train": 0.33, "unet_train": 1.0, "ddu_infer": 1.0}  # issue 5; kernels 1.2, memory (c) 0.7
KERNEL_TARGET, MEMORY_TARGET = 1.2, 0.7
LABELS = {"ddu_train": "(b) ddu_train", "unet_train": "(c) unet_train", "ddu_infer": "(d) ddu_infer"}


def run(cmd, timeout=1800):
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        sys.stderr.write(f"failed ({out.returncode}): {' '.join(cmd)}\n{out.stdout[-2000:]}{out.stderr[-2000:]}\n")
    lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
    r = json.loads(lines[-1]) if lines else None
    if r is not None:
        r["process_s"] = round(time.monotonic() - t0, 2)
        r["returncode"] = out.returncode
    return r


def build(build_dir, jobs):
    exe = os.path.join(build_dir, "bench", "cpu", "bench_cpu")
    if not os.path.exists(os.path.join(build_dir, "CMakeCache.txt")):
        subprocess.run(["cmake", "-S", ROOT, "-B", build_dir, "-DCMAKE_BUILD_TYPE=Release", "-DDD_BUILD_BENCH=ON",
                        "-DDD_BUILD_TESTS=OFF", "-DDD_BUILD_EXAMPLES=OFF", "-DDD_BUILD_TOOLS=OFF"], check=True,
                       stdout=subprocess.DEVNULL)
    subprocess.run(["cmake", "--build", build_dir, "-j", str(jobs), "--target", "bench_cpu"], check=True,
                   stdout=subprocess.DEVNULL)
    return exe


def check(ours, python, threads, models):
    """Exports each model from ours, checks it in PyTorch; returns the result lines."""
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for m in models:
            path = os.path.join(tmp, f"{m}.safetensors")
            exp = run([ours, "--export", path, "--model", m, "--threads", str(threads)])
            res = run([python, os.path.join(HERE, "torch_cpu.py"), "--check", path, "--threads", str(threads)]) \
                if exp else None
            results.append((m, exp, res))
    return results


def fmt_mib(b):
    return f"{b / 2**20:.0f}"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", help="bench_cpu executable (default: build it in --build-dir)")
    ap.add_argument("--build-dir", default=os.path.join(ROOT, "build-bench"))
    ap.add_argument("--python", default="/usr/bin/python3", help="interpreter with torch (default /usr/bin/python3)")
    ap.add_argument("--threads", type=int, default=2, help="threads of both sides")
    ap.add_argument("--rounds", type=int, default=3, help="runs of (c) and (d) on each side (alternating)")
    ap.add_argument("--light-rounds", type=int, default=-1,
                    help="runs of the kernels and (b), which take seconds (default 2 * rounds + 1)")
    ap.add_argument("--cases", default=",".join(torch_cpu.CASES), help="comma-separated (default: all)")
    ap.add_argument("--kernel-iters", type=int, default=50)
    ap.add_argument("--kernel-warmup", type=int, default=20,
                    help="untimed calls first (default 20: both sides allocate fresh tensors every call, and glibc's "
                         "malloc takes some calls to stop returning them to the OS)")
    ap.add_argument("--torch-channels-last", choices=["auto", "yes", "no"], default="auto",
                    help="PyTorch's layout (auto: channels-last for the models, its faster layout; NCHW for kernels)")
    ap.add_argument("--model-iters", type=int, default=-1, help="timed steps of (c) and (d) (default 3; (b) 20)")
    ap.add_argument("--model-warmup", type=int, default=-1, help="untimed steps first (default 1; (b) 3)")
    ap.add_argument("--no-check", action="store_true", help="skip the output check")
    ap.add_argument("--json", help="write every run's JSON here")
    a = ap.parse_args()

    ours = a.ours or build(a.build_dir, max(1, a.threads))
    cases = [c for c in a.cases.split(",") if c]
    for c in cases:
        if c not in torch_cpu.CASES:
            ap.error(f"unknown case {c}; cases: {', '.join(torch_cpu.CASES)}")

    t_start = time.monotonic()
    checks = [] if a.no_check else check(ours, a.python, a.threads, torch_cpu.MODELS)

    light_rounds = a.light_rounds if a.light_rounds >= 0 else 2 * a.rounds + 1
    heavy = {"unet_train", "ddu_infer"}
    runs = {c: {"ours": [], "pytorch": []} for c in cases}
    n_rounds = max(a.rounds if heavy & set(cases) else 0, light_rounds if set(cases) - heavy else 0)
    for rnd in range(n_rounds):
        for c in cases:
            if rnd >= (a.rounds if c in heavy else light_rounds):
                continue
            if c.startswith("kernel:"):
                it = ["--iters", str(a.kernel_iters), "--warmup", str(a.kernel_warmup)]
            else:
                it = (["--iters", str(a.model_iters)] if a.model_iters >= 0 else []) + \
                     (["--warmup", str(a.model_warmup)] if a.model_warmup >= 0 else [])
            common = ["--case", c, "--threads", str(a.threads)] + it
            sides = [("ours", [ours] + common),
                     ("pytorch", [a.python, os.path.join(HERE, "torch_cpu.py")] + common +
                      ["--channels-last", a.torch_channels_last])]
            if rnd % 2:
                sides.reverse()
            for side, cmd in sides:
                r = run(cmd)
                if r and r.get("returncode") == 0:
                    runs[c][side].append(r)
        print(f"round {rnd + 1}/{n_rounds} done ({time.monotonic() - t_start:.0f} s)", file=sys.stderr)

    if a.json:
        with open(a.json, "w") as f:
            json.dump({"threads": a.threads, "rounds": a.rounds, "light_rounds": light_rounds, "checks": checks,
                       "runs": runs}, f, indent=1)

    print(f"ddunet vs PyTorch {next((r['torch'] for v in runs.values() for r in v['pytorch']), '?')} on the CPU, "
          f"{a.threads} threads each, alternating rounds: {light_rounds} of the kernels and (b), {a.rounds} of (c) and (d); "
          f"times: median over rounds of each run's median; ratio = ours / PyTorch (lower is better); PyTorch layout "
          f"{a.torch_channels_last} (auto: channels-last models, NCHW kernels)")
    head = (f"{'case':<32} {'ours ms':>10} {'PyTorch ms':>11} {'ratio':>7} {'target':>7} "
            f"{'ours MiB':>9} {'PyTorch MiB':>12} {'mem ratio':>9}")
    print(head)
    print("-" * len(head))
    ok = True
    for c in cases:
        o, t = runs[c]["ours"], runs[c]["pytorch"]
        label = c if c.startswith("kernel:") else LABELS[c]
        if not o or not t:
            print(f"{label:<32} {'failed':>10}")
            ok = False
            continue
        to = statistics.median(r["median_ms"] for r in o)
        tt = statistics.median(r["median_ms"] for r in t)
        mo = max(r["peak_rss_bytes"] for r in o)
        mt = max(r["peak_rss_bytes"] for r in t)
        target = KERNEL_TARGET if c.startswith("kernel:") else TARGETS[c]
        mem_ratio = f"{mo / mt:9.2f}" if not c.startswith("kernel:") else f"{'':>9}"
        print(f"{label:<32} {to:10.2f} {tt:11.2f} {to / tt:7.2f} {target:7.2f} {fmt_mib(mo):>9} {fmt_mib(mt):>12} "
              f"{mem_ratio}")
    if "unet_train" in cases and runs["unet_train"]["ours"] and runs["unet_train"]["pytorch"]:
        o, t = runs["unet_train"]["ours"], runs["unet_train"]["pytorch"]
        mo, mt = max(r["peak_rss_bytes"] for r in o), max(r["peak_rss_bytes"] for r in t)
        so, st = min(r["setup_rss_bytes"] for r in o), min(r["setup_rss_bytes"] for r in t)
        print(f"(c) peak RSS ours / PyTorch: {mo / mt:.2f} (target <= {MEMORY_TARGET}); above each process's RSS before "
              f"the model was built ({fmt_mib(so)} / {fmt_mib(st)} MiB): {fmt_mib(mo - so)} / {fmt_mib(mt - st)} MiB = "
              f"{(mo - so) / (mt - st):.2f}")
    train = [c for c in ("ddu_train", "unet_train") if c in cases and runs[c]["ours"] and runs[c]["pytorch"]]
    if train:
        print("training-step split, ms (median over rounds): forward+loss / backward / optimizer")
        for c in train:
            parts = []
            for side in ("ours", "pytorch"):
                rs = runs[c][side]
                parts.append(" / ".join(f"{statistics.median(r[k + '_ms'] for r in rs):.1f}"
                                        for k in ("forward", "backward", "optimizer")))
            print(f"  {LABELS[c]:<16} ours {parts[0]:<26} PyTorch {parts[1]}")
    for m, exp, res in checks:
        if not res:
            print(f"check {m}: FAILED to run")
            ok = False
            continue
        ok = ok and res["ok"]
        print(f"check {m}: input {'x'.join(str(v) for v in res['input'])}, {res['tensors']} tensors: "
              f"max|ours - torch| / max|torch| = {res['max_rel_diff']:.2e} "
              f"{'<=' if res['ok'] else '>'} {res['tolerance']:g}: {'OK' if res['ok'] else 'MISMATCH'}")
    print(f"total {time.monotonic() - t_start:.0f} s", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
