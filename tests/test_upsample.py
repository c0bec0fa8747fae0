"""Bilinear upsampling by transposed convolution."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fcnseg.models import BilinearUpsample, bilinear_kernel


@pytest.mark.parametrize("factor", [2, 4, 8, 16, 32])
def test_same_padding_equals_bilinear_interpolation_on_the_interior(factor):
    x = torch.randn(2, 3, 9, 7, dtype=torch.float64)
    up = BilinearUpsample(3, factor, 2 * factor, factor // 2).double()
    y = up(x)
    assert y.shape[-2:] == (9 * factor, 7 * factor)
    ref = F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
    # Border cells of a transposed convolution miss one neighbour; interpolation replicates the edge.
    m = factor
    torch.testing.assert_close(y[..., m:-m, m:-m], ref[..., m:-m, m:-m])


@pytest.mark.parametrize("kernel,factor", [(4, 2), (16, 8), (64, 32), (3, 2), (15, 8), (63, 32)])
def test_unpadded_kernels_interpolate_at_their_own_coordinates(kernel, factor):
    """Output cell y of an unpadded transposed convolution sits at input coordinate (y - (k-1)/2) / f;
    its value is the linear interpolation there (checked against numpy, one axis at a time)."""
    n = 6
    v = np.random.default_rng(0).normal(size=n)
    x = torch.tensor(np.outer(v, np.ones(n)))[None, None]
    out = BilinearUpsample(1, factor, kernel).double()(x)[0, 0]
    y = out[:, out.shape[1] // 2].numpy()  # a middle column: constant input along rows there
    coords = (np.arange(y.size) - (kernel - 1) / 2) / factor
    inside = (coords >= 0) & (coords <= n - 1)
    np.testing.assert_allclose(y[inside], np.interp(coords[inside], np.arange(n), v), atol=1e-12)


def test_kernel_is_caffes_bilinear_filler():
    k = bilinear_kernel(4)[0] / bilinear_kernel(4)[0].max() * 0.75
    torch.testing.assert_close(k, torch.tensor([0.25, 0.75, 0.75, 0.25]))
    assert bilinear_kernel(3)[1, 1] == 1 and bilinear_kernel(3)[0, 1] == 0.5


def test_fixed_and_learned_start_identical_and_only_learned_trains():
    x = torch.randn(1, 4, 5, 6)
    fixed, learned = BilinearUpsample(4, 8), BilinearUpsample(4, 8, learnable=True)
    torch.testing.assert_close(fixed(x), learned(x))
    assert [n for n, _ in fixed.named_parameters()] == [] and learned.weight.requires_grad
    assert learned.weight.shape == (4, 4, 16, 16)


def test_fixed_layer_loads_the_authors_bilinear_weight_and_refuses_others():
    fixed, learned = BilinearUpsample(3, 2), BilinearUpsample(3, 2, learnable=True)
    fixed.load_state_dict(learned.state_dict())  # the authors' diagonal bilinear deconvolution
    with torch.no_grad():
        learned.weight.add_(0.1)
    with pytest.raises(RuntimeError, match="not bilinear but this layer is fixed"):
        fixed.load_state_dict(learned.state_dict())
