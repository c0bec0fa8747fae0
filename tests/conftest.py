import os
from functools import cache
from pathlib import Path

import pytest
import torch

import fcnseg

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@cache
def cached_model(arch: str, backbone: str, num_classes: int = 5) -> fcnseg.FCN:
    """Models are expensive to build (VGG16: 134M parameters); tests that only read them share one."""
    torch.manual_seed(0)
    return fcnseg.build_model(arch, backbone, num_classes)


def save_shapes_model(path: Path, **info) -> Path:
    """Saves a 3-class FCN-8s for the shapes datasets (``make_shapes``) with random score layers, so that its
    predictions mix all classes across an image; ``info`` is stored with it."""
    from fcnseg.io.modelfile import save_model

    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", "mobilenet_v3_large", 3, class_names=["background", "square", "disc"])
    for conv in model.score_layers():
        torch.nn.init.normal_(conv.weight, std=0.5)
    return save_model(model, path, **info)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


def make_shapes(root: Path, n: int = 8, size: tuple[int, int] = (48, 64), seed: int = 0, splits: bool = False,
                mask_mode: str = "L") -> Path:
    """A tiny folder dataset: grey noise background (0), a red square (1) and a blue disc (2).

    ``mask_mode``: "L" (grey PNG of labels), "P" (palette PNG) or "RGB" (colour masks + palette in dataset.yaml).
    With ``splits``, the first 3/4 go to images/train, the rest to images/val.
    """
    import numpy as np
    import yaml
    from PIL import Image

    rng = np.random.default_rng(seed)
    h, w = size
    palette = [[0, 0, 0], [255, 0, 0], [0, 0, 255]]
    desc = {"classes": ["background", "square", "disc"], "palette": palette}
    if mask_mode == "RGB":
        desc["mask_format"] = "rgb"
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump(desc))
    for i in range(n):
        split = ("train" if i < n * 3 // 4 else "val") if splits else ""
        img = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
        lab = np.zeros((h, w), np.uint8)
        s = int(rng.integers(h // 4, h // 2))
        y0, x0 = int(rng.integers(0, h - s)), int(rng.integers(0, w // 2 - s // 2))
        lab[y0:y0 + s, x0:x0 + s] = 1
        yy, xx = np.mgrid[:h, :w]
        cy, cx, r = int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 2 + 4, w - 6)), h // 6
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = 2
        img[lab == 1] = (rng.normal(0, 6, ((lab == 1).sum(), 3)) + [215, 40, 40]).clip(0, 255).astype(np.uint8)
        img[lab == 2] = (rng.normal(0, 6, ((lab == 2).sum(), 3)) + [40, 60, 215]).clip(0, 255).astype(np.uint8)
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "masks" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / split / f"img{i:03d}.png")
        if mask_mode == "RGB":
            Image.fromarray(np.asarray(palette, np.uint8)[lab]).save(root / "masks" / split / f"img{i:03d}.png")
        elif mask_mode == "P":
            m = Image.fromarray(lab, mode="P")
            m.putpalette([v for c in palette for v in c])
            m.save(root / "masks" / split / f"img{i:03d}.png")
        else:
            Image.fromarray(lab, mode="L").save(root / "masks" / split / f"img{i:03d}.png")
    return root


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes(tmp_path / "shapes", n=8, splits=True)
