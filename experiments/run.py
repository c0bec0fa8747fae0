"""Runs the paper's experiments (docs/experiments.md) arm by arm: train, then score the final model.

    python experiments/run.py e1-fcn32s e1-fcn8s      # these arms
    python experiments/run.py --exp 3                  # every arm of experiment 3 (and the base arm)
    python experiments/run.py --all                    # everything, about 2.5 hours on a 2-core CPU

Each arm is one self-contained config in ``experiments/configs/``; an arm whose ``init_from`` is another
arm's model (staged training) runs that arm first if its model is missing. A killed arm resumes from its
``last.pt`` when run again. The final model (not the best on val: choosing on val would flatter it) is
scored on val with the paper's four metrics and the boundary-band IU, and ``experiments/results/ARM.json``
records the scores, the val curve (mean IU against steps and training seconds), the wall time and the
machine. ``python experiments/report.py`` turns those files into the tables and plots of the docs page.

``--set key=value`` overrides config keys for every arm (e.g. a smoke test on a small folder dataset).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CONFIGS = HERE / "configs"
RUNS = "runs/experiments"
BASE_ARM = "e1-fcn8s"  # FCN-8s from ImageNet, whole images, paper upsampling: the control of experiments 1-4


def arms() -> list[str]:
    return sorted(p.stem for p in CONFIGS.glob("*.yaml"))


def arms_of(exp: int) -> list[str]:
    names = [a for a in arms() if a.startswith(f"e{exp}-")]
    return names if exp == 5 or BASE_ARM in names else [BASE_ARM, *names]


def _read_curve(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    keys = ("step", "epoch", "train_seconds", "pixel_acc", "mean_acc", "mean_iu", "fw_iu", "boundary_mean_iu")
    return [{k: float(r[k]) if r.get(k) not in (None, "") else None for k in keys} for r in rows]


def run_arm(name: str, overrides: list[str], results: Path, force: bool = False, done: set | None = None,
            runs: str = RUNS) -> dict:
    """Trains arm ``name`` (its parent first, for staged arms), scores it and writes ``results/NAME.json``.

    Args:
        name: the arm (a config in ``experiments/configs/``).
        overrides: ``key=value`` config overrides.
        results: folder of the ``NAME.json`` files.
        force: train and score again even if ``NAME.json`` exists.
        done: arms already run in this call (not run twice).
        runs: folder of the run folders (the configs' ``out`` and ``init_from`` point into ``runs/experiments``).
    """
    import torch

    from fcnseg.data import build_dataset, eval_transforms
    from fcnseg.evaluate import evaluate
    from fcnseg.io.modelfile import load_model
    from fcnseg.runtime.cpu import cpu_name
    from fcnseg.train import load_config, train

    done = set() if done is None else done
    cfg_path = CONFIGS / f"{name}.yaml"
    if not cfg_path.is_file():
        raise SystemExit(f"unknown arm {name!r}; arms: {', '.join(arms())}")
    cfg = load_config(cfg_path, overrides)
    if runs != RUNS:
        cfg.out = cfg.out.replace(RUNS, runs, 1)
        cfg.init_from = cfg.init_from.replace(RUNS, runs, 1) if cfg.init_from else None
    out_json = results / f"{name}.json"
    if out_json.exists() and not force and name not in done:
        print(f"{name}: {out_json} exists (--force to run again)")
        done.add(name)
        return json.loads(out_json.read_text())
    if cfg.init_from:
        parent = Path(cfg.init_from).parent.name  # runs/experiments/<parent>/model.safetensors
        if not Path(cfg.init_from).exists() and (CONFIGS / f"{parent}.yaml").exists():
            print(f"{name}: training its parent {parent} first")
            run_arm(parent, overrides, results, force, done, runs)

    print(f"== {name}: {cfg_path.relative_to(HERE.parent)} -> {cfg.out}", flush=True)
    start = time.time()
    train(cfg, resume="auto")
    wall = time.time() - start
    model_file = Path(cfg.out) / "model.safetensors"
    model = load_model(model_file)
    val = build_dataset(cfg.dataset, cfg.root, cfg.val_split, transforms=eval_transforms(
        tuple(cfg.resize) if cfg.resize else None), **cfg.dataset_options)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    r = evaluate(model, val, "cpu", channels_last=cfg.channels_last, boundary_width=cfg.boundary_width or 2)
    curve = _read_curve(Path(cfg.out) / "val_log.csv")
    record = {
        "arm": name,
        "config": str(cfg_path.relative_to(HERE.parent)),
        "overrides": overrides,
        "command": f"python experiments/run.py {name}" + "".join(f" --set {o}" for o in overrides),
        "seed": cfg.seed,
        "epochs": cfg.epochs,
        "steps": int(curve[-1]["step"]) if curve else None,
        "train_seconds": curve[-1]["train_seconds"] if curve else None,
        "wall_seconds_this_call": round(wall, 1),  # includes validation; less than the total if resumed
        "model_file": str(model_file),
        "scores": {k: r[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")},
        "boundary": {k: r["boundary"][k] for k in ("width", "pixel_acc", "mean_iu")},
        "per_class_iu": dict(zip(r["class_names"], r["per_class_iu"])),
        "curve": curve,
        "machine": {"cpu": cpu_name(), "threads": torch.get_num_threads(), "torch": torch.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }
    results.mkdir(parents=True, exist_ok=True)
    tmp = out_json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1, allow_nan=False, default=lambda v: None) + "\n")
    os.replace(tmp, out_json)
    print(f"{name}: mean IU {100 * r['mean_iu']:.2f}, boundary IU {100 * r['boundary']['mean_iu']:.2f}, "
          f"{wall / 60:.1f} min -> {out_json}", flush=True)
    done.add(name)
    return record


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arms", nargs="*", help=f"arms to run: {', '.join(arms())}")
    p.add_argument("--exp", type=int, action="append", help="every arm of this experiment (1-5)")
    p.add_argument("--all", action="store_true", help="every arm")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every arm")
    p.add_argument("--results", default=str(HERE / "results"), help="where ARM.json files go")
    p.add_argument("--runs", default=RUNS, help="folder of the run folders")
    p.add_argument("--force", action="store_true", help="run arms whose results already exist")
    args = p.parse_args(argv)
    todo = list(args.arms)
    for e in args.exp or []:
        todo += arms_of(e)
    if args.all:
        todo = arms()
    if not todo:
        p.error("name arms, --exp N or --all")
    done: set = set()
    for name in dict.fromkeys(todo):  # in order, once each
        run_arm(name, args.set, Path(args.results), args.force, done, args.runs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
