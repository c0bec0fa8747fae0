"""``ModelSpec``: everything that rebuilds an FCN except its weights, in one shape for model files, training
checkpoints, Hub folders and exported ONNX/TorchScript metadata.

``FCN.spec`` gives a model's spec, ``ModelSpec.build()`` an untrained FCN of that spec (random head, trunk
without pretrained weights, the spec's preprocessing installed), ready for ``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace

from torch import nn

from ..preprocessing import Preprocessing
from ..tta import check_scales

# The FCN builder: fcnseg.models.fcn registers ``build_model`` here when it is imported (fcnseg.models imports it),
# so that the spec, which FCN.spec returns, need not import the model module back.
BUILDERS: dict[str, Callable[..., nn.Module]] = {}


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild an FCN without its weights (see ``fcnseg.models.fcn.FCN`` for each field).

    Attributes:
        arch: "fcn32s", "fcn16s", "fcn8s" or "fcn8s-atonce".
        backbone: one of ``fcnseg.BACKBONES``.
        num_classes: classes scored, background included.
        class_names: a name per class, or None (then "0", "1", ...).
        palette: an ``(r, g, b)`` uint8 colour per class, or None (the default palette).
        preprocessing: the input normalisation of the weights, or None (the trunk's default).
        padding: "paper", "same" or "tf" (legacy EfficientNet-Lite), or None (the backbone's default).
        upsampling: "paper", "fixed" or "learned".
        alignment: "exact", or "legacy" (models saved by fcnseg 0.1).
        task: "multiclass", "binary" or "multilabel".
        threshold: binary and multilabel decision threshold, a probability.
        in_channels: image channels the model reads (1 grey, 3 RGB, 4 RGB-NIR, ...).
        test_scale: the input scale inference runs at unless told otherwise (``fcnseg.tta.model_scales``): the
            image is resized by it, segmented, and the probabilities resized back (as timm's
            ``test_input_size``); 1.0 unless chosen on val.
    """

    arch: str
    backbone: str
    num_classes: int
    class_names: tuple[str, ...] | None = None
    palette: tuple[tuple[int, ...], ...] | None = None
    preprocessing: Preprocessing | None = None
    padding: str | None = None
    upsampling: str = "paper"
    alignment: str = "exact"
    task: str = "multiclass"
    threshold: float = 0.5
    in_channels: int = 3
    test_scale: float = 1.0

    def to_dict(self) -> dict:
        """A JSON-serialisable dict (the ``"model"`` entry of model files, Hub ``config.json`` and export
        metadata)."""
        return {"arch": self.arch, "backbone": self.backbone, "num_classes": self.num_classes,
                "padding": self.padding, "upsampling": self.upsampling, "alignment": self.alignment,
                "class_names": None if self.class_names is None else list(self.class_names),
                "palette": None if self.palette is None else [list(map(int, c)) for c in self.palette],
                "preprocessing": None if self.preprocessing is None else self.preprocessing.to_dict(),
                "task": self.task, "threshold": self.threshold, "in_channels": self.in_channels,
                "test_scale": self.test_scale}

    @classmethod
    def from_dict(cls, d: Mapping, alignment: str = "legacy") -> ModelSpec:
        """The spec of a ``to_dict`` dict, also of files written by older versions.

        Args:
            d: needs ``arch``, ``backbone``, ``num_classes``; every other key may be missing (files of fcnseg 0.1
                have no ``alignment``, ``task``, ``threshold``, ``in_channels``).
            alignment: what a dict without ``alignment`` means: "legacy" for model files (fcnseg 0.1 built its
                head for nominal geometry), "exact" for training checkpoints.

        Raises:
            KeyError: ``arch``, ``backbone`` or ``num_classes`` is missing.
            ValueError: a ``test_scale`` that is not a positive number.
        """
        names, palette, pre = d.get("class_names"), d.get("palette"), d.get("preprocessing")
        return cls(arch=d["arch"], backbone=d["backbone"], num_classes=int(d["num_classes"]),
                   class_names=None if names is None else tuple(str(n) for n in names),
                   palette=tuple(tuple(c) for c in palette) if palette else None,
                   preprocessing=None if pre is None else Preprocessing.from_dict(pre),
                   padding=d.get("padding"), upsampling=d.get("upsampling", "paper"),
                   alignment=d.get("alignment", alignment), task=d.get("task", "multiclass"),
                   threshold=float(d.get("threshold", 0.5)), in_channels=int(d.get("in_channels", 3)),
                   test_scale=check_scales([d.get("test_scale", 1.0)])[0])

    def replace(self, **changes) -> ModelSpec:
        """A copy with ``changes`` (``dataclasses.replace``)."""
        return replace(self, **changes)

    def build(self) -> nn.Module:
        """An FCN of this spec, untrained (no pretrained trunk weights), in training mode on the CPU.

        Raises:
            ValueError: an unknown arch, backbone, padding, upsampling, alignment or task, a bad ``num_classes``,
                or preprocessing for another number of channels than ``in_channels``.
        """
        model = BUILDERS["fcn"](self.arch, self.backbone, self.num_classes, padding=self.padding,
                                upsampling=self.upsampling, alignment=self.alignment, task=self.task,
                                threshold=self.threshold, in_channels=self.in_channels,
                                class_names=None if self.class_names is None else list(self.class_names))
        if self.preprocessing is not None:
            if len(self.preprocessing.mean) != model.in_channels:
                raise ValueError(f"preprocessing has {len(self.preprocessing.mean)} channels, the model reads "
                                 f"{model.in_channels}")
            model.normalize.set(self.preprocessing)
        if self.palette:
            model.palette = [tuple(c) for c in self.palette]
        model.test_scale = self.test_scale
        return model
