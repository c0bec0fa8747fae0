"""FCN models: trunks, net surgery, bilinear upsampling and the FCN-32s/16s/8s heads."""

from .fcn import ARCHS, FCN, build_model, count_parameters, staged_init
from .surgery import convolutionalize, linear_to_conv
from .trunks import BACKBONES, build_trunk
from .upsample import BilinearUpsample, bilinear_kernel

__all__ = ["ARCHS", "BACKBONES", "FCN", "BilinearUpsample", "bilinear_kernel", "build_model", "build_trunk",
           "convolutionalize", "count_parameters", "linear_to_conv", "staged_init"]
