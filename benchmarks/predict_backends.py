"""Whole ``fcnseg predict`` commands, one per backend, on the same images: wall time, images/s, peak RSS, and the
share of pixels whose labels equal eager PyTorch's.

    python benchmarks/predict_backends.py ../shared/data/camvid/val --model camvid-fcn4s-lite0
    python benchmarks/predict_backends.py photos/ --backends torch auto openvino --repeats 3 --out benchmarks/results/x

What a user of ``fcnseg predict`` waits for, start to end: the process start, loading the model, ``--backend
auto``'s timing of each backend on the first image of each size, decoding, the forward passes, and writing the
label PNGs (``--no-overlay``). Every command runs ``--repeats`` times, the backends interleaved, each in a process
of its own under the allocator ``fcnseg predict`` picks (tcmalloc where installed). The ONNX export that the
exported backends and ``auto`` read is made once before the timed runs (its time is reported on its own: a user
pays it once per model, then it is cached), into a cache of this run's own. Records the CPU model and flags.
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
from pathlib import Path

import numpy as np
from PIL import Image

from fcnseg.runtime.cpu import cpu_name, key_flags


def _predict(images: str, model: str, backend: str, out: Path, env: dict[str, str]) -> tuple[float, float, str]:
    """One ``fcnseg predict``: (wall seconds, peak RSS MB by ``/usr/bin/time``, its ``backend auto:`` lines)."""
    cmd = [sys.executable, "-m", "fcnseg.cli", "predict", images, "--model", model, "--backend", backend,
           "--out", str(out), "--no-overlay", "--quiet"]
    t = time.perf_counter()
    r = subprocess.run(["/usr/bin/time", "-f", "maxrss_kb %M", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"fcnseg predict --backend {backend} failed:\n{r.stderr[-2000:]}")
    rss = [int(line.split()[1]) / 1024 for line in r.stderr.splitlines() if line.startswith("maxrss_kb ")]
    auto = [line for line in r.stdout.splitlines() if line.startswith("backend auto: ")]
    return wall, rss[-1], "; ".join(auto)


def _agreement(out: Path, ref: Path) -> float:
    """The share of pixels whose labels in ``out`` equal those in ``ref`` (every label PNG of ``ref``)."""
    same = total = 0
    for png in sorted(ref.glob("*.png")):
        a, b = np.asarray(Image.open(png)), np.asarray(Image.open(out / png.name))
        same, total = same + int((a == b).sum()), total + a.size
    return same / total


def run(args: argparse.Namespace, tmp: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "FCNSEG_CACHE": str(tmp / "cache")}
    count = len(list(Path(args.images).glob("*.png")) + list(Path(args.images).glob("*.jpg")))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"from fcnseg.export import cached_onnx; cached_onnx({args.model!r})"],
                   check=True, env=env)
    export_s = time.perf_counter() - t
    walls: dict[str, list[float]] = {b: [] for b in args.backends}
    rss: dict[str, list[float]] = {b: [] for b in args.backends}
    auto: list[str] = []
    for k in range(args.repeats):
        for backend in args.backends:
            wall, mb, lines = _predict(args.images, args.model, backend, tmp / f"{backend}-{k}", env)
            walls[backend].append(wall)
            rss[backend].append(mb)
            auto += [lines] if lines else []
            print(f"{backend} run {k + 1}: {wall:.1f} s{'; ' + lines if lines else ''}", flush=True)
    ref = tmp / "torch-0" if "torch" in args.backends else None
    rows = [_row(b, walls[b], rss[b], count, _agreement(tmp / f"{b}-0", ref) if ref else None) for b in args.backends]
    return {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "images": args.images,
            "num_images": count, "model": args.model, "threads": args.threads, "repeats": args.repeats,
            "onnx_export_s": round(export_s, 1), "auto_choices": sorted(set(auto)), "rows": rows,
            "cpu": cpu_name(), "cpu_flags": key_flags(), "machine": platform.machine(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _row(backend: str, walls: list[float], rss: list[float], count: int, agreement: float | None) -> dict:
    median = statistics.median(walls)
    return {"backend": backend, "wall_s": [round(w, 2) for w in walls], "median_wall_s": round(median, 2),
            "images_per_s": round(count / median, 2), "peak_rss_mb": round(max(rss)),
            "labels_equal_torch": None if agreement is None else round(agreement, 6)}


def markdown(result: dict) -> str:
    flags = ", ".join(k for k, v in result["cpu_flags"].items() if v)
    lines = [f"# fcnseg predict by backend: {result['model']} on {result['num_images']} images of {result['images']}",
             "", f"`{result['command']}`", "",
             f"CPU: {result['cpu']} ({flags or 'none of the key flags'}), {result['threads']} threads, "
             f"{result['date']}; ONNX export (once, cached): {result['onnx_export_s']} s.", "",
             "| backend | wall s (each run) | median wall s | images/s | peak RSS MB | labels equal eager PyTorch |",
             "|---|---|---:|---:|---:|---:|"]
    for r in result["rows"]:
        eq = "" if r["labels_equal_torch"] is None else f"{100 * r['labels_equal_torch']:.3f} %"
        lines.append(f"| {r['backend']} | {', '.join(map(str, r['wall_s']))} | {r['median_wall_s']} | "
                     f"{r['images_per_s']} | {r['peak_rss_mb']} | {eq} |")
    lines += ["", "auto chose: " + (" / ".join(result["auto_choices"]) or "(auto not run)"), ""]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("images", help="a folder of images (its .png and .jpg files)")
    p.add_argument("--model", default="camvid-fcn4s-lite0")
    p.add_argument("--backends", nargs="+", default=["torch", "auto", "openvino", "onnxruntime"])
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", help="write OUT.md and OUT.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        result = run(args, Path(tmp))
    print(markdown(result))
    if args.out:
        Path(args.out).with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
        Path(args.out).with_suffix(".md").write_text(markdown(result))


if __name__ == "__main__":
    main()
