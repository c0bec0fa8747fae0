"""The ``fcnseg`` command line."""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path


def _cmd_models(args: argparse.Namespace) -> int:
    """Lists every (arch, backbone) with its parameter count and, with --time, a forward pass time."""
    import torch

    from .models import ARCHS, BACKBONES, build_model, count_parameters

    torch.set_num_threads(args.threads)
    backbones = args.backbone or list(BACKBONES)
    size = tuple(args.size)
    header = f"{'backbone':20s} {'arch':13s} {'padding':7s} {'params':>12s}"
    print(header + (f" {'forward ms @' + 'x'.join(map(str, size)):>20s}" if args.time else ""))
    for backbone in backbones:
        for arch in ARCHS:
            model = build_model(arch, backbone, args.num_classes).eval()
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

    from .data import build_dataset, eval_transforms
    from .evaluate import evaluate, format_table, write_report
    from .pretrained import load
    from .train import finish_distributed, resolve_amp, setup_distributed

    rank, world, device = setup_distributed(args.device)
    torch.set_num_threads(args.threads) if args.threads else None
    model = load(args.model, device=device)
    options = json.loads(args.dataset_options) if args.dataset_options else {}
    saved = getattr(model, "info", {}).get("dataset_options") or {}
    if not options and saved and args.dataset == "folder":
        options = saved  # the classes and label mapping the model was trained with (inferred or described)
        if rank == 0:
            print(f"dataset options from the model: {saved}")
    ds = build_dataset(args.dataset, args.root, args.split, transforms=eval_transforms(), **options)
    for problem in ds.check(skip_bad=args.skip_bad):
        if rank == 0:
            print(f"skipped: {problem}", file=sys.stderr)
    if rank == 0:
        from .data.summary import summary

        print(summary(ds, brief=True))
    out = Path(args.out)
    if not args.no_channels_last:  # about 2x faster for the Lite trunks on CPU (benchmarks/train_throughput.py)
        model = model.to(memory_format=torch.channels_last)
    result = evaluate(model, ds, device, amp_dtype=resolve_amp(args.amp, device), progress=True,
                      pred_dir=out / "predictions" if args.save_predictions else None,
                      channels_last=not args.no_channels_last, boundary_width=args.boundary or None,
                      per_image=args.report)
    if rank == 0:
        result.update(model=str(args.model), dataset=args.dataset, split=args.split)
        gallery = None
        if args.report:
            from .report import worst_images

            gallery = worst_images(model, ds, result["per_image"], args.report_worst, device)
        write_report(result, out, html=args.report, palette=model.palette, gallery=gallery)
        print(format_table(result))
        wrote = out / ("report.html" if args.report else "metrics.json")
        print(f"{result['images_per_s']:.2f} images/s; wrote {wrote}")
    finish_distributed()
    return 0


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


def _load_for_inference(name: str, backend: str, device: str):
    """An FCN (PyTorch) or an ``OnnxModel`` from a pretrained name, a ``.safetensors`` or an ``.onnx`` file."""
    import torch

    from .export import OnnxModel, onnx_for
    from .pretrained import load
    from .train import resolve_device

    if str(name).endswith(".onnx"):
        if backend == "torch":
            raise ValueError(f"{name}: an ONNX file runs with --backend onnxruntime")
        return OnnxModel(name)
    if backend == "onnxruntime":
        return onnx_for(name)
    model = load(name, device=resolve_device(device))
    if next(model.parameters()).device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # 1.1-1.4x faster CPU inference (benchmarks/)
    return model


