"""Input channels other than RGB: the first convolution adapted from RGB weights, preprocessing per channel
stored with the model, grey and 4-band files read as such, and a grey model trained, saved, exported and run."""

import numpy as np
import pytest
import torch
from helpers import make_shapes
from PIL import Image
from torch import nn

import fcnseg
from fcnseg.data.images import ImageError, decode_image
from fcnseg.io.modelfile import load_model, save_model
from fcnseg.models.channels import adapt_input_channels, adapt_preprocessing
from fcnseg.preprocessing import CAFFE_BGR, IMAGENET, TF_LITE


class Tiny(nn.Sequential):
    def __init__(self, pre):
        super().__init__(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 1))
        self.preprocessing = pre


def test_first_conv_weights_follow_timms_rule():
    torch.manual_seed(0)
    for n, expect in ((1, lambda w: w.sum(1, keepdim=True)),
                      (4, lambda w: torch.cat([w, w[:, :1]], 1) * 3 / 4),
                      (7, lambda w: torch.cat([w, w, w[:, :1]], 1) * 3 / 7)):
        trunk = Tiny(IMAGENET)
        w = trunk[0].weight.detach().clone()
        adapt_input_channels(trunk, n)
        assert trunk[0].in_channels == n and trunk.in_channels == n
        assert torch.allclose(trunk[0].weight, expect(w)), n
        assert trunk(torch.rand(1, n, 8, 8)).shape == (1, 4, 6, 6)
        assert trunk[2].weight.shape[1] == 4  # only the first convolution changes


def test_caffe_bgr_filters_are_put_in_rgb_order_first():
    trunk = Tiny(CAFFE_BGR)
    w = trunk[0].weight.detach().clone()  # input channels B, G, R
    adapt_input_channels(trunk, 4)  # R, G, B, NIR: NIR gets R's filter (the cycle starts again at R)
    assert torch.allclose(trunk[0].weight[:, 0], w[:, 2] * 0.75)
    assert torch.allclose(trunk[0].weight[:, 3], w[:, 2] * 0.75)
    pre = trunk.preprocessing
    assert pre.mean == (123.68, 116.779, 103.939, 123.68) and not pre.bgr and pre.scale == 255.0


def test_preprocessing_rules_and_overrides():
    grey = adapt_preprocessing(IMAGENET, 1)
    assert grey.mean == pytest.approx((np.mean([0.485, 0.456, 0.406]),)) and len(grey.std) == 1
    nir = adapt_preprocessing(IMAGENET, 4, mean=[0.485, 0.456, 0.406, 0.3], std=[0.229, 0.224, 0.225, 0.1])
    assert nir.mean[3] == 0.3 and nir.std[3] == 0.1 and nir.name == "imagenet-4ch"
    with pytest.raises(ValueError, match="channel_mean has 3 values for 4 input channels"):
        adapt_preprocessing(IMAGENET, 4, mean=[0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="channel_std values must be > 0"):
        adapt_preprocessing(IMAGENET, 1, std=[0.0])


def test_a_grey_model_equals_the_rgb_model_on_grey_images():
    """With equal statistics for R, G and B (TF-Lite: (x - 127) / 128), the summed filter on a grey image is
    exactly the RGB filters on that image repeated three times: the scores agree."""
    torch.manual_seed(0)
    rgb = fcnseg.build_model("fcn8s", "efficientnet_lite0", 3).eval()
    assert rgb.preprocessing == TF_LITE
    for conv in rgb.score_layers():
        nn.init.normal_(conv.weight, std=0.1)
    grey = fcnseg.build_model("fcn8s", "efficientnet_lite0", 3, in_channels=1).eval()
    state = rgb.state_dict()
    stem = "trunk.conv_stem.weight"
    state[stem] = state[stem].sum(1, keepdim=True)
    grey.load_state_dict(state)
    x = torch.rand(2, 1, 40, 56)
    with torch.no_grad():
        assert torch.allclose(grey(x), rgb(x.repeat(1, 3, 1, 1)), atol=1e-4)
    with pytest.raises(ValueError, match=r"expected a 1-channel batch of shape \(N, 1, H, W\)"):
        grey(torch.rand(1, 3, 32, 32))


def test_decode_grey_and_four_band_files(tmp_path):
    rgba = np.random.default_rng(0).integers(0, 255, (10, 12, 4)).astype(np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "nir.png")
    assert (decode_image(tmp_path / "nir.png", channels=4) == rgba).all()
    Image.fromarray(rgba[:, :, :3]).save(tmp_path / "rgb.png")
    grey = decode_image(tmp_path / "rgb.png", channels=1)
    assert grey.shape == (10, 12, 1)
    assert (grey[:, :, 0] == np.array(Image.fromarray(rgba[:, :, :3]).convert("L"))).all()
    with pytest.raises(ImageError, match="rgb.png: has 3 bands .RGB., the model reads 4"):
        decode_image(tmp_path / "rgb.png", channels=4)


def test_grey_model_trains_saves_exports_and_predicts(tmp_path):
    from fcnseg.export import OnnxModel, export_onnx
    from fcnseg.predict import predict_files
    from fcnseg.train import load_config, train

    shapes = make_shapes(tmp_path / "shapes", n=8, splits=True)
    cfg = load_config(None, dict(dataset="folder", root=str(shapes), val_split="val", arch="fcn8s",
                                 backbone="efficientnet_lite0", pretrained_backbone="imagenet", crop=[48, 64],
                                 scale=None, batch_size=2, max_steps=2, epochs=1, workers=0, threads=2,
                                 tensorboard=False, out=str(tmp_path / "run"), in_channels=1))
    train(cfg)
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.in_channels == 1 and model.trunk.conv_stem.weight.shape[1] == 1
    assert model.preprocessing == adapt_preprocessing(TF_LITE, 1) and model.spec.in_channels == 1
    save_model(model, tmp_path / "again.safetensors")
    x = torch.rand(1, 1, 48, 64)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "again.safetensors")(x), model(x))
    onnx = OnnxModel(export_onnx(model, tmp_path / "grey.onnx"))
    assert onnx.in_channels == 1
    grey_file = tmp_path / "grey.png"
    Image.open(shapes / "images" / "val" / "img006.png").convert("L").save(grey_file)
    results, errors = predict_files(model, [grey_file], tmp_path / "pred", verbose=False)
    assert not errors and (tmp_path / "pred" / "grey.png").is_file()
    assert (onnx.predict(grey_file) == model.predict(grey_file)).float().mean() > 0.999
