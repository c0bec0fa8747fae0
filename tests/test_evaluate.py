"""`fcnseg evaluate` and `fcnseg predict` end to end, with the scores recomputed by independent code."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_shapes_model
from PIL import Image

import fcnseg
from fcnseg.io.modelfile import load_model, save_model

REPO = Path(__file__).resolve().parents[1]


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fcnseg.cli", *args], capture_output=True, text=True, cwd=REPO,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    """A 3-class FCN-8s whose score layers are random, so its predictions mix all classes."""
    return save_shapes_model(tmp_path_factory.mktemp("model") / "m.safetensors", note="test")


def reference_scores(pairs, n):
    """Per-class loops over numpy arrays: the paper's definitions, written independently of fcnseg.metrics."""
    tp, gt, pr = np.zeros(n), np.zeros(n), np.zeros(n)
    for truth, pred in pairs:
        valid = truth != 255
        for c in range(n):
            t, p = (truth == c) & valid, (pred == c) & valid
            tp[c] += np.sum(t & p)
            gt[c] += np.sum(t)
            pr[c] += np.sum(p)
    present = (gt + pr - tp) > 0
    iu = [tp[c] / (gt[c] + pr[c] - tp[c]) for c in range(n) if present[c]]
    acc = [tp[c] / gt[c] for c in range(n) if gt[c] > 0]
    fw = sum(gt[c] / gt.sum() * tp[c] / (gt[c] + pr[c] - tp[c]) for c in range(n) if present[c])
    dice = [2 * tp[c] / (gt[c] + pr[c]) for c in range(n) if present[c]]
    prec = [tp[c] / pr[c] if pr[c] > 0 else 0.0 for c in range(n) if present[c]]
    return {"pixel_acc": tp.sum() / gt.sum(), "mean_acc": np.mean(acc), "mean_iu": np.mean(iu), "fw_iu": fw,
            "mean_dice": np.mean(dice), "mean_precision": np.mean(prec), "mean_recall": np.mean(acc)}


def test_evaluate_cli_writes_metrics_plots_and_predictions_that_reproduce_the_scores(tmp_path, shapes, model_file):
    # One mask gets ignored pixels, to check 255 stays out of every count.
    m = shapes / "masks" / "val" / "img006.png"
    arr = np.array(Image.open(m))
    arr[:10] = 255
    Image.fromarray(arr).save(m)
    out = tmp_path / "eval"
    r = _cli("evaluate", "--model", str(model_file), "--dataset", "folder", "--root", str(shapes), "--split", "val",
             "--out", str(out), "--save-predictions")
    assert r.returncode == 0, r.stderr
    assert "mean IU" in r.stdout and "square" in r.stdout and "mean Dice" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu", "per_class_iu", "per_class_acc", "class_names",
                "num_images"):
        assert key in metrics
    assert metrics["num_images"] == 2 and metrics["class_names"] == ["background", "square", "disc"]
    pairs = []
    for name in ("img006", "img007"):
        truth = np.array(Image.open(shapes / "masks" / "val" / f"{name}.png")).astype(np.int64)
        pred_im = Image.open(out / "predictions" / f"{name}.png")
        assert pred_im.mode == "P" and pred_im.size == (truth.shape[1], truth.shape[0])
        pairs.append((truth, np.array(pred_im).astype(np.int64)))
    assert len({v for _, p in pairs for v in np.unique(p)}) >= 2, "the test model should predict several classes"
    ref = reference_scores(pairs, 3)
    for key, value in ref.items():
        assert metrics[key] == pytest.approx(value, abs=1e-9), key
    for iu, dice in zip(metrics["per_class_iu"], metrics["per_class_dice"]):  # Dice = 2 IU / (1 + IU)
        assert (iu is None) == (dice is None) and (iu is None or dice == pytest.approx(2 * iu / (1 + iu)))
    for name in ("confusion_matrix.png", "per_class_iu.png"):
        with Image.open(out / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100


def test_evaluate_refuses_a_model_of_another_dataset(tmp_path, shapes):
    model = fcnseg.build_model("fcn32s", "mobilenet_v3_large", 5)
    save_model(model, tmp_path / "five.safetensors")
    r = _cli("evaluate", "--model", str(tmp_path / "five.safetensors"), "--dataset", "folder", "--root", str(shapes),
             "--split", "val", "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "has 3 classes but the model scores 5" in r.stderr
    assert not (tmp_path / "e" / "metrics.json").exists()


def test_model_files_round_trip_and_bad_files_are_named(tmp_path, model_file):
    model = load_model(model_file)
    assert model.class_names == ["background", "square", "disc"] and model.info == {"note": "test"}
    x = torch.rand(1, 3, 40, 56)
    again = load_model(model_file)
    assert torch.equal(model(x), again(x))
    known = "known: camvid-fcn4s-lite0-trainval, camvid-fcn4s-lite0, camvid-fcn8s-lite0"
    with pytest.raises(FileNotFoundError, match=known):
        fcnseg.load("no-such-model")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(model_file.read_bytes()[:1000])
    with pytest.raises(ValueError, match="bad.safetensors: not a safetensors model file"):
        load_model(bad)
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "plain.safetensors")
    with pytest.raises(ValueError, match="plain.safetensors: a safetensors file without fcnseg metadata"):
        load_model(tmp_path / "plain.safetensors")


def test_predict_cli_writes_labels_overlays_and_shares(tmp_path, shapes, model_file):
    out = tmp_path / "pred"
    r = _cli("predict", str(shapes / "images" / "val"), "--model", str(model_file), "--out", str(out))
    assert r.returncode == 0, r.stderr
    summary = json.loads((out / "summary.json").read_text())["images"]
    assert [Path(s["image"]).name for s in summary] == ["img006.png", "img007.png"]
    for s in summary:
        assert sum(s["shares"].values()) == pytest.approx(1.0, abs=1e-3)
        stem = Path(s["image"]).stem
        with Image.open(out / f"{stem}.png") as lab, Image.open(out / f"{stem}_overlay.jpg") as ov:
            assert lab.size == ov.size == tuple(s["size"]) == (64, 48)
    # --max-size: labels computed small, written at full size.
    r = _cli("predict", str(shapes / "images" / "val" / "img006.png"), "--model", str(model_file), "--out",
             str(tmp_path / "small"), "--max-size", "32")
    assert r.returncode == 0, r.stderr
    with Image.open(tmp_path / "small" / "img006.png") as lab:
        assert lab.size == (64, 48)


@pytest.mark.slow  # test_bad_input.py checks the same through the command line in make test
def test_predict_bad_input_is_reported_and_skipped(tmp_path, shapes, model_file):
    r = _cli("predict", str(tmp_path / "missing.png"), "--model", str(model_file), "--out", str(tmp_path / "o1"))
    assert r.returncode == 1 and "missing.png: no such image file" in r.stderr
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r = _cli("predict", str(shapes / "images" / "val" / "img006.png"), str(broken), "--model", str(model_file),
             "--out", str(tmp_path / "o2"))
    assert r.returncode == 1 and "broken.jpg: cannot read image" in r.stderr
    assert sorted(p.name for p in (tmp_path / "o2").iterdir()) == ["img006.png", "img006_overlay.jpg",
                                                                   "summary.json"]
