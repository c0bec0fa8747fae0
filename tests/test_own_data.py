"""Your own data, as it really comes: binary and grey-level masks, JPEG masks, name patterns, EXIF, data check."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import make_shapes
from PIL import Image

from fcnseg.data import DatasetError
from fcnseg.data.datasets import folder
from fcnseg.data.summary import problems, summary, training_errors

REPO = Path(__file__).resolve().parents[1]
SIZE = (48, 64)


def _cells(rng, h=SIZE[0], w=SIZE[1]) -> tuple[np.ndarray, np.ndarray]:
    """A grey image of bright discs on a dark ground and its 0/1 truth."""
    yy, xx = np.mgrid[:h, :w]
    truth = np.zeros((h, w), np.uint8)
    for _ in range(3):
        cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(5, 9)
        truth[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 1
    img = np.where(truth == 1, 200, 50) + rng.integers(-20, 20, (h, w))
    return img.clip(0, 255).astype(np.uint8), truth


def isbi_like(root: Path, n: int = 6, values=(0, 255), split: bool = False) -> Path:
    """ISBI's layout: ``image/N.png`` (grey) and ``label/N.png`` with the truth written as ``values``."""
    rng = np.random.default_rng(0)
    for i in range(n):
        sub = ("train" if i < n - 2 else "val") if split else ""
        (root / "image" / sub).mkdir(parents=True, exist_ok=True)
        (root / "label" / sub).mkdir(parents=True, exist_ok=True)
        img, truth = _cells(rng)
        Image.fromarray(img, "L").save(root / "image" / sub / f"{i}.png")
        Image.fromarray(np.asarray(values, np.uint8)[truth], "L").save(root / "label" / sub / f"{i}.png")
    return root


