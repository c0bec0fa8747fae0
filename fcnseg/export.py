"""Export to ONNX (any batch, height and width), OpenVINO IR and TorchScript, and run exported models with
ONNX Runtime or OpenVINO (int8 files: ``fcnseg.quantize``).

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

FORMATS = ("onnx", "openvino", "torchscript")
# Sizes used for tracing: odd and unequal, so no size is mistaken for a constant of the graph.
TRACE_SIZE = (97, 131)
VERIFY_SIZES = ((97, 131), (224, 288), (360, 480), (33, 500))


def _metadata(model: FCN, **extra) -> str:
    """The JSON an exported file carries: the model's ``ModelSpec`` and info, its input multiple (legacy models
    edge-pad inputs to a multiple of 32 inside the graph) and ``extra`` (a quantized file's calibration)."""
    return json.dumps({"format": FORMAT, "model": model.spec.to_dict(), "info": getattr(model, "info", {}),
                       "input_multiple": int(getattr(model, "input_multiple", 1)), **extra})


def _traceable(model: FCN) -> FCN:
    # Tracing needs a contiguous-format CPU float32 model in eval mode; copy rather than touch the caller's.
    import copy

    m = copy.deepcopy(model).float().cpu().eval()
    return m.to(memory_format=torch.contiguous_format)


LABELS = "labels"


def check_label_output(model) -> None:
    """Raises ValueError unless ``model``'s labels can be computed inside an exported graph: a multiclass model of
    at most 256 classes (a binary or multilabel model's labels depend on the threshold chosen at run time)."""
    if getattr(model, "task", "multiclass") != "multiclass":
        raise ValueError(f"--labels: the labels of a {model.task} model depend on --threshold at run time; "
                         "export it without --labels")
    if model.num_classes > 256:
        raise ValueError(f"--labels: {model.num_classes} classes do not fit the uint8 label output (at most 256)")


def add_label_output(proto) -> None:
    """Appends the output ``labels`` to an ONNX graph (in place): ``(N, H, W)`` uint8, the argmax over the classes
    of the first output (``scores``; ties go to the lower class, as ``torch.argmax``). A runtime asked for the
    labels alone hands back 1 byte per pixel instead of 4 per class and pixel."""
    from onnx import TensorProto, helper

    graph = proto.graph
    scores = graph.output[0].name
    graph.node.extend([
        helper.make_node("ArgMax", [scores], ["labels_int64"], name="labels_argmax", axis=1, keepdims=0,
                         select_last_index=0),
        helper.make_node("Cast", ["labels_int64"], [LABELS], name="labels_cast", to=TensorProto.UINT8)])
    graph.output.append(helper.make_tensor_value_info(LABELS, TensorProto.UINT8, ["batch", "height", "width"]))


def add_openvino_label_output(ir) -> None:
    """``add_label_output`` for an ``openvino.Model`` (in place): a ``labels`` result, the uint8 argmax over the
    classes of the first output (TopK with k = 1 gives the first index among equal maxima, as ``torch.argmax``)."""
    import openvino.opset13 as ops

    scores = ir.get_results()[0].input_value(0)  # what the scores result reads
    top = ops.topk(scores, ops.constant(np.int64(1)), axis=1, mode="max", sort="value", index_element_type="i32",
                   stable=True)
    label = ops.convert(ops.squeeze(top.output(1), ops.constant(np.array([1], dtype=np.int64))), "u8")
    result = ops.result(label)
    result.output(0).get_tensor().set_names({LABELS})
    ir.add_results([result])


def export_onnx(model: FCN, path: str | os.PathLike, opset: int = 17, labels: bool = False) -> Path:
    """Writes ``model`` as an ONNX graph with dynamic batch, height and width.

    Args:
        model: the FCN to export (left unchanged).
        path: the ``.onnx`` file to write (atomically).
        opset: ONNX operator set (17 runs on ONNX Runtime 1.14 and newer).
        labels: also output ``labels`` (``add_label_output``: uint8 argmax).

    Raises:
        ValueError: ``labels`` for a model whose labels cannot be in the graph (``check_label_output``).
    """
    onnx = require("onnx", extra="onnx", what="exporting to ONNX")
    if labels:
        check_label_output(model)
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
        if labels:
            add_label_output(proto)
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


def export_openvino(model: FCN, path: str | os.PathLike, labels: bool = False) -> Path:
    """Writes ``model`` as an OpenVINO IR (``path`` ``.xml`` plus its ``.bin`` weights, fp32), converted from the
    ONNX export, with dynamic batch, height and width; the metadata travels in the IR's ``rt_info`` (``fcnseg``).
    ``labels``: also output ``labels`` (uint8 argmax; see ``add_label_output``).

    Raises:
        RuntimeError: the ``openvino`` package is not installed (named, with the pip command).
        ValueError: see ``check_label_output``.
    """
    import tempfile

    ov = require("openvino", extra="openvino", what="the OpenVINO backend")
    with tempfile.TemporaryDirectory(prefix="fcnseg-ov-") as tmp:
        export_onnx(model, Path(tmp) / "fp32.onnx", labels=labels)
        ir = ov.convert_model(str(Path(tmp) / "fp32.onnx"))
    return save_openvino(ir, path, _metadata(model))


def save_openvino(ir, path: str | os.PathLike, metadata: str) -> Path:
    """Saves an ``openvino.Model`` with ``metadata`` as ``path`` (``.xml``) and its ``.bin``, each atomically;
    the ``.bin`` lands first, so an ``.xml`` never names weights that are not there yet."""
    ov = require("openvino", extra="openvino", what="the OpenVINO backend")
    path = Path(path).with_suffix(".xml")
    ir.set_rt_info(metadata, ["fcnseg"])
    tmp_dir = path.parent / f".{path.stem}.tmp-{os.getpid()}"
    tmp_dir.mkdir(parents=True, exist_ok=True)
    try:
        ov.save_model(ir, str(tmp_dir / path.name), compress_to_fp16=False)  # fp32 weights: fp32 results
        os.replace(tmp_dir / path.with_suffix(".bin").name, path.with_suffix(".bin"))
        os.replace(tmp_dir / path.name, path)
    finally:
        for f in tmp_dir.iterdir():
            f.unlink()
        tmp_dir.rmdir()
    return path


def export(model: FCN, path: str | os.PathLike, fmt: str = "onnx", labels: bool = False) -> Path:
    """Writes ``model`` to ``path`` in format ``fmt`` (one of ``FORMATS``); returns the path written. ``labels``:
    the ONNX and OpenVINO graphs also output the uint8 label map (``add_label_output``).

    Raises:
        ValueError: an unknown format, or ``labels`` for TorchScript or a model ``check_label_output`` refuses.
    """
    if fmt == "onnx":
        return export_onnx(model, path, labels=labels)
    if fmt == "openvino":
        return export_openvino(model, path, labels=labels)
    if labels:
        raise ValueError("--labels: an output inside the graph for onnx and openvino exports, not torchscript")
    if fmt == "torchscript":
        return export_torchscript(model, path)
    raise ValueError(f"unknown export format {fmt!r}; valid: {', '.join(FORMATS)}")


class ExportedFCN:
    """What an exported FCN file tells about its model (from the ``fcnseg`` metadata), and the parts of the
    ``FCN`` interface that ``predict``, ``evaluate`` and ``serve`` use besides the forward pass.

    Attributes:
        num_classes, class_names, palette, arch, backbone, task, threshold, in_channels: as on an ``FCN``.
        input_multiple: inputs are edge-padded to this multiple inside the graph (1: none).
        label_output: the graph also outputs ``labels`` (uint8 argmax), which ``predict_labels`` asks for alone.
        quantization: a quantized file's record (scheme, calibration set, fp32 source, fp32 layers, accuracy
            check), else None.
    """

    training = False  # exported graphs are inference-only
    label_output = False

    def _read_metadata(self, meta: str | None, num_outputs) -> None:
        body = json.loads(meta) if meta else {}
        if "num_classes" not in body.get("model", {}) and not isinstance(num_outputs, int):
            raise ValueError(f"{self.path}: no fcnseg metadata and no fixed class count in the output shape "
                             "(export it with fcnseg export)")
        # A file without fcnseg's model record (another library's graph, maybe with a class count only): the
        # class count is the record's or the output's channels.
        model = body.get("model", {})
        spec = (ModelSpec.from_dict(model) if "arch" in model
                else ModelSpec(None, None, int(model.get("num_classes", num_outputs))))
        self.info = body.get("info", {})
        self.quantization = body.get("quantization")
        self.input_multiple = int(body.get("input_multiple", 1))
        self.num_classes = spec.num_classes
        self.class_names = list(spec.class_names or (str(i) for i in range(self.num_classes)))
        self.palette = [tuple(c) for c in spec.palette] if spec.palette else default_palette(self.num_classes)
        self.arch, self.backbone = spec.arch, spec.backbone
        self.task, self.threshold, self.in_channels = spec.task, spec.threshold, spec.in_channels
        self.test_scale = spec.test_scale

    def eval(self):
        return self

    def train(self, mode: bool = True):
        if mode:
            raise RuntimeError(f"{self.path}: an exported model runs inference only")
        return self

    def _input(self, x: torch.Tensor) -> np.ndarray:
        """The checked ``(N, C, H, W)`` batch as the contiguous float32 array the runtimes take."""
        _check_input(x, self.in_channels)
        return np.ascontiguousarray(x.detach().cpu().float().numpy())

    def predict_labels(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` int64 labels of a ``(N, C, H, W)`` float batch in [0, 1], from the graph's ``labels``
        output where it has one (no scores leave the runtime), else from its scores."""
        if not self.label_output:
            return self.labels(self(x))
        return torch.from_numpy(self._run_labels(self._input(x))).long()

    def labels(self, scores: torch.Tensor) -> torch.Tensor:
        """``(N, H, W)`` labels from ``(N, C, H, W)`` scores, as ``FCN.labels``."""
        from .tasks import labels_from_scores

        return labels_from_scores(scores, self.task, self.threshold)

    def predict(self, image, **kw) -> torch.Tensor:
        """``(H, W)`` int64 labels of one image (path, PIL image, array or tensor); see
        ``fcnseg.models.inference.predict_image``."""
        from .models.inference import predict_image

        return torch.from_numpy(predict_image(self, image, **kw)[0].astype(np.int64))


class OnnxModel(ExportedFCN):
    """An exported FCN run by ONNX Runtime, with the interface ``predict`` uses.

    Call it with a ``(N, 3, H, W)`` float tensor in [0, 1]; it returns the ``(N, C, H, W)`` scores as a tensor.

    Args:
        path: an ``.onnx`` file written by ``export_onnx`` (or ``fcnseg.quantize``: int8).
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
        self._read_metadata(self.session.get_modelmeta().custom_metadata_map.get("fcnseg"),
                            self.session.get_outputs()[0].shape[1])
        self.input_name, self.scores_name = self.session.get_inputs()[0].name, self.session.get_outputs()[0].name
        self.label_output = LABELS in {o.name for o in self.session.get_outputs()[1:]}

    def _run_labels(self, array: np.ndarray) -> np.ndarray:
        return self.session.run([LABELS], {self.input_name: array})[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # The scores alone: a file with a labels output would otherwise also compute its argmax.
        return torch.from_numpy(self.session.run([self.scores_name], {self.input_name: self._input(x)})[0])

    def __repr__(self) -> str:
        return f"OnnxModel({str(self.path)!r}, {self.arch} {self.backbone}, {self.num_classes} classes)"


class OpenVinoModel(ExportedFCN):
    """An exported FCN run by OpenVINO's CPU plugin: an IR (``.xml``/``.bin`` from ``export_openvino`` or
    ``fcnseg.quantize``) or an ``.onnx`` file, with the interface ``predict`` uses.

    Call it with a ``(N, C, H, W)`` float tensor in [0, 1]; it returns the ``(N, K, H, W)`` float32 scores.

    Args:
        path: the ``.xml`` or ``.onnx`` file.
        threads: inference threads (default: ``torch.get_num_threads()``).
        precision: "f32" keeps fp32 results; "bf16" lets the plugin compute in bf16 where the CPU has it
            (OpenVINO's own default on such CPUs; faster, labels differ on a few pixels).

    Raises:
        RuntimeError: the ``openvino`` package is missing (named, with the pip command), or tcmalloc is loaded
            into this process (with which OpenVINO's runtime aborts).
        FileNotFoundError, ValueError: no such file, or not a model OpenVINO reads (one line naming it).
    """

    def __init__(self, path: str | os.PathLike, threads: int | None = None, precision: str = "f32"):
        import threading

        from .runtime.allocator import loaded_allocator

        ov = require("openvino", extra="openvino", what="the OpenVINO backend")
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: no such OpenVINO model file")
        if loaded_allocator() == "tcmalloc":  # an abort that no Python code could catch or explain
            raise RuntimeError(f"{self.path}: OpenVINO aborts in a process with tcmalloc preloaded (LD_PRELOAD); "
                               "run it without, e.g. FCNSEG_ALLOCATOR=system and LD_PRELOAD unset")
        core = ov.Core()
        try:
            ir = core.read_model(str(self.path))
            self.compiled = core.compile_model(ir, "CPU", {
                "INFERENCE_NUM_THREADS": threads or torch.get_num_threads(), "PERFORMANCE_HINT": "LATENCY",
                "INFERENCE_PRECISION_HINT": precision})
        except Exception as e:  # OpenVINO raises its own exception types for bad files
            raise ValueError(f"{self.path}: not a loadable OpenVINO model ({str(e).strip().splitlines()[0]})"
                             ) from None
        channels = ir.output(0).get_partial_shape()[1]
        self._read_metadata(_openvino_metadata(ir, self.path), channels.get_length() if channels.is_static else None)
        self.precision = precision
        self.label_output = any(LABELS in out.get_names() for out in ir.outputs[1:])
        self._local = threading.local()  # an infer request per thread: serve's workers run concurrently

    def _request(self):
        request = getattr(self._local, "request", None)
        if request is None:
            request = self._local.request = self.compiled.create_infer_request()
        return request

    def _run_labels(self, array: np.ndarray) -> np.ndarray:
        request = self._request()
        request.infer({0: array}, share_inputs=True)
        return np.array(request.get_tensor(LABELS).data)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # Shared buffers both ways, then one copy out of the request's memory (which the next call reuses): the
        # default copies the scores twice, about 8 MB each for 11 classes at 360x480.
        out = self._request().infer({0: self._input(x)}, share_inputs=True, share_outputs=True)[0]
        return torch.from_numpy(np.array(out, dtype=np.float32, copy=True))

    def __repr__(self) -> str:
        return f"OpenVinoModel({str(self.path)!r}, {self.arch} {self.backbone}, {self.num_classes} classes)"


def _openvino_metadata(ir, path: Path) -> str | None:
    if ir.has_rt_info(["fcnseg"]):
        return ir.get_rt_info(["fcnseg"]).astype(str)
    if path.suffix == ".onnx":  # OpenVINO reading an ONNX file does not keep its metadata_props
        import onnx

        props = {p.key: p.value for p in onnx.load(str(path), load_external_data=False).metadata_props}
        return props.get("fcnseg")
    return None


def open_exported(path: str | os.PathLike, backend: str | None = None, threads: int | None = None):
    """An exported file run by ``backend``: ``.onnx`` by "onnxruntime" (default) or "openvino", ``.xml`` by
    "openvino"; ``.pt`` (TorchScript) by ``torch.jit.load``.

    Raises:
        ValueError: a backend that cannot run this file (one line naming both).
    """
    path = Path(path)
    suffix = path.suffix.lower()
    runs = {".onnx": ("onnxruntime", "openvino"), ".xml": ("openvino",), ".pt": ("torch",)}.get(suffix)
    if runs is None:
        raise ValueError(f"{path}: not an exported model file (.onnx, .xml or .pt)")
    backend = backend or runs[0]
    if backend not in runs:
        raise ValueError(f"{path}: a {suffix} file runs with --backend {' or '.join(runs)}, not {backend}")
    if backend == "onnxruntime":
        return OnnxModel(path, threads)
    if backend == "openvino":
        return OpenVinoModel(path, threads)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu")


def onnx_for(name_or_path: str | os.PathLike, threads: int | None = None) -> OnnxModel:
    """An ONNX Runtime twin of a pretrained or saved model (``cached_onnx``)."""
    return OnnxModel(cached_onnx(name_or_path), threads)


def cached_onnx(name_or_path: str | os.PathLike) -> Path:
    """The ONNX export of a pretrained or saved model, exported once and cached under
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
    return path


def verify(model: FCN, path: str | os.PathLike, sizes=VERIFY_SIZES, batch: int = 1) -> list[dict]:
    """Runs the exported file and the PyTorch model on random images of each size.

    Returns one dict per size: ``size``, ``max_abs_diff`` of the scores, ``max_abs_score`` (for scale),
    ``label_agreement`` (share of pixels with the same labels: argmax, or the threshold for binary and
    multilabel models) and, for a file with a ``labels`` output, ``label_output_agreement`` (share of pixels
    where that output equals the argmax of the file's own scores).
    """
    path = Path(path)
    run = open_exported(path)
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
        if getattr(run, "label_output", False):  # the graph's own argmax against the argmax of its scores
            rows[-1]["label_output_agreement"] = float((run.predict_labels(x) == model.labels(out)).float().mean())
    return rows
