"""Datasets, mask formats, joint transforms and bad input."""

import numpy as np
import pytest
import torch
from helpers import make_shapes
from PIL import Image

from fcnseg.data import DatasetError, build_dataset, pad_collate, train_transforms
from fcnseg.data.datasets import camvid, folder, join_splits, voc
from fcnseg.data.palettes import colorize, voc_palette
from fcnseg.data.transforms import seeded
from fcnseg.train.data import epoch_batches


def _labels_from_image(img: np.ndarray) -> np.ndarray:
    """The shapes fixture's ground truth recovered from its colours (red square 1, blue disc 2)."""
    lab = np.zeros(img.shape[:2], np.int64)
    lab[(img[..., 0] > 170) & (img[..., 2] < 100)] = 1
    lab[(img[..., 2] > 170) & (img[..., 0] < 100)] = 2
    return lab


@pytest.mark.parametrize("mode", ["L", "P", "RGB"])
def test_folder_mask_formats_read_the_same_labels(tmp_path, mode):
    root = make_shapes(tmp_path / mode, n=3, mask_mode=mode)
    ds = folder(root)
    assert ds.num_classes == 3 and ds.class_names == ["background", "square", "disc"]
    assert ds.check() == []
    for i in range(len(ds)):
        image, labels = ds.load(i)
        assert labels.dtype == np.int64 and labels.shape == image.shape[:2]
        np.testing.assert_array_equal(labels, _labels_from_image(image))


def test_folder_without_description_counts_classes_and_remaps(tmp_path):
    root = make_shapes(tmp_path / "s", n=2)
    (root / "dataset.yaml").unlink()
    assert folder(root).class_names == ["0", "1", "2"]
    (root / "dataset.json").write_text('{"classes": ["bg", "fg"], "remap": {"2": 255}}')
    ds = folder(root)
    labels = ds.read_mask(0)
    assert set(np.unique(labels)) <= {0, 1, 255} and (labels == 255).any()


def test_folder_splits_from_subfolders_and_lists(tmp_path, shapes):
    assert len(folder(shapes, "train")) == 6 and len(folder(shapes, "val")) == 2
    root = make_shapes(tmp_path / "flat", n=4)
    (root / "mine.txt").write_text("img001\nimg003\n")
    assert [s.name for s in folder(root, "mine").samples] == ["img001", "img003"]
    with pytest.raises(DatasetError, match="nope"):
        folder(root, "nope")


def test_rgb_mask_with_unknown_colour_names_file_and_colour(tmp_path):
    root = make_shapes(tmp_path / "rgb", n=1, mask_mode="RGB")
    mask = root / "masks" / "img000.png"
    arr = np.array(Image.open(mask))
    arr[0, 0] = (9, 9, 9)
    Image.fromarray(arr).save(mask)
    with pytest.raises(DatasetError, match=r"img000\.png: colour \(9, 9, 9\) is not in the palette"):
        folder(root).read_mask(0)


def test_bad_input_is_reported_with_the_file(tmp_path):
    root = make_shapes(tmp_path / "bad", n=5)
    (root / "masks" / "img000.png").unlink()                                   # missing mask
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "masks" / "img001.png")  # size mismatch
    Image.fromarray(np.full((48, 64), 7, np.uint8)).save(root / "masks" / "img002.png")  # label 7 of 3 classes
    (root / "images" / "img003.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")          # corrupt image
    ds = folder(root)
    with pytest.raises(DatasetError, match=r"img000\.png: mask file is missing"):
        ds.check()
    problems = folder(root).check(skip_bad=True)
    assert len(problems) == 4
    text = "\n".join(problems)
    assert "img001.png: mask is 10x10 but its image img001.png is 64x48" in text
    assert "img002.png: label values [7] are outside 0..2" in text
    assert "img003.png: cannot read image" in text
    ds = folder(root)
    ds.check(skip_bad=True)
    assert [s.name for s in ds.samples] == ["img004"]
    # Nothing usable at all is an error even with skip_bad.
    (root / "masks" / "img004.png").unlink()
    with pytest.raises(DatasetError, match="no usable image/mask pairs"):
        folder(root).check(skip_bad=True)


def test_missing_split_entries_and_folders(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        build_dataset("camvid", tmp_path / "none", "train")
    (tmp_path / "cv").mkdir()
    (tmp_path / "cv" / "train.txt").write_text("train/a.png trainannot/a.png\n")
    ds = build_dataset("camvid", tmp_path / "cv", "train")
    with pytest.raises(DatasetError, match=r"train/a\.png: image file is missing"):
        ds.check()
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        build_dataset("nope", tmp_path, "train")


def test_camvid_segnet_absolute_paths_and_void(tmp_path):
    root = tmp_path / "CamVid"
    (root / "test").mkdir(parents=True)
    (root / "testannot").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / "test" / "a.png")
    Image.fromarray(np.array([[11, 3] * 4] * 6, np.uint8)).save(root / "testannot" / "a.png")
    (root / "test.txt").write_text("/SegNet/CamVid/test/a.png /SegNet/CamVid/testannot/a.png\n")
    ds = camvid(root, "test")
    assert ds.check() == []
    labels = ds.read_mask(0)
    assert set(np.unique(labels)) == {3, 255}


