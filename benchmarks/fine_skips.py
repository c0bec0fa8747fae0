"""What FCN-4s and FCN-2s cost against FCN-8s: parameters, a training step and an inference pass, side by side.

    python benchmarks/fine_skips.py [--backbone efficientnet_lite0] [--threads 1] [--rounds 5]

The three models are timed in interleaved rounds (8s, 4s, 2s, 8s, ...), so a machine that gets busier or quieter
during the run affects them alike; the medians are reported. A training step is forward + backward + SGD of a
batch of 4 random 256x256 crops (the ISBI arms' batch); inference is one 512x512 image (an ISBI image). The
forward pass's floating-point operations (``torch.utils.flop_counter``: convolutions, transposed convolutions and
matrix products) do not depend on how busy the machine is.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import fcnseg

ARCHS = ("fcn8s", "fcn4s", "fcn2s")


def _step(model, opt, x, y) -> float:
    t = time.perf_counter()
    loss = torch.nn.functional.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return time.perf_counter() - t


def _infer(model, x) -> float:
    t = time.perf_counter()
    with torch.inference_mode():
        model(x)
    return time.perf_counter() - t


def _gflops(model, x) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter, torch.inference_mode():
        model(x)
    return counter.get_total_flops() / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    models = {a: fcnseg.build_model(a, args.backbone, 2).to(memory_format=torch.channels_last) for a in ARCHS}
    opts = {a: torch.optim.SGD(m.parameters(), lr=1e-4) for a, m in models.items()}
    x, y = torch.rand(4, 3, 256, 256), torch.randint(0, 2, (4, 256, 256))
    big = torch.rand(1, 3, 512, 512)
    train_s: dict = {a: [] for a in ARCHS}
    infer_s: dict = {a: [] for a in ARCHS}
    for r in range(args.rounds + 1):  # round 0 warms up
        for a in ARCHS:
            models[a].train()
            t = _step(models[a], opts[a], x, y)
            models[a].eval()
            i = _infer(models[a], big)
            if r:
                train_s[a].append(t)
                infer_s[a].append(i)
    print(f"{args.backbone}, {args.threads} thread(s), medians of {args.rounds} interleaved rounds")
    print(f"{'arch':6s} {'params':>10s} {'GFLOPs 512x512':>15s} {'train step (4x256x256) s':>26s} "
          f"{'inference 512x512 s':>21s}")
    base_t, base_i = statistics.median(train_s["fcn8s"]), statistics.median(infer_s["fcn8s"])
    base_f = _gflops(models["fcn8s"].eval(), big)
    for a in ARCHS:
        t, i, f = statistics.median(train_s[a]), statistics.median(infer_s[a]), _gflops(models[a].eval(), big)
        print(f"{a:6s} {fcnseg.models.count_parameters(models[a]):10,d} {f:8.3f} ({f / base_f:4.2f}x) "
              f"{t:18.3f} ({t / base_t:4.2f}x) {i:13.3f} ({i / base_i:4.2f}x)")


if __name__ == "__main__":
    main()
