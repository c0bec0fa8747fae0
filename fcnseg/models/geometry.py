"""Where each cell of a feature map sits in the input image.

A feature map produced by convolutions and pooling relates to the image by an affine map
``image_coordinate = scale * index + offset`` along each axis (the centre of the cell's receptive
field). The FCN heads use these maps to compute, rather than hard-code, the crop offsets and upsampling
kernels that align coarse and fine score maps: the authors' FCN-8s offsets 5, 9 and 31 fall out of VGG16's
layers. A chain of plain layers is followed exactly (``Affine.through``); any other trunk (residual blocks,
inception branches, timm's blocks) is measured (``probe``) from the layers themselves.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction

import torch
from torch import nn

# Layers that keep every cell where it is: ``through`` passes them, ``probe`` makes them the identity.
_POINTWISE = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.GELU, nn.SiLU, nn.Hardswish, nn.Hardsigmoid,
              nn.Sigmoid, nn.Tanh, nn.Mish, nn.Dropout, nn.Dropout2d, nn.Identity, nn.modules.batchnorm._NormBase,
              nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


class GeometryError(ValueError):
    """A layer or trunk whose cells have no fixed place in the image (unknown layer, size-dependent padding)."""


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
        """Follows a chain of layers; layers that keep the grid (activations, dropout, norms) pass through.

        Raises:
            GeometryError: for a layer it cannot follow (string padding, a block of several layers, a layer
                type it does not know): such trunks are measured with ``probe`` instead.
        """
        g = self
        for layer in layers:
            if isinstance(layer, nn.ConvTranspose2d):
                g = g.deconv(_pair_first(layer.kernel_size), _pair_first(layer.stride), _pair_first(layer.padding))
            elif isinstance(layer, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d)):
                padding = layer.padding
                if isinstance(padding, str):
                    raise GeometryError(f"string padding {padding!r} has no fixed geometry")
                dilation = _pair_first(getattr(layer, "dilation", 1))
                g = g.conv(_pair_first(layer.kernel_size), _pair_first(layer.stride), _pair_first(padding), dilation)
            elif isinstance(layer, nn.ZeroPad2d):
                left, right, top, bottom = layer.padding
                if left != top:
                    raise GeometryError("asymmetric ZeroPad2d must pad top and left alike")
                g = g.conv(1, 1, left)
            elif not isinstance(layer, _POINTWISE):
                raise GeometryError(f"cannot follow the geometry of a {type(layer).__name__} layer")
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
    """The 'same padding' convention: cell y at stride s covers pixels [s*y, s*y + s), centre s*y + (s-1)/2.

    Exact for VGG16 with "same" padding (2x2 pools); for trunks of odd-kernel strided convolutions it is off by
    up to half a stride. Only models saved by fcnseg 0.1 (``alignment="legacy"``) still use it.
    """
    return Affine(Fraction(stride), Fraction(stride - 1, 2))


def _linearised(trunk: nn.Module) -> nn.Module:
    """A float32 copy in which every layer is linear and symmetric about its centre: max pools become average
    pools of the same geometry, convolutions positive constants without bias, pointwise layers the identity."""
    t = copy.deepcopy(trunk).eval().float()
    for parent in list(t.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
            elif isinstance(child, _POINTWISE):
                setattr(parent, name, nn.Identity())
            elif isinstance(child, nn.AdaptiveAvgPool2d):
                # Global context (squeeze-excitation) scales whole maps and has no place: a constant in the probe
                # (else each gate squares the magnitude, and float32 overflows).
                child.register_forward_hook(lambda m, i, out: torch.ones_like(out))
    with torch.no_grad():
        for m in t.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
    return t


def _offsets(net: nn.Module, size: int, cells: tuple[int, ...], strides: tuple[int, ...]) -> list[float]:
    """For each output, the centre of mass of cell ``cells[i]``'s input footprint minus ``stride * cell``."""
    x = torch.ones(1, 3, size, size, requires_grad=True)
    outs = net(x)
    found = []
    for out, y, stride in zip(outs, cells, strides):
        (grad,) = torch.autograd.grad(out[0, :, y, y].sum(), x, retain_graph=True)
        mass = grad[0].double().abs().sum((0, 1))  # along the columns; the layers are square
        found.append(float((mass * torch.arange(size, dtype=torch.float64)).sum() / mass.sum()) - stride * y)
    return found


def probe(trunk: nn.Module, strides: tuple[int, ...], tolerance: float = 0.01) -> tuple[Affine, ...]:
    """Measures the affine maps of a trunk's outputs from its layers.

    Method: in a linearised copy (see ``_linearised``) the gradient of one output cell with respect to the
    input is a bump symmetric about the cell's centre, so its centroid is the composed affine map of every
    path through the layers. The probed cell is put at the middle of the input (what the borders cut off is
    then cut off evenly), at two input sizes, and once more one pixel larger (off-centre by half a pixel,
    so within a quarter pixel): a trunk whose maps move with the size (TF-style "same" padding pads more at
    the bottom of even sizes) is refused.

    Args:
        trunk: returns one ``(N, C, H, W)`` map per entry of ``strides`` for an ``(N, 3, H, W)`` input.
        strides: the total stride of each output, in pixels.
        tolerance: how far (pixels) a centroid may lie from the half-pixel grid.

    Returns:
        One ``Affine`` per output, offsets on the half-pixel grid (that of every pooling and convolution).

    Raises:
        GeometryError: a centroid off the half-pixel grid, or one that moves with the input size.
    """
    net = _linearised(trunk)
    span = 5 * max(strides)
    rough = _offsets(net, 2 * span + 1, tuple(span // s for s in strides), strides)
    offsets = [Fraction(round(2 * r), 2) for r in rough]
    measured_at = {2 * span + 1: rough}
    for pixel, extra, tol in ((span, 0, tolerance), (span + 2 * max(strides), 0, tolerance), (span, 1, 0.25)):
        # Centre pixel ``pixel + offset`` of each output's cell ``pixel / stride`` in the middle of the input.
        for size in {int(2 * (pixel + o)) + 1 + extra for o in offsets}:
            if size not in measured_at:
                measured_at[size] = _offsets(net, size, tuple(pixel // s for s in strides), strides)
            measured = measured_at[size]
            for stride, o, m in zip(strides, offsets, measured):
                if int(2 * (pixel + o)) + 1 + extra == size and abs(m - float(o)) > tol:
                    raise GeometryError(f"the stride-{stride} output has no fixed geometry: its cells sit at "
                                        f"{stride}*y{m:+.3f} for a {size}x{size} input, at {stride}*y"
                                        f"{float(o):+.3f} for another size (size-dependent padding?)")
    return tuple(Affine(Fraction(s), o) for s, o in zip(strides, offsets))
