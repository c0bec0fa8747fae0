"""The models ``fcnseg serve`` serves: loaded once, named, refused when it cannot serve them, warmed up."""

from pathlib import Path

from ..backends import AutoModel
from ..models.inference import probabilities
from ..predict import load_for_inference

GENERIC_STEMS = ("best", "last", "model", "final", "checkpoint")


def model_name(spec: str) -> str:
    """A model's name in the app and API: a pretrained name as it is; a file's stem, or for the generic stems
    a training run writes (``runs/cells/best.safetensors``) its folder and stem ("cells-best")."""
    if spec.startswith("hf://"):
        return spec[len("hf://"):].split("/")[-1].replace("@", "-")
    if Path(spec).is_dir():
        return Path(spec).resolve().name
    if not spec.endswith((".safetensors", ".onnx", ".xml")):
        return spec
    path = Path(spec)
    if path.stem in GENERIC_STEMS and path.resolve().parent.name:
        return f"{path.resolve().parent.name}-{path.stem}"
    return path.stem


def load_models(specs: list[str], device: str = "auto", backend: str | None = None) -> dict[str, object]:
    """Loads each model once: pretrained names and ``.safetensors`` files (PyTorch), ``.onnx`` files (ONNX Runtime),
    ``.xml`` files (OpenVINO); ``backend`` runs them all with one backend (``fcnseg.backends``).

    Args:
        specs: names or files, the first being the default.
        device: "auto", "cpu", "cuda", ... (PyTorch models only).
        backend: None (by the file's kind) or one of ``fcnseg.backends.BACKENDS``.

    Returns:
        ``{name: model}`` in order; a file's name is ``model_name(file)`` (with -2, -3 ... when two share one).

    Raises:
        ValueError: no model given, or a multilabel model (serve answers one label map per image).
    """
    import torch

    models: dict[str, object] = {}
    for spec in specs:
        spec = str(spec)
        model = load_for_inference(spec, backend, device)
        if getattr(model, "task", "multiclass") == "multilabel":
            raise ValueError(f"{spec}: a multilabel model (one mask per class); serve answers with one label map "
                             "per image, so it serves multiclass and binary models only (use fcnseg predict)")
        name = model_name(spec)
        base, k = name, 1
        while name in models:
            k += 1
            name = f"{base}-{k}"
        model.source = spec
        if not isinstance(model, AutoModel):  # (which warms up each shape as it times it)
            with torch.inference_mode():
                # warm-up: the first request is not the allocator's
                probabilities(model, torch.rand(1, getattr(model, "in_channels", 3), 64, 64))
        models[name] = model
    if not models:
        raise ValueError("serve: no model given")
    return models
