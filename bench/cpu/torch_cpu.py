#!/usr/bin/python3
"""PyTorch side of the CPU benchmark (bench/cpu/bench_cpu.cpp is ours; bench/cpu/compare.py runs both
alternately and prints the table). The same cases, shapes and thread count as bench_cpu; the models
are bench/gpu/torch_reference.py's (our exact layers and state_dict names), imported from there.
One case per process, so the peak resident memory (getrusage ru_maxrss) is that case's. Prints ONE
JSON line on stdout.

  /usr/bin/python3 bench/cpu/torch_cpu.py --case CASE [--threads N] [--iters N] [--warmup N]
  /usr/bin/python3 bench/cpu/torch_cpu.py --check PATH [--threads N]
  /usr/bin/python3 bench/cpu/torch_cpu.py --list

Needs Debian's python3-torch (CPU build with oneDNN) and libopenblas0, for /usr/bin/python3.

Cases (as in bench_cpu.cpp):
  kernel:NAME  forward + backward of one op per call (input, weights and bias need gradients,
               the output gradient is fixed random data; gradients are reset to None each call);
  ddu_train    one training step of DDU-Net(3, 32, Y), base 4, grid 1x4, batch 16 images 32 x 128
               (model.train(), softmax Dice loss as dd::dice_loss, Adam lr 0.008);
  unet_train   one training step of U-Net(4) base 16 on one RGB 1024 x 1024 image
               (model.train(), cross entropy, Adam lr 1e-3);
  ddu_infer    inference of DDU-Net(4, 64, Y) base 16, grid 4x4, one RGB 2048 x 2048 image
               (model.eval() under torch.no_grad()).
Inputs are random (the circles case uses random binary images and random labels: the work is the
same as on the real circles data). Note that the reference DDU-Net stacks the tiles on the batch
dimension, so its training-mode BatchNorm pools statistics over all tiles where ours normalises
each clone's tile batch; the arithmetic is the same, the eval-mode outputs identical.

--check PATH loads what `bench_cpu --export PATH --model M` wrote (weights under state_dict names,
"check.input", "check.output"), runs the model in eval mode on the input and reports the maximum
relative difference max|ours - torch| / max|torch| (must be <= 1e-4).
"""
import argparse
import json
import os
import resource
import statistics
import struct
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "gpu"))
import torch_reference  # noqa: E402  (define_models: the U-Net / DDU-Net with our names)

KERNELS = [
    "conv3x3_4to4_256", "conv3x3_16to16_128", "conv3x3_16to16_1024", "conv3x3_64to64_32", "conv3x3_256to256_16_n4",
    "conv5x5_32to32_32", "bn_16_128", "bnrelu_16_128", "relu_16_128", "maxpool_16_128",
    "upconv_16to8_128", "concat_16+16_128",
]
MODELS = ["ddu_train", "unet_train", "ddu_infer"]
CASES = [f"kernel:{k}" for k in KERNELS] + MODELS
CHECK_TOLERANCE = 1e-4


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch CPU timings for the ddunet CPU benchmark (one JSON line).")
    p.add_argument("--case", choices=CASES, help="what to time (--list shows them)")
    p.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (same as bench_cpu --threads)")
    p.add_argument("--iters", type=int, default=-1, help="timed iterations (default: 50 kernels, 20 ddu_train, 3 others)")
    p.add_argument("--warmup", type=int, default=-1, help="untimed iterations first (default: 20 kernels, 3 ddu_train, 1 others)")
    p.add_argument("--channels-last", choices=["auto", "yes", "no"], default="auto",
                   help="tensors in torch.channels_last; auto (default): yes for the models (PyTorch's faster layout "
                        "on the CPU: measured 1.3x on unet_train, 1.6x on ddu_infer), no for the kernels (the NCHW "
                        "layout ours use)")
    p.add_argument("--check", metavar="PATH", help="compare with the output bench_cpu --export wrote")
    p.add_argument("--list", action="store_true", help="print the case names")
    a = p.parse_args(argv)
    if not (a.list or a.case or a.check):
        p.error("give --case, --check or --list")
    if a.threads < 1:
        p.error("--threads must be >= 1")
    return a


def peak_rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes


def read_safetensors(path, torch):
    """{name: tensor}, metadata of a safetensors file of F32 tensors (no safetensors package needed)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n])
    meta = header.pop("__metadata__", {})
    data = memoryview(blob)[8 + n:]
    out = {}
    for name, e in header.items():
        if e["dtype"] != "F32":
            raise SystemExit(f"torch_cpu.py: {path}: tensor {name} is {e['dtype']}, expected F32")
        b, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(data[b:end]), dtype=torch.float32)
        out[name] = t.reshape(e["shape"]).clone()
    return out, meta


def build(torch, nn, F, depth, cin, classes, base, f, grid):
    UNet, DDUNet = torch_reference.define_models(torch, nn, F)
    if f == 0 and tuple(grid) == (1, 1):
        return UNet(depth, cin, classes, base)
    return DDUNet(depth, cin, classes, base, f, tuple(grid))


def dice_loss(torch, F, logits, labels):
    """dd::dice_loss: p = softmax; per class 1 - 2 sum(p t) / max(sum p + sum t, 1e-7); mean over classes."""
    p = F.softmax(logits, dim=1)
    t = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2).to(p.dtype)
    inter = (p * t).sum(dim=(0, 2, 3))
    denom = p.sum(dim=(0, 2, 3)) + t.sum(dim=(0, 2, 3))
    return (1.0 - 2.0 * inter / denom.clamp_min(1e-7)).mean()


def kernel_step(torch, F, name, mf):
    """The per-call work of kernel:NAME (forward + backward)."""
    g = torch.Generator().manual_seed(1)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g) * scale).contiguous(memory_format=mf if len(shape) == 4 else
                                                                      torch.contiguous_format)

    def param(*shape):
        return randn(*shape, scale=0.1).requires_grad_(True)

    def fwd_bwd(inputs, fn, out_shape, params=()):
        dy = randn(*out_shape)

        def step():
            for t in params:
                t.grad = None
            xs = [x.detach().requires_grad_(True) for x in inputs]
            y = fn(*xs)
            y.backward(dy)
        return step

    s16 = (1, 16, 128, 128)
    if name.startswith("conv"):
        k = int(name[4])
        spec = {"conv3x3_4to4_256": (1, 4, 256), "conv3x3_16to16_128": (1, 16, 128), "conv3x3_16to16_1024": (1, 16, 1024),
                "conv3x3_64to64_32": (1, 64, 32),
                "conv3x3_256to256_16_n4": (4, 256, 16), "conv5x5_32to32_32": (1, 32, 32)}[name]
        n, c, hw = spec
        w = param(c, c, k, k)
        b = param(c) if k == 5 else None  # the comm net's 5x5 convs have a bias, the U-Net's 3x3 none

        return fwd_bwd([randn(n, c, hw, hw)], lambda x: F.conv2d(x, w, b, padding=k // 2), (n, c, hw, hw),
                       [w] + ([b] if b is not None else []))
    if name in ("bn_16_128", "bnrelu_16_128"):
        gamma = torch.ones(16).requires_grad_(True)
        beta = torch.zeros(16).requires_grad_(True)
        rm, rv = torch.zeros(16), torch.ones(16)
        relu = name == "bnrelu_16_128"

        def bn(x):
            y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=0.1, eps=1e-5)
            return F.relu(y, inplace=True) if relu else y  # as the models run it
        return fwd_bwd([randn(*s16)], bn, s16, [gamma, beta])
    if name == "relu_16_128":
        return fwd_bwd([randn(*s16)], lambda x: F.relu(x), s16)
    if name == "maxpool_16_128":
        return fwd_bwd([randn(*s16)], lambda x: F.max_pool2d(x, 2), (1, 16, 64, 64))
    if name == "upconv_16to8_128":
        w, b = param(16, 8, 2, 2), param(8)

        return fwd_bwd([randn(*s16)], lambda x: F.conv_transpose2d(x, w, b, stride=2), (1, 8, 256, 256), [w, b])
    if name == "concat_16+16_128":
        return fwd_bwd([randn(*s16), randn(*s16)], lambda a, b: torch.cat([a, b], dim=1), (1, 32, 128, 128))
    raise SystemExit(f"torch_cpu.py: no kernel {name}")


def model_step(torch, nn, F, case, mf, phases):
    g = torch.Generator().manual_seed(2)
    torch.manual_seed(1)
    if case == "ddu_train":
        model = build(torch, nn, F, 3, 1, 3, 4, 32, (1, 4))
        x = (torch.rand(16, 1, 32, 128, generator=g) > 0.9).float()
        y = torch.randint(0, 3, (16, 32, 128), generator=g)
        lr = 0.008

        def loss_fn(out):
            return dice_loss(torch, F, out, y)
    elif case == "unet_train":
        model = build(torch, nn, F, 4, 3, 3, 16, 0, (1, 1))
        x = torch.randn(1, 3, 1024, 1024, generator=g)
        y = torch.randint(0, 3, (1, 1024, 1024), generator=g)
        lr = 1e-3

        def loss_fn(out):
            return F.cross_entropy(out, y)
    else:
        model = build(torch, nn, F, 4, 3, 3, 16, 64, (4, 4))
        model.memory_format = mf
        x = torch.randn(1, 3, 2048, 2048, generator=g)
    model = model.to(memory_format=mf)
    x = x.contiguous(memory_format=mf)

    if case == "ddu_infer":
        model.eval()

        def infer():
            with torch.no_grad():
                model(x)
        return infer

    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)

    def step():
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x))
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        opt.step()
        t3 = time.perf_counter()
        phases["forward"].append((t1 - t0) * 1e3)
        phases["backward"].append((t2 - t1) * 1e3)
        phases["optimizer"].append((t3 - t2) * 1e3)
    return step


def run_case(args, torch, nn, F):
    setup_rss = peak_rss_bytes()
    kernel = args.case.startswith("kernel:")
    channels_last = args.channels_last == "yes" or (args.channels_last == "auto" and not kernel)
    mf = torch.channels_last if channels_last else torch.contiguous_format
    phases = {"forward": [], "backward": [], "optimizer": []}
    if kernel:
        step = kernel_step(torch, F, args.case[len("kernel:"):], mf)
        iters, warmup = 50, 20
    else:
        step = model_step(torch, nn, F, args.case, mf, phases)
        iters, warmup = (20, 3) if args.case == "ddu_train" else (3, 1)
    iters = iters if args.iters < 0 else args.iters
    warmup = warmup if args.warmup < 0 else args.warmup
    for _ in range(warmup):
        step()
    for v in phases.values():
        v.clear()
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        step()
        times.append((time.perf_counter() - t0) * 1e3)
    out = {
        "framework": "pytorch", "case": args.case,
        "median_ms": statistics.median(times), "min_ms": min(times),
        "peak_rss_bytes": peak_rss_bytes(), "setup_rss_bytes": setup_rss,
        "threads": torch.get_num_threads(), "iters": iters, "warmup": warmup,
    }
    if phases["forward"]:
        for k, v in phases.items():
            out[f"{k}_ms"] = round(statistics.median(v), 3)
    out.update({"channels_last": channels_last, "torch": torch.__version__,
                "mkldnn": bool(torch.backends.mkldnn.is_available()), "times_ms": [round(t, 3) for t in times]})
    print(json.dumps(out))
    return 0


def run_check(args, torch, nn, F):
    tensors, meta = read_safetensors(args.check, torch)
    x, ref = tensors.pop("check.input"), tensors.pop("check.output")
    r, c = (int(v) for v in meta["grid"].split("x"))
    model = build(torch, nn, F, int(meta["depth"]), int(meta["in_channels"]), int(meta["classes"]),
                  int(meta["base"]), int(meta["F"]), (r, c))
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise SystemExit(f"torch_cpu.py: {args.check}: missing {missing}, unexpected {unexpected}")
    model.eval()
    with torch.no_grad():
        out = model(x)
    if out.shape != ref.shape:
        raise SystemExit(f"torch_cpu.py: output {tuple(out.shape)} but the export holds {tuple(ref.shape)}")
    diff = (out - ref).abs()
    scale = ref.abs().max().item()
    rel = diff.max().item() / scale
    # Elementwise relative difference, with values below 1e-3 of the output's scale floored there.
    elem = (diff / ref.abs().clamp_min(1e-3 * scale)).max().item()
    print(json.dumps({
        "framework": "pytorch", "check": args.check, "model": meta.get("model"), "input": list(x.shape),
        "tensors": len(tensors), "max_abs_diff": diff.max().item(), "max_abs_output": scale,
        "max_rel_diff": rel, "max_elem_rel_diff": elem, "tolerance": CHECK_TOLERANCE, "ok": rel <= CHECK_TOLERANCE,
    }))
    return 0 if rel <= CHECK_TOLERANCE else 1


def main(argv=None):
    args = parse_args(argv)
    if args.list:
        print("\n".join(CASES))
        return 0
    import warnings
    import torch
    import torch.nn as nn
    import torch.nn.functional as F
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    if args.check:
        return run_check(args, torch, nn, F)
    return run_case(args, torch, nn, F)


if __name__ == "__main__":
    sys.exit(main())
