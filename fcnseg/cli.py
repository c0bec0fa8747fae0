"""The ``fcnseg`` command line."""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
from pathlib import Path

from ._optional import MissingExtra, require
from .pretrained import DEFAULT_MODEL

# fcnseg.backends.BACKENDS, written out so that building the parser imports no torch.
BACKENDS = ("auto", "torch", "compiled", "onnxruntime", "openvino")


def _cmd_models(args: argparse.Namespace) -> int:
    """Lists every (arch, backbone) with its parameter count and, with --time, a forward pass time."""
    if args.pretrained:
        return _list_pretrained()
    import torch

    from .models import ARCHS, BACKBONES, build_model, count_parameters

    torch.set_num_threads(args.threads)
    backbones = args.backbone or list(BACKBONES)
    unknown = [b for b in backbones if b not in BACKBONES]
    if unknown:  # before the table: a row per arch would only repeat it
        raise ValueError(f"unknown backbone {unknown[0]!r}; valid backbones: {', '.join(BACKBONES)}")
    size = tuple(args.size)
    header = f"{'backbone':20s} {'arch':13s} {'padding':7s} {'params':>12s}"
    print(header + (f" {'forward ms @' + 'x'.join(map(str, size)):>20s}" if args.time else ""))
    for backbone in backbones:
        for arch in ARCHS:
            try:
                model = build_model(arch, backbone, args.num_classes).eval()
            except ValueError as e:  # fcn2s on a trunk without stride-2 features
                print(f"{backbone:20s} {arch:13s} -       ({e})", flush=True)
                continue
            line = f"{backbone:20s} {arch:13s} {model.trunk.padding:7s} {count_parameters(model):12,d}"
            if args.time:
                x = torch.rand(1, 3, *size)
                with torch.inference_mode():
                    model(x)
                    times = []
                    for _ in range(args.repeat):
                        t = time.perf_counter()
                        model(x)
                        times.append(time.perf_counter() - t)
                line += f" {1000 * sorted(times)[len(times) // 2]:20.1f}"
            print(line, flush=True)
    return 0