def _cmd_predict(args: argparse.Namespace) -> int:
    import torch

    from .predict import predict_files

    torch.set_num_threads(args.threads) if args.threads else None
    backend = args.backend or ("onnxruntime" if str(args.model).endswith(".onnx") else "torch")
    model = _load_for_inference(args.model, backend, args.device)
    videos = [p for p in args.inputs if Path(p).suffix.lower() in _video_exts()]
    if videos:
        if len(videos) != len(args.inputs):
            raise ValueError("give either videos or images to one fcnseg predict, not both")
        return _predict_videos(model, videos, args)
    results, errors = predict_files(model, args.inputs, args.out, max_size=args.max_size,
                                    save_overlay=not args.no_overlay, save_probs=args.probs,
                                    tile=args.tile or None, overlap=args.overlap, flip=args.flip,
                                    batch_size=args.batch_size or 1, max_pixels=args.max_pixels or None,
                                    progress=None if not args.quiet else False, verbose=not args.quiet)
    print(f"wrote {len(results)} predictions to {args.out}")
    if args.quiet:  # quiet drops the per-image lines, not the errors
        for error in errors:
            print(f"fcnseg: error: {error}", file=sys.stderr)
    if errors:
        print(f"fcnseg: {len(errors)} of {len(results) + len(errors)} images failed", file=sys.stderr)
        return 1
    return 0


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
    out = Path(args.out or f"{Path(str(args.model)).stem}.{'onnx' if args.format == 'onnx' else 'pt'}")
    t = time.perf_counter()
    export(model, out, args.format)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) in {time.perf_counter() - t:.1f} s")
    if args.no_verify:
        return 0
    worst = 0.0
    for row in verify(model, out):
        h, w = row["size"]
        print(f"  {h}x{w}: max |scores - PyTorch| = {row['max_abs_diff']:.2e} (scores up to "
              f"{row['max_abs_score']:.2f}), same labels at {100 * row['label_agreement']:.3f}% of pixels")
        worst = max(worst, row["max_abs_diff"] / max(row["max_abs_score"], 1e-6))
    if worst > 1e-3:
        raise RuntimeError(f"{out}: exported outputs differ from PyTorch's by {worst:.1e} (relative)")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from .serve import Limits, serve

    limits = Limits(max_upload_bytes=round(args.max_upload_mb * 2**20), max_pixels=args.max_pixels,
                    workers=args.workers, queue=args.queue)
    serve(args.model or ["camvid-fcn8s-lite0"], host=args.host, port=args.port, limits=limits, device=args.device,
          threads=args.threads, log_level=args.log_level)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fcnseg", description="Fully Convolutional Networks for semantic segmentation")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = p.add_subparsers(dest="command", required=True)

    m = sub.add_parser("models", help="list architectures and backbones with parameter counts")
    m.add_argument("--backbone", action="append", help="only this backbone (repeatable)")
    m.add_argument("--num-classes", type=int, default=21)
    m.add_argument("--time", action="store_true", help="also time one forward pass (median)")
    m.add_argument("--size", type=int, nargs=2, default=(360, 480), metavar=("H", "W"))
    m.add_argument("--repeat", type=int, default=3)
    m.add_argument("--threads", type=int, default=2)
    m.set_defaults(func=_cmd_models)

    d = sub.add_parser("demo", help="the shipped CamVid model on street photos (--classifier: a convolutionalized "
                                    "ImageNet classifier)")
    d.add_argument("--out", default="outputs/demo")
    d.add_argument("--classifier", action="store_true", help="run the convolutionalized classifier demo instead")
    d.add_argument("--threads", type=int, default=2)
    d.set_defaults(func=_cmd_demo)

    t = sub.add_parser("train", help="train an FCN from a YAML config (key=value overrides)",
                       description="Train an FCN. Config keys are documented in fcnseg.train.TrainConfig.")
    t.add_argument("--config", help="YAML config (configs/*.yaml)")
    t.add_argument("--resume", action="store_const", const="auto", help="resume from OUT/last.pt if it exists")
    t.add_argument("--resume-from", dest="resume", metavar="CKPT", help="resume from this checkpoint")
    t.add_argument("--out", help="run folder (overrides the config's out)")
    t.add_argument("--skip-bad", action="store_true", help="report and skip bad image/mask pairs (skip_bad=true)")
    t.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. epochs=10 lr=1e-3")
    t.set_defaults(func=_cmd_train)

    e = sub.add_parser("evaluate", help="pixel acc, mean acc, mean IU, fw IU of a model on a dataset")
    e.add_argument("--model", required=True, help="a pretrained model name or a .safetensors file")
    e.add_argument("--dataset", required=True, help="camvid, voc, sbd or folder")
    e.add_argument("--root", required=True, help="the dataset folder")
    e.add_argument("--split", default="val")
    e.add_argument("--out", default="outputs/evaluate", help="folder for metrics.json and plots")
    e.add_argument("--save-predictions", action="store_true", help="also write predicted label PNGs")
    e.add_argument("--skip-bad", action="store_true", help="report and skip bad image/mask pairs")
    e.add_argument("--dataset-options", help='extra dataset arguments as JSON, e.g. \'{"sbd_root": "..."}\'')
    e.add_argument("--device", default="auto")
    e.add_argument("--amp", default="off", choices=("off", "auto", "bf16", "fp16"))
    e.add_argument("--threads", type=int)
    e.add_argument("--no-channels-last", action="store_true", help="keep the default memory format")
    e.add_argument("--boundary", type=int, metavar="W",
                   help="also score pixels within W pixels of label edges (how sharp the boundaries are)")
    e.add_argument("--report", action="store_true", help="also write OUT/report.html: metrics, per-class IU bars, "
                   "confusion matrix and a gallery of the worst images, in one self-contained page")
    e.add_argument("--report-worst", type=int, default=8, metavar="N", help="images in the report's gallery")
    e.set_defaults(func=_cmd_evaluate)

    dt = sub.add_parser("data", help="inspect a dataset: fcnseg data check --dataset D --root R [--split S]")
    dsub = dt.add_subparsers(dest="data_command", required=True)
    c = dsub.add_parser("check", help="read every image and mask; print sizes, mask values, the label mapping, "
                        "class shares, EXIF rotations and warnings (exit 1 on bad files or untrainable data)")
    c.add_argument("--dataset", required=True, help="camvid, voc, sbd or folder")
    c.add_argument("--root", required=True, help="the dataset folder")
    c.add_argument("--split", help="a split (default: the whole folder; train for the others)")
    c.add_argument("--dataset-options", help='extra dataset arguments as JSON, e.g. \'{"snap": true}\'')
    c.set_defaults(func=_cmd_data_check)

    r = sub.add_parser("predict", help="segment images: label PNGs, overlays, probabilities, class shares")
    r.add_argument("inputs", nargs="+", help="image files, folders of images, glob patterns, or video files "
                   "(.mp4 .mkv .avi .webm .mov ...: writes NAME_overlay.mp4 and NAME_frames.csv)")
    r.add_argument("--model", default="camvid-fcn8s-lite0",
                   help="a pretrained name, a .safetensors file, or an .onnx file from fcnseg export")
    r.add_argument("--backend", choices=("torch", "onnxruntime"),
                   help="run with PyTorch or ONNX Runtime (default: torch; onnxruntime for .onnx files)")
    r.add_argument("--out", default="outputs/predict")
    r.add_argument("--tile", type=int, default=1024,
                   help="segment images larger than TILE x TILE pixels in overlapping windows (0: always whole)")
    r.add_argument("--overlap", type=int, default=128, help="pixels shared by neighbouring windows")
    r.add_argument("--flip", action="store_true", help="test-time augmentation: average with the mirrored image")
    r.add_argument("--batch-size", type=int, default=None,
                   help="images (or windows) per forward pass (default 1; 4 frames for videos)")
    r.add_argument("--max-size", type=int, help="segment a copy downscaled to this long side")
    r.add_argument("--max-pixels", type=int, default=100_000_000,
                   help="refuse larger images (decompression bombs); 0 for no limit")
    r.add_argument("--probs", action="store_true", help="also write NAME_probs.npz (float16 class probabilities)")
    r.add_argument("--no-overlay", action="store_true", help="write label maps only")
    r.add_argument("--quiet", action="store_true", help="no progress bar or per-image lines")
    r.add_argument("--save-labels", action="store_true", help="videos: also write NAME_labels/NNNNNN.png per frame")
    r.add_argument("--smooth", type=float, default=0.0, metavar="ALPHA",
                   help="videos: average class probabilities over frames, s = ALPHA*s + (1-ALPHA)*p (0: off)")
    r.add_argument("--every", type=int, default=1, metavar="N", help="videos: segment every Nth frame")
    r.add_argument("--start", metavar="T", help="videos: first frame: a frame number (300) or seconds (10s, 2.5s)")
    r.add_argument("--end", metavar="T", help="videos: stop before this frame number (900) or time (30s)")
    r.add_argument("--device", default="auto")
    r.add_argument("--threads", type=int)
    r.set_defaults(func=_cmd_predict)

    x = sub.add_parser("export", help="export a model to ONNX (dynamic batch, height, width) or TorchScript")
    x.add_argument("--model", default="camvid-fcn8s-lite0", help="a pretrained name or a .safetensors file")
    x.add_argument("--format", default="onnx", choices=("onnx", "torchscript"))
    x.add_argument("--out", help="output file (default: MODEL.onnx or MODEL.pt here)")
    x.add_argument("--no-verify", action="store_true", help="skip comparing outputs with PyTorch on 4 sizes")
    x.set_defaults(func=_cmd_export)

    s = sub.add_parser("serve", help="a local web app and JSON/PNG API: drop images, see the overlay and shares")
    s.add_argument("--model", action="append", help="a pretrained name, a .safetensors or an .onnx file "
                   "(repeatable; the first is the default; default: camvid-fcn8s-lite0)")
    s.add_argument("--host", default="127.0.0.1", help="address to bind (default loopback: this machine only)")
    s.add_argument("--port", type=int, default=8000)
    s.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload in MiB (413 beyond)")
    s.add_argument("--max-pixels", type=int, default=40_000_000,
                   help="largest image in pixels, checked from the header (413 beyond: decompression bombs)")
    s.add_argument("--workers", type=int, default=1, help="images segmented at once")
    s.add_argument("--queue", type=int, default=8, help="requests waiting for a worker; more get 503 + Retry-After")
    s.add_argument("--device", default="auto")
    s.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    s.add_argument("--log-level", default="info", choices=("critical", "error", "warning", "info", "debug"),
                   help="uvicorn's log level (warning: no line per request)")
    s.set_defaults(func=_cmd_serve)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError, OSError) as e:
        if args.debug:
            traceback.print_exc()
        for problem in getattr(e, "problems", []):  # every bad pair, when none was usable (--skip-bad)
            print(f"skipped: {problem}", file=sys.stderr)
        print(f"fcnseg: error: {one_line(e)}", file=sys.stderr)
        _leave_process_group()
        return 2


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
