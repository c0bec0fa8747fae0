"""The shipped CamVid model: what it carries, what it segments, and the demo that shows it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fcnseg
from fcnseg.data import CAMVID_CLASSES, CAMVID_PALETTE, build_dataset, eval_transforms
from fcnseg.evaluate import evaluate
from fcnseg.pretrained import DEFAULT_MODEL, HERE, PRETRAINED, available, held_out

REPO = Path(__file__).resolve().parents[1]
NAMES = list(PRETRAINED)


@pytest.fixture(scope="module", params=NAMES)
def name(request):
    return request.param


@pytest.fixture(scope="module")
def model(name):
    return fcnseg.load(name)


def test_the_default_is_a_shipped_model():
    assert DEFAULT_MODEL in available()  # what predict, export, serve and the demo use unless told
    # What the benchmarks score on val: the same network, not trained on val.
    twin = PRETRAINED[held_out()]
    assert twin.available() and not twin.selection and twin.spec == PRETRAINED[DEFAULT_MODEL].spec
    assert all(held_out(n) == n for n in NAMES if not PRETRAINED[n].selection)


def test_shipped_file_is_small_safetensors_with_a_model_card(name):
    entry = PRETRAINED[name]
    path = entry.path
    assert path == HERE / entry.file and entry.available() and name in available()
    assert path.suffix == ".safetensors" and path.stat().st_size <= 25 * 1024 * 1024
    card = entry.card_path.read_text()
    assert entry.recipe in card and entry.recipe.startswith("fcnseg train --config configs/")
    assert (REPO / entry.recipe.split()[-1]).is_file()  # the recipe's config is in the repository
    # The entry's scores are the card's (rounded to 0.1 point there).
    for key, label in (("pixel_acc", "pixel accuracy"), ("mean_iu", "mean IU"), ("fw_iu", "frequency-weighted IU")):
        assert f"| {label} | {100 * entry.metrics[key]:.1f} |" in card
    for needed in ("CC BY-NC 4.0", "mean IU", f"fcnseg evaluate --model {name} "):
        assert needed in card
    for final in (m.name for m in PRETRAINED.values() if m.selection == name):  # a selection run names its model
        assert f"It is the selection run of `{final}`" in card


def test_it_carries_classes_palette_and_preprocessing(model, name):
    spec = PRETRAINED[name].spec
    assert {k: v for k, v in model.spec.to_dict().items() if k in spec} == dict(spec)
    assert model.arch == spec["arch"] and model.backbone == spec["backbone"] and not model.training
    assert model.class_names == CAMVID_CLASSES
    assert [tuple(c) for c in model.palette] == CAMVID_PALETTE
    assert model.preprocessing.name == "tf-lite" and model.preprocessing.scale == 255.0
    selection = PRETRAINED[name].selection
    if selection:  # a final model trained on val: no val scores of its own; the card names its selection run
        assert model.info["val"] is None and f"selection run `{selection}`" in PRETRAINED[name].card_path.read_text()
    else:
        assert model.info["val"]["mean_iu"] >= 0.60


def test_it_segments_the_demo_photo(model):
    labels = model.predict(REPO / "fcnseg" / "demo_images" / "leuvenA.jpg").numpy()
    shares = np.bincount(labels.ravel(), minlength=11) / labels.size
    top3 = {CAMVID_CLASSES[k] for k in np.argsort(-shares)[:3]}
    assert {"building", "sky"} <= top3, dict(zip(CAMVID_CLASSES, shares.round(3)))
    # Sky is above the buildings: its mean row is in the upper part of the photo.
    rows = np.nonzero(labels == CAMVID_CLASSES.index("sky"))[0]
    assert rows.mean() < 0.4 * labels.shape[0]


@pytest.mark.parametrize("name", [n for n in NAMES if not PRETRAINED[n].selection])  # held out only
def test_it_scores_camvid_val(name, shared_data):
    model = fcnseg.load(name)
    val = build_dataset("camvid", shared_data / "camvid", "val", transforms=eval_transforms())
    val.samples = val.samples[::5]  # 21 of the 101 images, to keep the suite fast
    result = evaluate(model, val)
    assert result["num_images"] == 21
    assert result["mean_iu"] > 0.55 and result["pixel_acc"] > 0.85


def test_demo_writes_sheets_and_shares(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "demo", "--out", str(tmp_path)], capture_output=True,
                       text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    assert "leuvenA.jpg: 751x563" in r.stdout and "building" in r.stdout
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["images"]) == 2 and summary["errors"] == []
    for stem in ("leuvenA", "leuvenB"):
        for suffix in ("_sheet.jpg", "_overlay.jpg", ".png"):
            assert (tmp_path / f"{stem}{suffix}").is_file()
