"""Metrics against an independent per-class reference over numpy arrays."""

import math

import numpy as np
import pytest
import torch

from fcnseg.metrics import ConfusionMatrix, boundary_band


def reference(targets, preds, n, ignore=255):
    """Straight from the paper's definitions, one class at a time."""
    t = np.concatenate([a.ravel() for a in targets])
    p = np.concatenate([a.ravel() for a in preds])
    valid = (t != ignore) & (t < n)
    t, p = t[valid], p[valid]
    n_ii = [np.sum((t == i) & (p == i)) for i in range(n)]
    t_i = [np.sum(t == i) for i in range(n)]
    n_ji = [np.sum(p == i) for i in range(n)]
    present = [i for i in range(n) if t_i[i] > 0]
    occurring = [i for i in range(n) if t_i[i] + n_ji[i] > 0]
    ius = {i: n_ii[i] / (t_i[i] + n_ji[i] - n_ii[i]) for i in occurring}
    return {
        "pixel_acc": sum(n_ii) / sum(t_i),
        "mean_acc": np.mean([n_ii[i] / t_i[i] for i in present]),
        "mean_iu": np.mean(list(ius.values())),
        "fw_iu": sum(t_i[i] * ius[i] for i in occurring) / sum(t_i),
    }


@pytest.mark.parametrize("seed", range(5))
def test_matches_reference_with_ignore_and_absent_classes(seed):
    rng = np.random.default_rng(seed)
    n = 6
    targets = [rng.integers(0, n - 1, (7, 9)) for _ in range(3)]  # class 5 never in the ground truth
    preds = [np.where(rng.random(t.shape) < 0.6, t, rng.integers(0, n, t.shape)) for t in targets]
    for t in targets:
        t[rng.random(t.shape) < 0.1] = 255
        t[0, 0] = 9  # out of range: not counted
    cm = ConfusionMatrix(n)
    for t, p in zip(targets, preds):
        cm.update(torch.from_numpy(t), torch.from_numpy(p))
    got, ref = cm.compute(), reference(targets, preds, n)
    for key in ref:
        assert got[key] == pytest.approx(ref[key], abs=1e-12), key
    assert not math.isnan(got["mean_iu"]) and math.isnan(got["per_class_acc"][5])


def test_perfect_prediction_scores_one_and_absent_class_is_not_nan():
    t = torch.tensor([[0, 1, 1], [2, 2, 255]])
    cm = ConfusionMatrix(4)
    cm.update(t, t.clamp(max=3))
    s = cm.compute()
    assert s["pixel_acc"] == s["mean_acc"] == s["mean_iu"] == s["fw_iu"] == 1.0
    assert math.isnan(s["per_class_iu"][3])


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="target shape"):
        ConfusionMatrix(3).update(torch.zeros(2, 2, dtype=torch.long), torch.zeros(2, 3, dtype=torch.long))


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@st.composite
def label_batches(draw):
    n = draw(st.integers(2, 5))
    k = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    shapes = [(draw(st.integers(1, 6)), draw(st.integers(1, 6))) for _ in range(k)]
    targets = [np.where(rng.random(s) < 0.1, 255, rng.integers(0, n, s)) for s in shapes]
    preds = [rng.integers(0, n, s) for s in shapes]
    return n, targets, preds, draw(st.permutations(range(k)))


@settings(max_examples=50, deadline=None)
@given(label_batches())
def test_confusion_matrices_add_and_ignore_image_order(batch):
    n, targets, preds, order = batch
    whole = ConfusionMatrix(n)
    parts = []
    for i in order:
        whole.update(torch.from_numpy(targets[i]), torch.from_numpy(preds[i]))
        part = ConfusionMatrix(n)
        part.update(torch.from_numpy(targets[i]), torch.from_numpy(preds[i]))
        parts.append(part.mat)
    in_order = ConfusionMatrix(n)
    for t, p in zip(targets, preds):
        in_order.update(torch.from_numpy(t), torch.from_numpy(p))
    assert torch.equal(whole.mat, sum(parts))
    assert torch.equal(whole.mat, in_order.mat)
    assert int(whole.mat.sum()) == sum(int((t != 255).sum()) for t in targets)


def _band_reference(labels: np.ndarray, width: int) -> np.ndarray:
    """A pixel is in the band when some pixel within Chebyshev distance ``width`` has another label."""
    h, w = labels.shape
    band = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            win = labels[max(0, y - width):y + width + 1, max(0, x - width):x + width + 1]
            band[y, x] = (win != labels[y, x]).any()
    return band


@pytest.mark.parametrize("width", [1, 2, 4])
def test_boundary_band_matches_a_loop(width):
    rng = np.random.default_rng(width)
    labels = rng.integers(0, 3, (4, 5)).repeat(6, 0).repeat(5, 1)  # blocks, so the band is not everything
    labels[rng.random(labels.shape) < 0.02] = 255
    got = boundary_band(torch.from_numpy(labels), width).numpy()
    np.testing.assert_array_equal(got, _band_reference(labels, width))
    assert 0 < got.mean() < 1


def test_boundary_scores_only_count_the_band():
    # Two halves; the prediction is wrong in a stripe far from the edge: whole-image IU drops, band IU doesn't.
    target = torch.zeros(40, 40, dtype=torch.int64)
    target[:, 20:] = 1
    pred = target.clone()
    pred[:, 2:6] = 1
    band = boundary_band(target, 3)
    assert band[:, 17:23].all() and not band[:, :17].any() and not band[:, 23:].any()
    whole, edge = ConfusionMatrix(2), ConfusionMatrix(2)
    whole.update(target, pred)
    edge.update(torch.where(band, target, 255), pred)
    assert whole.compute()["mean_iu"] < 0.9
    assert edge.compute()["mean_iu"] == 1.0
