"""`fcnseg evaluate --report`: one self-contained HTML page whose figures and gallery are checked against the
metrics file, the predicted label maps and per-image scores recomputed here."""

import base64
import io
import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from helpers import make_shapes
from PIL import Image

import fcnseg
from fcnseg.data.palettes import colorize
from fcnseg.report import IGNORED

REPO = Path(__file__).resolve().parents[1]


class Page(HTMLParser):
    """The page's images (attributes by id and in order), text, and any tag that would load something."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[dict] = []
        self.external: list[str] = []
        self.scripts = 0
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "img":
            self.images.append(a)
        if tag == "script":
            self.scripts += 1
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith("data:"):
                self.external.append(a[key])

    def handle_data(self, data):
        self.text.append(data)


def _decode(url: str) -> Image.Image:
    assert url.startswith("data:image/")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


def _mean_iu(truth: np.ndarray, pred: np.ndarray, n: int) -> float:
    """Per-image mean IU over classes in the truth or the prediction, ignoring 255: written independently."""
    valid = truth != 255
    ius = []
    for c in range(n):
        t, p = (truth == c) & valid, (pred == c) & valid
        union = np.sum(t | p)
        if union:
            ius.append(np.sum(t & p) / union)
    return float(np.mean(ius))


def test_evaluate_report_is_one_page_with_metrics_bars_confusion_and_worst_images(tmp_path, tiny_model_file):
    root = make_shapes(tmp_path / "shapes", n=16, splits=True)  # 4 validation images
    out = tmp_path / "eval"
    r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "evaluate", "--model", str(tiny_model_file), "--dataset",
                        "folder", "--root", str(root), "--split", "val", "--out", str(out), "--save-predictions",
                        "--report", "--report-worst", "3"], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    assert f"wrote {out / 'report.html'}" in r.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    text = (out / "report.html").read_text()
    page = Page()
    page.feed(text)
    assert page.external == [] and page.scripts == 0  # self-contained: nothing to fetch, nothing to run
    words = " ".join(page.text)
    for key in ("pixel_acc", "mean_acc", "mean_iu", "fw_iu"):
        assert f"{100 * metrics[key]:.1f}" in words, key
    for name, iu in zip(metrics["class_names"], metrics["per_class_iu"]):
        assert name in words and f"{100 * iu:.1f}" in words
        assert f"width:{100 * iu:.1f}%" in text  # the IU bar
    # The confusion matrix is the plot written beside the page.
    cm = next(i for i in page.images if i.get("id") == "confusion")
    assert base64.b64decode(cm["src"].split(",", 1)[1]) == (out / "confusion_matrix.png").read_bytes()

    # The gallery: the 3 images of lowest mean IU, recomputed from the saved predictions and the masks.
    names = sorted(p.stem for p in (root / "images" / "val").iterdir())
    scores = {}
    for name in names:
        truth = np.array(Image.open(root / "masks" / "val" / f"{name}.png")).astype(np.int64)
        pred = np.array(Image.open(out / "predictions" / f"{name}.png")).astype(np.int64)
        scores[name] = (_mean_iu(truth, pred, 3), truth, pred)
    per_image = {p["name"]: p["mean_iu"] for p in metrics["per_image"]}
    assert set(per_image) == set(names)
    for name in names:
        assert per_image[name] == pytest.approx(scores[name][0], abs=1e-9)
    worst = sorted(names, key=lambda n: scores[n][0])[:3]
    thumbs = [i for i in page.images if i.get("alt") in ("image", "ground truth", "prediction")]
    assert [i["alt"] for i in thumbs] == ["image", "ground truth", "prediction"] * 3
    shown = [t for t in page.text if t.startswith("img0")]
    assert shown == worst
    palette = fcnseg.load(tiny_model_file).palette  # the report draws with the model's colours
    for k, name in enumerate(worst):
        photo, truth_im, pred_im = (_decode(thumbs[3 * k + j]["src"]) for j in range(3))
        assert photo.size == truth_im.size == pred_im.size == (64, 48)  # small images are not enlarged
        _, truth, pred = scores[name]
        assert np.array_equal(np.array(truth_im.convert("RGB")), colorize(truth, palette, IGNORED))
        assert np.array_equal(np.array(pred_im.convert("RGB")), colorize(pred, palette, IGNORED))
        original = np.array(Image.open(root / "images" / "val" / f"{name}.png").convert("RGB")).astype(int)
        assert np.abs(np.array(photo.convert("RGB")).astype(int) - original).mean() < 12  # JPEG of the photo
