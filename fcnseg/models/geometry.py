"""Where each cell of a feature map sits in the input image.

A feature map produced by convolutions and pooling relates to the image by an affine map
``image_coordinate = scale * index + offset`` along each axis (the centre of the cell's receptive
field). The FCN heads use these maps to compute, rather than hard-code, the crop offsets that align
coarse and fine score maps: the authors' FCN-8s offsets 5, 9 and 31 fall out of VGG16's layers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

from torch import nn


def _pair_first(v) -> int:
    """Geometry is tracked along one axis; fcnseg's layers are square, which this checks."""
    if isinstance(v, tuple):
        if len(set(v)) != 1:
            raise ValueError(f"non-square layer geometry {v} is not supported")
        return int(v[0])
    return int(v)


@dataclass(frozen=True)
class Affine:
    """``image = scale * index + offset``; exact rational arithmetic so offsets compare exactly."""

    scale: Fraction = Fraction(1)
    offset: Fraction = Fraction(0)

    def conv(self, kernel: int, stride: int = 1, padding: int = 0, dilation: int = 1) -> Affine:
        """After a convolution or pooling layer: output cell y looks at input cells
        ``stride*y - padding ... + dilation*(kernel-1)``, centred at ``stride*y - padding + dilation*(kernel-1)/2``."""
        centre = Fraction(dilation * (kernel - 1), 2) - padding
        return Affine(self.scale * stride, self.offset + self.scale * centre)

    def deconv(self, kernel: int, stride: int, padding: int = 0) -> Affine:
        """After a transposed convolution: input cell x lands at output ``stride*x + (kernel-1)/2 - padding``."""
        centre = Fraction(kernel - 1, 2) - padding
        return Affine(self.scale / stride, self.offset - self.scale * centre / stride)

    def through(self, layers: Iterable[nn.Module]) -> Affine:
        """Follows a chain of layers; layers that keep the grid (activations, dropout, norms) pass through."""
        g = self
        for layer in layers:
            if isinstance(layer, nn.ConvTranspose2d):
                g = g.deconv(_pair_first(layer.kernel_size), _pair_first(layer.stride), _pair_first(layer.padding))
            elif isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                padding = layer.padding
                if isinstance(padding, str):
                    raise ValueError(f"string padding {padding!r} has no fixed geometry")
                dilation = _pair_first(getattr(layer, "dilation", 1))
                g = g.conv(_pair_first(layer.kernel_size), _pair_first(layer.stride), _pair_first(padding), dilation)
            elif isinstance(layer, nn.ZeroPad2d):
                left, right, top, bottom = layer.padding
                if left != top:
                    raise ValueError("asymmetric ZeroPad2d must pad top and left alike")
                g = g.conv(1, 1, left)
        return g

    def cells_from(self, other: Affine) -> int:
        """How many of ``other``'s cells this map's first cell lies after, on ``other``'s grid.
        Raises if the two grids are not aligned cell for cell (a crop cannot fix that)."""
        if self.scale != other.scale:
            raise ValueError(f"grids of different scale: {self.scale} vs {other.scale}")
        d = (self.offset - other.offset) / other.scale
        if d.denominator != 1:
            raise ValueError(f"grids misaligned by {d} cells: no integer crop aligns them")
        return int(d)


def nominal(stride: int) -> Affine:
    """The 'same padding' convention: cell y at stride s covers pixels [s*y, s*y + s), centre s*y + (s-1)/2."""
    return Affine(Fraction(stride), Fraction(stride - 1, 2))
