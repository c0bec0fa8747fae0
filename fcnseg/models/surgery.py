"""Net surgery: turning an image classifier into a fully convolutional network (the paper, section 3.1).

A fully connected layer that reads a CxKxK feature volume is a KxK convolution with C input channels;
one that reads a vector is a 1x1 convolution. Carrying the weights over makes the classifier accept any
input size and output a map of class scores, one per KxK window of its last feature map.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def linear_to_conv(linear: nn.Linear, in_channels: int, kernel_size: int, padding: int = 0) -> nn.Conv2d:
    """A convolution computing exactly ``linear`` on every ``in_channels x k x k`` window.

    Args:
        linear: the fully connected layer; its ``in_features`` must equal ``in_channels * k * k``, in the
            (channel, row, column) order that ``torch.flatten`` of an NCHW tensor produces.
        in_channels: channels of the feature map the layer reads.
        kernel_size: spatial size k of the window (7 for VGG16's fc6, 6 for AlexNet's, 1 after them).
        padding: zero padding of the new convolution (0 reproduces the classifier exactly).
    """
    if linear.in_features != in_channels * kernel_size * kernel_size:
        raise ValueError(f"Linear({linear.in_features} -> {linear.out_features}) cannot read a "
                         f"{in_channels}x{kernel_size}x{kernel_size} window")
    conv = nn.Conv2d(in_channels, linear.out_features, kernel_size, padding=padding,
                     bias=linear.bias is not None)
    with torch.no_grad():
        conv.weight.copy_(linear.weight.view(linear.out_features, in_channels, kernel_size, kernel_size))
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
    return conv


def convolutionalize(classifier: nn.Module) -> nn.Sequential:
    """Turns a torchvision VGG or AlexNet classifier into a fully convolutional network.

    The result is ``features`` followed by the classifier's layers, with every ``nn.Linear`` replaced by
    a convolution carrying its weights (VGG16: fc6 becomes a 4096x512x7x7 convolution, fc7 and fc8 1x1).
    The adaptive average pool is dropped: at 224x224 it is the identity, and on larger inputs the
    convolutions slide over the feature map instead.

    On a 224x224 input the output is a 1x1 map equal to the classifier's logits. On a larger input, cell
    (i, j) equals the fully connected layers applied to the KxK window of pool5 features at (i, j). The
    classifier run on the matching 224x224 crop of the image differs from that only near the crop's
    borders, where its convolutions see zero padding instead of the neighbouring pixels.

    Args:
        classifier: a module with ``features`` (convolutional trunk), ``avgpool`` and ``classifier``
            (a Sequential of Linear, ReLU and Dropout), as torchvision's ``vgg*`` and ``alexnet`` have.
    """
    for name in ("features", "classifier"):
        if not hasattr(classifier, name):
            raise TypeError(f"convolutionalize expects a torchvision VGG or AlexNet (no '{name}' attribute "
                            f"on {type(classifier).__name__})")
    channels = _out_channels(classifier.features)
    pool = getattr(classifier, "avgpool", None)
    window = pool.output_size if isinstance(pool, nn.AdaptiveAvgPool2d) else None
    window = window[0] if isinstance(window, tuple) else window
    layers: list[nn.Module] = list(copy.deepcopy(classifier.features))
    first = True
    for layer in classifier.classifier:
        if isinstance(layer, nn.Linear):
            if first:
                k = window or int(round((layer.in_features / channels) ** 0.5))
                layers.append(linear_to_conv(layer, channels, k))
                first = False
            else:
                layers.append(linear_to_conv(layer, channels, 1))
            channels = layer.out_features
        elif isinstance(layer, nn.ReLU):
            layers.append(nn.ReLU(inplace=layer.inplace))
        elif isinstance(layer, nn.Dropout):
            layers.append(nn.Dropout(layer.p))
        else:
            raise TypeError(f"don't know how to convolutionalize {type(layer).__name__}")
    return nn.Sequential(*layers)


def _out_channels(features: nn.Module) -> int:
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise TypeError("the classifier's features contain no convolution")
    return convs[-1].out_channels
