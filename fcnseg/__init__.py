"""fcnseg: Fully Convolutional Networks for semantic segmentation (Long, Shelhamer, Darrell).

The public names are imported on first use (PEP 562), so that ``import fcnseg.cli`` does not import torch: the
command line parses its arguments, and restarts itself under tcmalloc where it should
(``fcnseg.runtime.allocator``), before paying for torch's import once.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .version import __version__

if TYPE_CHECKING:
    from .backends import load
    from .hub import save_pretrained
    from .models import ARCHS, BACKBONES, FCN, build_model, convolutionalize, staged_init
    from .preprocessing import Preprocessing

_LAZY = {"load": "backends", "save_pretrained": "hub", "Preprocessing": "preprocessing",
         **dict.fromkeys(("ARCHS", "BACKBONES", "FCN", "build_model", "convolutionalize", "staged_init"), "models")}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'fcnseg' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    globals()[name] = value  # looked up once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


def predict_video(model, path, **kw):
    """Segments a video lazily, yielding ``(frame_index, labels)``; see ``fcnseg.video.predict_video`` (needs
    PyAV: ``pip install 'fcnseg[video]'``)."""
    from .video import predict_video as run

    return run(model, path, **kw)


__all__ = ["ARCHS", "BACKBONES", "FCN", "Preprocessing", "__version__", "build_model", "convolutionalize", "load",
           "predict_video", "save_pretrained", "staged_init"]
