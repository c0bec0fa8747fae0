"""Standard benchmarks by name: Cityscapes (19 training classes) and ADE20K (SceneParsing, 150 classes).

Both are read in their official layouts and come out as ``SegmentationDataset`` (labels in ``[0, C)`` or 255).

- Cityscapes (https://www.cityscapes-dataset.com): ``leftImg8bit/{split}/{city}/{id}_leftImg8bit.png`` with
  ``gtFine/{split}/{city}/{id}_gtFine_labelIds.png``. The labelIds (0..33) become the 19 trainIds through the
  table of ``cityscapesscripts.helpers.labels`` (the dataset's own scripts, ``pip install 'fcnseg[cityscapes]'``);
  ids whose trainId is 255 or -1 are ignored. Class names and colours come from the same table.
- ADE20K / MIT SceneParsing (ADEChallengeData2016, http://sceneparsing.csail.mit.edu):
  ``images/{training,validation}/*.jpg`` with ``annotations/{training,validation}/*.png``. Value 0 ("other")
  is ignored (255) and 1..150 become labels 0..149.
"""

from __future__ import annotations

from pathlib import Path

from .datasets import IGNORE, DatasetError, Sample, SegmentationDataset
from .palettes import default_palette

CITYSCAPES_SPLITS = ("train", "val", "test", "train_extra")
ADE_SPLITS = {"train": "training", "training": "training", "val": "validation", "validation": "validation"}

# objectInfo150 of the SceneParsing benchmark (ADEChallengeData2016), in label order 1..150 (first names only).
ADE20K_CLASSES = (
    "wall", "building", "sky", "floor", "tree", "ceiling", "road", "bed", "windowpane", "grass", "cabinet",
    "sidewalk", "person", "earth", "door", "table", "mountain", "plant", "curtain", "chair", "car", "water",
    "painting", "sofa", "shelf", "house", "sea", "mirror", "rug", "field", "armchair", "seat", "fence", "desk",
    "rock", "wardrobe", "lamp", "bathtub", "railing", "cushion", "base", "box", "column", "signboard",
    "chest of drawers", "counter", "sand", "sink", "skyscraper", "fireplace", "refrigerator", "grandstand", "path",
    "stairs", "runway", "case", "pool table", "pillow", "screen door", "stairway", "river", "bridge", "bookcase",
    "blind", "coffee table", "toilet", "flower", "book", "hill", "bench", "countertop", "stove", "palm",
    "kitchen island", "computer", "swivel chair", "boat", "bar", "arcade machine", "hovel", "bus", "towel", "light",
    "truck", "tower", "chandelier", "awning", "streetlight", "booth", "television receiver", "airplane",
    "dirt track", "apparel", "pole", "land", "bannister", "escalator", "ottoman", "bottle", "buffet", "poster",
    "stage", "van", "ship", "fountain", "conveyer belt", "canopy", "washer", "plaything", "swimming pool", "stool",
    "barrel", "basket", "waterfall", "tent", "bag", "minibike", "cradle", "oven", "ball", "food", "step", "tank",
    "trade name", "microwave", "pot", "animal", "bicycle", "lake", "dishwasher", "screen", "blanket", "sculpture",
    "hood", "sconce", "vase", "traffic light", "tray", "ashcan", "fan", "pier", "crt screen", "plate", "monitor",
    "bulletin board", "shower", "radiator", "glass", "clock", "flag",
)
assert len(ADE20K_CLASSES) == 150


def cityscapes_table() -> tuple[list[str], list[tuple[int, int, int]], dict[int, int]]:
    """``(class names, colours, labelId -> trainId remap)`` from ``cityscapesscripts.helpers.labels``.

    The names and colours are those of trainIds 0..18 in order; the remap sends every labelId 0..255 whose
    trainId is not in 0..18 to 255 (ignored). Raises ``ImportError`` naming the package when it is absent.
    """
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        raise ImportError("the cityscapes dataset reads its label table from cityscapesScripts: "
                          "pip install 'fcnseg[cityscapes]' (or pip install --no-deps cityscapesscripts)") from None
    train = sorted((lab for lab in labels if 0 <= lab.trainId < IGNORE), key=lambda lab: lab.trainId)
    if [lab.trainId for lab in train] != list(range(len(train))):
        raise ValueError("cityscapesscripts.helpers.labels: trainIds are not 0..N-1 without gaps")
    remap = {lab.id: (lab.trainId if 0 <= lab.trainId < IGNORE else IGNORE) for lab in labels if 0 <= lab.id <= 255}
    return [lab.name for lab in train], [tuple(lab.color) for lab in train], remap


