#!/usr/bin/env python3
"""PyTorch side of the GPU benchmark: the same U-Net / DDU-Net as ddunet, written the way a
PyTorch user would (tiles of a DDU-Net stacked on the batch dimension, cuDNN autotuning on,
channels-last by default, fused Adam), timed with CUDA events. Prints ONE JSON line on stdout.

  python3 bench/gpu/torch_reference.py --case unet_train|ddu_infer --dtype fp32|bf16 \
      --iters N --warmup W [--channels-last yes|no] [--tf32 default|on|off] [--export PATH]

Architecture (shared/docs/PAPER_NOTES.md sections 1-2):
  DoubleConv(in, out) = 2 x [Conv3x3 pad 1, no bias -> BatchNorm(eps 1e-5, momentum 0.1) -> ReLU
                             -> Dropout2d(0.1)]
  U-Net(D): enc0 = DoubleConv(in, b); enc l = MaxPool2 -> DoubleConv(b 2^(l-1), b 2^l), l = 1..D;
            dec l = ConvTranspose2x2 s2 (b 2^(l+1) -> b 2^l, bias) -> cat([skip_l, up]) ->
            DoubleConv(2 b 2^l, b 2^l), l = D-1..0; head = Conv1x1 (b -> classes, bias).
  DDU-Net(D, F, Y) on an r x c grid: every tile runs the same encoder; the last F bottleneck
            channels of all tiles are stitched into one map, go through 3 x [Conv5x5 pad 2 with
            bias -> BN -> ReLU -> Dropout2d], are cut back and replace those channels; each tile
            decodes; logits are stitched.
State-dict keys are those of ddunet's checkpoints (enc0.conv1.weight, enc0.bn1.running_mean,
dec3.up.weight, head.bias, comm.layer1.conv1.weight, ...) plus PyTorch's num_batches_tracked;
ddunet stores per-channel vectors as [C, 1, 1, 1] where PyTorch has [C].
Weights are PyTorch's default initialisation (seeded), not ddunet's He-normal draw.
"""
import argparse
import json
import statistics
import sys
import time

CASES = {
    # case: (model, depth, base, in, classes, image size, grid, F, training)
    "unet_train": dict(model="unet", depth=4, base=16, cin=3, classes=3, size=1024, grid=(1, 1), F=0, train=True),
    "ddu_infer": dict(model="ddunet", depth=4, base=16, cin=3, classes=3, size=2048, grid=(2, 2), F=64, train=False),
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description="PyTorch reference timings for the ddunet GPU benchmark "
                                            "(prints one JSON line).")
    p.add_argument("--case", required=True, choices=sorted(CASES),
                   help="unet_train: one Adam step of U-Net(4, 3->3, base 16) on one 1024x1024 RGB image; "
                        "ddu_infer: inference of DDU-Net(4, 64, Y), base 16, on one 2048x2048 RGB image, 2x2 grid")
    p.add_argument("--dtype", required=True, choices=["fp32", "bf16"],
                   help="bf16: torch.autocast(cuda, bfloat16) around forward and loss")
    p.add_argument("--iters", type=int, default=20, help="timed iterations (0: build/export only)")
    p.add_argument("--warmup", type=int, default=5, help="untimed iterations first (cuDNN autotuning happens here)")
    p.add_argument("--channels-last", choices=["yes", "no"], default="yes",
                   help="model and input in torch.channels_last (default yes: faster cuDNN kernels)")
    p.add_argument("--tf32", choices=["default", "on", "off"], default="default",
                   help="TF32 for fp32 cuDNN convolutions (default: leave PyTorch's default, which is on)")
    p.add_argument("--adam", choices=["fused", "foreach"], default="fused",
                   help="Adam implementation for unet_train (default fused, PyTorch's fastest)")
    p.add_argument("--size", type=int, default=0, help="image side in pixels (default: the case's)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights, input and labels")
    p.add_argument("--export", metavar="PATH", default=None,
                   help="save the model's initial state_dict to this safetensors file")
    a = p.parse_args(argv)
    if a.iters < 0 or a.warmup < 0:
        p.error("--iters and --warmup must be >= 0")
    return a


