"""fcnseg: Fully Convolutional Networks for semantic segmentation (Long, Shelhamer, Darrell)."""

from .backends import load
from .hub import save_pretrained
from .models import ARCHS, BACKBONES, FCN, build_model, convolutionalize, staged_init
from .preprocessing import Preprocessing
from .version import __version__


def predict_video(model, path, **kw):
    """Segments a video lazily, yielding ``(frame_index, labels)``; see ``fcnseg.video.predict_video`` (needs
    PyAV: ``pip install 'fcnseg[video]'``)."""
    from .video import predict_video as run

    return run(model, path, **kw)


__all__ = ["ARCHS", "BACKBONES", "FCN", "Preprocessing", "__version__", "build_model", "convolutionalize", "load",
           "predict_video", "save_pretrained", "staged_init"]
