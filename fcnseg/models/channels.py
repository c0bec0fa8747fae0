"""Input channels other than RGB: grey (1), RGB-NIR (4), any N.

The trunk's first convolution is adapted from its (pretrained or random) RGB weights with timm's
``adapt_input_conv``: one channel gets the sum of the RGB filters (a grey image is R = G = B), N > 3 channels
get the RGB filters repeated cyclically (R, G, B, R, ...) and scaled by 3 / N, so the first layer's response
to an image whose extra channels resemble its colour channels stays the same. The preprocessing follows the
same rule (the mean of the RGB means and standard deviations for one channel; the RGB ones repeated for N),
unless the caller gives the per-channel mean and std (e.g. of a NIR band); it is stored with the model.
"""

from __future__ import annotations

from torch import nn

from ..preprocessing import Preprocessing


def first_conv(trunk: nn.Module) -> nn.Conv2d:
    """The convolution that reads the image: the trunk's first ``Conv2d``."""
    conv = next((m for m in trunk.modules() if isinstance(m, nn.Conv2d)), None)
    if conv is None:
        raise ValueError(f"{type(trunk).__name__}: no convolution to adapt to other input channels")
    return conv


def adapt_preprocessing(pre: Preprocessing, in_channels: int, mean=None, std=None) -> Preprocessing:
    """``pre`` (RGB, or BGR for Caffe weights) for ``in_channels`` channels in the input's own order.

    ``mean`` and ``std`` (lists of ``in_channels`` values, in the input's value range after ``pre.scale``)
    replace the derived ones where given.
    """
    m, s = (tuple(reversed(pre.mean)), tuple(reversed(pre.std))) if pre.bgr else (pre.mean, pre.std)
    if in_channels == 1:
        m, s = (sum(m) / 3,), (sum(s) / 3,)
    elif in_channels != 3:
        m, s = tuple(m[i % 3] for i in range(in_channels)), tuple(s[i % 3] for i in range(in_channels))
    for name, given in (("mean", mean), ("std", std)):
        if given is not None and len(given) != in_channels:
            raise ValueError(f"channel_{name} has {len(given)} values for {in_channels} input channels")
    if std is not None and any(float(v) <= 0 for v in std):
        raise ValueError(f"channel_std values must be > 0, got {list(std)}")
    m = tuple(float(v) for v in mean) if mean is not None else m
    s = tuple(float(v) for v in std) if std is not None else s
    bgr = pre.bgr and in_channels == 3
    name = pre.name if in_channels == 3 and mean is None and std is None else f"{pre.name}-{in_channels}ch"
    return Preprocessing(tuple(reversed(m)) if bgr else m, tuple(reversed(s)) if bgr else s, pre.scale, bgr, name)


def adapt_input_channels(trunk: nn.Module, in_channels: int, mean=None, std=None) -> nn.Module:
    """Makes ``trunk`` read ``in_channels`` channels (in place; returns it).

    The first convolution's weights go through ``timm.models.adapt_input_conv`` (from RGB order: Caffe's BGR
    filters are flipped first), ``trunk.preprocessing`` through ``adapt_preprocessing`` and
    ``trunk.in_channels`` records the count.

    Raises:
        ValueError: ``in_channels`` < 1, a trunk without convolution, or bad ``mean``/``std``.
    """
    from timm.models import adapt_input_conv

    if not isinstance(in_channels, int) or in_channels < 1:
        raise ValueError(f"in_channels must be an integer >= 1, got {in_channels!r}")
    current = getattr(trunk, "in_channels", 3)
    if in_channels == current and mean is None and std is None:
        return trunk
    if current != 3:
        raise ValueError(f"trunk already reads {current} channels; adapt it from its RGB weights")
    conv = first_conv(trunk)
    pre = trunk.preprocessing
    weight = conv.weight.detach()
    weight = weight.flip(1) if pre.bgr and in_channels != 3 else weight
    conv.weight = nn.Parameter(adapt_input_conv(in_channels, weight), requires_grad=conv.weight.requires_grad)
    conv.in_channels = in_channels
    trunk.preprocessing = adapt_preprocessing(pre, in_channels, mean, std)
    trunk.in_channels = in_channels
    return trunk


__all__ = ["adapt_input_channels", "adapt_preprocessing", "first_conv"]
