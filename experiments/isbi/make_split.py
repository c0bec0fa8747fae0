"""The held-out split of the ISBI 2012 membranes used by the FCN-4s/2s experiment (docs/experiments.md).

    python experiments/isbi/make_split.py [--data ../shared/data/isbi_membrane] [--out runs/isbi]

Writes ``OUT/dataset.yaml`` (pointing at the data's ``image/`` and ``label/`` folders, which stay where they are),
``OUT/train.txt`` and ``OUT/val.txt``: the 30 images sorted by their numeric names, 0-23 train, 24-29 val.
Membranes are the thin structure, so they are the foreground: mask value 0 (membrane) is class 1, 255 (cell)
class 0 (the masks' own convention is the reverse).
"""

from __future__ import annotations

import argparse
from pathlib import Path

VAL = 6


def make_split(data: Path, out: Path) -> tuple[list[str], list[str]]:
    """Writes the description and the two lists; returns (train names, val names)."""
    names = sorted((p.stem for p in (data / "image").glob("*.png")), key=int)
    if len(names) != 30:
        raise SystemExit(f"{data / 'image'}: expected the 30 ISBI images, found {len(names)}")
    train, val = names[:-VAL], names[-VAL:]
    out.mkdir(parents=True, exist_ok=True)
    (out / "dataset.yaml").write_text(
        f"images: {(data / 'image').resolve()}\nmasks: {(data / 'label').resolve()}\n"
        "classes: [cell, membrane]\nremap: {0: 1, 255: 0}\n")
    (out / "train.txt").write_text("\n".join(train) + "\n")
    (out / "val.txt").write_text("\n".join(val) + "\n")
    return train, val


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/isbi_membrane")
    p.add_argument("--out", default="runs/isbi")
    args = p.parse_args()
    train, val = make_split(Path(args.data), Path(args.out))
    print(f"{args.out}: {len(train)} train ({train[0]}..{train[-1]}), {len(val)} val ({', '.join(val)})")


if __name__ == "__main__":
    main()
