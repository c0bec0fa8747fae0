"""In-network upsampling: a transposed ("backwards-strided") convolution initialised to bilinear
interpolation, either fixed or learned (the paper, section 3.3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def bilinear_kernel(size: int) -> torch.Tensor:
    """The 2-D bilinear interpolation kernel of a transposed convolution with ``stride = ceil(size / 2)``.

    For an even size 2f it interpolates at half-cell offsets; for an odd size 2f-1 output cells fall on
    input cells (the authors' FCN-AlexNet uses 63x63 for stride 32). This is Caffe's "bilinear" filler.
    """
    factor = (size + 1) // 2
    centre = factor - 1 if size % 2 == 1 else factor - 0.5
    r = torch.arange(size, dtype=torch.float64)
    k1 = 1 - (r - centre).abs() / factor
    return torch.outer(k1, k1).float()


class BilinearUpsample(nn.Module):
    """Upsamples ``channels`` score maps by ``stride`` with a transposed convolution.

    Args:
        channels: number of score maps (classes); each is upsampled on its own at initialisation.
        stride: the upsampling factor.
        kernel_size: 2*stride (the authors' choice) or 2*stride - 1; chosen by the FCN head so that the
            output grid aligns with the finer layer it is fused with.
        padding: transposed-convolution padding; ``stride // 2`` with an even kernel gives output cells
            exactly aligned with ``F.interpolate(..., align_corners=False)``.
        learnable: if True the weight is a full ``(C, C, k, k)`` parameter initialised to the identity
            across channels and bilinear in space (the authors' learned deconvolution); if False it is a fixed
            depthwise bilinear filter held as a buffer (cheaper; the authors' ``lr_mult: 0`` layers).
    """

    def __init__(self, channels: int, stride: int, kernel_size: int | None = None, padding: int = 0,
                 learnable: bool = False) -> None:
        super().__init__()
        self.channels = channels
        self.stride = stride
        self.kernel_size = kernel_size or 2 * stride
        self.padding = padding
        self.learnable = learnable
        k = bilinear_kernel(self.kernel_size)
        if learnable:
            w = torch.zeros(channels, channels, self.kernel_size, self.kernel_size)
            w[range(channels), range(channels)] = k
            self.weight = nn.Parameter(w)
        else:
            self.register_buffer("weight", k.expand(channels, 1, -1, -1).clone(), persistent=False)

    def reset_parameters(self) -> None:
        k = bilinear_kernel(self.kernel_size).to(self.weight)
        with torch.no_grad():
            if self.learnable:
                self.weight.zero_()
                self.weight[range(self.channels), range(self.channels)] = k
            else:
                self.weight.copy_(k.expand_as(self.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        groups = 1 if self.learnable else self.channels
        return F.conv_transpose2d(x, self.weight, stride=self.stride, padding=self.padding, groups=groups)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        # A fixed layer stores nothing; accept a saved full weight only if it is the bilinear identity
        # (so the authors' converted weights load), and refuse anything it would silently drop.
        key = prefix + "weight"
        if not self.learnable and key in state_dict:
            w = state_dict.pop(key)
            expect = torch.zeros(self.channels, self.channels, self.kernel_size, self.kernel_size)
            expect[range(self.channels), range(self.channels)] = bilinear_kernel(self.kernel_size)
            if w.shape == expect.shape and not torch.allclose(w.float().cpu(), expect, atol=1e-6):
                error_msgs.append(f"{key}: saved upsampling weights are not bilinear but this layer is fixed; "
                                  "build the model with upsampling='learned' to load them")
            elif w.shape != expect.shape and w.shape != self.weight.shape:
                error_msgs.append(f"{key}: shape {tuple(w.shape)} does not fit {tuple(expect.shape)}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def extra_repr(self) -> str:
        mode = "learned" if self.learnable else "fixed"
        return (f"{self.channels}, stride={self.stride}, kernel_size={self.kernel_size}, "
                f"padding={self.padding}, {mode}")
