"""convolutionalize(): checked against torchvision's own vgg16 and alexnet."""

import pytest
import torch
import torchvision

from fcnseg import convolutionalize
from fcnseg.models import linear_to_conv

CLASSIFIERS = {"vgg16": (torchvision.models.vgg16, 7), "alexnet": (torchvision.models.alexnet, 6)}


@pytest.fixture(scope="module", params=list(CLASSIFIERS))
def pair(request):
    torch.manual_seed(0)
    build, window = CLASSIFIERS[request.param]
    classifier = build().eval()
    return classifier, convolutionalize(classifier).eval(), window


def test_224_gives_the_classifiers_logits(pair):
    classifier, fcn, _ = pair
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        logits, scores = classifier(x), fcn(x)
    assert scores.shape == (2, 1000, 1, 1)
    torch.testing.assert_close(scores[:, :, 0, 0], logits, rtol=1e-4, atol=1e-5)


def test_every_cell_is_the_fc_layers_on_its_window(pair):
    classifier, fcn, k = pair
    x = torch.randn(1, 3, 320, 288)
    with torch.no_grad():
        scores = fcn(x)
        pool5 = classifier.features(x)
        rows, cols = pool5.shape[-2] - k + 1, pool5.shape[-1] - k + 1
        assert scores.shape[-2:] == (rows, cols) and rows > 1 and cols > 1
        for i in range(rows):
            for j in range(cols):
                window = pool5[:, :, i:i + k, j:j + k].flatten(1)
                expected = classifier.classifier(window)
                torch.testing.assert_close(scores[:, :, i, j], expected, rtol=1e-4, atol=1e-5)


def test_weights_are_carried_over_not_copied_by_reference(pair):
    classifier, fcn, k = pair
    fc6 = next(m for m in fcn if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (k, k))
    linear = next(m for m in classifier.classifier if isinstance(m, torch.nn.Linear))
    assert torch.equal(fc6.weight.flatten(1), linear.weight)
    assert fc6.weight.data_ptr() != linear.weight.data_ptr()


def test_a_crop_differs_only_through_zero_padding(pair):
    """The classifier on a 224x224 crop sees zero padding around the crop at every layer; the FCN sees the
    image beyond it. Their pool5 features differ most on the crop's border and less and less inwards
    (VGG16's centre cell, out of the border's reach, is identical)."""
    classifier, _, _ = pair
    x = torch.randn(1, 3, 320, 320)
    with torch.no_grad():
        crop = classifier.features(x[:, :, 32:256, 32:256])
        full = classifier.features(x)
    n = crop.shape[-1]
    diff = (crop - full[:, :, 1:1 + n, 1:1 + n]).abs().mean(1)[0]
    rings = [diff[r:n - r, r:n - r].sum() - (diff[r + 1:n - r - 1, r + 1:n - r - 1].sum() if n - 2 * r > 2 else 0)
             for r in range((n + 1) // 2)]
    cells = [(n - 2 * r) ** 2 - max(n - 2 * r - 2, 0) ** 2 for r in range((n + 1) // 2)]
    per_cell = [float(r / c) for r, c in zip(rings, cells)]
    assert all(a > b for a, b in zip(per_cell, per_cell[1:])), per_cell
    if n % 2 == 1:
        assert per_cell[-1] == 0.0


def test_linear_to_conv_refuses_a_wrong_window():
    with pytest.raises(ValueError, match="cannot read a 512x6x6 window"):
        linear_to_conv(torch.nn.Linear(512 * 7 * 7, 10), 512, 6)


def test_convolutionalize_refuses_other_models():
    with pytest.raises(TypeError, match="expects a torchvision VGG or AlexNet"):
        convolutionalize(torchvision.models.resnet18())
