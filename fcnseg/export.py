"""Export to ONNX (any batch, height and width) and TorchScript, and run exported models with ONNX Runtime.

An exported file carries the same metadata as a ``.safetensors`` model (architecture, class names,
palette, preprocessing), so ``fcnseg predict --model model.onnx`` draws the same colours and names.

Both formats are traced: the FCN's crops are written as clamped slices (see ``FCN.forward``), so the
traced graph computes every size from the input's shape and one file serves all image sizes.
``verify`` checks that claim on several sizes against the PyTorch model.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from pathlib import Path

import numpy as np
import torch

from ._optional import require
from .data.palettes import default_palette
from .io.atomic import atomic_write
from .io.modelfile import FORMAT
from .models.fcn import FCN, _check_input
from .models.spec import ModelSpec

FORMATS = ("onnx", "torchscript")
# Sizes used for tracing: odd and unequal, so no size is mistaken for a constant of the graph.
TRACE_SIZE = (97, 131)
VERIFY_SIZES = ((97, 131), (224, 288), (360, 480), (33, 500))


def _metadata(model: FCN) -> str:
    return json.dumps({"format": FORMAT, "model": model.spec.to_dict(), "info": getattr(model, "info", {})})


def _traceable(model: FCN) -> FCN:
    # Tracing needs a contiguous-format CPU float32 model in eval mode; copy rather than touch the caller's.
    import copy

    m = copy.deepcopy(model).float().cpu().eval()
    return m.to(memory_format=torch.contiguous_format)


def export_onnx(model: FCN, path: str | os.PathLike, opset: int = 17) -> Path:
    """Writes ``model`` as an ONNX graph with dynamic batch, height and width.

    Args:
        model: the FCN to export (left unchanged).
        path: the ``.onnx`` file to write (atomically).
        opset: ONNX operator set (17 runs on ONNX Runtime 1.14 and newer).
    """
    onnx = require("onnx", extra="onnx", what="exporting to ONNX")
    m = _traceable(model)
    x = torch.rand(1, model.in_channels, *TRACE_SIZE)
    dynamic = {0: "batch", 2: "height", 3: "width"}

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and exporter deprecation chatter
            # The TorchScript-based exporter keeps H and W symbolic through the clamped crops; the dynamo
            # exporter specialises on size-1 guards of the strided layers and fails on dynamic shapes.
            torch.onnx.export(m, (x,), tmp, dynamo=False, opset_version=opset, input_names=["image"],
                              output_names=["scores"], dynamic_axes={"image": dynamic, "scores": dynamic})
        proto = onnx.load(tmp)
        entry = proto.metadata_props.add()
        entry.key, entry.value = "fcnseg", _metadata(model)
        proto.producer_name = "fcnseg"
        onnx.checker.check_model(proto)
        onnx.save(proto, tmp)

    atomic_write(Path(path), write)
    return Path(path)


def export_torchscript(model: FCN, path: str | os.PathLike) -> Path:
    """Writes ``model`` as a traced, frozen TorchScript module (``torch.jit.load`` runs it without fcnseg).

    The metadata travels as the extra file ``fcnseg.json``.
    """
    m = _traceable(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        traced = torch.jit.freeze(torch.jit.trace(m, torch.rand(1, model.in_channels, *TRACE_SIZE)))

    def write(tmp: str) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated but still the portable file
            torch.jit.save(traced, tmp, _extra_files={"fcnseg.json": _metadata(model)})

    atomic_write(Path(path), write)
    return Path(path)


def export(model: FCN, path: str | os.PathLike, fmt: str = "onnx") -> Path:
    if fmt == "onnx":
        return export_onnx(model, path)
    if fmt == "torchscript":
        return export_torchscript(model, path)
    raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


class OnnxModel:
    """An exported FCN run by ONNX Runtime, with the interface ``predict`` uses.

    Call it with a ``(N, 3, H, W)`` float tensor in [0, 1]; it returns the ``(N, C, H, W)`` scores as a tensor.

    Args:
        path: an ``.onnx`` file written by ``export_onnx``.
        threads: intra-op threads (default: ``torch.get_num_threads()``, which ``--threads`` sets).
        providers: ONNX Runtime execution providers (default: CUDA if available, then CPU).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, providers: list[str] | None = None):
        ort = require("onnxruntime", extra="onnx", what="running ONNX models")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such ONNX model file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads or torch.get_num_threads()
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        available = ort.get_available_providers()
        providers = providers or [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
        try:
            self.session = ort.InferenceSession(str(self.path), opts, providers=providers)
        except Exception as e:  # ONNX Runtime raises its own exception types for bad files
            raise ValueError(f"{self.path}: not a loadable ONNX model ({str(e).splitlines()[0]})") from None
        meta = self.session.get_modelmeta().custom_metadata_map.get("fcnseg")
        # A file without fcnseg metadata: only the class count is known, from the output's channels.
        spec = (ModelSpec.from_dict(json.loads(meta)["model"]) if meta
                else ModelSpec(None, None, int(self.session.get_outputs()[0].shape[1])))
        self.num_classes = spec.num_classes
        self.class_names = list(spec.class_names or (str(i) for i in range(self.num_classes)))
        self.palette = [tuple(c) for c in spec.palette] if spec.palette else default_palette(self.num_classes)
        self.arch, self.backbone = spec.arch, spec.backbone
        self.task, self.threshold, self.in_channels = spec.task, spec.threshold, spec.in_channels
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        _check_input(x, self.in_channels)
        array = np.ascontiguousarray(x.detach().cpu().float().numpy())
        return torch.from_numpy(self.session.run(None, {self.input_name: array})[0])

    def predict(self, image, **kw) -> torch.Tensor:
        """``(H, W)`` labels of one image (path, PIL image, array or tensor); see
        ``fcnseg.models.inference.predict_image``."""
        from .models.inference import predict_image

        return torch.from_numpy(predict_image(self, image, **kw)[0].astype(np.int64))

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, {self.arch} {self.backbone}, {self.num_classes} classes)"


