"""Training and evaluation throughput of the two recipes on real CamVid images, side by side.

    python benchmarks/train_throughput.py [--root ../shared/data/camvid] [--steps 20] [--backbone efficientnet_lite0]

Runs ``fcnseg train`` for a few steps in each mode (same backbone, same data, same machine, one after the
other) and reports training images/s from the run's own log (first steps dropped as warm-up), then the
evaluation images/s over the val split at full resolution.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import torch

from fcnseg.data import build_dataset, eval_transforms
from fcnseg.evaluate import evaluate
from fcnseg.train import load_config, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="../shared/data/camvid")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-images", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    runs = {
        "heavy (batch 1, whole 480x360, SGD 0.99, summed loss)": dict(mode="heavy", lr=1e-10),
        "modern (batch 8 of 288x384 crops, AdamW, fp32)": dict(mode="modern", batch_size=8, crop=[288, 384]),
        "modern + channels_last": dict(mode="modern", batch_size=8, crop=[288, 384], channels_last=True),
        "modern + loss sampling 0.25": dict(mode="modern", batch_size=8, crop=[288, 384], loss_sample=0.25),
    }
    print(f"{'recipe':58s} {'train img/s':>11s}")
    model = None
    for name, extra in runs.items():
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(None, dict(dataset="camvid", root=args.root, arch="fcn8s", backbone=args.backbone,
                                         val_split=None, max_steps=args.steps, epochs=1000, workers=1,
                                         threads=args.threads, tensorboard=False, out=out, log_every=10**9,
                                         **extra))
            train(cfg)
            with open(Path(out) / "train_log.csv") as f:
                rows = list(csv.DictReader(f))
            warm = max(2, len(rows) // 4)
            t = float(rows[-1]["seconds"]) - float(rows[warm - 1]["seconds"])
            images = (len(rows) - warm) * cfg.batch_size
            print(f"{name:58s} {images / t:11.2f}", flush=True)
            if model is None:
                from fcnseg.io.modelfile import load_model

                model = load_model(Path(out) / "model.safetensors")
    val = build_dataset("camvid", args.root, "val", transforms=eval_transforms())
    val.samples = val.samples[: args.eval_images]
    for cl in (False, True):
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        r = evaluate(m, val, channels_last=cl)
        print(f"{'evaluate 480x360, batch 1' + (', channels_last' if cl else ''):58s} {r['images_per_s']:11.2f}")


if __name__ == "__main__":
    main()
