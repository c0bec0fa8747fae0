"""Trunks: image classifiers cut into the feature extractors that FCNs are built on.

Each trunk is built once, here, and returns three feature maps at strides 8, 16 and 32 (named after
VGG16's ``pool3``, ``pool4`` and ``fc7``). FCN-32s, -16s and -8s differ only in which of them the head
uses. Trunks that have them also give the stride-4 and stride-2 features (``fine_taps``: VGG16's ``pool2``
and ``pool1``) on request, for FCN-4s and FCN-2s. Layer names follow the source model (the authors' Caffe
names for VGG16 and AlexNet, torchvision's or timm's elsewhere) so that pretrained weights load by name.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Protocol, runtime_checkable

import torch
from torch import nn

from ..preprocessing import HALF, IMAGENET, TF_LITE, Preprocessing
from .geometry import Affine, GeometryError, nominal, probe
from .surgery import linear_to_conv

STRIDES = (8, 16, 32)


@runtime_checkable
class Trunk(Protocol):
    """What an FCN needs of a trunk (every trunk ``build_trunk`` makes has it).

    Attributes:
        backbone: the trunk's name, one of ``BACKBONES`` (a saved model is rebuilt by it).
        channels: channels of the stride-8, -16 and -32 features (``pool3``, ``pool4``, ``fc7`` in VGG16).
        geometry: the exact affine maps from each of those feature maps' cells to image pixels
            (``trunk_geometry``), the same at every input size.
        padding: "paper" (the authors' conv1 padding 100), "same", or "tf" (legacy EfficientNet-Lite).
        preprocessing: the input normalisation its weights expect; ``weights.load_backbone_weights`` installs the
            pretrained weights' own and returns it.

    Called with a normalised ``(N, C, H, W)`` float batch, it returns the three feature maps, fine to coarse.
    A trunk with features below stride 8 also names them in ``fine_taps`` (``{stride: layer}``, for FCN-4s
    and FCN-2s; see ``fine_trunk_geometry``).
    """

    backbone: str
    channels: tuple[int, int, int]
    geometry: tuple[Affine, Affine, Affine]
    padding: str
    preprocessing: Preprocessing

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


FINE_STRIDES = (4, 2)  # below stride 8, coarse to fine: the order FCN-4s and FCN-2s fuse them in
# Measured geometry per (backbone, padding): probing a trunk costs seconds, its layers' places never change.
_PROBED: dict[tuple[str, str], tuple[Affine, ...]] = {}


def trunk_geometry(trunk: nn.Module, key: tuple[str, str] | None = None) -> tuple[Affine, ...]:
    """The exact affine maps of a trunk's three outputs: followed layer by layer where the trunk is a chain of
    plain layers (``SequentialTrunk.layer_geometry``), else measured by ``geometry.probe`` (cached by ``key``).

    Raises:
        GeometryError: the outputs have no fixed place in the image (e.g. TF "same" padding).
    """
    if isinstance(trunk, SequentialTrunk):
        try:
            return tuple(trunk.layer_geometry(t) for t in trunk.taps)
        except GeometryError:
            pass
    if key is not None and key in _PROBED:
        return _PROBED[key]
    maps = probe(trunk, STRIDES)
    if key is not None:
        _PROBED[key] = maps
    return maps


def fine_trunk_geometry(trunk: nn.Module, key: tuple[str, str] | None = None) -> dict[int, Affine]:
    """``{stride: affine map}`` of the trunk's stride-4/-2 features (``trunk.fine_taps``), followed or probed
    as ``trunk_geometry`` does (probing cells this fine costs milliseconds).

    Raises:
        GeometryError: the features have no fixed place in the image.
    """
    strides = tuple(trunk.fine_taps)
    if not strides:
        return {}
    if isinstance(trunk, SequentialTrunk):
        try:
            return {s: trunk.layer_geometry(trunk.fine_taps[s]) for s in strides}
        except GeometryError:
            pass
    fine_key = None if key is None else (*key, "fine")
    if fine_key is None or fine_key not in _PROBED:
        maps = probe(_FineOutputs(trunk, strides), strides)
        if fine_key is None:
            return dict(zip(strides, maps))
        _PROBED[fine_key] = maps
    return dict(zip(strides, _PROBED[fine_key]))


class _FineOutputs(nn.Module):
    """A trunk seen through its fine features only, for ``geometry.probe``."""

    def __init__(self, trunk: nn.Module, strides: tuple[int, ...]) -> None:
        super().__init__()
        self.trunk, self.strides = trunk, strides

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.trunk(x, self.strides)[3:]


class SequentialTrunk(nn.Sequential):
    """A trunk whose layers run one after another; ``taps`` names the layers read at strides 8, 16, 32.

    Attributes:
        taps: names of the layers whose outputs are the stride-8, -16 and -32 features.
        fine_taps: ``{stride: layer name}`` of the stride-4 and -2 features the trunk has (may be empty).
        channels: channels of those three outputs.
        fine_channels, fine_geometry: ``{stride: channels}`` and ``{stride: affine map}`` of the fine features.
        geometry: affine maps from each output's cells to image pixels (see ``trunk_geometry``), the same at
            every input size.
        padding: "paper" (the authors' conv1 padding 100, exact crops) or "same" (output ceil(H/s)).
        preprocessing: what the trunk's random or pretrained weights expect (set by weight loading).
    """

    def __init__(self, layers: OrderedDict, taps: tuple[str, str, str], padding: str,
                 preprocessing: Preprocessing, name: str, fine_taps: dict[int, str] | None = None) -> None:
        super().__init__(layers)
        self.fine_taps = dict(fine_taps or {})
        missing = [t for t in (*taps, *self.fine_taps.values()) if t not in layers]
        if missing:
            raise ValueError(f"taps {missing} are not layers of this trunk")
        self.taps = taps
        self.padding = padding
        self.preprocessing = preprocessing
        self.key = (name, padding)
        self.geometry = trunk_geometry(self, self.key)
        self.fine_geometry = fine_trunk_geometry(self, self.key)
        self.channels, self.fine_channels = _probe_channels(self)

    def layer_geometry(self, name: str) -> Affine:
        """The exact affine map of layer ``name``'s output, followed through the layers before it."""
        chain = []
        for n, layer in self.named_children():
            chain.append(layer)
            if n == name:
                return Affine().through(chain)
        raise KeyError(name)

    def forward(self, x: torch.Tensor, fine: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
        """The stride-8, -16 and -32 features, then those of the strides in ``fine`` (of ``fine_taps``)."""
        wanted = {self.fine_taps[s]: s for s in fine}
        outs, extra = [], {}
        for name, layer in self.named_children():
            x = layer(x)
            if name in self.taps:
                outs.append(x)
            if name in wanted:
                extra[wanted[name]] = x
        return (outs[0], outs[1], outs[2], *(extra[s] for s in fine))


class EfficientNetLiteTrunk(nn.Module):
    """timm's ``tf_efficientnet_liteN`` without its classifier: stage outputs at strides 8 and 16 and the
    1280-channel ``conv_head`` at stride 32; ceil(H/s) outputs for any size.

    padding="same": every convolution pads (k-1)/2 on each side, so the cells sit at the same place for every
    input size (the TF weights only see borders differ). padding="tf": TensorFlow's dynamic "same" padding,
    which pads one more at the bottom/right of even sizes, so cells move by up to half a stride with the
    input size; kept for models saved by fcnseg 0.1, which the FCN feeds inputs padded to a multiple of 32.
    """

    def __init__(self, variant: str, padding: str = "same") -> None:
        super().__init__()
        import timm

        net = timm.create_model(f"tf_efficientnet_{variant}", pretrained=False,
                                pad_type="same" if padding == "tf" else "")
        self.conv_stem, self.bn1, self.blocks = net.conv_stem, net.bn1, net.blocks
        self.conv_head, self.bn2 = net.conv_head, net.bn2
        # The stages that end at strides 8 and 16 (timm's feature_info knows where the strides change).
        info = net.feature_info
        stage_of = {i["reduction"]: int(i["module"].split(".")[1]) for i in info if i["module"].startswith("blocks.")}
        self.tap8, self.tap16 = stage_of[8], stage_of[16]
        self.taps = (f"blocks.{self.tap8}", f"blocks.{self.tap16}", "bn2")
        self.fine_taps = {s: f"blocks.{stage_of[s]}" for s in FINE_STRIDES}
        self.padding = padding
        self.preprocessing = TF_LITE
        self.key = (f"efficientnet_{variant}", padding)
        # TF padding has no fixed geometry (only legacy models use it, with the nominal one).
        self.geometry = (tuple(nominal(s) for s in STRIDES) if padding == "tf"
                         else trunk_geometry(self, self.key))
        self.fine_geometry = ({s: nominal(s) for s in FINE_STRIDES} if padding == "tf"
                              else fine_trunk_geometry(self, self.key))
        self.channels, self.fine_channels = _probe_channels(self)

    def forward(self, x: torch.Tensor, fine: tuple[int, ...] = ()) -> tuple[torch.Tensor, ...]:
        """The stride-8, -16 and -32 features, then those of the strides in ``fine`` (4, 2)."""
        x = self.bn1(self.conv_stem(x))
        stage_stride = {int(t.split(".")[1]): s for s, t in self.fine_taps.items() if s in fine}
        c8 = c16 = x
        extra = {}
        for i, stage in enumerate(self.blocks):
            x = stage(x)
            if i == self.tap8:
                c8 = x
            elif i == self.tap16:
                c16 = x
            elif i in stage_stride:
                extra[stage_stride[i]] = x
        return (c8, c16, self.bn2(self.conv_head(x)), *(extra[s] for s in fine))


def _probe_channels(trunk: nn.Module) -> tuple[tuple[int, int, int], dict[int, int]]:
    """Channels of the three outputs and ``{stride: channels}`` of the fine ones, read off one tiny forward pass."""
    was_training = trunk.training
    trunk.eval()
    fine = tuple(trunk.fine_taps)
    with torch.no_grad():
        outs = trunk(torch.zeros(1, 3, 32, 32), fine)
    trunk.train(was_training)
    return tuple(int(o.shape[1]) for o in outs[:3]), {s: int(o.shape[1]) for s, o in zip(fine, outs[3:])}


def _check_padding(name: str, padding: str, allowed: tuple[str, ...]) -> None:
    if padding not in allowed:
        raise ValueError(f"backbone {name!r} supports padding {', '.join(map(repr, allowed))}; got {padding!r}")


VGG16_CONFIG = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def vgg16(padding: str = "paper") -> SequentialTrunk:
    """VGG16 with the authors' layer names: ``conv1_1`` ... ``pool5``, ``fc6`` (7x7), ``fc7`` (1x1).

    padding="paper": conv1_1 pads by 100 and pools round up, as in the authors' FCNs, so fc6 sees a full
    7x7 window even on tiny images and the crops align exactly. padding="same": conv1_1 pads by 1 and
    fc6 by 3, so every stride-s output has ceil(H/s) cells. Random initialisation follows torchvision's
    VGG (He-normal convolutions, N(0, 0.01) fully connected layers).
    """
    _check_padding("vgg16", padding, ("paper", "same"))
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    channels = 3
    for block, widths in enumerate(VGG16_CONFIG, start=1):
        for idx, width in enumerate(widths, start=1):
            pad = 100 if (block, idx) == (1, 1) and padding == "paper" else 1
            conv = nn.Conv2d(channels, width, 3, padding=pad)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers[f"conv{block}_{idx}"], layers[f"relu{block}_{idx}"] = conv, nn.ReLU(inplace=True)
            channels = width
        layers[f"pool{block}"] = nn.MaxPool2d(2, 2, ceil_mode=True)
    layers["fc6"] = _fc_conv(512, 4096, 7, padding=0 if padding == "paper" else 3)
    layers["relu6"], layers["drop6"] = nn.ReLU(inplace=True), nn.Dropout(0.5)
    layers["fc7"] = _fc_conv(4096, 4096, 1)
    layers["relu7"], layers["drop7"] = nn.ReLU(inplace=True), nn.Dropout(0.5)
    return SequentialTrunk(layers, ("pool3", "pool4", "drop7"), padding, IMAGENET, "vgg16",
                           {4: "pool2", 2: "pool1"})


def _fc_conv(cin: int, cout: int, kernel: int, padding: int = 0) -> nn.Conv2d:
    """A convolutionalized fully connected layer, initialised N(0, 0.01) as torchvision's classifiers are
    (skipping the default init, which costs seconds on fc6's 103M weights)."""
    conv = torch.nn.utils.skip_init(nn.Conv2d, cin, cout, kernel, padding=padding)
    nn.init.normal_(conv.weight, 0, 0.01)
    nn.init.zeros_(conv.bias)
    return conv


def alexnet(padding: str = "paper") -> SequentialTrunk:
    """torchvision's AlexNet with Caffe-style names (``conv1`` ... ``pool5``, ``fc6`` 6x6, ``fc7``).

    padding="paper": conv1 pads by 100 and pools round up (the authors' FCN-AlexNet); the odd 63x63
    upsampling kernel the authors used falls out of the geometry. padding="same": conv1 pads by 5, pools
    by 1, and fc6 is padded 2/3, so every stride-s output has ceil(H/s) cells.
    """
    import torchvision

    _check_padding("alexnet", padding, ("paper", "same"))
    tv = torchvision.models.alexnet()
    convs = [m for m in tv.features if isinstance(m, nn.Conv2d)]
    paper = padding == "paper"
    if paper:
        convs[0].padding = (100, 100)
    else:
        convs[0].padding = (5, 5)

    def pool() -> nn.MaxPool2d:
        return nn.MaxPool2d(3, 2, ceil_mode=True) if paper else nn.MaxPool2d(3, 2, padding=1)

    layers: OrderedDict[str, nn.Module] = OrderedDict()
    layers["conv1"], layers["relu1"], layers["pool1"] = convs[0], nn.ReLU(inplace=True), pool()
    layers["conv2"], layers["relu2"], layers["pool2"] = convs[1], nn.ReLU(inplace=True), pool()
    for i, conv in enumerate(convs[2:], start=3):
        layers[f"conv{i}"], layers[f"relu{i}"] = conv, nn.ReLU(inplace=True)
    layers["pool5"] = pool()
    if not paper:
        layers["pad6"] = nn.ZeroPad2d((2, 3, 2, 3))
    layers["fc6"] = linear_to_conv(tv.classifier[1], 256, 6)
    layers["relu6"] = nn.ReLU(inplace=True)
    layers["drop6"] = nn.Dropout(0.5)
    layers["fc7"] = linear_to_conv(tv.classifier[4], 4096, 1)
    layers["relu7"] = nn.ReLU(inplace=True)
    layers["drop7"] = nn.Dropout(0.5)
    # conv1 has stride 4: AlexNet has no stride-2 features (no FCN-2s).
    return SequentialTrunk(layers, ("pool1", "pool2", "drop7"), padding, IMAGENET, "alexnet", {4: "relu1"})


def googlenet(padding: str = "same") -> SequentialTrunk:
    """torchvision's GoogLeNet (Inception v1, the paper's Table 1 net) up to ``inception5b``.

    Its stride-2 max pools are changed from Caffe's "pad 0, round up" to "pad 1, round down" so that every
    stride-s output has ceil(H/s) cells; pooling has no weights, so ImageNet weights still load.
    """
    import torchvision

    _check_padding("googlenet", padding, ("same",))
    tv = torchvision.models.googlenet(weights=None, aux_logits=False, transform_input=False, init_weights=True)
    layers: OrderedDict[str, nn.Module] = OrderedDict()
    for name, m in tv.named_children():
        if name in ("avgpool", "dropout", "fc") or name.startswith("aux"):
            continue
        if isinstance(m, nn.MaxPool2d) and m.kernel_size == 3:
            m = nn.MaxPool2d(3, 2, padding=1)
        layers[name] = m
    return SequentialTrunk(layers, ("inception3b", "inception4e", "inception5b"), padding, HALF, "googlenet",
                           {4: "conv3", 2: "conv1"})


def resnet(depth: int, padding: str = "same") -> SequentialTrunk:
    """torchvision's ResNet-18/50 without ``avgpool``/``fc``; ``layer2``/``layer3``/``layer4`` at strides 8/16/32."""
    import torchvision

    _check_padding(f"resnet{depth}", padding, ("same",))
    tv = getattr(torchvision.models, f"resnet{depth}")()
    layers = OrderedDict((n, m) for n, m in tv.named_children() if n not in ("avgpool", "fc"))
    return SequentialTrunk(layers, ("layer2", "layer3", "layer4"), padding, IMAGENET, f"resnet{depth}",
                           {4: "layer1", 2: "relu"})


def mobilenet_v3_large(padding: str = "same") -> SequentialTrunk:
    """torchvision's MobileNetV3-Large features (children ``0`` ... ``16``) and its first classifier layer,
    convolutionalized to a 1x1 ``fc`` (960 -> 1280, hardswish) at stride 32."""
    import torchvision

    _check_padding("mobilenet_v3_large", padding, ("same",))
    tv = torchvision.models.mobilenet_v3_large()
    layers: OrderedDict[str, nn.Module] = OrderedDict((str(i), m) for i, m in enumerate(tv.features))
    layers["fc"] = linear_to_conv(tv.classifier[0], tv.classifier[0].in_features, 1)
    layers["fc_act"] = nn.Hardswish()
    # The last block of each stride: 1 (stride 2, 16 ch), 3 (stride 4, 24 ch), 6 (stride 8, 40 ch), 12 (stride 16).
    return SequentialTrunk(layers, ("6", "12", "fc_act"), padding, IMAGENET, "mobilenet_v3_large",
                           {4: "3", 2: "1"})


def efficientnet_lite(n: int, padding: str = "same") -> EfficientNetLiteTrunk:
    """timm's ``tf_efficientnet_lite{n}`` (ReLU6, no squeeze-excitation); see ``EfficientNetLiteTrunk``."""
    _check_padding(f"efficientnet_lite{n}", padding, ("same", "tf"))
    return EfficientNetLiteTrunk(f"lite{n}", padding)


# The plain dict that maps a backbone name to its builder (padding -> trunk) and its default padding.
TRUNKS = {
    "vgg16": (vgg16, "paper"),
    "alexnet": (alexnet, "paper"),
    "googlenet": (googlenet, "same"),
    "resnet18": (lambda padding="same": resnet(18, padding), "same"),
    "resnet50": (lambda padding="same": resnet(50, padding), "same"),
    "mobilenet_v3_large": (mobilenet_v3_large, "same"),
    "efficientnet_lite0": (lambda padding="same": efficientnet_lite(0, padding), "same"),
    "efficientnet_lite1": (lambda padding="same": efficientnet_lite(1, padding), "same"),
    "efficientnet_lite2": (lambda padding="same": efficientnet_lite(2, padding), "same"),
}
BACKBONES = tuple(TRUNKS)


def build_trunk(backbone: str, padding: str | None = None) -> nn.Module:
    """Builds the trunk named ``backbone`` (randomly initialised; see ``weights.py`` for pretrained ones): an
    ``nn.Module`` with the ``Trunk`` attributes.

    Raises:
        ValueError: an unknown backbone, or a padding it does not support.
    """
    if backbone not in TRUNKS:
        raise ValueError(f"unknown backbone {backbone!r}; valid backbones: {', '.join(BACKBONES)}")
    builder, default = TRUNKS[backbone]
    trunk = builder(padding=padding or default)
    trunk.backbone = backbone  # kept so a saved model can be rebuilt by name
    return trunk
