"""A corpus of bad input, generated here (no binary fixtures), pushed through `fcnseg train`, `evaluate` and
`predict`: each gives one line naming the file and the problem, a non-zero exit, a traceback only with --debug,
and nothing half-written. Images that are unusual but valid (16-bit, palette, RGBA, CMYK, grey, EXIF-rotated)
go through and come out right. Config files with wrong types, unknown keys or bad YAML, and missing folders,
are named in one line too."""

import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import jpeg_bytes, make_shapes, png_bytes, run_cli
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg.data import build_dataset
from fcnseg.data.images import decode_image
from fcnseg.io.atomic import stale_temp_files

REPO = Path(__file__).resolve().parents[1]
SIZE = (48, 64)  # make_shapes' (H, W)


def png_bomb(w: int, h: int) -> bytes:
    """A real decompression bomb: a valid 8-bit grey PNG of w x h zero pixels, a few hundred kB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\x00" * (w + 1)  # filter byte + pixels
    idat = b"".join(z.compress(row) for _ in range(h)) + z.flush()
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


# name -> (file suffix, function of a good RGB image -> bytes, expected message after the path)
BAD_IMAGES = {
    "zero-byte PNG": (".png", lambda rgb: b"", "empty file (0 bytes)"),
    "zero-byte JPEG": (".jpg", lambda rgb: b"", "empty file (0 bytes)"),
    "truncated PNG": (".png", lambda rgb: png_bytes(Image.fromarray(rgb))[:400], "cannot read image"),
    "truncated JPEG": (".jpg", lambda rgb: jpeg_bytes(rgb)[:-300], "cannot read image (image file is truncated"),
    "text named .png": (".png", lambda rgb: b"this is not a picture\n", "cannot read image (cannot identify"),
    "decompression bomb": (".png", lambda rgb: png_bomb(12_000, 9_000), "12000x9000 is 108 Mpixel, more than"),
}

# name -> (function of the labels -> mask PIL image or bytes, expected message after the mask's path)
BAD_MASKS = {
    "mask of the wrong size": (lambda lab: Image.fromarray(lab[:20, :30]), "mask is 30x20 but its image"),
    "colour mask": (lambda lab: Image.fromarray(np.stack([lab * 80] * 3, -1)), "colour mask given where label"),
    "label out of range": (lambda lab: Image.fromarray(np.where(lab == 2, 7, lab).astype(np.uint8)),
                           "label values [7] are outside 0..2"),
    "16-bit mask beyond 255": (lambda lab: Image.fromarray(lab.astype(np.uint16) * 300),
                               "mask values 0..600 do not fit 0..255"),
    "zero-byte mask": (lambda lab: b"", "cannot read mask"),
}


def _shapes(root: Path) -> Path:
    return make_shapes(root, n=4, size=SIZE)  # images/ and masks/, split "all"


def _break_image(root: Path, kind: str, name: str = "img001") -> Path:
    suffix, make, _ = BAD_IMAGES[kind]
    good = root / "images" / f"{name}.png"
    rgb = np.asarray(Image.open(good).convert("RGB"))
    good.unlink()
    bad = root / "images" / f"{name}{suffix}"
    bad.write_bytes(make(rgb))
    return bad


def _break_mask(root: Path, kind: str, name: str = "img002") -> Path:
    make, _ = BAD_MASKS[kind]
    path = root / "masks" / f"{name}.png"
    made = make(np.asarray(Image.open(path)).copy())
    if isinstance(made, bytes):
        path.write_bytes(made)
    else:
        made.save(path)
    return path


def _train_args(root: Path, out: Path) -> list[str]:
    return ["train", f"root={root}", "dataset=folder", "train_split=all", "val_split=null", f"out={out}",
            "workers=0", "pretrained_backbone=null", "tensorboard=false"]


def _eval_args(root: Path, out: Path, model_file: Path) -> list[str]:
    return ["evaluate", "--model", str(model_file), "--dataset", "folder", "--root", str(root), "--split", "all",
            "--out", str(out), "--save-predictions"]


def _run_main(capsys, args: list[str]) -> tuple[int, str]:
    code = main(args)
    return code, capsys.readouterr().err


def _one_clear_line(err: str, path: Path, message: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"fcnseg: error: {path}: ") and message in lines[0], lines[0]
    assert "Traceback" not in err


def _nothing_written(out: Path) -> None:
    assert not out.exists() or not any(out.rglob("*")), sorted(out.rglob("*"))


def _train_and_evaluate_stop(capsys, tmp_path: Path, root: Path, model_file: Path, bad: Path, message: str,
                             debug: bool = False) -> None:
    """train and evaluate on ``root`` both exit 2 with one line naming ``bad`` and write nothing; with ``debug``,
    ``--debug`` adds the traceback above that same line."""
    for args, out in ((_train_args(root, tmp_path / "run"), tmp_path / "run"),
                      (_eval_args(root, tmp_path / "eval", model_file), tmp_path / "eval")):
        code, err = _run_main(capsys, args)
        assert code == 2
        _one_clear_line(err, bad, message)
        _nothing_written(out)
        if debug:
            code, err = _run_main(capsys, ["--debug", *args])
            assert code == 2 and "Traceback (most recent call last)" in err
            assert err.strip().splitlines()[-1].startswith(f"fcnseg: error: {bad}: ")


@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_images_stop_train_and_evaluate_with_one_line(tmp_path, capsys, tiny_model_file, kind):
    root = _shapes(tmp_path / "data")
    bad = _break_image(root, kind)
    _train_and_evaluate_stop(capsys, tmp_path, root, tiny_model_file, bad, BAD_IMAGES[kind][2], debug=True)


@pytest.mark.parametrize("kind", list(BAD_MASKS))
def test_bad_masks_stop_train_and_evaluate_with_one_line(tmp_path, capsys, tiny_model_file, kind):
    root = _shapes(tmp_path / "data")
    bad = _break_mask(root, kind)
    _train_and_evaluate_stop(capsys, tmp_path, root, tiny_model_file, bad, BAD_MASKS[kind][1])


def test_skip_bad_drops_every_kind_and_names_each(tmp_path):
    root = make_shapes(tmp_path / "data", n=len(BAD_IMAGES) + len(BAD_MASKS) + 2, size=SIZE)
    bad = [_break_image(root, kind, f"img{i:03d}") for i, kind in enumerate(BAD_IMAGES)]
    bad += [_break_mask(root, kind, f"img{len(BAD_IMAGES) + i:03d}") for i, kind in enumerate(BAD_MASKS)]
    ds = build_dataset("folder", root, "all")
    problems = ds.check(skip_bad=True)
    assert len(problems) == len(bad) and len(ds) == 2
    for path, problem in zip(bad, problems):
        assert problem.startswith(f"{path}: ")


def test_predict_skips_bad_files_writes_the_rest_and_exits_1(tmp_path, tiny_model_file):
    """Through the real command line (a subprocess): one line per bad file, the good images written."""
    src = _shapes(tmp_path / "data")
    inputs = tmp_path / "in"
    inputs.mkdir()
    shutil.copy(src / "images" / "img000.png", inputs / "good.png")
    rgb = np.asarray(Image.open(src / "images" / "img000.png"))
    bad = {}
    for i, (suffix, make, message) in enumerate(BAD_IMAGES.values()):
        path = inputs / f"bad{i}{suffix}"
        path.write_bytes(make(rgb))
        bad[path] = message
    out = tmp_path / "out"
    r = run_cli("predict", str(inputs), "--model", str(tiny_model_file), "--out", str(out), "--quiet")
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert lines[-1] == f"fcnseg: {len(bad)} of {len(bad) + 1} images failed"
    for path, message in bad.items():
        assert sum(line.startswith(f"fcnseg: error: {path}: ") and message in line for line in lines) == 1, (
            path, r.stderr)
    assert len(lines) == len(bad) + 1 and "Traceback" not in r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["good.png", "good_overlay.jpg", "summary.json"]
    assert not stale_temp_files(out)
    assert len(json.loads((out / "summary.json").read_text())["errors"]) == len(bad)


def test_real_command_line_one_line_and_debug_traceback(tmp_path, tiny_model_file):
    root = _shapes(tmp_path / "data")
    bad = _break_image(root, "truncated JPEG")
    r = run_cli(*_train_args(root, tmp_path / "run"))
    assert r.returncode == 2
    _one_clear_line(r.stderr, bad, "image file is truncated")
    _nothing_written(tmp_path / "run")
    r = run_cli("--debug", *_eval_args(root, tmp_path / "eval", tiny_model_file))
    assert r.returncode == 2 and "Traceback (most recent call last)" in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(f"fcnseg: error: {bad}: cannot read image")
    _nothing_written(tmp_path / "eval")


# --- unusual but valid images ------------------------------------------------------------------------------

def _unusual(rgb: np.ndarray, folder: Path) -> dict[str, tuple[Path, np.ndarray, float]]:
    """name -> (file, the RGB array it should decode to, tolerated mean abs difference)."""
    folder.mkdir(parents=True, exist_ok=True)
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    files = {}
    deep = grey.astype(np.uint16) * 257  # 8 bits spread over 16: scaled back exactly, clipping would give 255
    Image.fromarray(deep).save(folder / "deep16.png")
    files["16-bit grey"] = (folder / "deep16.png", np.repeat(grey[:, :, None], 3, 2), 0.0)
    pal = Image.fromarray(rgb).quantize(64)
    pal.save(folder / "palette.png")
    files["palette"] = (folder / "palette.png", np.asarray(pal.convert("RGB")), 0.0)
    rgba = np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 128, np.uint8)], 2)
    Image.fromarray(rgba).save(folder / "rgba.png")
    files["RGBA"] = (folder / "rgba.png", rgb, 0.0)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    files["CMYK JPEG"] = (folder / "cmyk.jpg", rgb, 12.0)
    Image.fromarray(grey).save(folder / "grey.png")
    files["grey"] = (folder / "grey.png", np.repeat(grey[:, :, None], 3, 2), 0.0)
    return files


def test_unusual_images_train_and_read_right(tmp_path, capsys):
    root = make_shapes(tmp_path / "data", n=5, size=SIZE)
    originals = {}
    for i, path in enumerate(sorted((root / "images").glob("*.png"))):
        # Each image of the dataset in another unusual form; its mask stays as it was.
        rgb = np.asarray(Image.open(path).convert("RGB"))
        kind, (made, expected, tol) = list(_unusual(rgb, tmp_path / f"u{i}").items())[i]
        path.unlink()
        shutil.move(made, root / "images" / f"{path.stem}{made.suffix}")
        originals[path.stem] = (kind, expected, tol)
    ds = build_dataset("folder", root, "all")
    assert ds.check() == []
    for i, s in enumerate(ds.samples):
        kind, expected, tol = originals[s.name]
        image, labels = ds.load(i)
        assert image.shape == (*SIZE, 3) and labels.shape == SIZE, kind
        assert np.abs(image.astype(int) - expected).mean() <= tol, kind
    out = tmp_path / "run"
    code, err = _run_main(capsys, [*_train_args(root, out), "max_steps=1", "crop=null", "scale=null",
                                   "batch_size=1", "freeze_bn=true"])
    assert code == 0, err
    assert (out / "model.safetensors").is_file() and not stale_temp_files(out)


def test_unusual_images_predict_right_including_exif_rotation(tmp_path, tiny_model_file, capsys):
    rgb = np.asarray(Image.open(_shapes(tmp_path / "data") / "images" / "img000.png").convert("RGB"))
    files = _unusual(rgb, tmp_path / "in")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(rgb).save(tmp_path / "in" / "exif6.jpg", exif=exif, quality=95)
    model = fcnseg.load(tiny_model_file)
    from fcnseg.predict import read_image

    upright = read_image(tmp_path / "in" / "exif6.jpg")
    assert upright.shape == (SIZE[1], SIZE[0], 3)
    stored = decode_image(tmp_path / "in" / "exif6.jpg", exif=False)  # the pixels as stored, sideways
    assert np.array_equal(upright, np.rot90(stored, -1))
    right, wrong = (np.abs(upright.astype(int) - np.rot90(rgb, k)).mean() for k in (-1, 1))
    assert right < 12 < 30 < wrong  # JPEG noise against a wrong turn
    for kind, (path, expected, tol) in files.items():
        assert np.abs(read_image(path).astype(int) - expected).mean() <= tol, kind
    code, err = _run_main(capsys, ["predict", str(tmp_path / "in"), "--model", str(tiny_model_file), "--out",
                                   str(tmp_path / "out"), "--quiet"])
    assert code == 0, err
    for path in [*(p for p, _, _ in files.values()), tmp_path / "in" / "exif6.jpg"]:
        with Image.open(tmp_path / "out" / f"{path.stem}.png") as lab:
            assert lab.size == ((SIZE[0], SIZE[1]) if path.stem == "exif6" else (SIZE[1], SIZE[0])), path.name
    # The rotated photo is segmented upright: its labels are those of the upright pixels.
    labels = np.asarray(Image.open(tmp_path / "out" / "exif6.png"))
    expected = model.predict(upright).numpy()
    assert (labels == expected).mean() > 0.99


# --- configs and folders ----------------------------------------------------------------------------------

@pytest.mark.parametrize("text,message", [
    ("epochs: ten\n", "config key 'epochs' must be int, got 'ten' (str)"),
    ("crop: 288\n", "config key 'crop' must be list or null, got 288 (int)"),
    ("flip: 3\n", "config key 'flip' must be bool, got 3 (int)"),
    ("lr: fast\n", "config key 'lr' must be float or null, got 'fast' (str)"),
    ("epoch: 10\n", "unknown config key 'epoch'; did you mean 'epochs'?"),
    ("batchsize: 4\n", "unknown config key 'batchsize'; did you mean 'batch_size'?"),
    ("qwerty: 1\n", "unknown config key 'qwerty'; valid keys: amp, arch,"),
    ("epochs: [1, 2\n", "not valid YAML"),
    ("- epochs\n- 3\n", "a config must be a mapping"),
])
def test_bad_config_files_name_the_key(tmp_path, capsys, text, message):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(text)
    code, err = _run_main(capsys, ["train", "--config", str(cfg), f"out={tmp_path / 'run'}"])
    assert code == 2
    _one_clear_line(err, cfg, message)
    _nothing_written(tmp_path / "run")


def test_exponent_without_a_dot_is_a_number(tmp_path):
    from fcnseg.train import load_config

    cfg = tmp_path / "c.yaml"
    cfg.write_text("lr: 1e-3\nepochs: 2\n")  # YAML 1.1 reads 1e-3 as a string
    assert load_config(cfg).lr == 0.001


def test_missing_config_and_folders(tmp_path, capsys, tiny_model_file):
    code, err = _run_main(capsys, ["train", "--config", str(tmp_path / "none.yaml")])
    assert code == 2
    _one_clear_line(err, tmp_path / "none.yaml", "config file does not exist")
    code, err = _run_main(capsys, _train_args(tmp_path / "nodata", tmp_path / "run"))
    assert code == 2
    _one_clear_line(err, tmp_path / "nodata", "dataset folder does not exist")
    code, err = _run_main(capsys, _eval_args(tmp_path / "nodata", tmp_path / "eval", tiny_model_file))
    assert code == 2
    _one_clear_line(err, tmp_path / "nodata", "dataset folder does not exist")
    (tmp_path / "empty").mkdir()
    code, err = _run_main(capsys, _train_args(tmp_path / "empty", tmp_path / "run"))
    assert code == 2
    _one_clear_line(err, tmp_path / "empty" / "images", "image folder is missing")
    code, err = _run_main(capsys, ["predict", str(tmp_path / "nothing"), "--model", str(tiny_model_file), "--out",
                                   str(tmp_path / "p"), "--quiet"])
    assert code == 1 and f"{tmp_path / 'nothing'}: no such image file" in err
    code, err = _run_main(capsys, ["evaluate", "--model", str(tmp_path / "no.safetensors"), "--dataset", "folder",
                                   "--root", str(tmp_path), "--out", str(tmp_path / "e")])
    assert code == 2
    _one_clear_line(err, tmp_path / "no.safetensors", "no such model file")
    _nothing_written(tmp_path / "run")


class _Breaks(torch.utils.data.Dataset):
    """A dataset whose file goes bad after the check (replaced on disk mid-run)."""

    def __len__(self) -> int:
        return 2

    def __getitem__(self, i: int):
        from fcnseg.data import DatasetError

        raise DatasetError("/data/images/x.png: cannot read image (image file is truncated)")


def test_an_error_in_a_data_worker_is_one_line_naming_the_file():
    from fcnseg.cli import one_line

    loader = torch.utils.data.DataLoader(_Breaks(), num_workers=1)
    with pytest.raises(Exception) as e:
        next(iter(loader))
    assert "\n" in str(e.value)  # torch wraps it: "Caught DatasetError in DataLoader worker process 0. ..."
    assert one_line(e.value) == "/data/images/x.png: cannot read image (image file is truncated)"
