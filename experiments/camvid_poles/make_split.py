"""A second thin-structure task for the folder preset: CamVid's poles as a binary task, 20 training images.

    python experiments/camvid_poles/make_split.py [--data ../shared/data/camvid] [--out runs/camvid-poles] [--train 20]

The ISBI membranes are the only thin-structure data here, and the folder preset (``fcnseg/presets/folder.yaml``)
must not be tuned to one set. CamVid's poles (class 2: poles, lamp posts, a few to a dozen pixels wide) are
thin structures on real street photos; with 20 training images they make a dataset shaped like a vessel
benchmark (DRIVE has 20). Writes, under OUT, per-file symbolic links ``images/{train,val}/`` and
``masks/{train,val}/`` to the CamVid files (nothing is copied or derived) and a ``dataset.yaml`` that reads the
CamVid labels as ``pole`` (class 1) against ``background`` (class 0), void (11) ignored. Train: ``--train`` images
evenly spaced over the sorted CamVid train list; val: all 101 CamVid val images.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

POLE, VOID, CLASSES = 2, 11, 11


def _link(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    os.symlink(src.resolve(), dst)


def make_split(data: Path, out: Path, n_train: int = 20) -> tuple[list[str], list[str]]:
    """Writes the links and the description; returns (train names, val names)."""
    split_names = {s: sorted(p.name for p in (data / s).glob("*.png")) for s in ("train", "val")}
    if not split_names["train"] or not split_names["val"]:
        raise SystemExit(f"{data}: expected CamVid's train/ and val/ folders of PNG images")
    train = [split_names["train"][round(i * (len(split_names["train"]) - 1) / (n_train - 1))] for i in range(n_train)]
    chosen = {"train": train, "val": split_names["val"]}
    for split, names in chosen.items():
        for name in names:
            _link(data / split / name, out / "images" / split / name)
            _link(data / f"{split}annot" / name, out / "masks" / split / name)
    remap = {k: (1 if k == POLE else 0) for k in range(CLASSES)} | {VOID: 255}
    (out / "dataset.yaml").write_text("classes: [background, pole]\nremap: {"
                                      + ", ".join(f"{k}: {v}" for k, v in remap.items()) + "}\n")
    return train, chosen["val"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/camvid")
    p.add_argument("--out", default="runs/camvid-poles")
    p.add_argument("--train", type=int, default=20)
    args = p.parse_args()
    train, val = make_split(Path(args.data), Path(args.out), args.train)
    print(f"{args.out}: {len(train)} train, {len(val)} val (pole = class 1, void ignored)")


if __name__ == "__main__":
    main()
