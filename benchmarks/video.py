"""Video: flicker and mean IU with and without --smooth, and frames/s, on a clip built from CamVid val.

CamVid's val split is one driving sequence (0016E5_07959 ... 08159, every 2nd frame of the 30 fps camera,
so 15 frames/s), each frame annotated. This script encodes them losslessly (FFV1) into a temporary clip,
segments it with ``fcnseg.predict_video`` and scores each frame against its annotation; then it times
``segment_video`` (decode, segment, overlay, encode; what ``fcnseg predict CLIP`` does) at 360x480 and, on
the frames upscaled, 720x960, with PyTorch and ONNX Runtime. Nothing is written outside a temporary folder.

    python benchmarks/video.py [--data ../shared/data/camvid] [--threads 2] [--frames 40]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch
from PIL import Image

import fcnseg
from fcnseg.metrics import ConfusionMatrix, scores
from fcnseg.pretrained import held_out
from fcnseg.video import flicker, predict_video, segment_video


def make_clip(frames: list[Path], path: Path, size: tuple[int, int] | None = None, fps: int = 15) -> Path:
    """Encodes the images losslessly (FFV1 in Matroska), resized to ``size`` ``(H, W)`` if given."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("ffv1", rate=fps)
        for k, f in enumerate(frames):
            im = Image.open(f).convert("RGB")
            if size:
                im = im.resize(size[::-1], Image.BILINEAR)
            if k == 0:
                s.width, s.height, s.pix_fmt = im.width, im.height, "yuv444p"
            c.mux(s.encode(av.VideoFrame.from_ndarray(np.asarray(im), format="rgb24")))
        c.mux(s.encode())
    return path


def steadiness(model, clip: Path, annots: list[Path], alpha: float) -> dict:
    """Mean flicker (share of pixels whose label changes between consecutive frames) and mean IU."""
    cm = ConfusionMatrix(model.num_classes, ignore_index=model.num_classes)
    prev, changes = None, []
    for i, labels in predict_video(model, clip, smooth=alpha):
        cm.update(torch.from_numpy(np.asarray(Image.open(annots[i]), dtype=np.int64)), torch.from_numpy(labels))
        if prev is not None:
            changes.append(flicker(prev, labels))
        prev = labels
    # What flickers on its own: pixels whose annotation changes between the frames (motion, not noise).
    truth = [flicker(np.asarray(Image.open(a)), np.asarray(Image.open(b))) for a, b in zip(annots, annots[1:])]
    s = scores(cm.mat)
    return {"smooth": alpha, "flicker": round(float(np.mean(changes)), 4), "annotation_flicker":
            round(float(np.mean(truth)), 4), "mean_iu": round(s["mean_iu"], 4), "pixel_acc": round(s["pixel_acc"], 4)}


def speed(model, clip: Path, out: Path) -> dict:
    segment_video(model, clip, out, end=2)  # warm-up
    t, cpu = time.perf_counter(), time.process_time()
    n = sum(1 for _ in predict_video(model, clip))
    model_only = n / (time.perf_counter() - t)
    t, cpu = time.perf_counter(), time.process_time()
    r = segment_video(model, clip, out)
    # CPU seconds per frame (all threads) say what real time needs, however busy the machine is.
    return {"frames": n, "predict_video_fps": round(model_only, 2), "segment_video_fps": r["frames_per_s"],
            "segment_video_cpu_ms_per_frame": round(1000 * (time.process_time() - cpu) / n, 1)}


def cpu_name() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        return next(line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data" / "camvid"))
    ap.add_argument("--model", default=held_out(), help="scored on CamVid val, so the default is held out there")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--frames", type=int, default=40, help="frames timed at each size")
    ap.add_argument("--alphas", type=float, nargs="*", default=[0.0, 0.3, 0.5, 0.7, 0.85],
                    help="--smooth values to score (none: time only)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    data = Path(args.data)
    frames = sorted((data / "val").glob("0016E5_*.png"))
    annots = [data / "valannot" / f.name for f in frames]
    model = fcnseg.load(args.model).eval().to(memory_format=torch.channels_last)
    result = {"cpu": cpu_name(), "threads": args.threads, "model": args.model, "frames": len(frames),
              "load_average_before": [round(x, 2) for x in os.getloadavg()]}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        clip = make_clip(frames, tmp / "camvid_val.mkv")
        result["steadiness"] = [steadiness(model, clip, annots, a) for a in args.alphas or []]
        for row in result["steadiness"]:
            print(json.dumps(row), flush=True)
        from fcnseg.export import onnx_for

        backends = {"torch": model, "onnxruntime": onnx_for(args.model, threads=args.threads)}
        result["speed"] = []
        for size in ((360, 480), (720, 960)):
            small = make_clip(frames[:args.frames], tmp / f"c{size[0]}.mkv", size=size)
            for name, m in backends.items():
                row = {"size": list(size), "backend": name, **speed(m, small, tmp / "out"),
                       "load_average": round(os.getloadavg()[0], 2)}
                result["speed"].append(row)
                print(json.dumps(row), flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