def _camvid_split(root, split, value):
    (root / split).mkdir(parents=True)
    (root / f"{split}annot").mkdir()
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(root / split / f"{split}.png")
    Image.fromarray(np.full((6, 8), value, np.uint8)).save(root / f"{split}annot" / f"{split}.png")


def test_joined_splits_read_each_split_in_order(tmp_path):
    for split, value in (("train", 3), ("val", 11)):
        _camvid_split(tmp_path, split, value)
    ds = build_dataset("camvid", tmp_path, "train+val")
    assert [s.name for s in ds.samples] == ["train", "val"] and ds.name == "camvid:train+val"
    assert ds.check() == []
    assert set(np.unique(ds.read_mask(0))) == {3} and set(np.unique(ds.read_mask(1))) == {255}  # remap kept
    with pytest.raises(DatasetError, match="no test.txt and no test/ folder"):
        build_dataset("camvid", tmp_path, "train+test")
    with pytest.raises(DatasetError, match=r"'train\+' has an empty part"):
        build_dataset("camvid", tmp_path, "train+")


def test_joined_splits_must_share_their_classes(tmp_path):
    import yaml

    a, b = make_shapes(tmp_path / "a", n=2), make_shapes(tmp_path / "b", n=2)
    desc = yaml.safe_load((b / "dataset.yaml").read_text())
    (b / "dataset.yaml").write_text(yaml.safe_dump({**desc, "classes": ["background", "square", "round"]}))
    assert len(join_splits([folder(a), folder(a)])) == 4
    with pytest.raises(DatasetError, match="differ in class names"):
        join_splits([folder(a), folder(b)])


def test_camvid_real_files(shared_data):
    train = build_dataset("camvid", shared_data / "camvid", "train")
    val = build_dataset("camvid", shared_data / "camvid", "val")
    assert (len(train), len(val)) == (367, 101)
    assert train.num_classes == 11 and train.class_names[0] == "sky" and train.class_names[-1] == "bicyclist"
    assert val.check() == []
    image, labels = val.load(0)
    assert image.shape == (360, 480, 3) and labels.shape == (360, 480)
    assert set(np.unique(labels)) <= set(range(11)) | {255}
    raw = np.array(Image.open(val.samples[0].mask))
    np.testing.assert_array_equal(labels == 255, raw == 11)  # void, and only void, is ignored


def test_voc_real_files(shared_data):
    ds = voc(shared_data / "voc_sample", "val")
    assert ds.check() == []
    image, labels = ds.load(0)
    assert image.shape[:2] == labels.shape
    values = set(np.unique(labels).tolist())
    assert values <= set(range(21)) | {255} and 255 in values and len(values - {0, 255}) >= 1
    # The palette PNG drawn with the VOC colour map gives back the colours of its own palette.
    with Image.open(ds.samples[0].mask) as m:
        own = np.array(m.convert("RGB"))
    np.testing.assert_array_equal(colorize(labels, voc_palette(21), ignore_colour=(224, 224, 192)), own)


