"""Inference backends: one ``backend`` for ``fcnseg predict``, ``evaluate``, ``serve`` and ``fcnseg.load``.

- ``torch``: eager PyTorch, channels_last on the CPU (1.1-1.4x faster for both trunks, same results).
- ``compiled``: ``torch.compile`` with inductor's freezing (weights folded as constants), compiled once per input
  shape seen; the seconds each compilation took are kept in ``CompiledModel.compile_seconds``.
- ``onnxruntime``: the ONNX export run by ONNX Runtime (cached: ``fcnseg.export.cached_onnx``), or an ``.onnx`` file.
- ``openvino``: the ONNX export or an ``.xml`` IR run by OpenVINO's CPU plugin in fp32 (the ``openvino`` package).

int8 files (``fcnseg export --quantize int8``, see ``fcnseg.quantize``) run on ``onnxruntime`` (``.onnx``) and
``openvino`` (``.xml``, or the ``.onnx`` file).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

from ._optional import require
from .export import OpenVinoModel, cached_onnx, open_exported

BACKENDS = ("torch", "compiled", "onnxruntime", "openvino")
EXPORTED = (".onnx", ".xml")


class CompiledModel(torch.nn.Module):
    """An FCN run through ``torch.compile`` (inductor, ``freezing``: weights folded into the compiled graph),
    compiled once per input shape (``dynamic=False``: each shape gets its own fully specialised kernels).

    It is a module wrapping ``model``: ``num_classes``, ``class_names``, ``palette``, ``labels`` ... are the
    model's. ``compile_seconds`` maps each ``(N, C, H, W)`` seen to the seconds its first call took (compiling
    included); with ``verbose`` each compilation is also reported on stderr.
    """

    def __init__(self, model: torch.nn.Module, verbose: bool = True):
        super().__init__()
        self.model = model.eval()
        self.compiled = torch.compile(self.model, dynamic=False, options={"freezing": True})
        self.compile_seconds: dict[tuple[int, ...], float] = {}
        self.verbose = verbose

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(super().__getattr__("model"), name)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape in self.compile_seconds:
            return self.compiled(x)
        t = time.perf_counter()
        out = self.compiled(x)
        self.compile_seconds[shape] = time.perf_counter() - t
        if self.verbose:
            print(f"compiled for {'x'.join(map(str, shape))} in {self.compile_seconds[shape]:.1f} s",
                  file=sys.stderr, flush=True)
        return out

    def labels(self, scores: torch.Tensor) -> torch.Tensor:
        from .tasks import labels_from_scores

        return labels_from_scores(scores, self.task, self.threshold)

    def predict(self, image, **kw) -> torch.Tensor:
        """``(H, W)`` int64 labels of one image; see ``FCN.predict``."""
        import numpy as np

        from .models.inference import predict_image

        return torch.from_numpy(predict_image(self, image, **kw)[0].astype(np.int64))


def default_backend(name_or_path) -> str:
    """"onnxruntime" for ``.onnx`` files, "openvino" for ``.xml`` IRs, else "torch"."""
    suffix = Path(str(name_or_path)).suffix.lower()
    return {".onnx": "onnxruntime", ".xml": "openvino"}.get(suffix, "torch")


def load(name_or_path: str | os.PathLike, device: str | torch.device = "cpu", *, backend: str | None = None,
         threads: int | None = None):
    """A ready-to-use model run by ``backend``, with class names, palette and ``predict``.

    Args:
        name_or_path: a pretrained name, a ``.safetensors`` file, a Hub-style folder, ``hf://ORG/NAME``, or an
            exported ``.onnx`` / ``.xml`` file (fp32 or int8).
        device: where a PyTorch model runs ("torch" and "compiled"); the others run on the CPU.
        backend: one of ``BACKENDS`` (default: ``default_backend``).
        threads: intra-op threads of ONNX Runtime and OpenVINO (default: ``torch.get_num_threads()``).

    Returns:
        An ``FCN`` (eval mode; with ``backend="torch"`` channels_last on the CPU), a ``CompiledModel``, an
        ``export.OnnxModel`` or an ``export.OpenVinoModel``.

    Raises:
        ValueError: an unknown backend, or one that cannot run this file (one line).
        RuntimeError: the backend's package is missing (named, with the pip command).
    """
    from .pretrained import load as load_fcn

    backend_given = backend is not None  # fcnseg.load(NAME) alone returns the FCN as saved (contiguous)
    backend = backend or default_backend(name_or_path)
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if Path(str(name_or_path)).suffix.lower() in EXPORTED:
        return open_exported(name_or_path, backend, threads)
    if backend == "onnxruntime":
        require("onnxruntime", extra="onnx", what="the onnxruntime backend")
        return open_exported(cached_onnx(name_or_path), "onnxruntime", threads)
    if backend == "openvino":
        require("openvino", extra="openvino", what="the OpenVINO backend")
        return OpenVinoModel(cached_onnx(name_or_path), threads)
    model = load_fcn(name_or_path, device)
    if backend_given and next(model.parameters()).device.type == "cpu":
        model = model.to(memory_format=torch.channels_last)  # 1.1-1.4x faster CPU inference (benchmarks/)
    return CompiledModel(model) if backend == "compiled" else model