def onnx_for(name_or_path: str | os.PathLike, threads: int | None = None) -> OnnxModel:
    """An ONNX Runtime twin of a pretrained or saved model, exported once and cached under
    ``~/.cache/fcnseg/onnx`` (``$FCNSEG_CACHE`` overrides), keyed by the model file's bytes and the versions of
    torch and fcnseg. Once cached, the PyTorch model is not even built (less memory, faster start)."""
    from .hub import CONFIG, HF_PREFIX, WEIGHTS, download, read_config
    from .pretrained import load, model_file
    from .version import __version__

    if str(name_or_path).startswith(HF_PREFIX):  # a Hub model: its snapshot folder in the Hugging Face cache
        name_or_path = download(str(name_or_path))
    source = Path(name_or_path) if Path(name_or_path).is_dir() else model_file(name_or_path)
    if source.is_dir():
        read_config(source)  # names a missing or foreign config.json before anything is hashed
    files = [source / CONFIG, source / WEIGHTS] if source.is_dir() else [source]
    digest = hashlib.sha256(f"{torch.__version__} {__version__}".encode())
    for file in files:
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    cache = Path(os.environ.get("FCNSEG_CACHE", Path.home() / ".cache" / "fcnseg")) / "onnx"
    path = cache / f"{source.stem}-{digest.hexdigest()[:16]}.onnx"
    if not path.is_file():
        export_onnx(load(source), path)
    return OnnxModel(path, threads)


def verify(model: FCN, path: str | os.PathLike, sizes=VERIFY_SIZES, batch: int = 1) -> list[dict]:
    """Runs the exported file and the PyTorch model on random images of each size.

    Returns one dict per size: ``size``, ``max_abs_diff`` of the scores, ``max_abs_score`` (for scale) and
    ``label_agreement`` (share of pixels with the same labels: argmax, or the threshold for binary and
    multilabel models).
    """
    path = Path(path)
    if path.suffix == ".onnx":
        run = OnnxModel(path)
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            run = torch.jit.load(str(path), map_location="cpu")
    ref_model = _traceable(model)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for h, w in sizes:
        x = torch.rand(batch, model.in_channels, h, w, generator=gen)
        with torch.inference_mode():
            ref = ref_model(x)
            out = run(x)
        if out.shape != ref.shape:
            raise RuntimeError(f"{path}: output shape {tuple(out.shape)} != PyTorch's {tuple(ref.shape)} at {h}x{w}")
        rows.append({"size": [h, w], "max_abs_diff": float((out - ref).abs().max()),
                     "max_abs_score": float(ref.abs().max()),
                     "label_agreement": float((model.labels(out) == model.labels(ref)).float().mean())})
    return rows