def define_models(torch, nn, F):
    """The modules, defined once torch is imported (the script must import without torch)."""

    class DoubleConv(nn.Module):
        def __init__(self, cin, cout, p):
            super().__init__()
            self._layers(cin, cout, p)

        def _layers(self, cin, cout, p):
            self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
            self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout, eps=1e-5, momentum=0.1)
            self.drop = nn.Dropout2d(p)

        def forward(self, x):
            x = self.drop(F.relu(self.bn1(self.conv1(x)), inplace=True))
            return self.drop(F.relu(self.bn2(self.conv2(x)), inplace=True))

    class UpBlock(DoubleConv):
        def __init__(self, cin, cout, p):
            nn.Module.__init__(self)
            self.up = nn.ConvTranspose2d(cin, cout, 2, stride=2, bias=True)
            self._layers(2 * cout, cout, p)

        def forward(self, x, skip):
            return super().forward(torch.cat([skip, self.up(x)], dim=1))

    class UNet(nn.Module):
        def __init__(self, depth, cin, classes, base, p=0.1):
            super().__init__()
            self.depth = depth
            ch = [base << l for l in range(depth + 1)]
            self.enc0 = DoubleConv(cin, ch[0], p)
            for l in range(1, depth + 1):
                setattr(self, f"enc{l}", DoubleConv(ch[l - 1], ch[l], p))
            for l in range(depth - 1, -1, -1):
                setattr(self, f"dec{l}", UpBlock(ch[l + 1], ch[l], p))
            self.head = nn.Conv2d(ch[0], classes, 1, bias=True)
            self.encoders = [getattr(self, f"enc{l}") for l in range(depth + 1)]
            self.decoders = [getattr(self, f"dec{l}") for l in range(depth)]

        def encode(self, x):
            skips = []
            h = self.encoders[0](x)
            for l in range(1, self.depth + 1):
                skips.append(h)
                h = self.encoders[l](F.max_pool2d(h, 2))
            return h, skips

        def decode(self, h, skips):
            for l in range(self.depth - 1, -1, -1):
                h = self.decoders[l](h, skips[l])
            return self.head(h)

        def forward(self, x):
            return self.decode(*self.encode(x))

    class CommLayer(nn.Module):
        def __init__(self, f, k, p):
            super().__init__()
            self.conv1 = nn.Conv2d(f, f, k, padding=k // 2, bias=True)
            self.bn1 = nn.BatchNorm2d(f, eps=1e-5, momentum=0.1)
            self.drop = nn.Dropout2d(p)

        def forward(self, x):
            return self.drop(F.relu(self.bn1(self.conv1(x)), inplace=True))

    class CommNet(nn.Module):
        def __init__(self, f, layers=3, k=5, p=0.1):
            super().__init__()
            for i in range(1, layers + 1):
                setattr(self, f"layer{i}", CommLayer(f, k, p))
            self.layers = [getattr(self, f"layer{i}") for i in range(1, layers + 1)]

        def forward(self, x):
            for layer in self.layers:
                x = layer(x)
            return x

    class DDUNet(UNet):
        """DDU-Net(D, F, Y): tiles on the batch dimension, one stitched map for the comm net."""

        def __init__(self, depth, cin, classes, base, f, grid, p=0.1, memory_format=None):
            super().__init__(depth, cin, classes, base, p)
            self.F, self.grid = f, grid
            self.memory_format = memory_format or torch.contiguous_format
            self.comm = CommNet(f, 3, 5, p) if f > 0 else None

        def forward(self, x):
            n, c_in, hgt, wid = x.shape
            r, c = self.grid
            th, tw = hgt // r, wid // c
            mf = self.memory_format
            # [n, C, r*th, c*tw] -> [n*r*c, C, th, tw], tile (i, j) at n*r*c + i*c + j.
            tiles = x.reshape(n, c_in, r, th, c, tw).permute(0, 2, 4, 1, 3, 5).reshape(n * r * c, c_in, th, tw)
            h, skips = self.encode(tiles.contiguous(memory_format=mf))
            if self.comm is not None:
                cb, bh, bw = h.shape[1], h.shape[2], h.shape[3]
                f = self.F
                g = h[:, cb - f:].reshape(n, r, c, f, bh, bw).permute(0, 3, 1, 4, 2, 5).reshape(n, f, r * bh, c * bw)
                g = self.comm(g.contiguous(memory_format=mf))
                g = g.reshape(n, f, r, bh, c, bw).permute(0, 2, 4, 1, 3, 5).reshape(n * r * c, f, bh, bw)
                h = torch.cat([h[:, :cb - f], g.contiguous(memory_format=mf)], dim=1)
            out = self.decode(h, skips)
            k = out.shape[1]
            return out.reshape(n, r, c, k, th, tw).permute(0, 3, 1, 4, 2, 5).reshape(n, k, hgt, wid)

    return UNet, DDUNet


def set_tf32(torch, mode):
    """Returns whether fp32 cuDNN convolutions may use TF32 after applying `mode`."""
    if mode != "default":
        torch.backends.cudnn.allow_tf32 = (mode == "on")
    return bool(torch.backends.cudnn.allow_tf32)


def main(argv=None):
    args = parse_args(argv)
    import warnings
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    warnings.simplefilter("ignore")  # keep stdout/stderr free of deprecation chatter
    if not torch.cuda.is_available():
        print("torch_reference.py: no CUDA device", file=sys.stderr)
        return 2
    case = dict(CASES[args.case])
    size = args.size or case["size"]
    r, c = case["grid"]
    if size % (r << case["depth"]) or size % (c << case["depth"]):
        print(f"torch_reference.py: size {size} is not divisible by grid x 2^depth", file=sys.stderr)
        return 2

    dev = torch.device("cuda")
    torch.backends.cudnn.benchmark = True
    tf32 = set_tf32(torch, args.tf32)
    mf = torch.channels_last if args.channels_last == "yes" else torch.contiguous_format
    amp_dtype = torch.bfloat16 if args.dtype == "bf16" else None

    torch.manual_seed(args.seed)
    UNet, DDUNet = define_models(torch, nn, F)
    if case["model"] == "unet":
        model = UNet(case["depth"], case["cin"], case["classes"], case["base"])
    else:
        model = DDUNet(case["depth"], case["cin"], case["classes"], case["base"], case["F"], case["grid"],
                       memory_format=mf)
    n_params = sum(p.numel() for p in model.parameters())

    if args.export:
        from safetensors.torch import save_file
        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        meta = {"format": "pytorch-reference", "case": args.case, "depth": str(case["depth"]),
                "base": str(case["base"]), "in_channels": str(case["cin"]), "classes": str(case["classes"]),
                "F": str(case["F"]), "grid": f"{r}x{c}", "seed": str(args.seed), "torch": torch.__version__}
        save_file(tensors, args.export, metadata=meta)

    model = model.to(dev, memory_format=mf)
    gen = torch.Generator(device=dev).manual_seed(args.seed + 1)
    x = torch.randn(1, case["cin"], size, size, device=dev, generator=gen).contiguous(memory_format=mf)

    def autocast():
        return torch.autocast("cuda", dtype=amp_dtype, enabled=amp_dtype is not None)

    if case["train"]:
        model.train()
        y = torch.randint(0, case["classes"], (1, size, size), device=dev, generator=gen)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=(args.adam == "fused"),
                               foreach=(None if args.adam == "fused" else True))

        def step():
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
    else:
        model.eval()

        def step():
            with torch.inference_mode(), autocast():
                model(x)

    torch.cuda.synchronize()
    for _ in range(args.warmup):
        step()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()

    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(args.iters)]
    host = []
    # Only the timed steps inside cudaProfilerStart/Stop (ncu --profile-from-start off), as in bench_gpu.
    profiler_on = True
    try:
        torch.cuda.profiler.start()
    except RuntimeError:  # never a reason to fail the benchmark
        profiler_on = False
    for start, end in events:
        t0 = time.perf_counter()
        start.record()
        step()
        end.record()
        host.append((time.perf_counter() - t0) * 1e3)
    torch.cuda.synchronize()
    if profiler_on:
        torch.cuda.profiler.stop()
    times = [s.elapsed_time(e) for s, e in events]

    print(json.dumps({
        "framework": "pytorch",
        "case": args.case,
        "dtype": args.dtype,
        "median_ms": statistics.median(times) if times else None,
        "min_ms": min(times) if times else None,
        "enqueue_ms": statistics.median(host) if host else None,
        "peak_mem_bytes": int(torch.cuda.max_memory_allocated()),
        "iters": args.iters,
        "warmup": args.warmup,
        "size": size,
        "grid": [r, c],
        "params": n_params,
        "channels_last": args.channels_last == "yes",
        "tf32": tf32,
        "cudnn_benchmark": bool(torch.backends.cudnn.benchmark),
        "adam": args.adam if case["train"] else None,
        "torch": torch.__version__,
        "cudnn": torch.backends.cudnn.version(),
        "device": torch.cuda.get_device_name(),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