def _list_pretrained() -> int:
    """``fcnseg models --pretrained``: the shipped models, their trunk, held-out CamVid val mean IU, file size (MB)
    and whether this installation holds the file; the default is marked."""
    from .pretrained import DEFAULT_MODEL, PRETRAINED, held_out

    print(f"{'name':30s} {'arch':6s} {'backbone':18s} {'val mean IU':>11s} {'MB':>5s}  note")
    for name, m in PRETRAINED.items():
        iu = f"{100 * m.metrics['mean_iu']:.1f}" if "mean_iu" in m.metrics else "-"
        size = f"{m.path.stat().st_size / 1e6:.1f}" if m.available() else "-"
        notes = ["default"] if name == DEFAULT_MODEL else []
        notes += [f"trained on train+val; val score of {held_out(name)}"] if m.selection else []
        notes += [] if m.available() else ["weights missing from this installation"]
        print(f"{name:30s} {m.spec['arch']:6s} {m.spec['backbone']:18s} {iu:>11s} {size:>5s}  {'; '.join(notes)}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, threads=args.threads, classifier=args.classifier)


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import load_config, train

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out={args.out}")
    if args.skip_bad:
        overrides.append("skip_bad=true")
    cfg = load_config(args.config, overrides)
    train(cfg, resume=args.resume)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import json

    import torch

    from .backends import AutoModel, default_backend
    from .data import build_dataset, eval_transforms
    from .evaluate import evaluate, format_table, write_report
    from .predict import load_for_inference
    from .runtime.allocator import loaded_allocator
    from .runtime.amp import DTYPE_NAMES
    from .runtime.distributed import finish_distributed, setup_distributed

    if args.report:  # before the evaluation, not after it
        require("matplotlib", extra="report", what="fcnseg evaluate --report")
    rank, world, device = setup_distributed(args.device)
    torch.set_num_threads(args.threads) if args.threads else None
    model = load_for_inference(args.model, args.backend, device)
    _set_threshold(model, args.threshold, args.model)
    options = json.loads(args.dataset_options) if args.dataset_options else {}
    saved = getattr(model, "info", {}).get("dataset_options") or {}
    if not options and saved and args.dataset == "folder":
        options = saved  # the classes and label mapping the model was trained with (inferred or described)
        if rank == 0:
            print(f"dataset options from the model: {saved}")
    ds = build_dataset(args.dataset, args.root, args.split, transforms=eval_transforms(), **options)
    ds.channels = getattr(model, "in_channels", 3)  # read images as the model takes them (grey, RGB, 4 bands)
    for problem in ds.check(skip_bad=args.skip_bad):
        if rank == 0:
            print(f"skipped: {problem}", file=sys.stderr)
    if rank == 0:
        from .data.summary import summary

        print(summary(ds, brief=True))
    out = Path(args.out)
    channels_last = not args.no_channels_last and isinstance(model, torch.nn.Module)  # exported files: their own
    if isinstance(model, torch.nn.Module):  # about 2x faster for the Lite trunks on CPU (train_throughput.py)
        model = model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    amp_dtype = _eval_amp(args.amp, model, ds, device, channels_last, rank == 0)
    result = evaluate(model, ds, device, amp_dtype=amp_dtype, progress=True,
                      pred_dir=out / "predictions" if args.save_predictions else None,
                      channels_last=channels_last, boundary_width=args.boundary or None,
                      per_image=args.report, scales=args.scales, flip=args.flip, window=args.window,
                      overlap=args.overlap)
    if rank == 0:
        result.update(model=str(args.model), dataset=args.dataset, split=args.split, amp=DTYPE_NAMES[amp_dtype],
                      backend=args.backend or default_backend(args.model), allocator=loaded_allocator())
        if isinstance(model, AutoModel):  # what ran each input shape, and why
            result["backend_choice"] = [model.describe(shape) for shape in model.choice]
        if getattr(model, "quantization", None):
            result["quantization"] = model.quantization
        write_report(result, out)
        if args.report:
            from .report import worst_images, write_html

            gallery = worst_images(model, ds, result["per_image"], args.report_worst, device)
            write_html(result, out, model.palette, gallery)
        print(format_table(result))
        wrote = out / ("report.html" if args.report else "metrics.json")
        print(f"{result['images_per_s']:.2f} images/s; wrote {wrote}")
        _report_compile(model)
        _report_auto(model)
    finish_distributed()
    return 0


def _eval_amp(amp: str, model, ds, device, channels_last: bool, main: bool):
    """The autocast dtype of ``fcnseg evaluate --amp``: "auto" on the CPU is timed (``evaluate.timed_amp``) and
    rank 0 prints the choice; everything else as ``resolve_amp`` says."""
    from .evaluate import timed_amp
    from .runtime.device import resolve_amp

    if amp != "auto" or device.type != "cpu":
        return resolve_amp(amp, device)
    choice = timed_amp(model, ds, device, channels_last)
    if main:
        print(f"amp auto: {choice.describe()}")
    return choice.dtype


def _cmd_data_check(args: argparse.Namespace) -> int:
    """Reads every image and mask of a split and prints what it holds; 1 if training on it would fail."""
    import json

    from .data import build_dataset
    from .data.summary import summary, training_errors

    options = json.loads(args.dataset_options) if args.dataset_options else {}
    ds = build_dataset(args.dataset, args.root, args.split, **options)
    bad = ds.check(skip_bad=True, progress=True)
    for problem in bad:
        print(f"bad pair: {problem}")
    print(summary(ds))
    errors = training_errors(ds)
    for error in errors:
        print(f"error: {error}")
    if ds.options:
        print(f"inferred; to state it in dataset.yaml instead: {json.dumps(ds.options)}")
    return 1 if errors or bad else 0


def _report_compile(model) -> None:
    """The compiled backend's compile times (one line), so a slow first image is explained."""
    seconds = getattr(model, "compile_seconds", None)
    if seconds:
        print(f"torch.compile: {len(seconds)} shapes, {sum(seconds.values()):.1f} s compiling (first calls)")


def _report_auto(model) -> None:
    """The backend ``--backend auto`` chose for each input shape, with the times that decided it (one line each)."""
    from .backends import AutoModel

    for shape in model.choice if isinstance(model, AutoModel) else ():
        print(f"backend auto: {model.describe(shape)}")


def _predict_backend(given: str | None, model: str) -> str | None:
    """``fcnseg predict``'s backend: ``--backend``; else for an exported file its own runtime (None), for other
    models ``$FCNSEG_BACKEND`` or "auto"."""
    import os

    if given or Path(model).suffix.lower() in (".onnx", ".xml"):
        return given
    backend = os.environ.get("FCNSEG_BACKEND") or "auto"
    if backend not in BACKENDS:
        raise ValueError(f"FCNSEG_BACKEND={backend!r} is not a backend; valid: {', '.join(BACKENDS)}")
    return backend


def _set_threshold(model, threshold: float | None, name) -> None:
    """``--threshold``: overrides a binary or multilabel model's stored decision threshold."""
    if threshold is None:
        return
    from .tasks import check_task

    task = getattr(model, "task", "multiclass")
    if task == "multiclass":
        raise ValueError(f"{name}: --threshold is for binary and multilabel models; this one is multiclass (argmax)")
    check_task(task, threshold)
    model.threshold = float(threshold)


def _cmd_predict(args: argparse.Namespace) -> int:
    import os

    import torch

    from .backends import AutoModel
    from .predict import load_for_inference, merge_summaries, parse_shard, predict_files
    from .runtime.allocator import loaded_allocator

    if args.merge_summaries:
        merged = merge_summaries(args.merge_summaries)
        print(f"merged {len(merged['images'])} images and {len(merged['errors'])} errors into "
              f"{Path(args.merge_summaries) / 'summary.json'}")
        return 0
    if not args.inputs:
        raise ValueError("predict: give image files, folders or patterns (or --merge-summaries DIR)")
    torch.set_num_threads(args.threads) if args.threads else None
    world = int(os.environ.get("WORLD_SIZE", "1"))
    shard = parse_shard(args.shard) if args.shard else None
    rank = 0
    if world > 1 and shard is None:  # under torchrun: this process's share, merged by rank 0 at the end
        from .runtime.distributed import setup_distributed

        rank, world, _ = setup_distributed(args.device)
        shard = (rank, world)
    model = load_for_inference(args.model, _predict_backend(args.backend, args.model), args.device)
    if isinstance(model, AutoModel):  # its choices are reported once, at the end
        model.verbose = False
    _set_threshold(model, args.threshold, args.model)
    videos = [p for p in args.inputs if Path(p).suffix.lower() in _video_exts()]
    if videos:
        if len(videos) != len(args.inputs):
            raise ValueError("give either videos or images to one fcnseg predict, not both")
        return _predict_videos(model, videos, args)
    results, errors = predict_files(model, args.inputs, args.out, max_size=args.max_size,
                                    save_overlay=not args.no_overlay, save_probs=args.probs,
                                    tile=tuple(args.window) if args.window else args.tile or None,
                                    overlap=args.overlap, flip=args.flip, scales=args.scales,
                                    batch_size=args.batch_size or 1, max_pixels=args.max_pixels or None,
                                    progress=None if not args.quiet else False, verbose=not args.quiet,
                                    shard=shard, skip_existing=args.skip_existing)
    _report_compile(model)
    _report_auto(model)
    skipped = sum(1 for r in results if r.get("skipped"))
    print(f"wrote {len(results) - skipped} predictions to {args.out}" + (
        f" ({skipped} skipped: their outputs exist)" if skipped else "") + (
        f" (shard {shard[0]}/{shard[1]})" if shard else "") + f"; memory allocator: {loaded_allocator()}")
    if args.quiet:  # quiet drops the per-image lines, not the errors
        for error in errors:
            print(f"fcnseg: error: {error}", file=sys.stderr)
    if world > 1 and not args.shard:
        _merge_under_torchrun(rank, args.out)
    if errors:
        print(f"fcnseg: {len(errors)} of {len(results) + len(errors)} images failed", file=sys.stderr)
        return 1
    return 0


def _merge_under_torchrun(rank: int, out: str) -> None:
    """Every process waits for the others; rank 0 then merges the shard summaries into summary.json."""
    import torch.distributed as dist

    from .predict import merge_summaries
    from .runtime.distributed import finish_distributed

    dist.barrier()
    if rank == 0:
        merged = merge_summaries(out)
        print(f"merged the summaries of {dist.get_world_size()} processes into {Path(out) / 'summary.json'} "
              f"({len(merged['images'])} images)")
    finish_distributed()

def _video_exts() -> set[str]:
    from .video import VIDEO_EXTS

    return VIDEO_EXTS


def _predict_videos(model, videos: list[str], args: argparse.Namespace) -> int:
    from .video import segment_video

    unused = [o for o, v in (("--probs", args.probs), ("--no-overlay", args.no_overlay), ("--max-size", args.max_size))
              if v]
    if unused:
        raise ValueError(f"{', '.join(unused)}: for images only, not videos")
    for path in videos:
        r = segment_video(model, path, args.out, save_labels=args.save_labels, smooth=args.smooth,
                          every=args.every, start=args.start, end=args.end, batch_size=args.batch_size or 4,
                          tile=args.tile or None, flip=args.flip, progress=None if not args.quiet else False)
        print(f"{path}: {r['frames']} frames {r['size'][0]}x{r['size'][1]} at {r['frames_per_s']:.1f} frames/s; "
              f"mean flicker {100 * r['mean_flicker']:.2f}%; wrote {', '.join(r['outputs'])} to {args.out}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export, verify
    from .pretrained import load

    model = load(args.model)
    suffix = {"onnx": "onnx", "openvino": "xml", "torchscript": "pt"}[args.format]
    int8 = "-int8" if args.quantize else ""
    out = Path(args.out or f"{Path(str(args.model)).stem}{int8}.{suffix}")
    if args.quantize:
        return _export_int8(model, out, args)
    t = time.perf_counter()
    out = export(model, out, args.format, labels=args.labels)
    print(f"wrote {out} ({_size_mb(out):.1f} MB) in {time.perf_counter() - t:.1f} s")
    if args.no_verify:
        return 0
    worst = 0.0
    for row in verify(model, out):
        h, w = row["size"]
        print(f"  {h}x{w}: max |scores - PyTorch| = {row['max_abs_diff']:.2e} (scores up to "
              f"{row['max_abs_score']:.2f}), same labels at {100 * row['label_agreement']:.3f}% of pixels")
        worst = max(worst, row["max_abs_diff"] / max(row["max_abs_score"], 1e-6))
        if row.get("label_output_agreement", 1.0) < 1.0:
            raise RuntimeError(f"{out}: the graph's labels output differs from the argmax of its scores on "
                               f"{100 * (1 - row['label_output_agreement']):.3f}% of pixels at {h}x{w}")
    if worst > 1e-3:
        raise RuntimeError(f"{out}: exported outputs differ from PyTorch's by {worst:.1e} (relative)")
    return 0


def _size_mb(path: Path) -> float:
    """An exported model's size on disk (an OpenVINO IR with its .bin)."""
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return sum(f.stat().st_size for f in files if f.is_file()) / 1e6


def _export_int8(model, out: Path, args: argparse.Namespace) -> int:
    """``fcnseg export --quantize int8``: calibrate on real images, check the accuracy, write (or refuse)."""
    import json

    from .quantize import calibration_set, quantize

    if args.format == "torchscript":
        raise ValueError("--quantize int8: export to onnx or openvino")
    if not (args.calibration_dataset and args.calibration_root):
        raise ValueError("--quantize int8 needs real images: --calibration-dataset D --calibration-root R "
                         "[--calibration-split S --calibration-images N]")
    options = json.loads(args.calibration_options) if args.calibration_options else None
    calib = calibration_set(model, args.calibration_dataset, args.calibration_root, args.calibration_split,
                            args.calibration_images, options)
    record = quantize(model, out, calib, args.format, source=args.model,
                      allow_accuracy_drop=args.allow_accuracy_drop, min_agreement=args.min_agreement,
                      max_iu_drop=args.max_iu_drop / 100, labels=args.labels)
    c = record["check"]
    print(f"wrote {out.with_suffix('.xml') if args.format == 'openvino' else out} ({_size_mb(out):.1f} MB) in "
          f"{record['seconds']:.1f} s: {record['scheme']}; {len(record['fp32_layers'])} layers kept in fp32 "
          f"({', '.join(record['fp32_layers'][:3])}{', ...' if len(record['fp32_layers']) > 3 else ''})")
    print(f"check on {len(calib.names)} {args.calibration_dataset} {args.calibration_split} images: labels equal "
          f"fp32's on {100 * c['pixel_agreement']:.2f}% of pixels; mean IU {100 * c['mean_iu_int8']:.2f} "
          f"(fp32 {100 * c['mean_iu_fp32']:.2f})")
    if not record["passed"]:
        print("fcnseg: warning: below the accuracy thresholds; written because of --allow-accuracy-drop",
              file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import Limits, serve

    limits = Limits(max_upload_bytes=round(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    workers=args.workers, queue=args.queue, max_batch=args.max_batch,
                    max_delay_ms=args.max_delay_ms)
    serve(args.model or [DEFAULT_MODEL], host=args.host, port=args.port, limits=limits, device=args.device,
          threads=args.threads, log_level=args.log_level, drain_timeout=args.drain_timeout, backend=args.backend)
    return 0


def _cmd_push(args: argparse.Namespace) -> int:
    import tempfile

    from .hub import parse_hf, push
    from .pretrained import load

    parse_hf(args.repo)  # a bad repository name before any loading
    model = args.model if Path(args.model).is_dir() else load(args.model)
    with tempfile.TemporaryDirectory(prefix="fcnseg-push-") as staging:
        files = push(model, args.repo, dry_run=args.dry_run, revision=args.revision, private=args.private,
                     message=args.message, staging=Path(staging) / Path(str(args.model)).stem)
        verb = "would upload" if args.dry_run else "uploaded"
        print(f"{verb} {len(files)} files to {args.repo}" + (f"@{args.revision}" if args.revision else "") + ":")
        for f in files:
            print(f"  {f.name}\t{f.stat().st_size}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `fcnseg` parser: `--debug` and one subcommand, each added by its `_add_<command>` below."""
    p = argparse.ArgumentParser(prog="fcnseg", description="Fully Convolutional Networks for semantic segmentation")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)
    _add_models(sub)
    _add_demo(sub)
    _add_train(sub)
    _add_evaluate(sub)
    _add_data(sub)
    _add_predict(sub)
    _add_export(sub)
    _add_serve(sub)
    _add_push(sub)
    return p


def _add_models(sub) -> None:
    """``fcnseg models``: architectures and backbones with parameter counts (and forward times)."""
    m = sub.add_parser("models", help="list architectures and backbones with parameter counts")
    m.add_argument("--pretrained", action="store_true",
                   help="list the shipped pretrained models instead (name, trunk, val mean IU, size)")
    m.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
    m.add_argument("--num-classes", type=int, default=21)
    m.add_argument("--time", action="store_true", help="also time one forward pass (median)")
    m.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    m.add_argument("--repeat", type=int, default=3)
    m.add_argument("--threads", type=int, default=2)
    m.set_defaults(func=_cmd_models)


def _add_demo(sub) -> None:
    """``fcnseg demo``: the shipped CamVid model on street photos, or the convolutionalized classifier."""
    d = sub.add_parser("demo", help="the shipped CamVid model on street photos (--classifier: a convolutionalized "
                                    "ImageNet classifier)")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--classifier", action="store_true", help="run the convolutionalized classifier demo instead")
    d.add_argument("--threads", type=int, default=2)
    d.set_defaults(func=_cmd_demo)


def _add_train(sub) -> None:
    """``fcnseg train``: a YAML config with key=value overrides."""
    t = sub.add_parser("train", help="train an FCN from a YAML config (key=value overrides)",
                       description="Train an FCN. Config keys are documented in fcnseg.train.TrainConfig.")
    t.add_argument("--config", help="YAML config (configs/*.yaml)")
    t.add_argument("--resume", action="store_const", const="auto", help="resume from OUT/last.pt if it exists")
    t.add_argument("--resume-from", dest="resume", metavar="CKPT", help="resume from this checkpoint")
    t.add_argument("--out", help="run folder (overrides the config's out)")
    t.add_argument("--skip-bad", action="store_true", help="report and skip bad image/mask pairs (skip_bad=true)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=10 lr=1e-3")
    t.set_defaults(func=_cmd_train)


def _add_evaluate(sub) -> None:
    """``fcnseg evaluate``: the paper's four metrics of a model on a dataset split."""
    e = sub.add_parser("evaluate", help="pixel acc, mean acc, mean IU, fw IU of a model on a dataset")
    e.add_argument("--model", required=True, help="a pretrained model name, a .safetensors file, or an .onnx / "
                   "OpenVINO .xml file from fcnseg export (fp32 or int8)")
    e.add_argument("--backend", choices=BACKENDS, help="run with PyTorch eager, torch.compile, ONNX Runtime or "
                   "OpenVINO, or auto: the fastest of them in fp32 (default: torch; onnxruntime for .onnx, "
                   "openvino for .xml files)")
    e.add_argument("--dataset", required=True, help="camvid, voc, sbd, cityscapes, ade20k, folder or multilabel")
    e.add_argument("--root", required=True, help="the dataset folder")
    e.add_argument("--split", default="val")
    e.add_argument("--out", default="outputs/evaluate", help="folder for metrics.json and plots")
    e.add_argument("--save-predictions", action="store_true", help="also write predicted label PNGs")
    e.add_argument("--skip-bad", action="store_true", help="report and skip bad image/mask pairs")
    e.add_argument("--dataset-options", help='extra dataset arguments as JSON, e.g. \'{"sbd_root": "..."}\'')
    e.add_argument("--device", default="auto")
    e.add_argument("--amp", default="off", choices=("off", "auto", "bf16", "fp16"),
                   help="autocast dtype; auto: bf16 on CUDA, and on a CPU with native bf16 whichever of fp32 and "
                        "bf16 a timed forward pass shows faster (off: fp32 results)")
    e.add_argument("--threads", type=int)
    e.add_argument("--no-channels-last", action="store_true", help="keep the default memory format")
    e.add_argument("--boundary", type=int, metavar="W",
                   help="also score pixels within W pixels of label edges (how sharp the boundaries are)")
    e.add_argument("--report", action="store_true", help="also write OUT/report.html: metrics, per-class IU bars, "
                   "confusion matrix and a gallery of the worst images, in one self-contained page")
    e.add_argument("--report-worst", type=int, default=8, metavar="N", help="images in the report's gallery")
    e.add_argument("--threshold", type=float, help="binary/multilabel models: probability from which a pixel is "
                   "foreground (default: the one stored with the model)")
    e.add_argument("--scales", type=float, nargs="+", metavar="S", help="test-time augmentation: average the "
                   "probabilities at these input scales, e.g. 0.75 1.0 1.25 1.5 (recorded in metrics.json)")
    e.add_argument("--flip", action="store_true", help="test-time augmentation: also the mirrored image")
    e.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                   help="sliding-window evaluation: images larger than H x W in overlapping H x W windows")
    e.add_argument("--overlap", type=int, default=128, help="pixels shared by neighbouring windows")
    e.set_defaults(func=_cmd_evaluate)


def _add_data(sub) -> None:
    """``fcnseg data check``: every image and mask of a split read and summarised."""
    dt = sub.add_parser("data", help="inspect a dataset: fcnseg data check --dataset D --root R [--split S]")
    dsub = dt.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="read every image and mask; print sizes, mask values, the label mapping, "
                        "class shares, EXIF rotations and warnings (exit 1 on bad files or untrainable data)")
    c.add_argument("--dataset", required=True, help="camvid, voc, sbd, cityscapes, ade20k or folder")
    c.add_argument("--root", required=True, help="the dataset folder")
    c.add_argument("--split", help="a split (default: the whole folder; train for the others)")
    c.add_argument("--dataset-options", help='extra dataset arguments as JSON, e.g. \'{"snap": true}\'')
    c.set_defaults(func=_cmd_data_check)


def _add_predict(sub) -> None:
    """``fcnseg predict``: images (label PNGs, overlays, probabilities) or videos (overlay videos)."""
    r = sub.add_parser("predict", help="segment images: label PNGs, overlays, probabilities, class shares")
    r.add_argument("inputs", nargs="*", help="image files, folders of images, glob patterns, or video files "
                   "(.mp4 .mkv .avi .webm .mov ...: writes NAME_overlay.mp4 and NAME_frames.csv)")
    r.add_argument("--model", default=DEFAULT_MODEL,
                   help="a pretrained name, a .safetensors file, a Hub-style folder, hf://ORG/NAME[@REV], or an "
                        ".onnx / OpenVINO .xml file from fcnseg export (fp32 or int8)")
    r.add_argument("--backend", choices=BACKENDS, help="run with PyTorch eager, torch.compile, ONNX Runtime or "
                   "OpenVINO; auto (the default; $FCNSEG_BACKEND sets another): on the CPU the fastest of eager "
                   "PyTorch, OpenVINO and ONNX Runtime in fp32, timed per input shape (.onnx and .xml files: "
                   "their own runtime)")
    r.add_argument("--out", default="outputs/predict")
    r.add_argument("--tile", type=int, default=1024,
                   help="segment images larger than TILE x TILE pixels in overlapping windows (0: always whole)")
    r.add_argument("--overlap", type=int, default=128, help="pixels shared by neighbouring windows")
    r.add_argument("--flip", action="store_true", help="test-time augmentation: average with the mirrored image")
    r.add_argument("--scales", type=float, nargs="+", metavar="S",
                   help="test-time augmentation: average the probabilities at these input scales (0.75 1.0 1.25)")
    r.add_argument("--window", type=int, nargs=2, metavar=("H", "W"),
                   help="segment images larger than H x W in overlapping H x W windows (instead of --tile)")
    r.add_argument("--batch-size", type=int, default=None,
                   help="images (or windows) per forward pass (default 1; 4 frames for videos)")
    r.add_argument("--max-size", type=int, help="segment a copy downscaled to this long side")
    r.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="refuse larger images (decompression bombs); 0 for no limit")
    r.add_argument("--probs", action="store_true", help="also write NAME_probs.npz (float16 class probabilities)")
    r.add_argument("--no-overlay", action="store_true", help="write label maps only")
    r.add_argument("--threshold", type=float, help="binary/multilabel models: probability from which a pixel is "
                   "foreground (default: the one stored with the model)")
    r.add_argument("--quiet", action="store_true", help="no progress bar or per-image lines")
    r.add_argument("--save-labels", action="store_true", help="videos: also write NAME_labels/NNNNNN.png per frame")
    r.add_argument("--smooth", type=float, default=0.0, metavar="ALPHA",
                   help="videos: average class probabilities over frames, s = ALPHA*s + (1-ALPHA)*p (0: off)")
    r.add_argument("--every", type=int, default=1, metavar="N", help="videos: segment every Nth frame")
    r.add_argument("--start", metavar="T", help="videos: first frame: a frame number (300) or seconds (10s, 2.5s)")
    r.add_argument("--end", metavar="T", help="videos: stop before this frame number (900) or time (30s)")
    r.add_argument("--device", default="auto")
    r.add_argument("--threads", type=int)
    r.add_argument("--shard", metavar="I/N", help="segment only every N-th image from the I-th (0-based) of the "
                   "sorted inputs, with the file names a single run gives; writes summary-shard-I-of-N.json "
                   "(under torchrun: rank/world size, merged by rank 0)")
    r.add_argument("--skip-existing", action="store_true",
                   help="do not segment images whose output files already exist (resume an interrupted run)")
    r.add_argument("--merge-summaries", metavar="DIR",
                   help="merge DIR's summary-shard-*.json into DIR/summary.json and exit")
    r.set_defaults(func=_cmd_predict)


def _add_export(sub) -> None:
    """``fcnseg export``: ONNX, OpenVINO or TorchScript, verified against PyTorch; int8 with ``--quantize``."""
    x = sub.add_parser("export", help="export a model to ONNX or OpenVINO (dynamic batch, height, width; int8 with "
                                      "--quantize) or TorchScript")
    x.add_argument("--model", default=DEFAULT_MODEL, help="a pretrained name or a .safetensors file")
    x.add_argument("--format", default="onnx", choices=("onnx", "openvino", "torchscript"))
    x.add_argument("--out", help="output file (default: MODEL.onnx, MODEL.xml (+ .bin) or MODEL.pt here; "
                   "MODEL-int8.* quantized)")
    x.add_argument("--quantize", choices=("int8",), help="static post-training int8, calibrated on real images "
                   "(onnx: ONNX Runtime QDQ, per-channel weights; openvino: NNCF)")
    x.add_argument("--calibration-dataset", metavar="D", help="camvid, voc, folder, ... (with --quantize)")
    x.add_argument("--calibration-root", metavar="R", help="the calibration dataset's folder")
    x.add_argument("--calibration-split", default="train", metavar="S")
    x.add_argument("--calibration-images", type=int, default=32, metavar="N",
                   help="images to calibrate and check on, evenly spaced over the split")
    x.add_argument("--calibration-options", help="extra dataset arguments as JSON")
    x.add_argument("--min-agreement", type=float, default=0.98, metavar="F", help="least share of pixels whose "
                   "int8 label equals fp32's on the calibration images (default 0.98)")
    x.add_argument("--max-iu-drop", type=float, default=1.0, metavar="POINTS", help="most mean IU points (0-100) "
                   "the int8 file may lose against fp32 on the calibration images (default 1.0)")
    x.add_argument("--allow-accuracy-drop", action="store_true", help="write the int8 file even when it misses "
                   "--min-agreement or --max-iu-drop")
    x.add_argument("--labels", action="store_true", help="the graph also outputs the uint8 label map (argmax; "
                   "multiclass models): 1 byte per pixel leaves the runtime instead of 4 per class and pixel")
    x.add_argument("--no-verify", action="store_true", help="skip comparing outputs with PyTorch on 4 sizes")
    x.set_defaults(func=_cmd_export)


def _add_serve(sub) -> None:
    """``fcnseg serve``: the web app and its JSON/PNG API, with its limits."""
    s = sub.add_parser("serve", help="a local web app and JSON/PNG API: drop images, see the overlay and shares")
    s.add_argument("--model", action="append", help="a pretrained name, a .safetensors or an .onnx file "
                   f"(repeatable; the first is the default; default: {DEFAULT_MODEL})")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (413 beyond)")
    s.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="largest image in pixels, checked from the header (413 beyond: decompression bombs)")
    s.add_argument("--workers", type=int, default=1, help="images segmented at once")
    s.add_argument("--queue", type=int, default=8, help="requests waiting for a worker; more get 503 + Retry-After")
    s.add_argument("--device", default="auto")
    s.add_argument("--backend", choices=BACKENDS, help="run every model with this backend (default: torch; "
                   "onnxruntime for .onnx, openvino for .xml files)")
    s.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (warning: no line per request)")
    s.add_argument("--max-batch", type=int, default=1, metavar="N",
                   help="dynamic batching: segment up to N same-sized images of one model in one forward pass")
    s.add_argument("--max-delay-ms", type=float, default=5.0, metavar="T",
                   help="with --max-batch: how long the first image waits for others")
    s.add_argument("--drain-timeout", type=float, default=60.0, metavar="S",
                   help="on SIGTERM/Ctrl-C, seconds to finish admitted requests before exiting anyway")
    s.set_defaults(func=_cmd_serve)


