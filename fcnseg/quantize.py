"""Static post-training int8 quantization of an FCN, calibrated on real images, with the accuracy cost measured.

Two routes, each writing a file that carries the model's metadata plus a ``quantization`` record (scheme,
calibration set, fp32 source, layers kept in fp32, the accuracy check):

- ONNX Runtime (``.onnx``): QDQ format, per-channel int8 weights, uint8 activations, percentile calibration
  (``onnxruntime.quantization.quantize_static``). Only convolutions are quantized: the graph's shape arithmetic
  (legacy models edge-pad inputs to a multiple of 32 inside the graph) must stay exact, and quantizing its
  ``Div``/``Mul`` nodes changed the output size (360x480 came out 340x448).
- OpenVINO (``.xml`` + ``.bin``): NNCF's post-training quantization of the IR converted from the ONNX export.

Kept in fp32 because it measurably saves accuracy: on both routes the first convolution (its input is the
normalised photo); on ONNX Runtime's also the depthwise (grouped) convolutions. On fcnseg 0.1's CamVid Lite0 model,
calibrated on 10 CamVid train images, labels equal to fp32's on 6 val images with ONNX Runtime: every convolution
in int8 74-77 % of pixels (min-max calibration); the first one in fp32 96.4 % (97.4 % with percentile calibration);
it and the depthwise ones in fp32 99.4 %. NNCF's int8 depthwise convolutions keep the labels (camvid-fcn4s-lite0's
60-epoch weights, 32 calibration images: 99.27 % with only the stem in fp32, 99.55 % with the depthwise ones too)
and are faster (7.9 against 10.0 ms at 360x480), so OpenVINO keeps only the stem. The pointwise convolutions,
which hold most of the multiply-adds, are int8 on both routes.

The accuracy check runs the fp32 export and the int8 file on the calibration images: the share of pixels with
equal labels and the mean IU of each against the ground truth. Beyond ``MIN_AGREEMENT`` or ``MAX_IU_DROP``
nothing is written unless the caller allows the drop.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ._optional import require
from .export import (
    OnnxModel,
    OpenVinoModel,
    _metadata,
    add_label_output,
    add_openvino_label_output,
    check_label_output,
    export_onnx,
    save_openvino,
)
from .io.atomic import atomic_write
from .metrics import ConfusionMatrix

MIN_AGREEMENT = 0.98  # share of pixels whose int8 label equals the fp32 label
MAX_IU_DROP = 0.01  # mean IU (0..1) the int8 file may lose against the fp32 export on the calibration images
FORMATS = ("onnx", "openvino")


class AccuracyDropError(RuntimeError):
    """The quantized model lost more accuracy than the thresholds allow; nothing was written."""


@dataclass
class Calibration:
    """Real images to calibrate on and check with: ``images`` are ``(C, H, W)`` float32 in [0, 1] (the
    dataset's own size), ``labels`` ``(H, W)`` int64 (255: ignored), ``names`` the samples' names."""

    dataset: str
    root: str
    split: str
    names: list[str] = field(default_factory=list)
    images: list[torch.Tensor] = field(default_factory=list)
    labels: list[torch.Tensor] = field(default_factory=list)

    def record(self) -> dict:
        return {"dataset": self.dataset, "root": str(self.root), "split": self.split, "images": len(self.names),
                "names": self.names}


def calibration_set(model, dataset: str, root: str | os.PathLike, split: str = "train", count: int = 32,
                    dataset_options: dict | None = None) -> Calibration:
    """Reads ``count`` images (evenly spaced over the split) and their labels for calibration.

    Args:
        model: the model to quantize (its ``num_classes`` and ``in_channels``).
        dataset, root, split, dataset_options: as for ``fcnseg.data.build_dataset``.
        count: images to read (all of them if the split has fewer).

    Raises:
        ValueError: a missing or empty split, a class count other than the model's, or an unreadable image or
            mask (one line naming the file); all before anything is written.
    """
    from .data import DatasetError, build_dataset, eval_transforms

    if count < 1:
        raise ValueError(f"--calibration-images {count}: give at least 1")
    ds = build_dataset(dataset, str(root), split, transforms=eval_transforms(), **(dataset_options or {}))
    if len(ds) == 0:
        raise ValueError(f"{root}: the {split} split of {dataset} has no images to calibrate on")
    if ds.num_classes != model.num_classes:
        raise ValueError(f"{root}: {dataset} has {ds.num_classes} classes but the model scores {model.num_classes}; "
                         "calibrate on the data the model was trained for")
    if hasattr(ds, "channels"):
        ds.channels = getattr(model, "in_channels", 3)
    picks = sorted({round(i * (len(ds) - 1) / max(1, min(count, len(ds)) - 1)) for i in range(min(count, len(ds)))})
    calib = Calibration(dataset, str(root), split)
    for i in picks:
        try:
            image, labels = ds[i]
        except DatasetError:
            raise
        except (OSError, ValueError, SyntaxError) as e:
            raise ValueError(f"{ds.samples[i].image}: unreadable calibration image ({e})") from None
        calib.names.append(ds.samples[i].name)
        calib.images.append(image.float())
        calib.labels.append(labels)
    return calib


def _onnx_fp32_layers(path: Path) -> list[str]:
    """The first convolution and the depthwise (grouped) ones of an ONNX graph, by node name."""
    import onnx

    convs = [n for n in onnx.load(str(path)).graph.node if n.op_type == "Conv"]
    grouped = [n.name for n in convs if any(a.name == "group" and a.i > 1 for a in n.attribute)]
    return ([convs[0].name] if convs else []) + [n for n in grouped if not convs or n != convs[0].name]


def _quantize_ort(fp32: Path, out: Path, calib: Calibration) -> tuple[list[str], str]:
    """``fp32`` -> ``out`` by ONNX Runtime's static QDQ quantization; returns the fp32 layers and the scheme."""
    import onnxruntime
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib.images)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"image": x[None].numpy()}

    keep = _onnx_fp32_layers(fp32)
    quantize_static(str(fp32), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    op_types_to_quantize=["Conv", "ConvTranspose"], nodes_to_exclude=keep,
                    calibrate_method=CalibrationMethod.Percentile)
    return keep, (f"onnxruntime {onnxruntime.__version__} static QDQ: int8 per-channel weights, uint8 activations, "
                  "percentile calibration; convolutions only")


