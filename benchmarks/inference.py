"""Inference speed side by side: fcnseg's FCN-8s (PyTorch and ONNX Runtime) against peers, in one run.

    python benchmarks/inference.py                      # CPU, batch 1, 2 threads, 500x500 and 360x480
    python benchmarks/inference.py --device cuda        # a GPU: fp32 and fp16 autocast rows

Each row runs in a fresh subprocess, so its peak RSS is its own (every process pays the same ~0.5 GB for
importing torch). Per row: median latency, images/s, peak RSS, GFLOPs per image (counted with
``torch.utils.flop_counter`` on the PyTorch model; an ONNX row has its PyTorch twin's count) and the
achieved GFLOP/s as a fraction of this machine's fp32 GEMM peak, measured first in the same run
(a 4096^3 ``torch.mm``, best of 5).

Peers (not fcnseg dependencies: the ``bench`` extra and ``pip install --no-deps torchfcn``, both done by
``make test``'s setup): torchvision's ``fcn_resnet50`` and
``lraspp_mobilenet_v3_large``, and ``torchfcn`` (pytorch-fcn, the reference PyTorch port of the paper's
Caffe models) ``FCN8s``. torchfcn imports the ``fcn`` package only to download weights; that package needs
chainer, which does not build here, so an empty stand-in module is registered before importing torchfcn.
All models have 21 classes (PASCAL VOC) and random weights: speed does not depend on the values.

Also checked in the same run: fcnseg's FCN-8s-VGG16 loaded with torchfcn FCN8s's weights gives the same
scores (max abs difference reported), so the two timed VGG16 models compute the same function; and the
confusion matrix's accumulation rate (Mpixel/s) on 360x480 label maps.

Writes ``OUT.json`` and ``OUT.md`` (default ``benchmarks/results/inference-<device>``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

NUM_CLASSES = 21
ROWS = {
    # name: (library, model, runtime)
    "fcnseg FCN-8s VGG16 (eager)": ("fcnseg", "vgg16", "eager"),
    "fcnseg FCN-8s VGG16 (channels_last)": ("fcnseg", "vgg16", "channels_last"),
    "fcnseg FCN-8s VGG16 (ONNX Runtime)": ("fcnseg", "vgg16", "onnxruntime"),
    "torchfcn FCN8s (eager)": ("torchfcn", "FCN8s", "eager"),
    "fcnseg FCN-8s Lite0 (eager)": ("fcnseg", "efficientnet_lite0", "eager"),
    "fcnseg FCN-8s Lite0 (channels_last)": ("fcnseg", "efficientnet_lite0", "channels_last"),
    "fcnseg FCN-8s Lite0 (ONNX Runtime)": ("fcnseg", "efficientnet_lite0", "onnxruntime"),
    "torchvision lraspp_mobilenet_v3_large (eager)": ("torchvision", "lraspp_mobilenet_v3_large", "eager"),
    "torchvision fcn_resnet50 (eager)": ("torchvision", "fcn_resnet50", "eager"),
}


def _torchfcn():
    sys.modules.setdefault("fcn", types.ModuleType("fcn"))  # see the module docstring
    import torchfcn

    return torchfcn


def build(library: str, name: str):
    import torch

    torch.manual_seed(0)
    if library == "fcnseg":
        from fcnseg import build_model

        # VGG16 with all upsampling learned: exactly torchfcn's FCN8s (134,489,759 parameters), so the two
        # rows time the same function (checked by ``agreement``).
        upsampling = "learned" if name == "vgg16" else "paper"
        return build_model("fcn8s", name, NUM_CLASSES, upsampling=upsampling)
    if library == "torchfcn":
        return getattr(_torchfcn().models, name)(n_class=NUM_CLASSES)
    import torchvision

    kw = {"aux_loss": False} if name == "fcn_resnet50" else {}
    return getattr(torchvision.models.segmentation, name)(weights=None, weights_backbone=None,
                                                          num_classes=NUM_CLASSES, **kw)


def _scores(out):
    return out["out"] if isinstance(out, dict) else out  # torchvision's models return a dict


def worker(args: argparse.Namespace) -> dict:
    """Times one row in this process and returns its figures."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    library, name, runtime = ROWS[args.row]
    h, w = args.size
    device = torch.device(args.device)
    x = torch.rand(1, 3, h, w)
    if runtime == "onnxruntime":
        from fcnseg.export import OnnxModel

        model = OnnxModel(args.onnx, threads=args.threads)
        flops = args.flops
        run = model
    else:
        model = build(library, name).eval().to(device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            _scores(model(x.to(device)))
        flops = counter.get_total_flops()
        fmt = torch.channels_last if runtime == "channels_last" else torch.contiguous_format
        model = model.to(memory_format=fmt)
        x = x.to(device).contiguous(memory_format=fmt)
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(args.amp)

        def run(inp):
            with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return _scores(model(inp))

    times = []
    for i in range(args.warmup + args.repeat):
        t = time.perf_counter()
        run(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    row = {"row": args.row, "library": library, "model": name, "runtime": runtime, "amp": args.amp or "fp32",
           "size": [h, w], "median_ms": 1000 * median, "images_per_s": 1 / median, "gflops": flops / 1e9,
           "achieved_gflops_per_s": flops / 1e9 / median,
           "peak_rss_mb": peak_rss_mb(),
           "times_ms": [1000 * t for t in times]}
    if device.type == "cuda":
        row["peak_gpu_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return row


def peak_rss_mb() -> float:
    # VmHWM belongs to this process's address space, which exec starts afresh; getrusage's ru_maxrss would
    # also count the parent's resident size at fork time (Linux carries it across exec).
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gemm_peak(threads: int, device: str) -> float:
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(4096, 4096, device=device), torch.randn(4096, 4096, device=device)
    best = float("inf")
    for _ in range(6):
        t = time.perf_counter()
        torch.mm(a, b)
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return 2 * 4096**3 / best / 1e9


def agreement(threads: int) -> dict:
    """torchfcn FCN8s with random weights, loaded into fcnseg: the scores of both on one 500x500 image."""
    import torch

    from fcnseg.io.modelfile import load_torchfcn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    ref = _torchfcn().models.FCN8s(n_class=NUM_CLASSES).eval()
    with torch.no_grad():  # torchfcn zeroes its convolutions; random weights make the comparison mean something
        for m in ref.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                torch.nn.init.normal_(m.bias, std=0.01)
    ours = load_torchfcn(ref)
    x = torch.rand(1, 3, 500, 500)
    with torch.inference_mode():
        a, b = ours(x), ref(ours.normalize(x))
    return {"max_abs_diff": float((a - b).abs().max()), "max_abs_score": float(b.abs().max()),
            "label_agreement": float((a.argmax(1) == b.argmax(1)).float().mean())}


def confusion_rate(threads: int) -> float:
    import torch

    from fcnseg.metrics import ConfusionMatrix

    torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    target = torch.randint(0, 11, (8, 360, 480), generator=g)
    target[:, :20] = 255
    pred = torch.randint(0, 11, (8, 360, 480), generator=g)
    cm = ConfusionMatrix(11)
    cm.update(target, pred)
    t = time.perf_counter()
    for _ in range(10):
        cm.update(target, pred)
    return 10 * target.numel() / (time.perf_counter() - t) / 1e6


def _child(args: argparse.Namespace, *extra: str) -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--device", args.device, *extra]
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _export_onnx(backbone: str, path: Path) -> None:
    from fcnseg.export import export_onnx

    export_onnx(build("fcnseg", backbone), path)


def markdown(result: dict) -> str:
    lines = [f"Device: {result['device_name']}; {result['threads']} threads; batch 1; median of {result['repeat']} "
             f"after {result['warmup']} warm-up runs. fp32 GEMM peak (4096^3 torch.mm, same run): "
             f"**{result['gemm_peak_gflops']:.0f} GFLOP/s**.", ""]
    lines += ["| model | size | median ms | images/s | peak RSS MB | GFLOPs | GFLOP/s | of peak |",
              "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        amp = "" if r["amp"] == "fp32" else f" {r['amp']}"
        lines.append(f"| {r['row']}{amp} | {r['size'][0]}x{r['size'][1]} | {r['median_ms']:.1f} | "
                     f"{r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {r['gflops']:.1f} | "
                     f"{r['achieved_gflops_per_s']:.0f} | {r['fraction_of_peak']:.2f} |")
    a = result.get("agreement")
    if a:
        lines += ["", f"fcnseg FCN-8s VGG16 carrying torchfcn FCN8s's (random) weights, 500x500: max |difference| "
                      f"{a['max_abs_diff']:.2e} (scores up to {a['max_abs_score']:.1f}), same label at "
                      f"{100 * a['label_agreement']:.2f}% of pixels."]
    lines += ["", f"Confusion matrix accumulation, 8 x 360x480 maps of 11 classes: "
                  f"{result['confusion_mpixel_per_s']:.0f} Mpixel/s.", ""]
    lines += ["Ratios:"] + [f"- {k}: {v:.2f}" for k, v in result["ratios"].items()]
    return "\n".join(lines) + "\n"


def ratios(rows: list[dict]) -> dict:
    def ms(row: str, size: tuple[int, int]) -> float | None:
        hits = [r["median_ms"] for r in rows if r["row"] == row and tuple(r["size"]) == size and r["amp"] == "fp32"]
        return hits[0] if hits else None

    out = {}
    for size in ((500, 500), (360, 480)):
        s = f"{size[0]}x{size[1]}"
        tf, ort = ms("torchfcn FCN8s (eager)", size), ms("fcnseg FCN-8s VGG16 (ONNX Runtime)", size)
        cl = ms("fcnseg FCN-8s VGG16 (channels_last)", size)
        if tf and ort:
            out[f"torchfcn FCN8s / fcnseg VGG16 ONNX Runtime, {s} (speed-up)"] = tf / ort
        if tf and cl:
            out[f"torchfcn FCN8s / fcnseg VGG16 channels_last, {s} (speed-up)"] = tf / cl
        lr, lite = ms("torchvision lraspp_mobilenet_v3_large (eager)", size), ms("fcnseg FCN-8s Lite0 (ONNX Runtime)",
                                                                                  size)
        if lr and lite:
            out[f"lraspp_mobilenet_v3_large / fcnseg Lite0 ONNX Runtime, {s} (speed-up)"] = lr / lite
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["500x500", "360x480"], help="HxW sizes")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), help="only these rows (default: all)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--out", help="output stem (default benchmarks/results/inference-<device>)")
    # Internal: one measurement in this process.
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    p.add_argument("--flops", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--amp", help=argparse.SUPPRESS)
    p.add_argument("--task", choices=("gemm", "agreement", "confusion"), help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.task:
        value = {"gemm": lambda: gemm_peak(args.threads, args.device), "agreement": lambda: agreement(args.threads),
                 "confusion": lambda: confusion_rate(args.threads)}[args.task]()
        print(json.dumps(value))
        return 0
    if args.row:
        print(json.dumps(worker(args)))
        return 0

    import torch

    from fcnseg.runtime.cpu import cpu_name

    device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                   else f"{platform.processor() or platform.machine()} ({cpu_name()})")
    peak = _child(args, "--task", "gemm")
    print(f"fp32 GEMM peak: {peak:.0f} GFLOP/s ({device_name}, {args.threads} threads)", flush=True)
    names = args.rows or list(ROWS)
    rows: list[dict] = []
    amps = [None] if args.device == "cpu" else [None, "fp16"]
    with tempfile.TemporaryDirectory() as tmp:
        for size_text in args.sizes:
            size = [int(v) for v in size_text.lower().split("x")]
            for name in names:
                library, model, runtime = ROWS[name]
                extra = ["--row", name, "--size", *map(str, size), "--repeat", str(args.repeat),
                         "--warmup", str(args.warmup)]
                if runtime == "onnxruntime":
                    if args.device == "cuda":
                        continue  # the CPU build of ONNX Runtime is what fcnseg installs
                    onnx = Path(tmp) / f"{model}.onnx"
                    if not onnx.exists():
                        _export_onnx(model, onnx)
                    twin = [r for r in rows if r["library"] == "fcnseg" and r["model"] == model and r["size"] == size]
                    extra += ["--onnx", str(onnx), "--flops", str(twin[0]["gflops"] * 1e9 if twin else 0.0)]
                for amp in amps:
                    row = _child(args, *extra, *(["--amp", amp] if amp else []))
                    row["fraction_of_peak"] = row["achieved_gflops_per_s"] / peak
                    rows.append(row)
                    print(f"{name:48s} {size_text:8s} {row['amp']:5s} {row['median_ms']:8.1f} ms "
                          f"{row['images_per_s']:6.2f} img/s {row['peak_rss_mb']:6.0f} MB {row['gflops']:7.1f} GFLOP "
                          f"{row['fraction_of_peak']:.2f} of peak", flush=True)
    result = {"device": args.device, "device_name": device_name, "threads": args.threads, "repeat": args.repeat,
              "warmup": args.warmup, "gemm_peak_gflops": peak, "torch": torch.__version__, "rows": rows,
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if args.device == "cpu" and any(ROWS[n][0] == "torchfcn" for n in names):
        result["agreement"] = _child(args, "--task", "agreement")
    result["confusion_mpixel_per_s"] = _child(args, "--task", "confusion")
    result["ratios"] = ratios(rows)
    out = Path(args.out or Path(__file__).parent / "results" / f"inference-{args.device}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
