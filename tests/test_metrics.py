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


def f_reference(t: np.ndarray, p: np.ndarray, n: int) -> dict:
    """Dice, precision and recall class by class from the pixel sets (not from a confusion matrix)."""
    out = {"dice": [], "precision": [], "recall": []}
    for c in range(n):
        in_t, in_p = t == c, p == c
        both = np.sum(in_t & in_p)
        occurs = in_t.any() or in_p.any()
        out["dice"].append(2 * both / (in_t.sum() + in_p.sum()) if occurs else None)
        out["precision"].append((both / in_p.sum() if in_p.any() else 0.0) if occurs else None)
        out["recall"].append(both / in_t.sum() if in_t.any() else None)
    return out


@pytest.mark.parametrize("seed", range(4))
def test_dice_precision_recall_match_a_per_class_reference(seed):
    rng = np.random.default_rng(seed)
    n = 6
    t = rng.integers(0, n - 2, (40, 30))  # classes 4 and 5 never in the ground truth
    p = np.where(rng.random(t.shape) < 0.5, t, rng.integers(0, n - 1, t.shape))  # 5 never predicted either
    p[t == 3] = 0  # class 3 never predicted: precision 0, recall 0
    t[rng.random(t.shape) < 0.1] = 255
    cm = ConfusionMatrix(n)
    cm.update(torch.from_numpy(t), torch.from_numpy(p))
    got = cm.compute()
    valid = t != 255
    ref = f_reference(t[valid], p[valid], n)
    for key, values in ref.items():
        assert [v is None for v in got[f"per_class_{key}"]] == [v is None for v in values], key
        for g, r in zip(got[f"per_class_{key}"], values):
            assert r is None or g == pytest.approx(r, abs=1e-12), key
        defined = [v for v in values if v is not None]
        assert got[f"mean_{key}"] == pytest.approx(np.mean(defined), abs=1e-12), key
    assert got["per_class_precision"][3] == 0.0 and got["per_class_recall"][3] == 0.0
    assert got["per_class_dice"][5] is None and got["per_class_recall"][4] is None
    assert got["per_class_recall"] == pytest.approx([a if a == a else None for a in got["per_class_acc"]])


def test_dice_by_hand_and_no_nan_when_everything_is_ignored():
    # Class 1: 2 pixels true, 3 predicted, 2 in common: Dice 4/5, precision 2/3, recall 1.
    t = torch.tensor([0, 0, 1, 1, 0])
    p = torch.tensor([0, 1, 1, 1, 0])
    s = ConfusionMatrix(2)
    s.update(t, p)
    got = s.compute()
    assert got["per_class_dice"][1] == pytest.approx(0.8) and got["per_class_precision"][1] == pytest.approx(2 / 3)
    assert got["per_class_recall"][1] == 1.0 and got["per_class_dice"][0] == pytest.approx(4 / 5)
    empty = ConfusionMatrix(3)
    empty.update(torch.full((4, 4), 255), torch.zeros(4, 4, dtype=torch.int64))
    got = empty.compute()
    assert got["mean_dice"] is None and got["mean_precision"] is None and got["mean_recall"] is None
    assert got["per_class_dice"] == [None] * 3