def _grey_levels(root: Path, levels: list[int], n: int = 3, ext: str = ".png", quality: int = 75) -> np.ndarray:
    """Images and masks whose labels 0..k-1 are written as ``levels``; returns the first truth."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    first = None
    for i in range(n):
        yy, xx = np.mgrid[:SIZE[0], :SIZE[1]]
        truth = ((xx + 2 * yy + 5 * i) * len(levels) // (SIZE[1] + 2 * SIZE[0]) % len(levels)).astype(np.uint8)
        Image.fromarray(np.full((*SIZE, 3), 100, np.uint8)).save(root / "images" / f"a{i}.png")
        mask = Image.fromarray(np.asarray(levels, np.uint8)[truth], "L")
        mask.save(root / "masks" / f"a{i}{ext}", **({"quality": quality} if ext == ".jpg" else {}))
        first = truth if first is None else first
    return first


def test_binary_0_255_masks_are_two_classes_not_ignored(tmp_path):
    root = isbi_like(tmp_path / "isbi")
    ds = folder(root)
    assert ds.class_names == ["background", "object"] and ds.mapping_kind == "binary"
    assert ds.options == {"classes": ["background", "object"], "remap": {255: 1}}
    assert ds.check() == []
    raw = np.asarray(Image.open(ds.samples[0].mask))
    np.testing.assert_array_equal(ds.read_mask(0), (raw == 255).astype(np.int64))
    assert ds.stats.label_pixels[-1] == 0 and ds.stats.label_pixels[1] == (raw == 255).sum() + sum(
        (np.asarray(Image.open(s.mask)) == 255).sum() for s in ds.samples[1:])
    assert training_errors(ds) == [] and problems(ds) == []
    text = summary(ds)
    assert "binary: 0 -> class 0 (background), 255 -> class 1 (object)" in text and "ignored 0.0%" in text


def test_binary_0_1_masks(tmp_path):
    ds = folder(isbi_like(tmp_path / "b", values=(0, 1)))
    assert ds.class_names == ["background", "object"] and ds.remap == {} and ds.mapping_kind == "binary"


@pytest.mark.parametrize("levels", [[0, 64, 128, 192], [0, 85, 170, 255], [0, 127, 255]])
def test_evenly_spaced_grey_levels_are_classes_in_order(tmp_path, levels):
    truth = _grey_levels(tmp_path / "g", levels)
    ds = folder(tmp_path / "g")
    assert ds.num_classes == len(levels) and ds.mapping_kind == "levels"
    assert ds.options["remap"] == {v: i for i, v in enumerate(levels) if v != i}
    np.testing.assert_array_equal(ds.read_mask(0), truth)
    ds.check()
    assert any("evenly spaced grey levels" in w for w in problems(ds))


def test_jpeg_masks_are_refused_then_snapped_or_thresholded(tmp_path):
    truth = _grey_levels(tmp_path / "j", [0, 255], ext=".jpg", quality=60)
    raw = np.asarray(Image.open(tmp_path / "j" / "masks" / "a0.jpg"))
    assert len(np.unique(raw)) > 10  # the JPEG noise this test is about
    with pytest.raises(DatasetError, match=r"lossy-compression noise .*'snap: true'.*'mask_threshold: 128'"):
        folder(tmp_path / "j")
    snapped = folder(tmp_path / "j", snap=True)
    assert len(snapped.options["levels"]) == 2 and snapped.class_names == ["background", "object"]
    assert (snapped.read_mask(0) == truth).mean() > 0.97
    (tmp_path / "j" / "dataset.yaml").write_text("mask_threshold: 128\n")
    thresholded = folder(tmp_path / "j")
    np.testing.assert_array_equal(thresholded.read_mask(0), (raw >= 128).astype(np.int64))


def test_jpeg_grey_level_masks_snap_to_four_classes(tmp_path):
    truth = _grey_levels(tmp_path / "j4", [0, 64, 128, 192], ext=".jpg", quality=70)
    with pytest.raises(DatasetError, match="snap: true"):
        folder(tmp_path / "j4")
    ds = folder(tmp_path / "j4", snap=True)
    assert ds.num_classes == 4 and len(ds.options["levels"]) == 4
    assert (ds.read_mask(0) == truth).mean() > 0.97
    ds.check()
    assert any("snapped" in w for w in problems(ds))


def test_described_classes_with_255_objects_refuse_to_train_and_say_the_remap(tmp_path):
    root = isbi_like(tmp_path / "d")
    (root / "dataset.yaml").write_text("classes: [background, cell]\n")
    ds = folder(root)
    ds.check()
    errors = training_errors(ds)
    assert errors and "only class 'background' occurs" in errors[0] and "remap: {255: 1}" in errors[0]
    assert any("never occurs" in w and "'cell' (1)" in w and "remap: {255: 1}" in w for w in problems(ds))


def test_patterns_and_any_pillow_mask_extension(tmp_path):
    root = tmp_path / "drive"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i, ext in zip((21, 22, 23), (".gif", ".tif", ".bmp")):
        img, truth = _cells(rng)
        Image.fromarray(np.stack([img] * 3, -1)).save(root / "images" / f"{i}_training.tif")
        Image.fromarray(truth * 255, "L").save(root / "masks" / f"{i}_manual1{ext}")
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(root / "images" / "24_training.tif")
    (root / "dataset.yaml").write_text('image_pattern: "{id}_training"\nmask_pattern: "{id}_manual1"\n')
    ds = folder(root)
    assert [s.name for s in ds.samples] == ["21", "22", "23", "24"]
    assert [s.mask.name for s in ds.samples[:3]] == ["21_manual1.gif", "22_manual1.tif", "23_manual1.bmp"]
    assert ds.class_names == ["background", "object"]
    with pytest.raises(DatasetError, match=r"24_manual1\.png: mask file is missing \(looked for .*24_manual1 with "
                                           r"png/gif/tif/tiff/bmp/webp/jpg/jpeg\)"):
        ds.check()
    skipped = folder(root).check(skip_bad=True)
    assert len(skipped) == 1 and "24_manual1" in skipped[0]


def test_when_every_pair_is_bad_the_error_names_files(tmp_path):
    root = make_shapes(tmp_path / "s", n=3)
    for p in (root / "masks").iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match=r"all 3 bad, e\.g\. .*img000\.png: mask file is missing.*img001\.png"):
        folder(root).check(skip_bad=True)


def _exif_png(rgb: np.ndarray, path: Path, orientation: int = 6) -> None:
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, exif=exif)


def test_exif_rotation_is_applied_to_training_images(tmp_path):
    root = make_shapes(tmp_path / "e", n=2)
    image, labels = folder(root).load(0)
    # Stored sideways with orientation 6 ("rotate 90 clockwise to display"); the mask is drawn upright.
    _exif_png(np.rot90(image, 1).copy(), root / "images" / "img000.png")
    ds = folder(root)
    assert ds.check() == [] and ds.stats.rotated == [("img000", 6)]
    upright, lab = ds.load(0)
    np.testing.assert_array_equal(upright, image)
    np.testing.assert_array_equal(lab, labels)
    assert "1 images turned upright per EXIF (e.g. img000)" in summary(ds, brief=True)
    assert "img000 (orientation 6)" in summary(ds)
    # A mask drawn on the stored (sideways) pixels: the error says how to turn EXIF off.
    Image.fromarray(np.rot90(labels, 1).astype(np.uint8)).save(root / "masks" / "img000.png")
    with pytest.raises(DatasetError, match=r"img000\.png: mask is 48x64 .* EXIF orientation.*'exif: false'"):
        folder(root).check()
    assert folder(root, exif=False).check() == []


def test_data_check_cli(tmp_path):
    root = isbi_like(tmp_path / "isbi", split=True)
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "data", "check", "--dataset", "folder", "--root",
                        str(root), "--split", "train"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "images        4" in out and "sizes         64x48" in out and "PNG L (4)" in out
    assert "raw values    0 (" in out and "255 (" in out and "binary: 0 -> class 0" in out
    assert "warnings      none" in out and '"remap": {"255": 1}' in out
    (root / "label" / "train" / "0.png").unlink()
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "data", "check", "--dataset", "folder", "--root",
                        str(root), "--split", "train"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 1 and "bad pair:" in r.stdout and "0.png: mask file is missing" in r.stdout


def test_isbi_like_binary_run_counts_object_pixels_and_repeats_from_config(tmp_path):
    """The bug this guards against: {0, 255} masks trained with every object pixel ignored (mean IU 100)."""
    from fcnseg.train import load_config, train

    root = isbi_like(tmp_path / "isbi", n=6, split=True)
    out = tmp_path / "run"
    cfg = load_config(None, dict(dataset="folder", root=str(root), arch="fcn32s", backbone="efficientnet_lite0",
                                 pretrained_backbone=None, crop=[48, 64], scale=None, batch_size=2, epochs=1,
                                 workers=0, threads=1, tensorboard=False, out=str(out)))
    result = train(cfg)
    labels = np.concatenate([np.asarray(Image.open(p)).ravel() for p in sorted((root / "label" / "val").iterdir())])
    confusion = np.asarray(result["confusion"])
    assert confusion.shape == (2, 2) and confusion.sum() == labels.size
    assert confusion[1].sum() == (labels == 255).sum() > 0  # object pixels are scored, not ignored
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["dataset_options"] == {"classes": ["background", "object"], "remap": {255: 1}}
    assert (out / "best.safetensors").is_file() and (out / "model.safetensors").is_file()
    metrics = json.loads((out / "val" / "metrics.json").read_text())
    assert metrics["class_names"] == ["background", "object"]
    # evaluate reads the masks the way the model was trained: the mapping is stored in the model file.
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "evaluate", "--model", str(out / "best.safetensors"),
                        "--dataset", "folder", "--root", str(root), "--split", "val", "--out", str(tmp_path / "ev"),
                        "--threads", "1"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert "dataset options from the model" in r.stdout and "2 classes: background" in r.stdout
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text())["confusion"] == metrics["confusion"]


def test_batchnorm_with_batch_1_is_refused_before_step_1_and_freeze_bn_makes_it_legal(tmp_path):
    import torch

    from fcnseg.io.modelfile import load_model
    from fcnseg.train import load_config, train

    root = make_shapes(tmp_path / "s", n=4, splits=False)
    base = dict(dataset="folder", root=str(root), train_split="all", val_split=None, arch="fcn32s",
                backbone="efficientnet_lite0", pretrained_backbone=None, crop=[48, 64], scale=None, batch_size=1,
                epochs=1, max_steps=2, workers=0, threads=1, tensorboard=False, lr=0.1, optimizer="sgd")
    with pytest.raises(ValueError, match="batch_size 1 with the BatchNorm layers of efficientnet_lite0.*"
                                         "batch_size: 2 or more, or freeze_bn: true"):
        train(load_config(None, {**base, "out": str(tmp_path / "refused")}))
    assert not (tmp_path / "refused" / "last.pt").exists()
    torch.manual_seed(0)
    train(load_config(None, {**base, "out": str(tmp_path / "frozen"), "freeze_bn": True}))
    torch.manual_seed(0)
    from fcnseg.models import build_model

    fresh = build_model("fcn32s", "efficientnet_lite0", 3)
    trained = load_model(tmp_path / "frozen" / "model.safetensors")
    bn = [n for n, m in fresh.named_modules() if isinstance(m, torch.nn.BatchNorm2d)]
    fresh_sd, trained_sd = fresh.state_dict(), trained.state_dict()
    for name in bn:  # frozen: weights, biases and running statistics as initialised
        for k in ("weight", "bias", "running_mean", "running_var"):
            assert torch.equal(fresh_sd[f"{name}.{k}"], trained_sd[f"{name}.{k}"]), f"{name}.{k}"
    conv = next(n for n, m in fresh.named_modules() if isinstance(m, torch.nn.Conv2d))
    assert not torch.equal(fresh_sd[f"{conv}.weight"], trained_sd[f"{conv}.weight"])  # the rest learned
    # No validation: the best model the docs list is still written (the last one).
    assert load_model(tmp_path / "frozen" / "best.safetensors").info["best"] == "last (no validation)"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "module._orig_mod."])
def test_wrapper_key_prefixes_are_stripped_with_a_notice(tmp_path, capsys, prefix):
    import torch
    from safetensors.torch import save_file

    from fcnseg.io.checkpoint import load_checkpoint, save_checkpoint
    from fcnseg.io.modelfile import load_model, save_model
    from fcnseg.models import build_model
    from fcnseg.models.weights import read_state_dict

    torch.manual_seed(0)
    model = build_model("fcn32s", "efficientnet_lite0", 2)
    plain = save_model(model, tmp_path / "plain.safetensors")
    # A model file whose keys carry the wrapper's prefix, with fcnseg's metadata.
    from safetensors import safe_open

    with safe_open(str(plain), "pt") as f:
        meta = f.metadata()
    wrapped = {prefix + k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(wrapped, tmp_path / "wrapped.safetensors", metadata=meta)
    loaded = load_model(tmp_path / "wrapped.safetensors")
    assert "wrapped.safetensors: stripped the key prefix" in capsys.readouterr().err
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())
    torch.save({"state_dict": wrapped}, tmp_path / "trunk.pth")
    assert set(read_state_dict(tmp_path / "trunk.pth")) == set(model.state_dict())
    save_checkpoint({"model": wrapped, "config": {}}, tmp_path / "c.pt")
    assert set(load_checkpoint(tmp_path / "c.pt")["model"]) == set(model.state_dict())
    err = capsys.readouterr().err
    assert err.count("stripped the key prefix") == 2 and f"{prefix!r}" in err
    # A dict whose keys do not all share the prefix is left alone.
    save_checkpoint({"model": {**wrapped, "other": torch.zeros(1)}, "config": {}}, tmp_path / "m.pt")
    assert "other" in load_checkpoint(tmp_path / "m.pt")["model"] and not capsys.readouterr().err


def test_16_bit_pil_image_is_scaled_like_the_file(tmp_path):
    import torch

    from fcnseg.data.images import to_float, to_tensor

    ramp = (np.arange(48 * 64, dtype=np.uint32).reshape(48, 64) * 21).astype(np.uint16)  # 0..64491
    Image.fromarray(ramp).save(tmp_path / "x16.png")
    with Image.open(tmp_path / "x16.png") as im:
        assert im.mode.startswith("I")
        from_pil = to_tensor(im)
        tensor_pil = to_float(to_tensor(im))
    from_path = to_tensor(tmp_path / "x16.png")
    assert torch.equal(from_pil, from_path) and from_pil.max() > 240  # not clipped at 255 (which is all 255)
    assert len(torch.unique(from_pil)) > 200
    assert torch.allclose(tensor_pil, to_float(to_tensor(tmp_path / "x16.png")))
    model = __import__("helpers").cached_model("fcn32s", "efficientnet_lite0", 3)
    with Image.open(tmp_path / "x16.png") as im:
        assert torch.equal(model.predict(im), model.predict(tmp_path / "x16.png"))


def test_every_pixel_ignored_gives_no_nan(tmp_path):
    import torch

    from fcnseg.evaluate import format_table, write_report
    from fcnseg.metrics import ConfusionMatrix

    cm = ConfusionMatrix(3)
    cm.update(torch.full((4, 5), 255), torch.zeros(4, 5, dtype=torch.int64))
    r = cm.compute()
    assert [r[k] for k in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu")] == [None] * 4
    r.update(class_names=["a", "b", "c"], num_images=1, images_per_s=1.0, confusion=cm.mat.tolist())
    write_report(r, tmp_path / "rep")
    text = (tmp_path / "rep" / "metrics.json").read_text()
    assert "NaN" not in text and json.loads(text)["mean_iu"] is None
    table = format_table(r)
    assert "mean IU" in table and "nan" not in table.lower()
    assert [line.split()[-1] for line in table.splitlines() if line.startswith("mean IU")] == ["-"]


def test_serve_names_generic_run_files_after_their_folder(tmp_path):
    from fcnseg.serve import model_name

    assert model_name(str(tmp_path / "cells" / "best.safetensors")) == "cells-best"
    assert model_name(str(tmp_path / "roads" / "best.safetensors")) == "roads-best"
    assert model_name(str(tmp_path / "runs" / "street-fcn8s.onnx")) == "street-fcn8s"
    assert model_name("camvid-fcn8s-lite0") == "camvid-fcn8s-lite0"


def test_eta_text():
    from fcnseg.train.logs import eta

    assert eta(0.0, 0, 10) == "?"
    assert eta(10.0, 10, 5) == "5s" and eta(10.0, 1, 20) == "3m20s" and eta(3600.0, 1, 2) == "2h00m"


def test_skip_bad_names_every_skipped_file_even_when_none_is_left(tmp_path):
    root = make_shapes(tmp_path / "s", n=4, splits=True)
    for p in (root / "masks" / "train").iterdir():
        p.unlink()
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "train", "--skip-bad", "dataset=folder", f"root={root}",
                        f"out={tmp_path / 'run'}", "workers=0", "tensorboard=false", "pretrained_backbone=null"],
                       capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 2
    for i in range(3):
        assert f"skipped: {root / 'masks' / 'train' / f'img00{i}.png'}: mask file is missing" in r.stderr
    assert "no usable image/mask pairs; all 3 bad" in r.stderr and "Traceback" not in r.stderr


def test_many_inferred_classes_of_which_few_occur_are_warned_about(tmp_path):
    root = make_shapes(tmp_path / "s", n=2)
    (root / "dataset.yaml").unlink()
    for p in (root / "masks").iterdir():
        lab = np.asarray(Image.open(p))
        Image.fromarray(np.asarray([0, 3, 20], np.uint8)[lab]).save(p)
    ds = folder(root)
    assert ds.num_classes == 21 and ds.mapping_kind == "labels"
    ds.check()
    assert any("21 classes inferred from the mask values but only 3 occur" in w for w in problems(ds))


def test_isbi_real_files_are_binary(shared_data):
    ds = folder(shared_data / "isbi_membrane")
    assert len(ds) == 30 and ds.class_names == ["background", "object"] and ds.remap == {255: 1}
    assert ds.check() == [] and set(ds.stats.sizes) == {(512, 512)}
    counts = ds.stats.label_pixels
    assert counts[-1] == 0 and counts[0] > 0 and counts[1] > counts[0]  # white cell interiors outnumber membranes
    raw = np.asarray(Image.open(ds.samples[0].mask))
    np.testing.assert_array_equal(ds.read_mask(0), (raw == 255).astype(np.int64))
    assert training_errors(ds) == []
