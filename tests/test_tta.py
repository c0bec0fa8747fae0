"""Test-time augmentation (multi-scale + flip) and sliding-window evaluation: one core function for every caller."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import save_shapes_model
from torch import nn

import fcnseg
from fcnseg import tasks
from fcnseg.data import build_dataset, eval_transforms
from fcnseg.evaluate import evaluate
from fcnseg.io.modelfile import save_model
from fcnseg.models.inference import predict_image, probabilities
from fcnseg.models.spec import ModelSpec
from fcnseg.tta import check_scales, tta_probabilities

REPO = Path(__file__).resolve().parents[1]


class ColumnScores(nn.Module):
    """Scores that grow to the right: class 1's logit is the column's position in [0, 1]; class 0's is 0.5.
    Also records the sizes it is called at."""

    num_classes, task, class_names, palette, in_channels = 2, "multiclass", ["a", "b"], [(0, 0, 0), (9, 9, 9)], 3

    def __init__(self):
        super().__init__()
        self.seen = []
        self.dummy = nn.Parameter(torch.zeros(()))  # predict places inputs on the parameters' device

    def forward(self, x):
        self.seen.append(tuple(x.shape[-2:]))
        n, _, h, w = x.shape
        col = torch.linspace(0, 1, w).expand(n, 1, h, w) * 4
        return torch.cat([torch.full_like(col, 2.0), col], 1) + 0 * self.dummy


def test_one_scale_without_flip_is_the_plain_softmax():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 4, 3, padding=1)
    x = torch.rand(2, 3, 20, 30)
    with torch.no_grad():
        assert torch.equal(tta_probabilities(conv, x), torch.softmax(conv(x), 1))


def test_scales_run_at_their_sizes_and_come_back_at_the_input_size():
    model = ColumnScores()
    x = torch.rand(1, 3, 40, 60)
    p = probabilities(model, x, flip=True, scales=(0.75, 1.0, 1.5))
    assert model.seen == [(30, 45), (30, 45), (40, 60), (40, 60), (60, 90), (60, 90)]
    assert p.shape == (1, 2, 40, 60) and p.dtype == torch.float32
    torch.testing.assert_close(p.sum(1), torch.ones(1, 40, 60))


def test_flip_averages_the_mirrored_image_so_the_result_is_symmetric():
    """ColumnScores favours class 1 on the right; with the mirrored image averaged in, left and right agree."""
    model = ColumnScores()
    x = torch.rand(1, 3, 16, 24)
    plain, flipped = probabilities(model, x), probabilities(model, x, flip=True)
    assert plain[0, 1, :, -1].min() > plain[0, 1, :, 0].max() + 0.5  # not symmetric without the flip
    torch.testing.assert_close(flipped, flipped.flip(-1))
    torch.testing.assert_close(flipped, (plain + plain.flip(-1)) / 2)


def test_scales_average_probabilities_resized_back_bilinearly():
    """Probability maps, not scores or labels, are resized and averaged (binary: the sigmoid's two channels)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 1, 5, padding=2)
    x = torch.rand(1, 3, 24, 32)
    with torch.no_grad():
        got = tta_probabilities(conv, x, "binary", scales=(0.5, 1.0))
        small = F.interpolate(x, size=(12, 16), mode="bilinear", align_corners=False, antialias=True)
        back = F.interpolate(tasks.probabilities(conv(small), "binary"), size=(24, 32), mode="bilinear",
                             align_corners=False)
        expect = (back + tasks.probabilities(conv(x), "binary")) / 2
    torch.testing.assert_close(got, expect)
    torch.testing.assert_close(got.sum(1), torch.ones(1, 24, 32))


def test_legacy_models_keep_their_padding_at_every_scale():
    """A legacy model pads to a multiple of 32 inside its forward: at scale 0.75 (a 75x57 input) it sees the
    resized image padded to 96x64, exactly as it does at scale 1."""
    torch.manual_seed(0)
    legacy = fcnseg.build_model("fcn8s", "efficientnet_lite0", 3, alignment="legacy").eval()
    for conv in legacy.score_layers():
        nn.init.normal_(conv.weight, std=0.5)
    x = torch.rand(1, 3, 100, 76)
    with torch.inference_mode():
        got = tta_probabilities(legacy, x, scales=(0.75,))
        small = F.interpolate(x, size=(75, 57), mode="bilinear", align_corners=False, antialias=True)
        padded = F.pad(small, (3, 4, 10, 11), mode="replicate")  # evenly to 96 x 64
        legacy.input_multiple = 1  # the trunk sees the padded image as it is: no second padding
        scores = legacy(padded)[:, :, 10:85, 3:60]
        expect = F.interpolate(torch.softmax(scores, 1), size=(100, 76), mode="bilinear", align_corners=False)
    torch.testing.assert_close(got, expect)


@pytest.mark.parametrize("bad", [[], [0.0], [-1.0], [float("inf")]])
def test_bad_scales_are_refused_in_one_line(bad):
    with pytest.raises(ValueError, match="scales: "):
        check_scales(bad)


def test_windows_of_h_by_w_cover_the_image_and_match_the_whole_image_without_overlap_effects():
    """A pointwise model gives the same probabilities in windows as whole; an image within the window is whole."""
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", "mobilenet_v3_large", 3).eval()
    point = nn.Conv2d(3, 3, 1)
    point.num_classes, point.class_names = 3, ["a", "b", "c"]
    image = torch.rand(3, 70, 90)
    whole, pw = predict_image(point, image, tile=None, return_probs=True)
    tiled, pt = predict_image(point, image, tile=(32, 48), overlap=8, return_probs=True)
    assert (whole == tiled).all()
    torch.testing.assert_close(torch.from_numpy(pt).float(), torch.from_numpy(pw).float(), atol=2e-3, rtol=0)
    a, _ = predict_image(model, image, tile=(70, 90))
    b, _ = predict_image(model, image, tile=None)
    assert (a == b).all()


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_shapes_model(tmp_path_factory.mktemp("model") / "m.safetensors")


def test_evaluate_records_tta_and_windows_and_plain_equals_one_scale(shapes, model_file):
    model = fcnseg.load(str(model_file))
    ds = build_dataset("folder", shapes, "val", transforms=eval_transforms())
    plain = evaluate(model, ds)
    assert plain["tta"] == {"scales": [1.0], "flip": False, "window": None, "overlap": None}
    same = evaluate(model, ds, window=(48, 64))  # the images' own size: whole, through predict's path
    assert same["confusion"] == plain["confusion"]
    tta = evaluate(model, ds, scales=[0.75, 1.0, 1.25], flip=True, window=(32, 32), overlap=8)
    assert tta["tta"] == {"scales": [0.75, 1.0, 1.25], "flip": True, "window": [32, 32], "overlap": 8}
    assert tta["confusion"] != plain["confusion"]  # the augmentation changed the predictions
    assert sum(map(sum, tta["confusion"])) == sum(map(sum, plain["confusion"]))


@pytest.mark.slow
def test_evaluate_and_predict_cli_take_scales_flip_and_window(tmp_path, shapes, model_file):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "evaluate", "--model", str(model_file), "--dataset",
                        "folder", "--root", str(shapes), "--split", "val", "--out", str(out), "--scales", "0.75",
                        "1.0", "1.25", "1.5", "--flip", "--window", "32", "40"],
                       capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["tta"] == {"scales": [0.75, 1.0, 1.25, 1.5], "flip": True, "window": [32, 40], "overlap": 128}
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "predict", str(shapes / "images" / "val"), "--model",
                        str(model_file), "--out", str(tmp_path / "pred"), "--scales", "0.5", "1.0", "--window",
                        "32", "32", "--quiet"], capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "pred").glob("*_overlay.jpg"))) == 2
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "evaluate", "--model", str(model_file), "--dataset",
                        "folder", "--root", str(shapes), "--split", "val", "--out", str(out), "--scales", "-1"],
                       capture_output=True, text=True, cwd=REPO, env=env)
    assert r.returncode != 0 and "scales: each scale must be a positive number" in r.stderr


