"""Cityscapes and ADE20K by name: tiny fixtures written in the official layouts, read through build_dataset."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fcnseg.cli import main
from fcnseg.data import IGNORE, DatasetError, build_dataset
from fcnseg.data.standard import ADE20K_CLASSES


def _write(path: Path, array: np.ndarray, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kw)


def _photo(h: int, w: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (h, w, 3), np.uint8)


# labelId -> trainId in the Cityscapes table: road 7 -> 0, person 24 -> 11, car 26 -> 13, bicycle 33 -> 18,
# unlabeled 0 / ego vehicle 1 / parking 9 / guard rail 14 -> ignored.
CITY_IDS = np.array([[7, 24, 26, 33], [0, 1, 9, 14]], np.uint8)
CITY_TRAIN = np.array([[0, 11, 13, 18], [IGNORE] * 4], np.int64)


@pytest.fixture
def city(tmp_path) -> Path:
    root = tmp_path / "cityscapes"
    for split, cities in (("train", ("aachen", "bremen")), ("val", ("frankfurt",))):
        for k, c in enumerate(cities):
            stem = f"{c}_000000_00001{k}"
            _write(root / "leftImg8bit" / split / c / f"{stem}_leftImg8bit.png", _photo(8, 12, k))
            ids = np.kron(CITY_IDS, np.ones((4, 3), np.uint8))  # 8x12
            _write(root / "gtFine" / split / c / f"{stem}_gtFine_labelIds.png", ids)
            # The other annotation files of the official layout sit beside it and are not read.
            _write(root / "gtFine" / split / c / f"{stem}_gtFine_color.png", _photo(8, 12, 9))
    return root


def test_cityscapes_reads_trainids_names_and_colours_from_cityscapesscripts(city):
    from cityscapesscripts.helpers.labels import trainId2label

    ds = build_dataset("cityscapes", city, "train")
    assert len(ds) == 2 and [s.name for s in ds.samples] == ["aachen_000000_000010", "bremen_000000_000011"]
    assert ds.num_classes == 19 and ds.class_names[0] == "road" and ds.class_names[18] == "bicycle"
    assert ds.palette == [tuple(trainId2label[k].color) for k in range(19)]
    assert ds.palette[0] == (128, 64, 128)
    image, labels = ds.load(0)
    assert image.shape == (8, 12, 3) and labels.dtype == np.int64
    assert np.array_equal(labels[::4, ::3], CITY_TRAIN)
    assert ds.check() == [] and ds.stats.label_pixels[0] == 2 * 12 and ds.stats.label_pixels[19] == 2 * 48
    assert len(build_dataset("cityscapes", city, "val")) == 1


def test_cityscapes_errors_name_the_file_or_the_expected_folders(city, tmp_path):
    with pytest.raises(DatasetError, match=r"leftImg8bit/test: missing; expected .*leftImg8bit/test/CITY/"
                                           r"\*_leftImg8bit.png and .*gtFine/test/CITY/\*_gtFine_labelIds.png"):
        build_dataset("cityscapes", city, "test")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DatasetError, match="the official Cityscapes layout"):
        build_dataset("cityscapes", tmp_path / "flat", "train")
    mask = city / "gtFine" / "train" / "bremen" / "bremen_000000_000011_gtFine_labelIds.png"
    mask.unlink()
    ds = build_dataset("cityscapes", city, "train")
    with pytest.raises(DatasetError, match=f"^{mask}: mask file is missing"):
        ds.check()
    # A value outside the table (labelIds go up to 33) is an error, never a silent label.
    _write(mask, np.full((8, 12), 40, np.uint8))
    with pytest.raises(DatasetError, match=rf"^{mask}: label values \[40\] are outside 0..18"):
        build_dataset("cityscapes", city, "train").check()


@pytest.fixture
def ade(tmp_path) -> Path:
    root = tmp_path / "data" / "ADEChallengeData2016"
    for sub, n in (("training", 2), ("validation", 1)):
        for i in range(n):
            stem = f"ADE_{'train' if sub == 'training' else 'val'}_{i + 1:08d}"
            _write(root / "images" / sub / f"{stem}.jpg", _photo(6, 8, i), quality=95)
            _write(root / "annotations" / sub / f"{stem}.png", np.array([[0, 1, 2, 150]] * 6, np.uint8).repeat(2, 1))
    (root / "objectInfo150.csv").write_text("Idx,Ratio,Train,Val,Name\n")
    return root


def test_ade20k_shifts_labels_and_ignores_zero(ade):
    for root in (ade, ade.parent):  # the folder itself or the one holding it
        ds = build_dataset("ade20k", root, "train")
        assert len(ds) == 2 and ds.num_classes == 150 and ds.name == "ade20k:training"
    assert ds.class_names[:3] == ["wall", "building", "sky"] and ds.class_names[-1] == "flag"
    assert len(set(ADE20K_CLASSES)) == 150 and len(ds.palette) == 150
    _, labels = ds.load(0)
    assert labels[0].tolist() == [IGNORE, IGNORE, 0, 0, 1, 1, 149, 149]
    assert len(build_dataset("ade20k", ade, "validation")) == len(build_dataset("ade20k", ade, "val")) == 1
    assert ds.check() == []


def test_ade20k_errors(ade, tmp_path):
    with pytest.raises(DatasetError, match=r"not the ADE20K layout; expected images/\{training,validation\}"):
        build_dataset("ade20k", tmp_path / "data" / "ADEChallengeData2016" / "images", "train")
    with pytest.raises(DatasetError, match="unknown ADE20K split 'test'"):
        build_dataset("ade20k", ade, "test")
    bad = ade / "annotations" / "training" / "ADE_train_00000002.png"
    _write(bad, np.full((6, 8), 151, np.uint8))
    with pytest.raises(DatasetError, match=rf"^{bad}: label values \[151\] are outside 0..149"):
        build_dataset("ade20k", ade, "train").check()


def test_data_check_command_knows_the_names(city, ade, capsys):
    assert main(["data", "check", "--dataset", "cityscapes", "--root", str(city), "--split", "val"]) == 0
    assert main(["data", "check", "--dataset", "ade20k", "--root", str(ade), "--split", "val"]) == 0
    out = capsys.readouterr().out
    assert "labelIds -> the 19 trainIds" in out and "0 (other) ignored" in out
    assert main(["data", "check", "--dataset", "nope", "--root", str(city)]) == 2
    assert "cityscapes" in capsys.readouterr().err
