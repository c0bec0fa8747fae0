"""FCN-4s and FCN-2s beyond alignment and staging (tests/test_alignment.py, tests/test_staged.py): the layers they
add, their export to ONNX, and that the finer skips reach detail FCN-8s cannot."""

import pytest
import torch
from torch import nn

import fcnseg


def test_layers_continue_the_authors_names():
    m = fcnseg.build_model("fcn2s", "vgg16", 3)
    assert [c.in_channels for c in m.score_layers()] == [4096, 512, 256, 128, 64]  # fc7, pool4, pool3, pool2, pool1
    assert m.final_name == "upscore_pool1" and hasattr(m, "upscore_pool2") and hasattr(m, "upscore2")
    assert fcnseg.build_model("fcn4s", "vgg16", 3).final_name == "upscore4"
    lite = fcnseg.build_model("fcn2s", "efficientnet_lite0", 3)
    assert [c.in_channels for c in lite.score_layers()] == [1280, 112, 40, 24, 16]


@pytest.mark.parametrize("arch", ["fcn4s", "fcn2s"])
def test_onnx_export_matches_pytorch(arch, tmp_path):
    from fcnseg.export import export_onnx, verify

    torch.manual_seed(0)
    model = fcnseg.build_model(arch, "efficientnet_lite0", 3).eval()
    for conv in model.score_layers():
        nn.init.normal_(conv.weight, std=0.5)
    path = export_onnx(model, tmp_path / f"{arch}.onnx")
    for row in verify(model, path, sizes=((33, 47), (97, 131), (120, 90))):
        assert row["max_abs_diff"] < 1e-4 * max(1.0, row["max_abs_score"]) and row["label_agreement"] > 0.999


def test_a_finer_skip_resolves_a_one_pixel_line_that_fcn8s_blurs():
    """With only the finest score layer switched on (a linear read of the stride-2 features), FCN-2s's score map
    follows a 1-pixel line within a few pixels (pool1's receptive field is 6 pixels); FCN-8s's finest scores
    come from stride 8 and spread it over 20 or more. Measured as the width of the response above half its peak,
    across the line (random VGG16 weights: 5 against 22)."""
    torch.manual_seed(0)
    x = torch.zeros(1, 3, 64, 64)
    x[:, :, :, 31] = 1.0  # a vertical 1-pixel line

    def width(arch: str, layer: str) -> int:
        m = fcnseg.build_model(arch, "vgg16", 2, padding="same", upsampling="fixed").eval()
        conv = getattr(m, layer)
        with torch.no_grad():
            conv.weight[1].fill_(1.0 / conv.in_channels)  # class 1 reads the mean feature
            base = m(torch.zeros_like(x))[0, 1, 32]
            row = m(x)[0, 1, 32] - base
        return int((row.abs() > row.abs().max() / 2).sum())

    fine, coarse = width("fcn2s", "score_pool1"), width("fcn8s", "score_pool3")
    assert fine <= 6 and coarse >= 3 * fine, (fine, coarse)