def test_a_stored_test_scale_is_the_default_scale_of_inference_and_evaluate(tmp_path, shapes, model_file):
    model = fcnseg.load(str(model_file))
    model.test_scale = 1.5
    scaled = fcnseg.load(str(save_model(model, tmp_path / "scaled.safetensors")))
    assert scaled.spec.test_scale == 1.5 and fcnseg.load(str(model_file)).spec.test_scale == 1.0
    ds = build_dataset("folder", shapes, "val", transforms=eval_transforms())
    default, plain = evaluate(scaled, ds), evaluate(scaled, ds, scales=[1.0])
    assert default["tta"]["scales"] == [1.5] and plain["tta"]["scales"] == [1.0]
    assert default["confusion"] == evaluate(model, ds, scales=[1.5])["confusion"]
    assert plain["confusion"] == evaluate(fcnseg.load(str(model_file)), ds)["confusion"]
    image = ds[0][0]
    seen = ColumnScores()
    seen.test_scale = 2.0
    probabilities(seen, image[None])
    predict_image(seen, image, scales=[1.0])
    assert seen.seen == [(2 * image.shape[1], 2 * image.shape[2]), tuple(image.shape[1:])]


@pytest.mark.parametrize("bad", [0, -1.5, float("inf")])
def test_a_bad_stored_test_scale_is_refused(bad):
    with pytest.raises(ValueError, match="each scale must be a positive number"):
        ModelSpec.from_dict({"arch": "fcn8s", "backbone": "vgg16", "num_classes": 2, "test_scale": bad})