def test_voc_seg11valid_is_val_minus_sbd_train(tmp_path):
    v = tmp_path / "VOCdevkit" / "VOC2011"
    (v / "ImageSets" / "Segmentation").mkdir(parents=True)
    (v / "JPEGImages").mkdir()
    (v / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\nc\n")
    sbd = tmp_path / "benchmark_RELEASE" / "dataset"
    (sbd / "cls").mkdir(parents=True)
    (sbd / "train.txt").write_text("b\nz\n")
    ds = voc(tmp_path, "seg11valid", sbd_root=tmp_path / "benchmark_RELEASE")
    assert [s.name for s in ds.samples] == ["a", "c"]
    with pytest.raises(ValueError, match="sbd_root"):
        voc(tmp_path, "seg11valid")


def test_sbd_mat_masks(tmp_path):
    from scipy.io import savemat

    d = tmp_path / "dataset"
    (d / "cls").mkdir(parents=True)
    (d / "img").mkdir()
    seg = np.zeros((5, 7), np.uint8)
    seg[1:3, 2:5] = 15
    savemat(d / "cls" / "x.mat", {"GTcls": {"Segmentation": seg, "Boundaries": np.zeros(1)}})
    Image.fromarray(np.zeros((5, 7, 3), np.uint8)).save(d / "img" / "x.jpg")
    (d / "train.txt").write_text("x\n")
    ds = build_dataset("sbd", tmp_path, "train")
    assert ds.check() == []
    np.testing.assert_array_equal(ds.read_mask(0), seg)


def test_transforms_keep_labels_nearest_pad_with_ignore_and_move_with_the_image(shapes):
    ds = folder(shapes, "train")
    image, labels = ds.load(0)
    img, lab = torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(labels)
    # Crop larger than the image, with flips: the image pixels and labels move together.
    t = train_transforms(scale=None, crop=(64, 80), flip=True)
    for seed in range(6):
        x, y = seeded(lambda t=t: t(img, lab), seed)
        assert x.shape == (3, 64, 80) and y.shape == (64, 80) and x.dtype == torch.float32
        pad = y == 255
        assert pad.sum() == 64 * 80 - 48 * 64
        recovered = _labels_from_image((x.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        np.testing.assert_array_equal(recovered[~pad.numpy()], y[~pad].numpy())
        assert (x[:, pad] == 0).all()
    # Rescaling: nearest-neighbour, so no new label values appear.
    t = train_transforms(scale=(0.3, 2.5), crop=None, flip=False, color_jitter=0.3)
    sizes = set()
    for seed in range(8):
        x, y = seeded(lambda t=t: t(img, lab), seed)
        sizes.add(tuple(y.shape))
        assert x.shape[-2:] == y.shape and set(y.unique().tolist()) <= set(np.unique(labels).tolist())
    assert len(sizes) > 4


def test_seeded_transforms_repeat_and_leave_global_rng_alone():
    t = train_transforms(scale=(0.5, 2.0), crop=(20, 20), flip=True, color_jitter=0.2)
    img, lab = torch.randint(0, 255, (3, 30, 40), dtype=torch.uint8), torch.randint(0, 3, (30, 40))
    torch.manual_seed(1)
    before = torch.rand(3)
    torch.manual_seed(1)
    a = seeded(lambda: t(img, lab), 7)
    b = seeded(lambda: t(img, lab), 7)
    c = seeded(lambda: t(img, lab), 8)
    assert torch.equal(torch.rand(3), before)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_pad_collate():
    batch = [(torch.ones(3, 4, 5), torch.zeros(4, 5, dtype=torch.int64)),
             (torch.ones(3, 6, 3), torch.ones(6, 3, dtype=torch.int64))]
    x, y = pad_collate(batch)
    assert x.shape == (2, 3, 6, 5) and y.shape == (2, 6, 5)
    assert x[0, :, 4:].eq(0).all() and y[0, 4:].eq(255).all() and y[1, :, 3:].eq(255).all()
    assert y[1, :, :3].eq(1).all() and x[1, :, :, :3].eq(1).all()


def test_epoch_batches_shuffle_per_epoch_and_shard_by_rank():
    a = epoch_batches(10, 3, epoch=0, seed=0)
    assert a == epoch_batches(10, 3, epoch=0, seed=0) and a != epoch_batches(10, 3, epoch=1, seed=0)
    assert len(a) == 3 and all(len(b) == 3 for b in a)  # drop_last
    r0 = epoch_batches(9, 1, 0, 0, rank=0, world=2, drop_last=False)
    r1 = epoch_batches(9, 1, 0, 0, rank=1, world=2, drop_last=False)
    assert len(r0) == len(r1) == 5
    assert {k[0][0] for k in r0 + r1} == set(range(9))  # all covered (one repeated to even the shards)


def test_rare_class_crops_contain_the_weighted_class_and_uniform_crops_miss_it():
    """A 4x4 patch of class 1 in a 96x96 image of class 0: every class-placed crop (weight on class 1 only)
    holds some of it, at varied places in the crop; uniform crops mostly miss it. An image whose classes all
    weigh 0 still gets a crop of the asked size (the uniform fallback); bad arguments are refused."""
    lab = torch.zeros(96, 96, dtype=torch.int64)
    lab[80:84, 8:12] = 1
    img = torch.zeros(3, 96, 96, dtype=torch.uint8)
    placed = train_transforms(scale=None, crop=(24, 24), flip=False, rare_class_crops=1.0, class_weights=[0.0, 1.0])
    uniform = train_transforms(scale=None, crop=(24, 24), flip=False)
    hits, where = [], set()
    for seed in range(60):
        _, y = seeded(lambda: placed(img, lab), seed)
        hits.append(bool((y == 1).any()))
        where.add(tuple(torch.nonzero(y == 1)[0].tolist()) if hits[-1] else None)
    assert all(hits) and len(where) > 10
    missed = sum(not bool((seeded(lambda: uniform(img, lab), s)[1] == 1).any()) for s in range(60))
    assert missed > 40
    no_weight = train_transforms(scale=None, crop=(24, 24), flip=False, rare_class_crops=1.0, class_weights=[0.0, 0.0])
    _, y = seeded(lambda: no_weight(img, lab), 0)
    assert y.shape == (24, 24)
    with pytest.raises(ValueError, match="rare_class_crops needs a crop size"):
        train_transforms(crop=None, rare_class_crops=0.5, class_weights=[1.0])
    with pytest.raises(ValueError, match="p in"):
        train_transforms(crop=(8, 8), rare_class_crops=1.5, class_weights=[1.0])
