"""Inference backends: one ``backend`` for ``fcnseg predict``, ``evaluate``, ``serve`` and ``fcnseg.load``.

- ``torch``: eager PyTorch, channels_last on the CPU (1.1-1.4x faster for both trunks, same results).
- ``compiled``: ``torch.compile`` with inductor's freezing (weights folded as constants), compiled once per input
  shape seen; the seconds each compilation took are kept in ``CompiledModel.compile_seconds``.
- ``onnxruntime``: the ONNX export run by ONNX Runtime (cached: ``fcnseg.export.cached_onnx``), or an ``.onnx`` file.
- ``openvino``: the ONNX export or an ``.xml`` IR run by OpenVINO's CPU plugin in fp32 (the ``openvino`` package).
- ``auto``: on the CPU, whichever of ``torch`` (channels_last), ``openvino`` and ``onnxruntime`` (those installed;
  all fp32) a timed forward pass shows fastest, chosen once per input shape (``AutoModel``); elsewhere ``torch``.
  ``fcnseg predict``'s default (``$FCNSEG_BACKEND`` sets another).

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

BACKENDS = ("auto", "torch", "compiled", "onnxruntime", "openvino")
EXPORTED = (".onnx", ".xml")
AUTO_RUNTIMES = ("openvino", "onnxruntime")  # auto's candidates beside eager PyTorch, when installed


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


class AutoModel:
    """An FCN run by the fastest of its fp32 backends on this CPU, chosen by timing, once per input shape.

    The candidates are eager PyTorch (channels_last) and, when their packages are installed, OpenVINO's CPU plugin
    (``INFERENCE_PRECISION_HINT: f32``) and ONNX Runtime on the model's cached ONNX export (``cached_onnx``): all
    compute in fp32, so labels match eager PyTorch's but for near-ties (the exported backends' tests hold them to
    99.9 % of pixels). On the first batch of each ``(N, C, H, W)`` every candidate runs ``1 + repeats`` times (the
    first warms it up); the one with the lowest median time runs that shape from then on. ``timings`` maps each
    shape to ``{backend: median ms}`` and ``choice`` to the backend chosen. Runtimes no shape chose are released
    (each holds its own copy of the weights: 0.5 GB for VGG16) and rebuilt from the cached export if a new shape
    is timed.

    Call it with a ``(N, C, H, W)`` float tensor in [0, 1]; it returns the ``(N, K, H, W)`` float32 scores on the
    CPU. It has the model's ``num_classes``, ``class_names``, ``palette``, ``task``, ``threshold``, ``info``...

    Args:
        model: the FCN (on the CPU).
        source: what it was loaded from (a name or path ``cached_onnx`` takes).
        threads: threads of the exported runtimes (default ``torch.get_num_threads()``).
        repeats: timed runs per candidate.
        verbose: report each choice on stderr.
    """

    label_output = False

    def __init__(self, model: torch.nn.Module, source, threads: int | None = None, repeats: int = 3,
                 verbose: bool = True):
        import threading

        self.model = model.eval().to(memory_format=torch.channels_last)
        self.source, self.threads, self.repeats, self.verbose = source, threads, repeats, verbose
        self.runtimes: list[str] | None = None  # the installed ones, found on the first call
        self._runs: dict[str, object] = {}
        self.timings: dict[tuple[int, ...], dict[str, float]] = {}
        self.choice: dict[tuple[int, ...], str] = {}
        self._lock = threading.Lock()  # serve's workers may meet a new shape at once

    def __getattr__(self, name: str):
        if name == "model":  # not yet set (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.model, name)

    def eval(self):
        return self

    def _run(self, name: str):
        if name not in self._runs:
            from .models.inference import forward

            if name == "torch":
                self._runs[name] = lambda x: forward(self.model, x).float().cpu()
            elif name == "openvino":
                self._runs[name] = OpenVinoModel(cached_onnx(self.source), self.threads)
            else:
                self._runs[name] = open_exported(cached_onnx(self.source), "onnxruntime", self.threads)
        return self._runs[name]

    @torch.inference_mode()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        shape = tuple(x.shape)
        if shape not in self.choice:
            with self._lock:
                if shape not in self.choice:
                    return self._choose(x, shape)
        return self._run(self.choice[shape])(x)

    def _choose(self, x: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        from ._optional import available

        if self.runtimes is None:  # both read the ONNX export, which needs the onnx package
            self.runtimes = [n for n in AUTO_RUNTIMES if available(n) and available("onnx")]
        times, outputs = {}, {}
        for name in ("torch", *self.runtimes):
            try:
                run = self._run(name)
            except Exception as e:  # an export or runtime that fails here: left out, said once
                self.runtimes.remove(name)
                print(f"backend auto: {name} left out ({str(e).splitlines()[0]})", file=sys.stderr, flush=True)
                continue
            outputs[name] = run(x)
            ms = []
            for _ in range(self.repeats):
                t = time.perf_counter()
                run(x)
                ms.append(1e3 * (time.perf_counter() - t))
            times[name] = sorted(ms)[len(ms) // 2]
        best = min(times, key=times.get)
        self.timings[shape], self.choice[shape] = times, best
        for name in set(self._runs) - {"torch", *self.choice.values()}:  # their copies of the weights: rebuilt
            del self._runs[name]  # from the cached export if a new shape needs them again
        if self.verbose:
            print(f"backend auto: {self.describe(shape)}", file=sys.stderr, flush=True)
        return outputs[best]

    def describe(self, shape: tuple[int, ...]) -> str:
        """"openvino for 1x3x360x480 (openvino 11.2 ms, onnxruntime 21.0 ms, torch 34.1 ms)"."""
        times = self.timings[shape]
        ranked = ", ".join(f"{n} {ms:.1f} ms" for n, ms in sorted(times.items(), key=lambda kv: kv[1]))
        return f"{self.choice[shape]} for {'x'.join(map(str, shape))} ({ranked})"

    def labels(self, scores: torch.Tensor) -> torch.Tensor:
        from .tasks import labels_from_scores

        return labels_from_scores(scores, self.task, self.threshold)

    def predict(self, image, **kw) -> torch.Tensor:
        """``(H, W)`` int64 labels of one image; see ``fcnseg.models.inference.predict_image``."""
        import numpy as np

        from .models.inference import predict_image

        return torch.from_numpy(predict_image(self, image, **kw)[0].astype(np.int64))

    def __repr__(self) -> str:
        return f"AutoModel({str(self.source)!r}, {self.model.arch} {self.model.backbone}, {self.num_classes} classes)"


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
        backend: one of ``BACKENDS`` (default: ``default_backend``); "auto" is ``AutoModel`` on the CPU, "torch"
            on other devices, and the file's own runtime for an exported file.
        threads: intra-op threads of ONNX Runtime and OpenVINO (default: ``torch.get_num_threads()``).

    Returns:
        An ``FCN`` (eval mode; with ``backend="torch"`` channels_last on the CPU), a ``CompiledModel``, an
        ``AutoModel``, an ``export.OnnxModel`` or an ``export.OpenVinoModel``.

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
        return open_exported(name_or_path, None if backend == "auto" else backend, threads)
    if backend == "onnxruntime":
        require("onnxruntime", extra="onnx", what="the onnxruntime backend")
        return open_exported(cached_onnx(name_or_path), "onnxruntime", threads)
    if backend == "openvino":
        require("openvino", extra="openvino", what="the OpenVINO backend")
        return OpenVinoModel(cached_onnx(name_or_path), threads)
    model = load_fcn(name_or_path, device)
    on_cpu = next(model.parameters()).device.type == "cpu"
    if backend == "auto":
        return AutoModel(model, name_or_path, threads) if on_cpu else model
    if backend_given and on_cpu:
        model = model.to(memory_format=torch.channels_last)  # 1.1-1.4x faster CPU inference (benchmarks/)
    return CompiledModel(model) if backend == "compiled" else model