def cityscapes(root, split: str = "train", *, transforms=None) -> SegmentationDataset:
    """Cityscapes' fine annotations, ``split`` in train, val, test (test labels are all ignored on the server side).

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtFine/``.
        split: a folder under both.
        transforms: joint transforms (see ``SegmentationDataset``).

    Raises:
        DatasetError: the layout is not Cityscapes' (names the folders expected) or the split has no images.
    """
    root = Path(root)
    img_dir, gt_dir = root / "leftImg8bit" / split, root / "gtFine" / split
    expected = (f"expected {root}/leftImg8bit/{split}/CITY/*_leftImg8bit.png and "
                f"{root}/gtFine/{split}/CITY/*_gtFine_labelIds.png (the official Cityscapes layout)")
    if not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: missing; {expected}")
    if not gt_dir.is_dir():
        raise DatasetError(f"{gt_dir}: missing; {expected}")
    samples = []
    for img in sorted(img_dir.glob("*/*_leftImg8bit.png")):
        stem = img.name[: -len("_leftImg8bit.png")]
        samples.append(Sample(img, gt_dir / img.parent.name / f"{stem}_gtFine_labelIds.png", stem))
    if not samples:
        raise DatasetError(f"{img_dir}: no CITY/*_leftImg8bit.png images; {expected}")
    names, colours, remap = cityscapes_table()
    return SegmentationDataset(samples, names, colours, "index", remap=remap, name=f"cityscapes:{split}",
                               transforms=transforms, exif=False,
                               mapping_note="labelIds -> the 19 trainIds of cityscapesscripts.helpers.labels, "
                                            "others (trainId 255 or -1) ignored")


def _ade_dir(root: Path) -> Path:
    for cand in (root, root / "ADEChallengeData2016"):
        if (cand / "images").is_dir() and (cand / "annotations").is_dir():
            return cand
    raise DatasetError(f"{root}: not the ADE20K layout; expected images/{{training,validation}}/*.jpg and "
                       f"annotations/{{training,validation}}/*.png in {root} or {root}/ADEChallengeData2016")


def ade20k(root, split: str = "train", *, transforms=None) -> SegmentationDataset:
    """ADE20K (SceneParsing's ADEChallengeData2016): 150 classes, value 0 ignored, values 1..150 -> 0..149.

    Args:
        root: ``ADEChallengeData2016`` or the folder holding it.
        split: "train"/"training" or "val"/"validation".
        transforms: joint transforms (see ``SegmentationDataset``).

    Raises:
        DatasetError: an unknown split, the layout is not ADE20K's (names the folders expected), or no images.
    """
    if split not in ADE_SPLITS:
        raise DatasetError(f"{root}: unknown ADE20K split {split!r}; valid: {', '.join(ADE_SPLITS)}")
    d = _ade_dir(Path(root))
    sub = ADE_SPLITS[split]
    img_dir, ann_dir = d / "images" / sub, d / "annotations" / sub
    if not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: missing; expected images/{sub}/*.jpg and annotations/{sub}/*.png in {d}")
    samples = [Sample(p, ann_dir / f"{p.stem}.png", p.stem) for p in sorted(img_dir.glob("*.jpg"))]
    if not samples:
        raise DatasetError(f"{img_dir}: no .jpg images (ADE20K's images are ADE_*.jpg)")
    remap = {0: IGNORE, **{v: v - 1 for v in range(1, 151)}}
    return SegmentationDataset(samples, list(ADE20K_CLASSES), default_palette(150), "index", remap=remap,
                               name=f"ade20k:{sub}", transforms=transforms, exif=False,
                               mapping_note="values 1..150 are the classes (shifted to 0..149), 0 (other) ignored")
