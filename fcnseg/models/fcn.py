"""FCN-32s, FCN-16s and FCN-8s on any trunk (the paper, section 4.2), and FCN-4s and FCN-2s below them.

The head scores the stride-32 features (``score_fr``), upsamples by 2 (``upscore2``), adds scores of the
stride-16 features (``score_pool4``), upsamples by 2 again (``upscore_pool4``), adds scores of the stride-8
features (``score_pool3``) and upsamples to the image (``upscore8``). FCN-32s stops after ``score_fr``
(``upscore``, x32), FCN-16s after the first fusion (``upscore16``). Every crop offset is computed from
the trunk's layer geometry; with VGG16 and the paper's padding they come out as the authors' 5, 9, 31.

FCN-4s and FCN-2s continue the same skip idea below stride 8 for thin structures: after the stride-8 fusion
``upscore_pool3`` upsamples by 2, ``score_pool2`` scores the stride-4 features and adds in, and (FCN-2s)
``upscore_pool2`` and ``score_pool1`` do the same at stride 2; the last map goes to the image by ``upscore4``
(FCN-4s) or ``upscore_pool1`` (FCN-2s).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.palettes import default_palette
from ..preprocessing import Normalize, Preprocessing
from ..tasks import check_task, decide, labels_from_scores, output_channels
from .geometry import Affine, nominal
from .inference import predict_image, probabilities
from .spec import BUILDERS, ModelSpec
from .trunks import FINE_STRIDES, STRIDES, build_trunk
from .upsample import BilinearUpsample

ARCHS = ("fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn4s", "fcn2s")
# Strides whose features are fused, coarse to fine, for each architecture.
SKIPS = {"fcn32s": (), "fcn16s": (16,), "fcn8s": (16, 8), "fcn8s-atonce": (16, 8), "fcn4s": (16, 8, 4),
         "fcn2s": (16, 8, 4, 2)}
# The authors' layer names for the skip at each stride: (score layer, upsampling that feeds the fusion);
# strides 4 and 2 continue their pattern (VGG16's pool2 and pool1).
SKIP_NAMES = {16: ("score_pool4", "upscore2"), 8: ("score_pool3", "upscore_pool4"),
              4: ("score_pool2", "upscore_pool3"), 2: ("score_pool1", "upscore_pool2")}
# The final upsampling to the image, by the stride of the last fused map ("upscore2" is taken by the skip path).
FINAL_NAMES = {32: "upscore", 16: "upscore16", 8: "upscore8", 4: "upscore4", 2: "upscore_pool1"}
# FCN-8s at-once (the authors' release) scales pool4 by 0.01 and pool3 by 0.0001 before scoring, so that
# the finer skips start small relative to the stride-32 scores.
ATONCE_SCALES = {16: 0.01, 8: 0.0001}
UPSAMPLING = ("paper", "fixed", "learned")
ALIGNMENTS = ("exact", "legacy")


class FCN(nn.Module):
    """A fully convolutional network: trunk, 1x1 score layers, bilinear-initialised upsampling and crops.

    ``forward`` takes RGB images as a float tensor ``(N, 3, H, W)`` in [0, 1] and returns class scores
    ``(N, num_classes, H, W)``; normalisation for the trunk's weights happens inside. Output pixel (i, j) is
    centred on input pixel (i, j) at every H and W: every upsampling kernel and crop is computed from the
    trunk's exact geometry (``trunks.trunk_geometry``), which is the same at every input size.

    Args:
        trunk: a trunk from ``trunks.py`` (returns stride-8, -16 and -32 features and knows their geometry;
            for "fcn4s"/"fcn2s" also its stride-4/-2 ``fine_taps``).
        num_classes: number of classes scored, background included (21 for PASCAL VOC).
        arch: one of ``ARCHS``.
        upsampling: "paper" (the authors' choice: upsampling inside the skip path learned, the final one
            fixed), "fixed" (all bilinear, frozen), or "learned" (all initialised bilinear and trained).
        class_names: optional names of the classes, kept with the model.
        alignment: "exact" (the above), or "legacy": the head of models saved by fcnseg 0.1, which took the
            "same"-padded trunks' cells to sit at their nominal place (``geometry.nominal``, off by up to half
            a stride); such models get inputs padded to a multiple of 32, the sizes they were trained on, so
            their outputs no longer move with the input size.
        task: "multiclass" (softmax over ``num_classes``), "binary" (``num_classes`` 2: background and
            foreground, scored with one logit) or "multilabel" (``num_classes`` independent sigmoids); see
            ``fcnseg.tasks``.
        threshold: binary and multilabel: probability from which a pixel is foreground / has the class.

    Raises:
        ValueError: an unknown ``arch``, ``upsampling``, ``alignment`` or ``task``, a bad ``num_classes``, or
            "fcn4s"/"fcn2s" on a trunk without stride-4/-2 features.
    """

    def __init__(self, trunk: nn.Module, num_classes: int, arch: str = "fcn8s", upsampling: str = "paper",
                 class_names: list[str] | None = None, alignment: str = "exact", *, task: str = "multiclass",
                 threshold: float = 0.5) -> None:
        super().__init__()
        _check_choice("arch", arch, ARCHS)
        _check_choice("upsampling", upsampling, UPSAMPLING)
        _check_choice("alignment", alignment, ALIGNMENTS)
        _check_num_classes(num_classes, task, threshold)
        if class_names is not None and len(class_names) != num_classes:
            raise ValueError(f"{len(class_names)} class names given for {num_classes} classes")
        self.arch, self.num_classes, self.upsampling, self.alignment = arch, num_classes, upsampling, alignment
        self.task, self.threshold = task, float(threshold)
        self.test_scale = 1.0  # the input scale of inference (ModelSpec.test_scale); set from a saved spec
        self.in_channels = getattr(trunk, "in_channels", 3)  # see channels.adapt_input_channels
        self.fine = tuple(s for s in SKIPS[arch] if s in FINE_STRIDES)
        _check_fine(trunk, arch, self.fine)
        self.class_names = list(class_names) if class_names else [str(i) for i in range(num_classes)]
        self.palette = default_palette(num_classes)  # colours for drawing; datasets and saved models set theirs
        num_classes = output_channels(task, num_classes)  # from here on: channels scored (1 for binary)
        self.normalize = Normalize(trunk.preprocessing)
        self.trunk = trunk
        channels = {**dict(zip(STRIDES, trunk.channels)), **getattr(trunk, "fine_channels", {})}
        if trunk.padding == "tf" and alignment != "legacy":
            raise ValueError("padding 'tf' (TensorFlow's size-dependent 'same' padding) has no fixed geometry; "
                             "it is kept for alignment='legacy' models only: use padding='same'")
        mode = "paper" if trunk.padding == "paper" else "legacy" if alignment == "legacy" else "same"
        geometry = {**dict(zip(STRIDES, trunk.geometry)), **getattr(trunk, "fine_geometry", {})}
        if mode == "legacy":
            geometry = {s: nominal(s) for s in geometry}
        # "same" maps end at the image border, so the score map is extended by one edge cell on each side
        # before each upsampling: the first and last pixels are interpolated, never faded towards zero.
        self.edge = 1 if mode == "same" else 0
        self.input_multiple = max(STRIDES) if mode == "legacy" else 1

        self.score_fr = nn.Conv2d(channels[32], num_classes, 1)
        self.skips = SKIPS[arch]
        self.skip_scales = [ATONCE_SCALES[s] if arch == "fcn8s-atonce" else 1.0 for s in self.skips]
        self.skip_crops: list[int] = []
        g = geometry[32]
        for stride in self.skips:
            score_name, up_name = SKIP_NAMES[stride]
            setattr(self, score_name, nn.Conv2d(channels[stride], num_classes, 1))
            up, g = _aligned_upsample(g, geometry[stride], num_classes, mode, learnable=upsampling != "fixed")
            setattr(self, up_name, up)
            # Cells between the upsampled map's first cell and the skip's first: the skip is cropped by as many
            # (paper padding: the skip is the larger map); negative, the upsampled map is.
            self.skip_crops.append(g.cells_from(geometry[stride]))
            if self.skip_crops[-1] < 0:
                g = geometry[stride]  # the fused map is the skip's cells
        self.final_name = FINAL_NAMES[int(g.scale)]
        up, g = _aligned_upsample(g, Affine(), num_classes, mode, learnable=upsampling == "learned")
        setattr(self, self.final_name, up)
        self.final_crop = Affine().cells_from(g)  # where image pixel 0 falls in the last upsampled map
        if (mode != "same" and any(c < 0 for c in self.skip_crops)) or self.final_crop < 0:
            raise ValueError(f"trunk geometry gives negative crops {self.skip_crops}, {self.final_crop}")
        self.reset_head()

    @property
    def preprocessing(self) -> Preprocessing:
        return self.normalize.pre

    @property
    def backbone(self) -> str | None:
        return getattr(self.trunk, "backbone", None)

    @property
    def spec(self) -> ModelSpec:
        """What it takes to rebuild this model without its weights (stored with saved and exported models)."""
        return ModelSpec(self.arch, self.backbone, self.num_classes, tuple(self.class_names),
                         tuple(tuple(int(v) for v in c) for c in self.palette), self.preprocessing,
                         self.trunk.padding, self.upsampling, self.alignment, self.task, self.threshold,
                         self.in_channels, self.test_scale)

    def score_layers(self) -> list[nn.Conv2d]:
        return [self.score_fr] + [getattr(self, SKIP_NAMES[s][0]) for s in self.skips]

    def upsample_layers(self) -> list[BilinearUpsample]:
        return [getattr(self, SKIP_NAMES[s][1]) for s in self.skips] + [getattr(self, self.final_name)]

    def reset_head(self) -> None:
        """Score layers start at zero (the paper: random initialisation did no better); upsampling at bilinear."""
        for conv in self.score_layers():
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)
        for up in self.upsample_layers():
            up.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels)
        height, width = x.shape[-2], x.shape[-1]
        top = left = 0
        if self.input_multiple > 1:
            x, top, left = _pad_to_multiple(x, self.input_multiple)
        x = self.normalize(x)
        feats = dict(zip(STRIDES + self.fine, self.trunk(x, self.fine) if self.fine else self.trunk(x)))
        score = self.score_fr(feats[32])
        for stride, scale, crop in zip(self.skips, self.skip_scales, self.skip_crops):
            score_name, up_name = SKIP_NAMES[stride]
            up = getattr(self, up_name)(self._extend(score))
            feat = feats[stride] * scale if scale != 1.0 else feats[stride]
            skip = getattr(self, score_name)(feat)
            score = _fuse(up, skip, crop)
        out = getattr(self, self.final_name)(self._extend(score))
        c = self.final_crop
        if not torch.jit.is_tracing() and (out.shape[-2] < c + top + height or out.shape[-1] < c + left + width):
            raise RuntimeError(f"upsampled scores {tuple(out.shape[-2:])} do not cover the {height}x{width} "
                               f"input after the crop of {c}")
        return out[:, :, c + top:c + top + height, c + left:c + left + width]

    def _extend(self, score: torch.Tensor) -> torch.Tensor:
        return F.pad(score, (self.edge,) * 4, mode="replicate") if self.edge else score

    def predict(self, image, batch: bool = False, **kwargs) -> torch.Tensor:
        """Label map(s) at the input's size.

        Args:
            image: a path, a PIL image, an ``HxWx3`` array (uint8, uint16, or float in [0, 1]), a ``(3, H, W)``
                tensor (uint8, or float in [0, 1]), or with ``batch=True`` an ``(N, 3, H, W)`` float tensor.
                Grey, RGBA, CMYK and 16-bit files are converted to RGB; photos are turned upright per EXIF.
            batch: whether ``image`` is a batch tensor (segmented in one pass, whole).
            kwargs: options of ``fcnseg.models.inference.predict_image``: ``flip`` and ``scales`` (test-time
                augmentation, ``fcnseg.tta``; batches too), and for single images ``tile`` (window size for
                large images, or ``(H, W)``), ``overlap``, ``max_size``, ``batch_size``.

        Returns:
            ``(H, W)`` int64 labels (``(N, H, W)`` for a batch), on the CPU: class indices, 0/1 for a binary
            model; a multilabel model gives ``(K, H, W)`` (``(N, K, H, W)``) 0/1 per class.

        Raises:
            FileNotFoundError, fcnseg.data.images.ImageError, ValueError, TypeError: an image that cannot be read
                (a file is named), or a batch of the wrong shape or dtype.
        """
        was_training = self.training
        self.eval()
        if next(self.parameters()).device.type == "cpu":
            # channels_last: fp32 as before, 1.1-1.4x faster on the CPU (benchmarks/inference.py: VGG16 at 0.94
            # of the GEMM peak instead of 0.79); the weights keep that layout afterwards.
            self.to(memory_format=torch.channels_last)
        try:
            if batch:
                with torch.inference_mode():
                    return decide(probabilities(self, image, flip=kwargs.get("flip", False),
                                                scales=kwargs.get("scales")), self.task, self.threshold)
            return torch.from_numpy(predict_image(self, image, **kwargs)[0].astype(np.int64))
        finally:
            self.train(was_training)

    def extra_repr(self) -> str:
        task = "" if self.task == "multiclass" else f", task={self.task}"
        return f"arch={self.arch}, num_classes={self.num_classes}, upsampling={self.upsampling}{task}"

    def labels(self, scores: torch.Tensor) -> torch.Tensor:
        """Labels from this model's scores: ``(N, H, W)`` (multiclass: argmax; binary: 0/1 by the threshold)
        or ``(N, K, H, W)`` 0/1 (multilabel). See ``fcnseg.tasks``."""
        return labels_from_scores(scores, self.task, self.threshold)


def _aligned_upsample(src: Affine, dst: Affine, channels: int, mode: str, learnable: bool
                      ) -> tuple[BilinearUpsample, Affine]:
    """An upsampling layer from grid ``src`` to the scale of grid ``dst`` whose cells land on ``dst``'s cells,
    and the grid of its output.

    The kernel is 2f (the authors') unless that leaves the grids half a cell apart, in which case 2f - 1
    aligns them (the authors' 63x63 kernel in FCN-AlexNet; odd-kernel strided trunks such as ResNet need it).
    mode "same": the input is first extended by one edge cell on each side (``FCN._extend``). mode "legacy":
    kernel 2f with padding f/2, fcnseg 0.1's head for nominal "same" grids.
    """
    factor = src.scale / dst.scale
    if factor.denominator != 1 or factor < 2:
        raise ValueError(f"cannot upsample from scale {src.scale} to {dst.scale}")
    f = int(factor)
    if mode == "same":
        src = Affine(src.scale, src.offset - src.scale)  # the edge cell added before the first
    candidates = [(2 * f, f // 2)] if mode == "legacy" else [(2 * f, 0), (2 * f - 1, 0)]
    for kernel, padding in candidates:
        g = src.deconv(kernel, f, padding)
        if ((g.offset - dst.offset) / dst.scale).denominator == 1:
            return BilinearUpsample(channels, f, kernel, padding, learnable), g
    raise ValueError(f"no bilinear kernel for stride {f} aligns grid {src} with {dst}")


def _fuse(up: torch.Tensor, skip: torch.Tensor, crop: int) -> torch.Tensor:
    """``up + skip`` where both have cells; ``crop`` (see ``FCN.skip_crops``) aligns them.

    Slices clamp at the end, so the cuts are written out and no size is computed in Python: that keeps height
    and width symbolic when the model is traced for ONNX export.
    """
    if crop < 0:  # "same" padding: the upsampled map starts before the skip and covers it
        up = up[:, :, -crop:, -crop:]
        return up[:, :, :skip.shape[-2], :skip.shape[-1]] + skip
    # The authors' crop: the skip is the larger map ("paper" padding).
    up = up[:, :, :skip.shape[-2] - crop, :skip.shape[-1] - crop]
    return up + skip[:, :, crop:crop + up.shape[-2], crop:crop + up.shape[-1]]


def _pad_to_multiple(x: torch.Tensor, multiple: int) -> tuple[torch.Tensor, int, int]:
    """Pads ``(N, C, H, W)`` by repeating its edges, evenly on both sides, to a multiple of ``multiple``;
    returns it with the rows added at the top and the columns at the left."""
    ph, pw = (-x.shape[-2]) % multiple, (-x.shape[-1]) % multiple
    top, left = ph // 2, pw // 2
    return F.pad(x, (left, pw - left, top, ph - top), mode="replicate"), top, left


def _check_fine(trunk: nn.Module, arch: str, fine: tuple[int, ...]) -> None:
    """Refuses FCN-4s/2s on a trunk that lacks the stride-4/-2 features they fuse."""
    have = getattr(trunk, "fine_taps", {})
    lacking = [s for s in fine if s not in have]
    if lacking:
        name = getattr(trunk, "backbone", type(trunk).__name__)
        raise ValueError(f"{arch} fuses stride-{'/'.join(map(str, fine))} features, and backbone {name!r} has no "
                         f"stride-{'/'.join(map(str, lacking))} features: use {'fcn4s' if 4 in have else 'fcn8s'}")


def _check_choice(what: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ValueError(f"unknown {what} {value!r}; valid: {', '.join(valid)}")


def _check_num_classes(num_classes, task: str, threshold: float) -> None:
    check_task(task, threshold)
    if task == "binary" and num_classes != 2:
        raise ValueError(f"a binary model has 2 classes (background, foreground); got num_classes {num_classes!r}")
    low = 1 if task == "multilabel" else 2
    if not isinstance(num_classes, int) or num_classes < low:
        raise ValueError(f"num_classes must be an integer >= {low}"
                         f"{' (background counts as a class)' if low == 2 else ''}; got {num_classes!r}")


def _check_input(x: torch.Tensor, channels: int = 3) -> None:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"expected a torch.Tensor of shape (N, {channels}, H, W); got {type(x).__name__}")
    if x.dim() != 4 or x.shape[1] != channels:
        kind = "an RGB batch" if channels == 3 else f"a {channels}-channel batch"
        raise ValueError(f"expected {kind} of shape (N, {channels}, H, W); got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise TypeError(f"expected a float tensor with values in [0, 1]; got dtype {x.dtype}")


def build_model(arch: str, backbone: str, num_classes: int, pretrained_backbone=None, *,
                padding: str | None = None, upsampling: str = "paper",
                class_names: list[str] | None = None, alignment: str = "exact", task: str = "multiclass",
                threshold: float = 0.5, in_channels: int = 3, channel_mean=None, channel_std=None) -> FCN:
    """Builds an FCN.

    Args:
        arch: "fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", or "fcn4s"/"fcn2s" (trunks with stride-4/-2 features).
        backbone: one of ``fcnseg.BACKBONES`` ("vgg16", "alexnet", "googlenet", "resnet18", "resnet50",
            "mobilenet_v3_large", "efficientnet_lite0/1/2").
        num_classes: classes scored, background included.
        pretrained_backbone: None (random initialisation), a weights name such as "imagenet" (or "hed" for
            vgg16), or a path to a local file holding those weights (see ``fcnseg.models.weights``). The
            matching preprocessing is installed in the model with the weights.
        padding: "paper" (vgg16/alexnet only: conv1 padding 100 and crops, the default there) or "same".
        upsampling: "paper", "fixed" or "learned" (see ``FCN``).
        class_names: optional class names (length ``num_classes``).
        alignment: "exact" (default) or "legacy" (models saved by fcnseg 0.1; see ``FCN``).
        task, threshold: see ``FCN`` ("multiclass", "binary" or "multilabel"; 0.5).
        in_channels: image channels (1 grey, 3 RGB, 4 RGB-NIR, any N): the first convolution is adapted from
            the (pretrained) RGB weights by ``timm.models.adapt_input_conv`` (see ``fcnseg.models.channels``).
        channel_mean, channel_std: per-channel preprocessing for ``in_channels`` channels (default: derived
            from the weights' RGB statistics), in the [0, 1] range of the input (times the weights' scale).

    Raises:
        ValueError: an unknown arch, backbone, padding, upsampling, alignment or task, a bad ``num_classes``, or
            fcn2s on a backbone without stride-2 features (alexnet).
    """
    _check_choice("arch", arch, ARCHS)
    _check_choice("alignment", alignment, ALIGNMENTS)
    _check_num_classes(num_classes, task, threshold)
    if alignment == "legacy" and backbone.startswith("efficientnet_lite") and padding in (None, "same"):
        padding = "tf"  # fcnseg 0.1 built EfficientNet-Lite with TensorFlow's "same" padding
    trunk = build_trunk(backbone, padding)
    if pretrained_backbone is not None:
        from .weights import load_backbone_weights

        load_backbone_weights(trunk, backbone, pretrained_backbone)
    if in_channels != 3 or channel_mean is not None or channel_std is not None:
        from .channels import adapt_input_channels

        adapt_input_channels(trunk, in_channels, channel_mean, channel_std)
    return FCN(trunk, num_classes, arch, upsampling, class_names, alignment, task=task, threshold=threshold)


STAGES = ("fcn32s", "fcn16s", "fcn8s", "fcn4s", "fcn2s")


def staged_init(coarse: FCN, arch: str | None = None) -> FCN:
    """The paper's staged training: FCN-16s from a trained FCN-32s, FCN-8s from a trained FCN-16s, and on
    below stride 8: FCN-4s from a trained FCN-8s, FCN-2s from a trained FCN-4s.

    The new model shares nothing with ``coarse`` (weights are copied). The trunk, ``score_fr`` and any
    existing skip layers carry over; the new skip's score layer starts at zero, so at initialisation it
    adds exactly nothing, and new upsampling layers start at bilinear.

    Args:
        coarse: a trained "fcn32s", "fcn16s", "fcn8s" or "fcn4s".
        arch: any finer one of those and "fcn2s"; default the next finer one.

    Raises:
        ValueError: ``coarse`` is an fcn2s or fcn8s-atonce, ``arch`` is not finer, or the trunk lacks its strides.
    """
    order = STAGES
    if coarse.arch not in order[:-1]:
        raise ValueError(f"staged initialisation grows {' -> '.join(order)}; got a {coarse.arch}")
    arch = arch or order[order.index(coarse.arch) + 1]
    if arch not in order or order.index(arch) <= order.index(coarse.arch):
        raise ValueError(f"cannot grow a {coarse.arch} into {arch!r}")
    import copy

    fine = FCN(copy.deepcopy(coarse.trunk), coarse.num_classes, arch, coarse.upsampling, coarse.class_names,
               coarse.alignment, task=coarse.task, threshold=coarse.threshold)
    fine.normalize.set(coarse.preprocessing)
    kept = {k: v for k, v in coarse.state_dict().items() if not k.startswith(coarse.final_name + ".")}
    missing, unexpected = fine.load_state_dict(kept, strict=False)
    assert not unexpected, unexpected
    fine.to(next(coarse.parameters()).device)
    return fine


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


BUILDERS["fcn"] = build_model  # ModelSpec.build

__all__ = ["ARCHS", "FCN", "build_model", "staged_init", "count_parameters"]