def _add_push(sub) -> None:
    """``fcnseg push``: a model to the Hugging Face Hub."""
    h = sub.add_parser("push", help="upload a model to the Hugging Face Hub as config.json, model.safetensors and "
                                    "README.md (needs huggingface_hub and a token)")
    h.add_argument("--model", required=True, help="a Hub-style folder, a .safetensors file or a pretrained name")
    h.add_argument("--repo", required=True, help="ORG/NAME on the Hub")
    h.add_argument("--revision", help="branch to push to (default: main)")
    h.add_argument("--private", action="store_true", help="create the repository as private")
    h.add_argument("--message", help="commit message")
    h.add_argument("--dry-run", action="store_true", help="list the exact files and sizes; send nothing")
    h.set_defaults(func=_cmd_push)


def _may_run_openvino(args: argparse.Namespace) -> bool:
    """Whether the command may load OpenVINO: ``--backend openvino``, an ``.xml`` IR, or ``auto`` with openvino
    installed. OpenVINO's runtime aborts in a process with tcmalloc preloaded (free(): invalid pointer, with
    libtcmalloc-minimal 4.5 and openvino 2026.4), so such a command keeps the system's allocator."""
    import importlib.util

    backend = getattr(args, "backend", None)
    model = str(getattr(args, "model", None) or "")
    if args.func is _cmd_predict:
        try:
            backend = _predict_backend(backend, model)
        except ValueError:  # a wrong $FCNSEG_BACKEND: the command itself says so
            return False
    if backend == "openvino" or model.lower().endswith(".xml"):
        return True
    return backend == "auto" and importlib.util.find_spec("openvino") is not None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # The command line itself, not a call from Python: the commands whose large tensors glibc's malloc maps and
    # page-faults afresh at each use start again under tcmalloc (docs/training.md, docs/inference.md).
    if argv is None and args.func in (_cmd_train, _cmd_evaluate, _cmd_predict) and not _may_run_openvino(args):
        from .runtime.allocator import reexec_under_tcmalloc

        reexec_under_tcmalloc(sys.argv[1:])
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError, MissingExtra) as e:
        if args.debug:
            traceback.print_exc()
        for problem in getattr(e, "problems", []):  # every bad pair, when none was usable (--skip-bad)
            print(f"skipped: {problem}", file=sys.stderr)
        prefix = _rank_prefix(e)
        print(f"fcnseg: error: {prefix}{one_line(e)}", file=sys.stderr)
        if prefix:  # the group's backend failed (a lost peer): leaving it can block for good; exit at once
            sys.stderr.flush()
            sys.stdout.flush()
            os._exit(2)
        _leave_process_group()
        return 2


