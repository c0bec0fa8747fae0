"""Segmentation datasets: PASCAL VOC, SBD, CamVid and any folder of images and masks.

Every dataset is a list of (image, mask) files plus what it takes to read a mask into labels: the mask
format ("index": palette or grey PNG whose values are labels, "rgb": colour PNG mapped through the
palette, "mat": SBD's MATLAB files) and a lookup table that remaps raw values (CamVid's void 11 -> 255).
Labels come out in ``[0, num_classes)`` or 255 (ignored); anything else is an error naming the file.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .._optional import require
from .images import IMAGE_EXTS, MAX_PIXELS, ImageError, check_pixels, decode_image, to_float
from .masks import Mapping, MaskValueError, from_levels, from_threshold, infer_mapping
from .palettes import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, default_palette, voc_palette

IGNORE = 255


class DatasetError(ValueError):
    """A problem with a dataset file; the message starts with the file's path. ``problems``: when ``check``
    found no usable pair, the message of every bad one."""

    problems: list[str] = []


@dataclass
class Sample:
    image: Path
    mask: Path | None
    name: str
    looked_for: str | None = None  # where a missing mask was looked for (folder datasets), for the message


@dataclass
class DatasetStats:
    """What ``SegmentationDataset.check`` saw, for the summary (``fcnseg.data.summary``).

    Attributes:
        sizes: ``(width, height)`` of each usable image, in order.
        label_pixels: int64 pixel counts per label, ``num_classes + 1`` long (the last: ignored pixels).
        raw_values: int64 pixel counts per raw mask value 0..255 (index masks; None for rgb and mat masks).
        rotated: ``(name, EXIF orientation)`` of the images turned upright per EXIF.
        mask_kinds: counts of mask file kinds (e.g. ``"PNG L"``).
    """

    sizes: list[tuple[int, int]]
    label_pixels: np.ndarray
    raw_values: np.ndarray | None
    rotated: list[tuple[str, int]]
    mask_kinds: dict[str, int]


@dataclass
class SegmentationDataset(torch.utils.data.Dataset):
    """Image/mask pairs read as ``(uint8 HxWx3 image, int64 HxW labels)``.

    Args:
        samples: the files, in order.
        class_names: one name per class (background included where the dataset has it).
        palette: one RGB colour per class (for "rgb" masks and for drawing).
        mask_format: "index", "rgb" or "mat" (see the module docstring).
        remap: raw mask value -> label (values not listed map to themselves); 255 means ignore.
        void_colours: RGB colours of ignored pixels in "rgb" masks.
        name: a short name for messages.
        transforms: called as ``transforms(image, mask)`` on tensors (see ``fcnseg.data.transforms``);
            ``None`` gives the image as a float ``(3, H, W)`` tensor in [0, 1] and the labels as int64.
        exif: turn images upright per their EXIF orientation, as ``predict`` does (annotation tools show and
            label the upright view); masks carry no orientation and must match the upright image. Off for VOC,
            SBD and CamVid, whose masks were drawn on the stored pixels.
        mapping_kind: how the mapping was decided: "described", "binary", "levels", "labels", "snapped",
            "threshold" (folder datasets, see ``fcnseg.data.masks``) or "" (the dataset's own definition).
        mapping_note: one line on how mask values became labels (inferred or described), for the summary.
        options: the builder options that give the same classes and mapping without inferring them again
            (folder datasets; written into a run's ``config.yaml``).
        notes: warnings found while pairing files (images without a matching name, masks without an image).
        channels: image channels read (3 RGB; 1 grey; 4 for 4-band files such as RGB-NIR), see
            ``images.decode_image``; training sets it from ``in_channels``.
    """

    samples: list[Sample]
    class_names: list[str]
    palette: list[tuple[int, int, int]]
    mask_format: str = "index"
    remap: dict[int, int] = field(default_factory=dict)
    void_colours: list[tuple[int, int, int]] = field(default_factory=list)
    name: str = "dataset"
    transforms: Callable | None = None
    exif: bool = True
    mapping_kind: str = ""
    mapping_note: str = ""
    options: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    stats: DatasetStats | None = field(default=None, repr=False)
    channels: int = 3

    def __post_init__(self) -> None:
        if self.mask_format not in ("index", "rgb", "mat"):
            raise ValueError(f"{self.name}: unknown mask format {self.mask_format!r} (index, rgb or mat)")
        if len(self.palette) < self.num_classes:
            raise ValueError(f"{self.name}: palette has {len(self.palette)} colours for {self.num_classes} classes")
        self._lut = np.arange(256, dtype=np.int64)
        for raw, label in self.remap.items():
            if not 0 <= int(raw) <= 255 or not (0 <= int(label) < self.num_classes or int(label) == IGNORE):
                raise ValueError(f"{self.name}: bad remap entry {raw} -> {label} for {self.num_classes} classes")
            self._lut[int(raw)] = int(label)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def __len__(self) -> int:
        return len(self.samples)

    def read_image(self, i: int) -> np.ndarray:
        """The image as ``HxWx3`` uint8 RGB, upright per EXIF unless ``exif`` is off; ``DatasetError`` if bad."""
        path = self.samples[i].image
        try:
            return decode_image(path, exif=self.exif, channels=self.channels)
        except FileNotFoundError:
            raise DatasetError(f"{path}: image file is missing") from None
        except ImageError as e:
            raise DatasetError(str(e)) from None

    def read_raw_mask(self, i: int) -> np.ndarray:
        """The mask file's values as int64 (``HxW``; ``HxWx3`` for rgb masks); ``DatasetError`` if bad."""
        s = self.samples[i]
        if s.mask is None:
            raise DatasetError(f"{s.image}: this dataset has no mask for the image")
        try:
            return _read_raw_mask(s.mask, self.mask_format)
        except FileNotFoundError:
            where = f" (looked for {s.looked_for})" if s.looked_for else ""
            raise DatasetError(f"{s.mask}: mask file is missing{where}") from None
        except (OSError, SyntaxError, ValueError, KeyError, EOFError, Image.DecompressionBombError) as e:
            raise DatasetError(f"{s.mask}: cannot read mask ({e})") from None

    def read_mask(self, i: int) -> np.ndarray:
        """Labels in ``[0, num_classes)`` or 255, as int64 ``HxW``; ``DatasetError`` naming the file if bad."""
        return self.labels_of(self.read_raw_mask(i), self.samples[i].mask)

    def labels_of(self, raw: np.ndarray, path: Path) -> np.ndarray:
        """Raw mask values (from ``read_raw_mask``) as labels, checked to be in range."""
        if self.mask_format == "rgb":
            labels = self._rgb_to_labels(raw, path)
        else:
            if raw.min() < 0 or raw.max() > 255:
                raise DatasetError(f"{path}: mask values {int(raw.min())}..{int(raw.max())} do not fit 0..255")
            labels = self._lut[raw.astype(np.int64)]
        bad = np.unique(labels[(labels >= self.num_classes) & (labels != IGNORE)])
        if bad.size:
            raise DatasetError(f"{path}: label values {bad.tolist()[:10]} are outside 0..{self.num_classes - 1} "
                               f"(and not {IGNORE}, the ignore label)")
        return labels

    def _rgb_to_labels(self, rgb: np.ndarray, path: Path) -> np.ndarray:
        code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8) | rgb[..., 2]
        colours = {(r << 16) | (g << 8) | b: k for k, (r, g, b) in enumerate(self.palette[: self.num_classes])}
        colours.update({(r << 16) | (g << 8) | b: IGNORE for r, g, b in self.void_colours})
        keys = np.array(sorted(colours), dtype=np.int64)
        pos = np.searchsorted(keys, code).clip(0, len(keys) - 1)
        known = keys[pos] == code
        if not known.all():
            c = int(code[~known][0])
            raise DatasetError(f"{path}: colour {(c >> 16, (c >> 8) & 255, c & 255)} is not in the palette "
                               f"({int((~known).sum())} pixels)")
        return np.array([colours[int(k)] for k in keys], dtype=np.int64)[pos]

    def load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """The image and its labels, checked to be the same size."""
        image, labels = self.read_image(i), self.read_mask(i)
        self._check_size(i, image.shape[:2], labels.shape)
        return image, labels

    def _check_size(self, i: int, image_hw: tuple, mask_hw: tuple) -> None:
        if tuple(image_hw) == tuple(mask_hw):
            return
        s = self.samples[i]
        (h, w), (mh, mw) = image_hw, mask_hw
        msg = f"{s.mask}: mask is {mw}x{mh} but its image {s.image.name} is {w}x{h}"
        if self.exif and (mh, mw) == (w, h) and _orientation(s.image) in (5, 6, 7, 8):
            msg += (" after turning it upright per its EXIF orientation; if the mask was drawn on the stored "
                    "(unrotated) pixels, add 'exif: false' to dataset.yaml")
        raise DatasetError(msg)

    def tensors(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``load(i)`` as a uint8 ``(3, H, W)`` image tensor and int64 ``(H, W)`` labels, untransformed."""
        image, labels = self.load(i)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(labels)

    def __getitem__(self, i: int):
        img, lab = self.tensors(i)
        if self.transforms is None:
            return to_float(img), lab
        return self.transforms(img, lab)

    def check(self, skip_bad: bool = False, progress: bool = False) -> list[str]:
        """Decodes every image and mask once before any training starts, and gathers ``stats``.

        Whole decodes, not just headers: a truncated JPEG passes a header check and would only fail mid-run
        (and ``skip_bad`` could not drop it). Images are decoded on a few threads (Pillow releases the GIL).
        Raises ``DatasetError`` on the first bad pair, or with ``skip_bad`` drops the bad pairs and returns
        their messages (each names the file and why). An empty dataset is always an error; when every pair is
        bad the error quotes the first problems.
        """
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int):
            try:
                return self._check_one(i)
            except DatasetError as e:
                return str(e)

        problems, keep, records = [], [], []
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            results = pool.map(one, range(len(self.samples)))
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(self.samples), desc=f"checking {self.name}", leave=False)
            for i, result in enumerate(results):
                if not isinstance(result, str):
                    keep.append(self.samples[i])
                    records.append(result)
                elif not skip_bad:
                    raise DatasetError(result)
                else:
                    problems.append(result)
        self.samples = keep
        if not self.samples:
            detail = ""
            if problems:
                more = f" ({len(problems) - 3} more)" if len(problems) > 3 else ""
                detail = f"; all {len(problems)} bad, e.g. " + " | ".join(problems[:3]) + more
            err = DatasetError(f"{self.name}: no usable image/mask pairs{detail}")
            err.problems = problems  # every bad pair, for the command line to list
            raise err
        self.stats = self._gather(records)
        return problems

    def _check_one(self, i: int) -> dict:
        s = self.samples[i]
        h, w = self.read_image(i).shape[:2]
        raw = self.read_raw_mask(i)
        labels = self.labels_of(raw, s.mask)
        self._check_size(i, (h, w), labels.shape)
        counts = np.bincount(np.where(labels == IGNORE, self.num_classes, labels).ravel(),
                             minlength=self.num_classes + 1)
        raw_counts = None
        if self.mask_format == "index":
            raw_counts = np.bincount(raw.ravel(), minlength=256)[:256]
        return {"size": (w, h), "labels": counts, "raw": raw_counts, "kind": _mask_kind(s.mask),
                "orientation": _orientation(s.image) if self.exif else 1, "name": s.name}

    def _gather(self, records: list[dict]) -> DatasetStats:
        raw = None
        if records and records[0]["raw"] is not None:
            raw = np.sum([r["raw"] for r in records], axis=0)
        kinds: dict[str, int] = {}
        for r in records:
            kinds[r["kind"]] = kinds.get(r["kind"], 0) + 1
        return DatasetStats(sizes=[r["size"] for r in records],
                            label_pixels=np.sum([r["labels"] for r in records], axis=0),
                            raw_values=raw, mask_kinds=kinds,
                            rotated=[(r["name"], r["orientation"]) for r in records if r["orientation"] != 1])

    def class_frequencies(self) -> np.ndarray:
        """Pixels of each class over the dataset (ignored pixels left out), from ``stats`` once checked."""
        if self.stats is not None:
            return self.stats.label_pixels[: self.num_classes].copy()
        counts = np.zeros(self.num_classes, np.int64)
        for i in range(len(self)):
            labels = self.read_mask(i)
            counts += np.bincount(labels[labels != IGNORE].ravel(), minlength=self.num_classes)[: self.num_classes]
        return counts


def _orientation(path: Path) -> int:
    """The EXIF orientation tag of an image file (1: upright or none); 1 if unreadable."""
    try:
        with Image.open(path) as im:
            return int(im.getexif().get(0x0112, 1) or 1)
    except (OSError, ValueError, SyntaxError, TypeError):
        return 1


def _mask_kind(path: Path | None) -> str:
    """A mask file's format and mode, e.g. "PNG L", for the summary."""
    if path is None or path.suffix.lower() == ".mat":
        return "MAT"
    try:
        with Image.open(path) as im:
            return f"{im.format} {im.mode}"
    except (OSError, ValueError, SyntaxError):
        return "unreadable"


def _read_raw_mask(path: Path, fmt: str) -> np.ndarray:
    if fmt == "mat":
        loadmat = require("scipy.io", extra="sbd", what="reading SBD's .mat masks").loadmat
        # SBD: GTcls.Segmentation holds the class labels (0 background, 1..20, no boundary label).
        return np.asarray(loadmat(str(path), squeeze_me=True)["GTcls"]["Segmentation"].item(), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked just below
        im = Image.open(path)
    with im:
        check_pixels(*im.size, MAX_PIXELS)  # the caller names the file
        if fmt == "rgb":
            return np.array(im.convert("RGB"))
        if im.mode in ("RGB", "RGBA"):
            raise ValueError("colour mask given where label values (palette or grey PNG) were expected; "
                             "use mask_format: rgb")
        # Palette PNGs keep their indices (mode P), unless every colour they use is grey: then the greys are the
        # values (GIF masks, and grey masks saved through a palette); grey PNGs keep their values.
        if im.mode == "P" and _grey_palette(im):
            im = im.convert("L")
        return np.asarray(im if im.mode in ("P", "L", "I", "I;16") else im.convert("L")).astype(np.int64)


def _grey_palette(im: Image.Image) -> bool:
    """Whether every palette entry a mode-P image uses is a grey (r = g = b)."""
    pal = np.asarray(im.getpalette() or [], np.int64).reshape(-1, 3)
    used = np.unique(np.asarray(im))
    return bool(used.size and used.max() < len(pal) and (pal[used] == pal[used][:, :1]).all())


def _read_list(path: Path) -> list[str]:
    if not path.is_file():
        raise DatasetError(f"{path}: split list is missing")
    return [line.strip() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]


# ----------------------------------------------------------------------------------------------------------
# PASCAL VOC and SBD


def _voc_dir(root: Path, year: str | None) -> Path:
    if (root / "JPEGImages").is_dir():
        return root
    for sub in ([f"VOC{year}"] if year else []) + ["VOC2012", "VOC2011", "VOC2010", "VOC2009", "VOC2008", "VOC2007"]:
        for cand in (root / sub, root / "VOCdevkit" / sub):
            if (cand / "JPEGImages").is_dir():
                return cand
    raise DatasetError(f"{root}: not a PASCAL VOC folder (no JPEGImages/, VOC20xx/ or VOCdevkit/)")


def _sbd_dir(root: Path) -> Path:
    for cand in (root, root / "dataset", root / "benchmark_RELEASE" / "dataset"):
        if (cand / "cls").is_dir():
            return cand
    raise DatasetError(f"{root}: not an SBD folder (no cls/, dataset/cls/ or benchmark_RELEASE/dataset/cls/)")


def voc(root, split: str = "train", *, year: str | None = None, sbd_root=None, transforms=None) -> SegmentationDataset:
    """PASCAL VOC 2007-2012 segmentation (``ImageSets/Segmentation/{split}.txt``, palette PNG masks).

    Args:
        root: the ``VOC20xx`` folder, or a folder holding it (or ``VOCdevkit/VOC20xx``).
        split: a list name in ``ImageSets/Segmentation`` ("train", "val", "trainval"), or "seg11valid":
            the paper's validation set, VOC2011 val minus the SBD training images (needs ``sbd_root``).
        year: which ``VOC20xx`` to pick when ``root`` holds several.
        sbd_root: the SBD dataset folder, for "seg11valid".
        transforms: joint transforms (see ``SegmentationDataset``).
    """
    root = Path(root)
    if split == "seg11valid":
        if sbd_root is None:
            raise ValueError("split seg11valid is VOC2011 val minus SBD train: give sbd_root")
        vdir = _voc_dir(root, "2011")
        sbd_train = set(_read_list(_sbd_dir(Path(sbd_root)) / "train.txt"))
        names = [n for n in _read_list(vdir / "ImageSets" / "Segmentation" / "val.txt") if n not in sbd_train]
    else:
        vdir = _voc_dir(root, year)
        names = _read_list(vdir / "ImageSets" / "Segmentation" / f"{split}.txt")
    samples = [Sample(vdir / "JPEGImages" / f"{n}.jpg", vdir / "SegmentationClass" / f"{n}.png", n) for n in names]
    return SegmentationDataset(samples, list(VOC_CLASSES), voc_palette(21), "index", name=f"voc:{split}",
                               transforms=transforms, exif=False,
                               mapping_note="palette indices 0..20 are the classes, 255 (object outlines) ignored")


def sbd(root, split: str = "train", *, transforms=None) -> SegmentationDataset:
    """The Semantic Boundaries Dataset (Hariharan et al.): ``img/*.jpg`` and ``cls/*.mat``, lists ``{split}.txt``."""
    d = _sbd_dir(Path(root))
    names = _read_list(d / f"{split}.txt")
    samples = [Sample(d / "img" / f"{n}.jpg", d / "cls" / f"{n}.mat", n) for n in names]
    return SegmentationDataset(samples, list(VOC_CLASSES), voc_palette(21), "mat", name=f"sbd:{split}",
                               transforms=transforms, exif=False,
                               mapping_note="GTcls.Segmentation 0..20 are the classes")


# ----------------------------------------------------------------------------------------------------------
# CamVid


def camvid(root, split: str = "train", *, transforms=None) -> SegmentationDataset:
    """CamVid in SegNet's layout: ``{split}/``, ``{split}annot/`` and ``{split}.txt`` (11 classes, 11 = void).

    The list's lines are "image mask" pairs; SegNet's absolute paths (``/SegNet/CamVid/train/x.png``) are
    resolved against ``root`` by their last two parts. Without a list, ``{split}/`` is paired with
    ``{split}annot/`` by file name.
    """
    root = Path(root)
    listing = root / f"{split}.txt"
    samples = []
    if listing.is_file():
        for line in _read_list(listing):
            parts = line.split()
            if len(parts) != 2:
                raise DatasetError(f"{listing}: expected 'image mask' on each line, got {line!r}")
            img, msk = (_under(root, p) for p in parts)
            samples.append(Sample(img, msk, img.stem))
    elif (root / split).is_dir():
        for img in sorted((root / split).iterdir()):
            if img.suffix.lower() in IMAGE_EXTS:
                samples.append(Sample(img, root / f"{split}annot" / img.name, img.stem))
    else:
        raise DatasetError(f"{root}: no {split}.txt and no {split}/ folder (CamVid in SegNet's layout expected)")
    return SegmentationDataset(samples, list(CAMVID_CLASSES), list(CAMVID_PALETTE), "index", remap={11: IGNORE},
                               name=f"camvid:{split}", transforms=transforms, exif=False,
                               mapping_note="values 0..10 are the classes, 11 (void) ignored")


def _under(root: Path, p: str) -> Path:
    path = Path(p)
    if not path.is_absolute() and (root / path).exists():
        return root / path
    if path.is_absolute() and path.exists():
        return path
    return root / Path(*path.parts[-2:])


# ----------------------------------------------------------------------------------------------------------
# Any folder


FOLDER_KEYS = ("classes", "palette", "mask_format", "remap", "void_colours", "images", "masks", "image_pattern",
               "mask_pattern", "snap", "mask_threshold", "levels", "exif")
IMAGE_DIRS = ("images", "image", "imgs", "img")
MASK_DIRS = ("masks", "mask", "labels", "label", "annotations", "gt")
# Mask files: anything Pillow reads; when two files share a name, the first extension here wins (lossless first).
MASK_EXTS = (".png", ".gif", ".tif", ".tiff", ".bmp", ".webp", ".jpg", ".jpeg")


def folder(root, split: str | None = None, *, transforms=None, config: str | Path | None = None,
           **options) -> SegmentationDataset:
    """Images and masks in a folder, described by an optional ``dataset.yaml`` (or ``.json``) in it.

    Layout: ``images/`` and ``masks/`` (also found as ``image/``, ``img/``; ``mask/``, ``labels/``, ``label/``,
    ``annotations/``, ``gt/``), or ``images/{split}/`` and ``masks/{split}/``, or a list ``{split}.txt`` of
    names. Masks are paired with images by name; masks may be any file Pillow reads (png, gif, tif, bmp, jpg).
    The description (and ``options``, which override it; a run's ``dataset_options``) may give::

        classes: [background, cell]      # names; their count is num_classes
        palette: [[0, 0, 0], [255, 0, 0]]
        mask_format: index               # index (palette or grey masks) or rgb (colour masks)
        remap: {255: 1}                  # raw value -> label (255 = ignore)
        void_colours: [[255, 255, 255]]  # rgb masks: colours to ignore
        images: images                   # folder names, if not found among the usual ones
        masks: masks
        image_pattern: "{id}_training"   # file names (without extension) around the shared id
        mask_pattern: "{id}_manual1"
        snap: true                       # lossy (JPEG) masks: each value to the nearest level
        mask_threshold: 128              # or: values >= 128 are class 1, the others class 0
        levels: [0, 128, 255]            # grey levels of classes 0, 1, 2 (other values snap to the nearest)
        exif: true                       # turn images upright per EXIF (default), as predict does

    Without ``classes`` (index masks), the classes are inferred from the mask values (``fcnseg.data.masks``):
    {0, 255} or {0, 1} is binary, evenly spaced grey levels are classes in order, lossy noise is refused.
    The result's ``options`` give the inferred mapping explicitly.

    Raises:
        DatasetError: a missing folder or split, an unknown key, or masks whose values need a description.
    """
    root = Path(root)
    desc = {**_read_description(root, config), **options}
    unknown = sorted(set(desc) - set(FOLDER_KEYS))
    if unknown:
        raise DatasetError(f"{root}: unknown dataset description keys {unknown}; valid: {', '.join(FOLDER_KEYS)}")
    img_dir, mask_dir, names = _folder_layout(root, split, desc)
    samples, notes = _pair_files(img_dir, mask_dir, names, desc)
    fmt = desc.get("mask_format", "index")
    mapping = _folder_mapping(root, samples, desc, fmt)
    classes = [str(c) for c in mapping.classes]
    palette = [tuple(int(v) for v in c) for c in desc.get("palette") or default_palette(len(classes))]
    void = [tuple(int(v) for v in c) for c in desc.get("void_colours", [])]
    if mapping.kind == "described":
        remap = {int(k): int(v) for k, v in (desc.get("remap") or {}).items()}
    else:
        remap = {int(v): int(mapping.lut[v]) for v in range(256) if mapping.lut[v] != v}
    return SegmentationDataset(samples, classes, palette, fmt, remap, void, name=f"folder:{root.name}" + (
        f":{split}" if split else ""), transforms=transforms, exif=bool(desc.get("exif", True)),
        mapping_kind=mapping.kind, mapping_note=mapping.note, options=dict(mapping.options), notes=notes)


def _read_description(root: Path, config) -> dict:
    cfg = Path(config) if config else next((root / n for n in ("dataset.yaml", "dataset.yml", "dataset.json")
                                            if (root / n).is_file()), None)
    if cfg is None:
        return {}
    import yaml

    try:
        desc = yaml.safe_load(cfg.read_text()) or {}  # YAML is a superset of JSON
    except (OSError, yaml.YAMLError) as e:
        raise DatasetError(f"{cfg}: cannot read the dataset description ({e})") from None
    if not isinstance(desc, dict):
        raise DatasetError(f"{cfg}: the dataset description must be a mapping")
    return desc


def _folder_layout(root: Path, split: str | None, desc: dict) -> tuple[Path, Path, list[str] | None]:
    """The image folder, the mask folder and the split's names (None: every image)."""
    def pick(key: str, usual: tuple[str, ...]) -> Path:
        if desc.get(key):
            return root / desc[key]
        return next((root / n for n in usual if (root / n).is_dir()), root / usual[0])

    img_dir, mask_dir = pick("images", IMAGE_DIRS), pick("masks", MASK_DIRS)
    names = None
    if split and (img_dir / split).is_dir():
        img_dir, mask_dir = img_dir / split, mask_dir / split
    elif split and (root / f"{split}.txt").is_file():
        names = _read_list(root / f"{split}.txt")
    elif split not in (None, "all"):
        raise DatasetError(f"{root}: split {split!r} has neither {img_dir.name}/{split}/ nor {split}.txt")
    if not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: image folder is missing (looked for {', '.join(IMAGE_DIRS)}/ or the "
                           f"'images' key of dataset.yaml)")
    return img_dir, mask_dir, names


def _name_pattern(pattern: str | None, key: str) -> re.Pattern:
    pattern = pattern or "{id}"
    if pattern.count("{id}") != 1:
        raise DatasetError(f"dataset.yaml: {key} {pattern!r} must contain {{id}} exactly once")
    return re.compile("^" + re.escape(pattern).replace(re.escape("{id}"), "(?P<id>.+?)") + "$")


def _ids(folder_: Path, exts: tuple[str, ...], pattern: re.Pattern) -> tuple[dict[str, Path], list[str]]:
    """``{id: file}`` of the files in ``folder_`` with these extensions whose stem matches, and the others."""
    found: dict[str, Path] = {}
    other = []
    if not folder_.is_dir():
        return found, other
    files = sorted((p for p in folder_.iterdir() if p.suffix.lower() in exts),
                   key=lambda p: (exts.index(p.suffix.lower()), p.name))
    for p in files:
        m = pattern.match(p.stem)
        if m is None:
            other.append(p.name)
        else:
            found.setdefault(m.group("id"), p)
    return found, other


def _pair_files(img_dir: Path, mask_dir: Path, names, desc: dict) -> tuple[list[Sample], list[str]]:
    img_pat = _name_pattern(desc.get("image_pattern"), "image_pattern")
    mask_pat = _name_pattern(desc.get("mask_pattern"), "mask_pattern")
    images, odd_images = _ids(img_dir, (*IMAGE_EXTS, ".gif"), img_pat)
    masks, odd_masks = _ids(mask_dir, MASK_EXTS, mask_pat)
    notes = []
    if odd_images:
        notes.append(f"{img_dir}: {len(odd_images)} files do not match image_pattern "
                     f"{desc.get('image_pattern', '{id}')!r} and are left out (e.g. {odd_images[0]})")
    if odd_masks:
        notes.append(f"{mask_dir}: {len(odd_masks)} files do not match mask_pattern "
                     f"{desc.get('mask_pattern', '{id}')!r} (e.g. {odd_masks[0]})")
    ids = sorted(images) if names is None else names
    orphans = sorted(set(masks) - set(ids)) if names is None else []
    if orphans:
        notes.append(f"{mask_dir}: {len(orphans)} masks have no image (e.g. {masks[orphans[0]].name})")
    samples = []
    for n in ids:
        stem = desc.get("mask_pattern", "{id}").replace("{id}", n)
        img = images.get(n, img_dir / (desc.get("image_pattern", "{id}").replace("{id}", n) + ".jpg"))
        looked = f"{mask_dir / stem} with {'/'.join(e.lstrip('.') for e in MASK_EXTS)}"
        samples.append(Sample(img, masks.get(n, mask_dir / f"{stem}.png"), n, looked_for=looked))
    return samples, notes


def _folder_mapping(root: Path, samples: list[Sample], desc: dict, fmt: str) -> Mapping:
    """How mask values become labels: described (classes/remap), explicit levels or threshold, or inferred."""
    classes = desc.get("classes")
    if desc.get("levels") is not None:
        levels = [int(v) for v in desc["levels"]]
        if classes is not None and len(classes) != len(levels):
            raise DatasetError(f"{root}: {len(levels)} levels for {len(classes)} classes in the description")
        return from_levels(levels, "snapped", classes)
    if desc.get("mask_threshold") is not None:
        mapping = from_threshold(float(desc["mask_threshold"]))
        mapping.classes = list(classes or mapping.classes)
        return mapping
    if classes is not None and not desc.get("snap"):
        remap = {int(k): int(v) for k, v in (desc.get("remap") or {}).items()}
        lut = np.arange(256, dtype=np.int64)
        for k, v in remap.items():
            if 0 <= k <= 255:  # SegmentationDataset refuses the others, naming them
                lut[k] = v
        return Mapping("described", [str(c) for c in classes], lut, {},
                       "as described (dataset.yaml or dataset_options): classes " + ", ".join(map(str, classes))
                       + (f", remap {remap}" if remap else "") + (" (255 ignored)" if lut[IGNORE] == IGNORE else ""))
    if fmt != "index":
        raise DatasetError(f"{root}: rgb masks need 'classes' and 'palette' in dataset.yaml")
    hist = _raw_histogram(samples)
    try:
        mapping = infer_mapping(hist, snap=bool(desc.get("snap")))
    except MaskValueError as e:
        raise DatasetError(f"{root}: {e}") from None
    if classes is not None:
        if len(classes) != len(mapping.classes):
            raise DatasetError(f"{root}: snap found {len(mapping.classes)} levels for {len(classes)} classes")
        mapping.classes = mapping.options["classes"] = [str(c) for c in classes]
    return mapping


def _raw_histogram(samples: Sequence[Sample]) -> np.ndarray:
    """Pixel counts of raw mask values 0..255 over the masks that can be read (the others fail in ``check``)."""
    hist = np.zeros(256, np.int64)
    for s in samples:
        try:
            raw = _read_raw_mask(s.mask, "index")
        except (OSError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError):
            continue
        if raw.min() < 0 or raw.max() > 255:
            raise DatasetError(f"{s.mask}: mask values {int(raw.min())}..{int(raw.max())} do not fit 0..255")
        hist += np.bincount(raw.ravel(), minlength=256)
    return hist


# Cityscapes, ADE20K (fcnseg.data.standard) and multilabel build on the classes here and are registered by the
# package (fcnseg/data/__init__.py), which Python imports before this module.
DATASETS: dict[str, Callable[..., SegmentationDataset]] = {"voc": voc, "sbd": sbd, "camvid": camvid, "folder": folder}


def build_dataset(name: str, root, split: str | None, transforms=None, **kwargs) -> SegmentationDataset:
    """A dataset by name ("voc", "sbd", "camvid", "cityscapes", "ade20k" or "folder"); ``kwargs`` go to its
    builder. Splits joined by "+" ("train+val", as the CamVid papers train their final models) give one
    dataset of their samples in that order.

    Raises:
        ValueError: an unknown dataset name.
        DatasetError: a missing folder or split, or joined splits whose classes or mask mapping differ.
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if split is not None and "+" in split:
        splits = split.split("+")
        if not all(splits):
            raise DatasetError(f"{root}: split {split!r} has an empty part (joined splits look like 'train+val')")
        first = build_dataset(name, root, splits[0], transforms, **kwargs)
        # The other splits read their masks as the first does (a folder's inferred mapping is made explicit).
        rest = [build_dataset(name, root, s, transforms, **{**kwargs, **first.options}) for s in splits[1:]]
        return join_splits([first, *rest])
    args = {"transforms": transforms, **kwargs}
    return DATASETS[name](root, split, **args) if split is not None else DATASETS[name](root, **args)


def join_splits(parts: Sequence[SegmentationDataset]) -> SegmentationDataset:
    """One dataset of the samples of ``parts`` (same classes and mask mapping), named as "camvid:train+val".

    Raises:
        DatasetError: the parts differ in classes, palette or the mapping of mask values (named).
    """
    first = parts[0]
    for other in parts[1:]:
        for what in ("class_names", "palette", "mask_format", "remap", "void_colours", "channels"):
            if getattr(other, what) != getattr(first, what):
                raise DatasetError(f"{first.name} and {other.name} differ in {what.replace('_', ' ')}; "
                                   "joined splits must read their masks the same way")
    kind = first.name.split(":")[0]
    name = f"{kind}:" + "+".join(p.name.removeprefix(f"{kind}:") for p in parts)  # "camvid:train+val"
    return replace(first, samples=[s for p in parts for s in p.samples], name=name,
                   notes=[n for p in parts for n in p.notes], stats=None)

