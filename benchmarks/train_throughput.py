"""Training and evaluation throughput of the two recipes on real CamVid images, side by side.

    python benchmarks/train_throughput.py [--root ../shared/data/camvid] [--steps 20] [--backbone efficientnet_lite0]
    python benchmarks/train_throughput.py --only bf16 channels_last --arch fcn4s --no-eval   # fp32 against bf16

Runs ``fcnseg train`` for a few steps in each mode (same backbone, same data, same machine, one after the
other) and reports training images/s from the run's own log (first steps dropped as warm-up), then the
evaluation images/s over the val split at full resolution. The bf16 rows run where the CPU computes bf16
natively (AVX512-BF16 or AMX); "amp auto" is what the default ``amp: auto`` chose (it prints its timing). The
CPU's model name and flags are printed first.
"""

from __future__ import annotations

import argparse
import csv
import tempfile
from pathlib import Path

import torch

from fcnseg.data import build_dataset, eval_transforms
from fcnseg.evaluate import evaluate
from fcnseg.runtime.cpu import cpu_has_fast_bf16, cpu_name, key_flags
from fcnseg.train import load_config, train


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", default="../shared/data/camvid")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--backbone", default="efficientnet_lite0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--eval-images", type=int, default=40)
    ap.add_argument("--arch", default="fcn8s")
    ap.add_argument("--only", nargs="+", metavar="WORD", help="only recipes whose name contains one of these words")
    ap.add_argument("--no-eval", dest="eval", action="store_false", help="skip the evaluation rows")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    modern = dict(mode="modern", batch_size=8, crop=[288, 384])
    runs = {
        "heavy (batch 1, whole 480x360, SGD 0.99, summed loss)": dict(mode="heavy", lr=1e-10, amp="off"),
        "modern (batch 8 of 288x384 crops, AdamW, fp32)": dict(modern, amp="off"),
        "modern + channels_last": dict(modern, channels_last=True, amp="off"),
        "modern + channels_last + bf16 autocast": dict(modern, channels_last=True, amp="bf16"),
        "modern + channels_last + amp auto": dict(modern, channels_last=True, amp="auto"),
        "modern + loss sampling 0.25": dict(modern, loss_sample=0.25, amp="off"),
    }
    if not cpu_has_fast_bf16():
        runs = {k: v for k, v in runs.items() if v["amp"] != "bf16"}
    if args.only:
        runs = {k: v for k, v in runs.items() if any(w.lower() in k.lower() for w in args.only)}
    flags = [f for f, present in key_flags().items() if present]
    print(f"CPU: {cpu_name()}; flags: {', '.join(flags) or 'none of avx2/avx512/amx'}; {args.threads} threads; "
          f"{args.arch} {args.backbone}")
    print(f"{'recipe':58s} {'train img/s':>11s}")
    model = None
    for name, extra in runs.items():
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(None, dict(dataset="camvid", root=args.root, arch=args.arch, backbone=args.backbone,
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
    if not args.eval:
        return
    val = build_dataset("camvid", args.root, "val", transforms=eval_transforms())
    val.samples = val.samples[: args.eval_images]
    for cl, amp in [(False, None), (True, None)] + ([(True, torch.bfloat16)] if cpu_has_fast_bf16() else []):
        m = model.to(memory_format=torch.channels_last if cl else torch.contiguous_format)
        r = evaluate(m, val, channels_last=cl, amp_dtype=amp)
        name = "evaluate 480x360, batch 1" + (", channels_last" if cl else "") + (", bf16" if amp else "")
        print(f"{name:58s} {r['images_per_s']:11.2f}")


if __name__ == "__main__":
    main()