def _quantize_openvino(fp32: Path, calib: Calibration):
    """The NNCF-quantized OpenVINO model of ``fp32`` (ONNX); returns it, the fp32 layers and the scheme."""
    ov = _openvino()
    nncf = require("nncf", extra="openvino", what="int8 export to OpenVINO")
    import logging

    logging.getLogger("nncf").setLevel(logging.WARNING)  # one INFO line per layer otherwise
    ir = ov.convert_model(str(fp32))
    ops = ir.get_ordered_ops()
    # Only the stem stays fp32: NNCF's int8 depthwise kept 99.3 % of the shipped model's labels and ran 1.27x
    # faster than with them in fp32 (10.0 -> 7.9 ms at 360x480 on an AMX Xeon), unlike ONNX Runtime's.
    keep = [op.get_friendly_name() for op in ops if op.get_type_name() == "Convolution"][:1]
    quantized = nncf.quantize(ir, nncf.Dataset(calib.images, lambda x: x[None].numpy()),
                              subset_size=len(calib.images), ignored_scope=nncf.IgnoredScope(names=keep))
    return quantized, keep, (f"openvino {ov.__version__} + nncf {nncf.__version__} post-training quantization: "
                             "int8 weights and activations")


def accuracy_check(reference, quantized, calib: Calibration) -> dict:
    """Runs both models on the calibration images: ``pixel_agreement`` (share of pixels with equal labels),
    ``mean_iu_fp32``, ``mean_iu_int8`` (against the ground truth, 0..1) and ``mean_iu_drop``."""
    n = reference.num_classes
    cm_ref, cm_q = ConfusionMatrix(n), ConfusionMatrix(n)
    same = total = 0
    with torch.inference_mode():
        for image, labels in zip(calib.images, calib.labels):
            a = reference.labels(reference(image[None]))[0]
            b = quantized.labels(quantized(image[None]))[0]
            same += int((a == b).sum())
            total += a.numel()
            cm_ref.update(labels, a)
            cm_q.update(labels, b)
    ref_iu, q_iu = cm_ref.compute()["mean_iu"], cm_q.compute()["mean_iu"]
    return {"pixel_agreement": same / max(total, 1), "mean_iu_fp32": ref_iu, "mean_iu_int8": q_iu,
            "mean_iu_drop": ref_iu - q_iu}


