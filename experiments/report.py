"""Tables and plots of docs/experiments.md from experiments/results/*.json (written by experiments/run.py).

    python experiments/report.py            # rewrites the tables in docs/experiments.md, plots in docs/experiments/

Every number in the tables comes from a results file; the text around the tables is written by hand and
kept (only the blocks between ``<!-- table:NAME -->`` and ``<!-- /table -->`` are replaced). The side-by-side
predictions are drawn on the demo photo shipped in ``fcnseg/demo_images`` (not a CamVid image), from the
trained models in ``runs/experiments`` when they are present.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DOC = REPO / "docs" / "experiments.md"
PLOTS = REPO / "docs" / "experiments"

TABLES = {
    "e1": ["e1-fcn32s", "e1-fcn16s", "e1-fcn8s", "e1-fcn8s-atonce", "e1-fcn16s-staged", "e1-fcn8s-staged"],
    "e2": ["e2-fixed", "e1-fcn8s", "e2-learned"],
    "e3": ["e1-fcn8s", "e3-sample50", "e3-sample25", "e3-sample50-batch16"],
    "e4": ["e1-fcn8s", "e4-random"],
    "e5": ["e5-vgg16-fcn32s", "e5-vgg16-fcn8s"],
}
LABELS = {
    "e1-fcn32s": "FCN-32s", "e1-fcn16s": "FCN-16s", "e1-fcn8s": "FCN-8s", "e1-fcn8s-atonce": "FCN-8s at-once",
    "e1-fcn16s-staged": "FCN-16s staged (from the 32s)", "e1-fcn8s-staged": "FCN-8s staged (from the staged 16s)",
    "e2-fixed": "all fixed bilinear", "e2-learned": "all learned",
    "e3-sample50": "loss sampled, p=0.5", "e3-sample25": "loss sampled, p=0.25",
    "e3-sample50-batch16": "p=0.5, batch 16",
    "e4-random": "random initialisation", "e5-vgg16-fcn32s": "VGG16 FCN-32s", "e5-vgg16-fcn8s": "VGG16 FCN-8s",
}
CONTEXT = {  # what the shared base arm is in each table
    "e2": {"e1-fcn8s": "paper (learned in the skips, fixed final)"},
    "e3": {"e1-fcn8s": "whole images (p=1), batch 8"},
    "e4": {"e1-fcn8s": "ImageNet (Lite0 classifier, convolutionalized)"},
}


def load(results: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(results.glob("*.json"))}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def batch_size(record: dict) -> int:
    import yaml

    return int(yaml.safe_load((REPO / record["config"]).read_text())["batch_size"])


def _at(curve: list[dict], t: float, scale: float = 1.0) -> float | None:
    """Val mean IU where ``step * scale`` reaches ``t``, interpolated linearly between validations."""
    pts = [(c["step"] * scale, c["mean_iu"]) for c in curve if c["mean_iu"] is not None]
    if not pts or t < pts[0][0]:
        return None
    for (t0, v0), (t1, v1) in zip(pts, pts[1:]):
        if t0 <= t <= t1:
            return v0 + (v1 - v0) * (t - t0) / max(t1 - t0, 1e-9)
    return pts[-1][1] if t >= pts[-1][0] else None


def table(name: str, res: dict[str, dict]) -> str:
    arms = [a for a in TABLES[name] if a in res]
    if not arms:
        return "_No results yet: run `python experiments/run.py --exp " + name[1] + "`._"
    head = "| arm | pixel acc | mean acc | mean IU | f.w. IU | boundary IU | steps | train min (shared CPU) |"
    rows = [head, "|---|---:|---:|---:|---:|---:|---:|---:|"]
    equal = None
    if name == "e3":
        # Equal compute: every arm's val mean IU after as many images as the cheapest arm saw in all. Every
        # image costs the same forward and backward pass whatever share of its loss is kept, so images seen is
        # wall-clock on one machine, without the noise of other work sharing the CPU.
        equal = min(res[a]["steps"] * batch_size(res[a]) for a in arms)
        rows[0] = head + f" mean IU after {equal} images |"
        rows[1] += "---:|"
    for a in arms:
        r = res[a]
        s = r["scores"]
        label = CONTEXT.get(name, {}).get(a, LABELS.get(a, a))
        row = (f"| {label} (`{a}`) | {_pct(s['pixel_acc'])} | {_pct(s['mean_acc'])} | **{_pct(s['mean_iu'])}** | "
               f"{_pct(s['fw_iu'])} | {_pct(r['boundary']['mean_iu'])} | {r['steps']} | "
               f"{r['train_seconds'] / 60:.1f} |")
        if equal is not None:
            row += f" {_pct(_at(r['curve'], equal, batch_size(r)))} |"
        rows.append(row)
    return "\n".join(rows)


def machine_line(res: dict[str, dict]) -> str:
    cpus = sorted({r["machine"]["cpu"] for r in res.values()})
    torch_v = sorted({r["machine"]["torch"] for r in res.values()})
    dates = sorted(r["date"] for r in res.values())
    return (f"Machine: {', '.join(cpus)}, {res[next(iter(res))]['machine']['threads']} threads, torch "
            f"{', '.join(torch_v)}; runs from {dates[0]} to {dates[-1]}; seed 0 for every arm.")


def plot_curves(res: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for a in TABLES["e3"]:
        if a not in res:
            continue
        c = [p for p in res[a]["curve"] if p["mean_iu"] is not None]
        label = CONTEXT["e3"].get(a, LABELS[a])
        b = batch_size(res[a])
        axes[0].plot([p["step"] for p in c], [100 * p["mean_iu"] for p in c], marker="o", label=label)
        axes[1].plot([p["step"] * b for p in c], [100 * p["mean_iu"] for p in c], marker="o", label=label)
    axes[0].set_xlabel("iterations")
    axes[1].set_xlabel("images through the net (compute, i.e. wall-clock on one machine)")
    for ax in axes:
        ax.set_ylabel("val mean IU (%)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    fig.suptitle("Whole-image training vs loss sampling (CamVid val, FCN-8s Lite0)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_per_class(res: dict[str, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    arms = [a for a in ("e1-fcn32s", "e1-fcn16s", "e1-fcn8s") if a in res]
    if not arms:
        return
    names = list(res[arms[0]]["per_class_iu"])
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(11, 4))
    for k, a in enumerate(arms):
        v = [100 * (res[a]["per_class_iu"][n] or 0) for n in names]
        ax.bar(x + (k - (len(arms) - 1) / 2) * 0.27, v, 0.27, label=LABELS[a])
    ax.set_xticks(x, names, rotation=30, ha="right")
    ax.set_ylabel("val IU (%)")
    ax.set_ylim(0, 100)
    ax.legend()
    ax.grid(axis="y", alpha=0.3)
    ax.set_title("Per-class IU: FCN-32s, 16s, 8s (equal budget, from ImageNet)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_predictions(path: Path, runs: Path) -> None:
    """The demo photo through the 32s, 16s and 8s arms' models, side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fcnseg.data.images import decode_image
    from fcnseg.data.palettes import colorize
    from fcnseg.io.modelfile import load_model

    arms = [a for a in ("e1-fcn32s", "e1-fcn16s", "e1-fcn8s") if (runs / a / "model.safetensors").exists()]
    if not arms:
        return
    photo = REPO / "fcnseg" / "demo_images" / "leuvenA.jpg"
    image = decode_image(photo)
    fig, axes = plt.subplots(1, len(arms) + 1, figsize=(4 * (len(arms) + 1), 3.4))
    axes[0].imshow(image)
    axes[0].set_title("photo (fcnseg/demo_images)")
    for ax, a in zip(axes[1:], arms):
        model = load_model(runs / a / "model.safetensors")
        # the models were trained at 180x240; give them the photo at that scale (long side 320)
        labels = model.predict(str(photo), max_size=320).numpy()
        ax.imshow(colorize(labels, model.palette))
        ax.set_title(LABELS[a])
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_doc(res: dict[str, dict], doc: Path) -> None:
    text = doc.read_text()
    for name in TABLES:
        text = re.sub(rf"(<!-- table:{name} -->\n).*?(\n<!-- /table -->)",
                      lambda m, n=name: m.group(1) + table(n, res) + m.group(2), text, flags=re.S)
    if res:
        text = re.sub(r"(<!-- machine -->\n).*?(\n<!-- /machine -->)", lambda m: m.group(1) + machine_line(res)
                      + m.group(2), text, flags=re.S)
    doc.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default=str(HERE / "results"))
    p.add_argument("--runs", default=str(REPO / "runs" / "experiments"), help="run folders, for the predictions")
    p.add_argument("--doc", default=str(DOC))
    p.add_argument("--print", action="store_true", help="print the tables instead of rewriting the doc")
    args = p.parse_args(argv)
    res = load(Path(args.results))
    if args.print:
        for name in TABLES:
            print(f"\n## {name}\n{table(name, res)}")
        return 0
    PLOTS.mkdir(parents=True, exist_ok=True)
    plot_curves(res, PLOTS / "loss_sampling_curves.png")
    plot_per_class(res, PLOTS / "per_class_iu_e1.png")
    plot_predictions(PLOTS / "predictions_e1.png", Path(args.runs))
    write_doc(res, Path(args.doc))
    print(f"wrote {args.doc} and plots in {PLOTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
