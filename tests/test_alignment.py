"""Crops computed from layer geometry put every output pixel's receptive field centre on the pixel itself.

Method: make the net linear and symmetric (max pools become average pools of the same geometry, every
convolution a positive constant, no biases). Then the gradient of one output pixel with respect to the
input is a symmetric bump whose centroid is the composed affine map of all layers, and with correct
crops that centroid is the pixel. A crop off by one moves it by one pixel; the negative control shows it.
"""

import copy

import pytest
import torch
from torch import nn

import fcnseg


def _linearised(model: fcnseg.FCN) -> fcnseg.FCN:
    model = copy.deepcopy(model).eval()
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.MaxPool2d):
                setattr(parent, name, nn.AvgPool2d(child.kernel_size, child.stride, child.padding, child.ceil_mode))
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.fill_(1.0 / m.weight[0].numel())
                if m.bias is not None:
                    m.bias.zero_()
    return model


def _centroid(model: fcnseg.FCN, size: int) -> tuple[float, float]:
    x = torch.ones(1, 3, size, size, requires_grad=True)  # positive everywhere, so every ReLU passes
    c = size // 2
    model(x)[0, 0, c, c].backward()
    g = x.grad[0].abs().sum(0)
    rows, cols = torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64)
    total = g.sum().double()
    return float((g.sum(1).double() * rows).sum() / total), float((g.sum(0).double() * cols).sum() / total)


CASES = [("fcn32s", "vgg16", "paper", 481), ("fcn8s", "vgg16", "paper", 481), ("fcn8s", "vgg16", "same", 481),
         ("fcn32s", "alexnet", "paper", 401), ("fcn8s", "alexnet", "paper", 401)]


@pytest.mark.parametrize("arch,backbone,padding,size", CASES)
def test_receptive_field_centre_is_the_pixel(arch, backbone, padding, size):
    model = _linearised(fcnseg.build_model(arch, backbone, 2, padding=padding))
    r, c = _centroid(model, size)
    assert abs(r - size // 2) < 1e-3 and abs(c - size // 2) < 1e-3, (r, c)


def test_an_off_by_one_crop_is_detected():
    model = _linearised(fcnseg.build_model("fcn32s", "vgg16", 2))
    model.final_crop += 1
    r, c = _centroid(model, 481)
    assert abs(r - 241) < 1e-3 and abs(c - 241) < 1e-3


def test_vgg16_paper_crops_come_out_as_the_authors():
    """The authors' prototxts crop score_pool4 at 5, score_pool3 at 9 and the output at 31 (FCN-8s),
    19 (FCN-32s) and 27 (FCN-16s); fcnseg derives them from the layers."""
    assert fcnseg.build_model("fcn8s", "vgg16", 2).skip_crops == [5, 9]
    assert fcnseg.build_model("fcn8s", "vgg16", 2).final_crop == 31
    assert fcnseg.build_model("fcn16s", "vgg16", 2).final_crop == 27
    assert fcnseg.build_model("fcn32s", "vgg16", 2).final_crop == 19
    alex = fcnseg.build_model("fcn32s", "alexnet", 2)
    assert (alex.upscore.kernel_size, alex.final_crop) == (63, 18)  # the authors' FCN-AlexNet


def test_same_padding_vgg16_geometry_is_the_nominal_one():
    trunk = fcnseg.build_model("fcn32s", "vgg16", 2, padding="same").trunk
    exact = [trunk.layer_geometry(t) for t in trunk.taps]
    assert exact == list(trunk.geometry)
