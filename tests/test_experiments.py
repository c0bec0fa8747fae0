"""The experiments runner (experiments/run.py) on a tiny synthetic dataset: a staged arm trains its parent
first, the results file holds the scores, the boundary-band IU and the val curve, and the resize option
shrinks what the net sees."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
from helpers import make_shapes

from fcnseg.data import build_dataset, eval_transforms, train_transforms

REPO = Path(__file__).resolve().parents[1]


def _script(name: str, path: str):
    """The module of a script under experiments/ (they are run as files, not imported as a package)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "experiments" / path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _runner():
    return _script("experiments_run", "run.py")


def test_every_arm_config_loads():
    from fcnseg.train import load_config

    run = _runner()
    names = run.arms()
    assert {"e1-fcn32s", "e1-fcn8s", "e2-fixed", "e3-sample25", "e4-random", "e5-vgg16-fcn8s"} <= set(names)
    for exp in range(1, 6):
        assert run.arms_of(exp)
    for name in names:
        cfg = load_config(run.CONFIGS / f"{name}.yaml")
        assert cfg.out.endswith(name) and cfg.val_split == "val" and cfg.boundary_width > 0
        if cfg.init_from:  # a staged arm's parent is another arm
            assert (run.CONFIGS / f"{Path(cfg.init_from).parent.name}.yaml").exists()


def test_staged_arm_runs_its_parent_and_records_scores(tmp_path):
    run = _runner()
    shapes = make_shapes(tmp_path / "shapes", n=8, splits=True)
    sets = ["dataset=folder", f"root={shapes}", "resize=[32,48]", "crop=[32,48]", "epochs=2", "batch_size=2",
            "workers=0", "val_every=1", "ckpt_every=0", "class_weights=null"]
    results = tmp_path / "results"
    run.main(["e1-fcn16s-staged", "--results", str(results), "--runs", str(tmp_path / "runs"),
              *[a for s in sets for a in ("--set", s)]])
    assert sorted(p.name for p in results.glob("*.json")) == ["e1-fcn16s-staged.json", "e1-fcn32s.json"]
    rec = json.loads((results / "e1-fcn16s-staged.json").read_text())
    assert 0 <= rec["scores"]["mean_iu"] <= 1 and 0 <= rec["boundary"]["mean_iu"] <= 1
    assert rec["boundary"]["width"] == 2
    assert [c["epoch"] for c in rec["curve"]] == [1, 2]
    assert rec["curve"][-1]["train_seconds"] > rec["curve"][0]["train_seconds"] > 0
    assert rec["curve"][-1]["boundary_mean_iu"] is not None
    assert set(rec["per_class_iu"]) == {"background", "square", "disc"}
    # the child started from the parent's trained model, not from ImageNet
    parent = torch.load(tmp_path / "runs" / "e1-fcn32s" / "last.pt", weights_only=True)["config"]
    assert parent["arch"] == "fcn32s"


@pytest.mark.parametrize("split", ["train", "val"])
def test_resize_changes_what_the_net_sees(tmp_path, split):
    shapes = make_shapes(tmp_path / "shapes", n=4, size=(48, 64), splits=True)
    t = train_transforms(None, None, False, resize=(24, 40)) if split == "train" else eval_transforms((24, 40))
    ds = build_dataset("folder", shapes, split, transforms=t)
    image, labels = ds[0]
    assert image.shape == (3, 24, 40) and labels.shape == (24, 40)
    assert set(labels.unique().tolist()) <= {0, 1, 2}  # nearest-neighbour: no new label values


def test_camvid_poles_split_reads_poles_as_the_foreground(shared_data, tmp_path):
    """The second thin-structure split links (never copies) 20 CamVid train and all 101 val images, and the
    folder dataset reads CamVid's pole pixels (label 2) as class 1, void as ignored, everything else as 0."""
    import numpy as np
    from PIL import Image
    mod = _script("camvid_poles_split", "camvid_poles/make_split.py")
    train, val = mod.make_split(shared_data / "camvid", tmp_path / "poles", 20)
    assert len(train) == len(set(train)) == 20 and len(val) == 101
    assert all(p.is_symlink() for p in (tmp_path / "poles" / "images" / "train").iterdir())
    ds = build_dataset("folder", tmp_path / "poles", "train")
    assert ds.num_classes == 2 and len(ds) == 20
    raw = np.array(Image.open(shared_data / "camvid" / "trainannot" / train[0]))
    _, labels = ds.tensors(0)
    labels = labels.numpy()
    np.testing.assert_array_equal(labels == 1, raw == 2)
    np.testing.assert_array_equal(labels == 255, raw == 11)