def _rank_prefix(e: BaseException) -> str:
    """"rank R of W: " for an error of the process group's backend under torchrun (a lost peer: gloo names only its
    address; DDP's backward hands it on as a plain RuntimeError, hence the test on the message)."""
    dist = sys.modules.get("torch.distributed")
    if dist is None or not dist.is_available() or not dist.is_initialized():
        return ""
    if not isinstance(e, getattr(dist, "DistError", ())) and not any(w in str(e) for w in ("gloo", "NCCL")):
        return ""
    return f"rank {dist.get_rank()} of {dist.get_world_size()}: "


def one_line(e: BaseException) -> str:
    """The message of ``e`` as one line.

    An error raised in a DataLoader worker comes back as "Caught DatasetError in DataLoader worker process 0.
    Original Traceback ...": the useful line (naming the file) is the last, "module.DatasetError: path: ...".
    """
    text = str(e).strip() or type(e).__name__
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "Original Traceback" in text:
        last = lines[-1]
        head, sep, rest = last.partition(": ")
        return rest if sep and head.replace(".", "").replace("_", "").isalnum() else last
    return "; ".join(lines)


def _leave_process_group() -> None:
    """Under torchrun, an error on one process takes its process group down at once, so the other processes
    fail now rather than waiting for a collective that never comes (torchrun's agent then stops them)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # already broken: exiting is all that is left
        pass


if __name__ == "__main__":
    sys.exit(main())
