"""Input normalisation that travels with a model's weights.

Every FCN in fcnseg takes RGB images as float tensors in [0, 1] and normalises them itself, with the
statistics of the weights it was built from. A user therefore cannot pair ImageNet weights with Caffe
preprocessing by mistake: the pairing is made once, when the weights are loaded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class Preprocessing:
    """How a backbone's weights expect their input.

    Args:
        mean: per-channel mean, in the input's channel order and value range (after ``scale``); one value per
            input channel (3 for RGB; see ``fcnseg.models.channels`` for grey and RGB-NIR).
        std: per-channel standard deviation, same convention as ``mean``.
        scale: factor applied to the [0, 1] RGB image first (255.0 for weights trained on 0..255 input).
        bgr: whether the weights expect BGR channel order (Caffe-trained VGG16).
        name: short label shown in model summaries.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    scale: float = 1.0
    bgr: bool = False
    name: str = "custom"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        return cls(
            mean=tuple(float(v) for v in d["mean"]),
            std=tuple(float(v) for v in d["std"]),
            scale=float(d.get("scale", 1.0)),
            bgr=bool(d.get("bgr", False)),
            name=str(d.get("name", "custom")),
        )


# torchvision's ImageNet classifiers.
IMAGENET = Preprocessing((0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 1.0, False, "imagenet")
# Caffe-trained VGG16 (the paper's net, Keras' VGG16 and HED): BGR, 0..255, mean subtracted, no division.
CAFFE_BGR = Preprocessing((103.939, 116.779, 123.68), (1.0, 1.0, 1.0), 255.0, True, "caffe-bgr")
# TensorFlow-trained EfficientNet-Lite: (x - 127) / 128 on 0..255 input.
TF_LITE = Preprocessing((127.0, 127.0, 127.0), (128.0, 128.0, 128.0), 255.0, False, "tf-lite")
# torchvision's GoogLeNet weights were ported from TensorFlow and expect (x - 0.5) / 0.5
# (torchvision applies this through ``transform_input``; here it is plain preprocessing).
HALF = Preprocessing((0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 1.0, False, "half")


class Normalize(nn.Module):
    """Maps an RGB [0, 1] batch to what the trunk's weights expect. Buffers are not saved in the
    state dict, so weight files keep the authors' layer names only; the preprocessing itself is
    saved as metadata next to the weights."""

    def __init__(self, pre: Preprocessing) -> None:
        super().__init__()
        self.set(pre)

    def set(self, pre: Preprocessing) -> None:
        self.pre = pre
        if len(pre.mean) != len(pre.std):
            raise ValueError(f"preprocessing {pre.name!r}: {len(pre.mean)} means but {len(pre.std)} stds")
        mean = torch.tensor(pre.mean, dtype=torch.float32).view(1, -1, 1, 1)
        std = torch.tensor(pre.std, dtype=torch.float32).view(1, -1, 1, 1)
        # Fold scale, mean and std into one multiply-add: x * a + b.
        a = pre.scale / std
        b = -mean / std
        self.register_buffer("a", a, persistent=False)
        self.register_buffer("b", b, persistent=False)
        self.bgr = pre.bgr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
        return x * self.a + self.b

    def extra_repr(self) -> str:
        return self.pre.name