def _source_record(source) -> dict:
    from .pretrained import model_file

    record = {"model": str(source)}
    try:
        path = model_file(source)
    except (FileNotFoundError, OSError):
        return record
    if path.is_file():
        record["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    return record


def quantize(model, path: str | os.PathLike, calib: Calibration, fmt: str = "onnx", *, source=None,
             allow_accuracy_drop: bool = False, min_agreement: float = MIN_AGREEMENT,
             max_iu_drop: float = MAX_IU_DROP, labels: bool = False) -> dict:
    """Writes an int8 version of ``model`` to ``path`` (``.onnx``, or ``.xml`` + ``.bin`` for "openvino").

    Args:
        model: the fp32 ``FCN`` (left unchanged).
        path: the file to write.
        calib: ``calibration_set``'s images (calibration and the accuracy check).
        fmt: "onnx" (ONNX Runtime's static QDQ) or "openvino" (NNCF).
        source: the fp32 model's name or file, recorded with its sha256.
        allow_accuracy_drop: write the file even when the check fails the thresholds.
        min_agreement, max_iu_drop: the thresholds (share of pixels; mean IU on 0..1).
        labels: the file also outputs the uint8 label map (``fcnseg.export.add_label_output``), added after
            quantization so that the argmax reads the int8 graph's dequantized scores.

    Returns:
        The ``quantization`` record stored in the file: ``scheme``, ``calibration``, ``fp32_source``,
        ``fp32_layers``, ``check`` (``accuracy_check``), ``thresholds``, ``passed``, ``seconds``.

    Raises:
        AccuracyDropError: the check failed and ``allow_accuracy_drop`` is False (nothing written).
        RuntimeError: ``onnxruntime``, ``openvino`` or ``nncf`` missing (named, with the pip command).
        ValueError: an unknown format, or ``labels`` for a model ``check_label_output`` refuses.
    """
    if fmt not in FORMATS:
        raise ValueError(f"int8 export to {fmt!r}: valid formats are {', '.join(FORMATS)}")
    if labels:
        check_label_output(model)
    t = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fcnseg-int8-") as tmp:
        fp32 = export_onnx(model, Path(tmp) / "fp32.onnx")
        if fmt == "onnx":
            keep, scheme = _quantize_ort(fp32, Path(tmp) / "int8.onnx", calib)
            reference, quantized = OnnxModel(fp32), OnnxModel(Path(tmp) / "int8.onnx")
        else:
            ir, keep, scheme = _quantize_openvino(fp32, calib)
            _openvino().save_model(ir, str(Path(tmp) / "int8.xml"), compress_to_fp16=False)
            reference, quantized = OpenVinoModel(fp32), OpenVinoModel(Path(tmp) / "int8.xml")
        check = accuracy_check(reference, quantized, calib)
        passed = check["pixel_agreement"] >= min_agreement and check["mean_iu_drop"] <= max_iu_drop
        record = {"scheme": scheme, "calibration": calib.record(), "fp32_source": _source_record(source),
                  "fp32_layers": keep, "check": check, "passed": passed,
                  "thresholds": {"min_pixel_agreement": min_agreement, "max_mean_iu_drop": max_iu_drop},
                  "seconds": round(time.perf_counter() - t, 1)}
        if not passed and not allow_accuracy_drop:
            raise AccuracyDropError(
                f"{path}: not written: int8 labels equal fp32's on {100 * check['pixel_agreement']:.2f}% of pixels "
                f"(at least {100 * min_agreement:.1f}% wanted), mean IU {100 * check['mean_iu_int8']:.2f} vs fp32 "
                f"{100 * check['mean_iu_fp32']:.2f} (at most {100 * max_iu_drop:.1f} points lower wanted) on "
                f"{len(calib.names)} calibration images; --allow-accuracy-drop writes it anyway")
        _write(model, quantized, path, fmt, record, labels)
    return record


def _write(model, quantized, path: str | os.PathLike, fmt: str, record: dict, labels: bool) -> None:
    meta = _metadata(model, quantization=record)
    if fmt == "openvino":
        ir = _openvino().Core().read_model(str(quantized.path))
        if labels:
            add_openvino_label_output(ir)
        save_openvino(ir, path, meta)
        return
    import onnx

    proto = onnx.load(str(quantized.path))
    del proto.metadata_props[:]
    entry = proto.metadata_props.add()
    entry.key, entry.value = "fcnseg", meta
    proto.producer_name = "fcnseg"
    if labels:
        add_label_output(proto)

    def write(tmp: str) -> None:
        onnx.save(proto, tmp)

    atomic_write(Path(path), write)


__all__ = ["AccuracyDropError", "Calibration", "accuracy_check", "calibration_set", "quantize"]


def _openvino():
    return require("openvino", extra="openvino", what="int8 export to OpenVINO")
