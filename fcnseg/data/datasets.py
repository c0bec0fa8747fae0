"""Segmentation datasets: PASCAL VOC, SBD, CamVid and any folder of images and masks.

Every dataset is a list of (image, mask) files plus what it takes to read a mask into labels: the mask
format ("index": palette or grey PNG whose values are labels, "rgb": colour PNG mapped through the
palette, "mat": SBD's MATLAB files) and a lookup table that remaps raw values (CamVid's void 11 -> 255).
Labels come out in ``[0, num_classes)`` or 255 (ignored); anything else is an error naming the file.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .images import IMAGE_EXTS, MAX_PIXELS, ImageError, decode_image
from .palettes import CAMVID_CLASSES, CAMVID_PALETTE, VOC_CLASSES, default_palette, voc_palette

IGNORE = 255


class DatasetError(ValueError):
    """A problem with a dataset file; the message starts with the file's path."""


@dataclass
class Sample:
    image: Path
    mask: Path | None
    name: str


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
        path = self.samples[i].image
        try:
            # No EXIF rotation: masks carry none, and image and mask must stay aligned.
            return decode_image(path, exif=False, channels=self.channels)
        except FileNotFoundError:
            raise DatasetError(f"{path}: image file is missing") from None
        except ImageError as e:
            raise DatasetError(str(e)) from None

    def read_mask(self, i: int) -> np.ndarray:
        """Labels in ``[0, num_classes)`` or 255, as int64."""
        path = self.samples[i].mask
        if path is None:
            raise DatasetError(f"{self.samples[i].image}: this dataset has no mask for the image")
        try:
            raw = _read_raw_mask(path, self.mask_format)
        except FileNotFoundError:
            raise DatasetError(f"{path}: mask file is missing") from None
        except (OSError, SyntaxError, ValueError, KeyError, EOFError, Image.DecompressionBombError) as e:
            raise DatasetError(f"{path}: cannot read mask ({e})") from None
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
        if image.shape[:2] != labels.shape:
            raise DatasetError(f"{self.samples[i].mask}: mask is {labels.shape[1]}x{labels.shape[0]} but its image "
                               f"{self.samples[i].image.name} is {image.shape[1]}x{image.shape[0]}")
        return image, labels

    def tensors(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``load(i)`` as a uint8 ``(3, H, W)`` image tensor and int64 ``(H, W)`` labels, untransformed."""
        image, labels = self.load(i)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(labels)

    def __getitem__(self, i: int):
        img, lab = self.tensors(i)
        if self.transforms is None:
            return img.float() / 255.0, lab
        return self.transforms(img, lab)

    def check(self, skip_bad: bool = False, progress: bool = False) -> list[str]:
        """Decodes every image and mask once before any training starts.

        Whole decodes, not just headers: a truncated JPEG passes a header check and would only fail mid-run
        (and ``skip_bad`` could not drop it). Images are decoded on a few threads (Pillow releases the GIL).
        Raises ``DatasetError`` on the first bad pair, or with ``skip_bad`` drops the bad pairs and returns
        their messages. An empty dataset is always an error.
        """
        from concurrent.futures import ThreadPoolExecutor

        def one(i: int) -> str | None:
            try:
                self._check_one(i)
            except DatasetError as e:
                return str(e)
            return None

        problems, keep = [], []
        with ThreadPoolExecutor(min(4, os.cpu_count() or 1)) as pool:
            results = pool.map(one, range(len(self.samples)))
            if progress:
                from tqdm import tqdm

                results = tqdm(results, total=len(self.samples), desc=f"checking {self.name}", leave=False)
            for i, problem in enumerate(results):
                if problem is None:
                    keep.append(self.samples[i])
                elif not skip_bad:
                    raise DatasetError(problem)
                else:
                    problems.append(problem)
        self.samples = keep
        if not self.samples:
            raise DatasetError(f"{self.name}: no usable image/mask pairs" + (f" ({len(problems)} bad)" if problems
                                                                              else ""))
        return problems

    def _check_one(self, i: int) -> None:
        s = self.samples[i]
        h, w = self.read_image(i).shape[:2]
        labels = self.read_mask(i)
        if labels.shape != (h, w):
            raise DatasetError(f"{s.mask}: mask is {labels.shape[1]}x{labels.shape[0]} but its image "
                               f"{s.image.name} is {w}x{h}")

    def class_frequencies(self) -> np.ndarray:
        """Pixels of each class over the dataset (ignored pixels left out)."""
        counts = np.zeros(self.num_classes, np.int64)
        for i in range(len(self)):
            labels = self.read_mask(i)
            counts += np.bincount(labels[labels != IGNORE].ravel(), minlength=self.num_classes)[: self.num_classes]
        return counts


def _read_raw_mask(path: Path, fmt: str) -> np.ndarray:
    if fmt == "mat":
        from scipy.io import loadmat

        # SBD: GTcls.Segmentation holds the class labels (0 background, 1..20, no boundary label).
        return np.asarray(loadmat(str(path), squeeze_me=True)["GTcls"]["Segmentation"].item(), dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked just below
        im = Image.open(path)
    with im:
        w, h = im.size
        if w * h > MAX_PIXELS:  # checked from the header, before decoding (decompression bombs)
            raise ValueError(f"{w}x{h} is more than the limit of {MAX_PIXELS / 1e6:.0f} Mpixel")
        if fmt == "rgb":
            return np.array(im.convert("RGB"))
        if im.mode in ("RGB", "RGBA"):
            raise ValueError("colour mask given where label values (palette or grey PNG) were expected; "
                             "use mask_format: rgb")
        # Palette PNGs keep their indices (mode P); grey PNGs their values.
        return np.asarray(im if im.mode in ("P", "L", "I", "I;16") else im.convert("L")).astype(np.int64)


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
                               transforms=transforms)


def sbd(root, split: str = "train", *, transforms=None) -> SegmentationDataset:
    """The Semantic Boundaries Dataset (Hariharan et al.): ``img/*.jpg`` and ``cls/*.mat``, lists ``{split}.txt``."""
    d = _sbd_dir(Path(root))
    names = _read_list(d / f"{split}.txt")
    samples = [Sample(d / "img" / f"{n}.jpg", d / "cls" / f"{n}.mat", n) for n in names]
    return SegmentationDataset(samples, list(VOC_CLASSES), voc_palette(21), "mat", name=f"sbd:{split}",
                               transforms=transforms)


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
                               name=f"camvid:{split}", transforms=transforms)


def _under(root: Path, p: str) -> Path:
    path = Path(p)
    if not path.is_absolute() and (root / path).exists():
        return root / path
    if path.is_absolute() and path.exists():
        return path
    return root / Path(*path.parts[-2:])


# ----------------------------------------------------------------------------------------------------------
# Any folder


def folder(root, split: str | None = None, *, transforms=None, config: str | Path | None = None) -> SegmentationDataset:
    """Images and masks in a folder, described by an optional ``dataset.yaml`` (or ``.json``) in it.

    Layout: ``images/`` and ``masks/`` (or ``images/{split}/`` and ``masks/{split}/``; or a list
    ``{split}.txt`` of names). Masks are matched to images by name stem. The description may give::

        classes: [background, cell]      # names; their count is num_classes
        palette: [[0, 0, 0], [255, 0, 0]]
        mask_format: index               # index (palette or grey PNG) or rgb (colour PNG)
        remap: {255: 1}                  # raw value -> label (255 = ignore)
        void_colours: [[255, 255, 255]]  # rgb masks: colours to ignore
        images: images                   # folder names, if not images/ and masks/
        masks: masks

    Without a description, the classes are the values found in the masks (0..max), read once.
    """
    root = Path(root)
    desc: dict = {}
    cfg = Path(config) if config else next((root / n for n in ("dataset.yaml", "dataset.yml", "dataset.json")
                                            if (root / n).is_file()), None)
    if cfg is not None:
        import yaml

        try:
            desc = yaml.safe_load(cfg.read_text()) or {}  # YAML is a superset of JSON
        except (OSError, yaml.YAMLError) as e:
            raise DatasetError(f"{cfg}: cannot read the dataset description ({e})") from None
        if not isinstance(desc, dict):
            raise DatasetError(f"{cfg}: the dataset description must be a mapping")
    img_dir, mask_dir = root / desc.get("images", "images"), root / desc.get("masks", "masks")
    names = None
    if split and (img_dir / split).is_dir():
        img_dir, mask_dir = img_dir / split, mask_dir / split
    elif split and (root / f"{split}.txt").is_file():
        names = _read_list(root / f"{split}.txt")
    elif split not in (None, "all"):
        raise DatasetError(f"{root}: split {split!r} has neither {img_dir.name}/{split}/ nor {split}.txt")
    if not img_dir.is_dir():
        raise DatasetError(f"{img_dir}: image folder is missing")
    images = {p.stem: p for p in sorted(img_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    masks = {}
    if mask_dir.is_dir():
        masks = {p.stem: p for p in sorted(mask_dir.iterdir()) if p.suffix.lower() in IMAGE_EXTS}
    if names is None:
        names = sorted(images)
    samples = []
    for n in names:
        img = images.get(n, img_dir / f"{n}.jpg")
        samples.append(Sample(img, masks.get(n, mask_dir / f"{n}.png"), n))
    fmt = desc.get("mask_format", "index")
    remap = {int(k): int(v) for k, v in (desc.get("remap") or {}).items()}
    classes = desc.get("classes")
    if classes is None:
        if fmt != "index":
            raise DatasetError(f"{root}: rgb masks need 'classes' and 'palette' in dataset.yaml")
        classes = [str(i) for i in range(_max_label(samples, remap) + 1)]
    classes = [str(c) for c in classes]
    palette = [tuple(int(v) for v in c) for c in desc.get("palette", default_palette(len(classes)))]
    void = [tuple(int(v) for v in c) for c in desc.get("void_colours", [])]
    return SegmentationDataset(samples, classes, palette, fmt, remap, void, name=f"folder:{root.name}",
                               transforms=transforms)


def _max_label(samples: Sequence[Sample], remap: dict[int, int]) -> int:
    top = 1
    for s in samples:
        try:
            raw = _read_raw_mask(s.mask, "index")
        except FileNotFoundError:
            raise DatasetError(f"{s.mask}: mask file is missing") from None
        except (OSError, ValueError) as e:
            raise DatasetError(f"{s.mask}: cannot read mask ({e})") from None
        values = {remap.get(int(v), int(v)) for v in np.unique(raw)} - {IGNORE}
        top = max([top, *values])
    return top


DATASETS: dict[str, Callable[..., SegmentationDataset]] = {"voc": voc, "sbd": sbd, "camvid": camvid, "folder": folder}


def build_dataset(name: str, root, split: str | None, transforms=None, **kwargs) -> SegmentationDataset:
    """A dataset by name ("voc", "sbd", "camvid" or "folder"); ``kwargs`` go to its builder."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if not Path(root).is_dir():
        raise DatasetError(f"{root}: dataset folder does not exist")
    args = {"transforms": transforms, **kwargs}
    return DATASETS[name](root, split, **args) if split is not None else DATASETS[name](root, **args)

