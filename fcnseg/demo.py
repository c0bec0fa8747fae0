"""``fcnseg demo``: the shipped CamVid FCN-8s on street photos, and (``--classifier``) the paper's first step.

The main demo segments the photos in ``fcnseg/demo_images`` (OpenCV sample photos, Apache-2.0/BSD-3-Clause;
not CamVid) with the default model (``DEFAULT_MODEL``) and writes overlays, label maps and class shares, with timings.

The classifier demo: an EfficientNet-Lite0 ImageNet classifier is convolutionalized (its fully connected
classifier becomes a 1x1 convolution with the same weights) and run on whole photos of any size. Instead of one label it
outputs a map of class scores, one per 32x32 cell. The demo writes, per photo, the map of the winning
ImageNet class and a heat map of the photo's top class, and times an FCN-8s on the same trunk.
The photos are scikit-image's sample images (public domain / CC0), so nothing of ../shared is used.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .data.images import to_float, to_tensor
from .data.palettes import colorize, imagenet_categories
from .models import build_model, build_trunk, count_parameters
from .models.surgery import linear_to_conv
from .models.weights import get_weights, load_backbone_weights, read_state_dict
from .predict import _save_image
from .preprocessing import Normalize
from .pretrained import DEFAULT_MODEL


def dense_classifier(backbone: str = "efficientnet_lite0") -> torch.nn.Module:
    """The ImageNet classifier of ``backbone`` as a fully convolutional net: image -> 1000 x H/32 x W/32."""
    trunk = build_trunk(backbone)
    load_backbone_weights(trunk, backbone, "imagenet")
    sd = read_state_dict(get_weights(backbone, "imagenet").file())  # the classifier layer the trunk leaves out
    fc = torch.nn.Linear(1280, 1000)
    key = "_fc" if "_fc.weight" in sd else "classifier"
    fc.load_state_dict({"weight": sd[f"{key}.weight"], "bias": sd[f"{key}.bias"]})

    class Dense(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.normalize, self.trunk, self.score = Normalize(trunk.preprocessing), trunk, linear_to_conv(fc, 1280, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.score(self.trunk(self.normalize(x))[2])

    return Dense().eval()


def _palette(n: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(40, 255, size=(n, 3), dtype=np.uint8)


DEMO_IMAGES = Path(__file__).resolve().parent / "demo_images"


def run_demo(out: str, threads: int = 2, classifier: bool = False, model: str = DEFAULT_MODEL) -> int:
    """Runs the segmentation demo (or with ``classifier`` the convolutionalized classifier demo)."""
    if classifier:
        return run_classifier_demo(out, threads)
    from .predict import predict_files
    from .pretrained import load

    torch.set_num_threads(threads)
    out_dir = Path(out)
    t = time.perf_counter()
    net = load(model)
    print(f"{model}: {net.arch} on {net.backbone}, {count_parameters(net):,d} parameters, classes "
          f"{', '.join(net.class_names)}; loaded in {time.perf_counter() - t:.1f} s")
    photos = sorted(DEMO_IMAGES.glob("*.jpg"))
    results, _ = predict_files(net, photos, out_dir, progress=False)
    # A side-by-side sheet per photo: the photo, the overlay, and a legend of the classes present.
    for r in results:
        stem = Path(r["image"]).stem
        photo = Image.open(r["image"]).convert("RGB")
        over = Image.open(out_dir / f"{stem}_overlay.jpg")
        sheet = Image.new("RGB", (photo.width * 2 + 200, photo.height), "white")
        sheet.paste(photo, (0, 0))
        sheet.paste(over, (photo.width, 0))
        from PIL import ImageDraw

        draw = ImageDraw.Draw(sheet)
        for k, (name, share) in enumerate(r["shares"].items()):
            y = 10 + 22 * k
            colour = tuple(int(v) for v in colorize(np.array([[net.class_names.index(name)]]), net.palette)[0, 0])
            draw.rectangle([photo.width * 2 + 10, y, photo.width * 2 + 28, y + 16], fill=colour)
            draw.text((photo.width * 2 + 34, y + 2), f"{name} {100 * share:.1f}%", fill="black")
        _save_image(sheet, out_dir / f"{stem}_sheet.jpg", quality=90)
    total = sum(r["ms"] for r in results)
    print(f"segmented {len(results)} photos in {total / 1000:.2f} s ({threads} threads); wrote "
          f"{out_dir}/*_sheet.jpg, *_overlay.jpg, *.png (labels) and summary.json")
    return 0


def run_classifier_demo(out: str, threads: int = 2) -> int:
    try:
        from skimage import data
    except ImportError:
        print("fcnseg demo needs scikit-image for its sample photos: pip install scikit-image")
        return 2
    torch.set_num_threads(threads)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = dense_classifier()
    cats = imagenet_categories()
    photos = {"chelsea": data.chelsea(), "coffee": data.coffee(), "astronaut": data.astronaut()}
    print(f"EfficientNet-Lite0 ImageNet classifier, convolutionalized: {count_parameters(model):,d} parameters")
    for name, rgb in photos.items():
        x = to_float(to_tensor(rgb))[None]
        t = time.perf_counter()
        with torch.inference_mode():
            scores = model(x)[0]
        ms = 1000 * (time.perf_counter() - t)
        prob = scores.softmax(0)
        pooled = scores.mean((1, 2)).softmax(0)  # average pooling: the classifier's own global answer
        top = int(pooled.argmax())
        winners = prob.argmax(0)
        labels, counts = winners.unique(return_counts=True)
        share = sorted(zip(counts.tolist(), labels.tolist()), reverse=True)[:3]
        print(f"{name}: {rgb.shape[1]}x{rgb.shape[0]} -> score map {tuple(scores.shape[1:])} in {ms:.0f} ms; "
              f"whole image: {cats[top]} ({pooled[top]:.2f}); cells won by "
              + ", ".join(f"{cats[c]} {n / winners.numel():.0%}" for n, c in share))
        heat = F.interpolate(prob[top][None, None], size=rgb.shape[:2], mode="bilinear", align_corners=False)[0, 0]
        heat = (heat / heat.max()).numpy()
        overlay = (0.45 * rgb + 0.55 * np.stack([255 * heat, 64 * heat, 255 * (1 - heat)], -1)).astype(np.uint8)
        _save_image(Image.fromarray(np.concatenate([rgb, overlay], 1)), out_dir / f"{name}_heatmap.png")
        colours = _palette(1000)[winners.numpy()]
        _save_image(Image.fromarray(colours).resize(rgb.shape[1::-1], Image.NEAREST), out_dir / f"{name}_classmap.png")
    fcn = build_model("fcn8s", "efficientnet_lite0", 21, "imagenet").eval()
    x = torch.rand(1, 3, 360, 480)
    with torch.inference_mode():
        fcn(x)
        t = time.perf_counter()
        y = fcn(x)
    print(f"FCN-8s on the same trunk: {count_parameters(fcn):,d} parameters, 360x480 -> {tuple(y.shape[1:])} "
          f"in {1000 * (time.perf_counter() - t):.0f} ms")
    print(f"wrote {out_dir}/*_heatmap.png and *_classmap.png")
    return 0
