"""fcnseg: Fully Convolutional Networks for semantic segmentation (Long, Shelhamer, Darrell)."""

from .hub import save_pretrained
from .models import ARCHS, BACKBONES, FCN, build_model, convolutionalize, staged_init
from .preprocessing import Preprocessing
from .pretrained import load

__version__ = "0.2.0"
__all__ = ["ARCHS", "BACKBONES", "FCN", "Preprocessing", "build_model", "convolutionalize", "load",
           "save_pretrained", "staged_init"]
