"""Losses: each against an independent reference (segmentation_models_pytorch, torchvision, torch, or a
hand computation), ignore label 255, class weights, specs and their errors, and the default loss unchanged."""

import math

import pytest
import torch
import torch.nn.functional as F

from fcnseg.losses import build_loss, parse_loss, segmentation_loss

smp_losses = pytest.importorskip("segmentation_models_pytorch.losses")


def case(task: str, seed: int = 0, c: int = 4, ignore: float = 0.2, shape=(2, 12, 10)):
    """Random logits and targets with a fraction ``ignore`` of the pixels labelled 255."""
    g = torch.Generator().manual_seed(seed)
    n, h, w = shape
    if task == "multiclass":
        scores = torch.randn(n, c, h, w, generator=g) * 2
        target = torch.randint(0, c, (n, h, w), generator=g)
    elif task == "binary":
        scores = torch.randn(n, 1, h, w, generator=g) * 2
        target = torch.randint(0, 2, (n, h, w), generator=g)
    else:
        scores = torch.randn(n, c, h, w, generator=g) * 2
        target = torch.randint(0, 2, (n, c, h, w), generator=g)
    target[torch.rand(target.shape, generator=g) < ignore] = 255
    return scores, target


def close(a, b, tol=1e-5):
    return abs(float(a) - float(b)) <= tol * max(1.0, abs(float(b)))


@pytest.mark.parametrize("seed", range(3))
def test_dice_matches_smp_multiclass_with_ignore_and_weights(seed):
    scores, target = case("multiclass", seed, c=5)
    target[target == 3] = 0  # class 3 absent: left out of the mean
    present = [k for k in range(5) if (target == k).any()]
    ref = smp_losses.DiceLoss("multiclass", classes=present, ignore_index=255)(scores, target)
    assert close(build_loss("dice")(scores, target), ref)
    w = [0.5, 2.0, 1.0, 3.0, 0.25]
    ref = smp_losses.DiceLoss("multiclass", classes=present, ignore_index=255, class_weights=w)(scores, target)
    assert close(build_loss("dice", weight=torch.tensor(w))(scores, target), ref)
    ref = smp_losses.DiceLoss("multiclass", classes=present, ignore_index=255, log_loss=True, smooth=1.0)
    assert close(build_loss({"dice": {"log_loss": True, "smooth": 1.0}})(scores, target), ref(scores, target))


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_dice_matches_smp_binary_and_multilabel(task):
    scores, target = case(task, 1)
    ref = smp_losses.DiceLoss(task, ignore_index=255)(scores, target)  # every channel has foreground here
    assert close(build_loss("dice", task)(scores, target), ref)


def test_dice_by_hand():
    # Two pixels, two classes, logits giving probabilities (0.5, 0.5) and (1, 0) (almost); targets 0, 1.
    scores = torch.tensor([[0.0, 30.0], [0.0, -30.0]]).view(1, 2, 1, 2)
    target = torch.tensor([[[0, 1]]])
    # class 0: p = (0.5, 1), t = (1, 0): tp 0.5, sum p 1.5, sum t 1 -> dice 1/2.5; class 1: p = (0.5, 0):
    # tp 0, dice 0. Loss: mean(1 - 0.4, 1 - 0) = 0.8.
    assert close(build_loss("dice")(scores, target), 0.8)
    target = torch.tensor([[[0, 255]]])  # the second pixel ignored: class 0 only, p 0.5, t 1 -> dice 2/3
    assert close(build_loss("dice")(scores, target), 1 - 0.5 * 2 / 1.5)


@pytest.mark.parametrize("task", ["multiclass", "binary", "multilabel"])
def test_tversky_matches_smp(task):
    scores, target = case(task, 2)
    kw = dict(alpha=0.3, beta=0.7, gamma=1.5)
    classes = None if task == "binary" else [k for k in range(scores.shape[1])
                                              if ((target == k) if task == "multiclass" else (target[:, k] == 1)).any()]
    ref = smp_losses.TverskyLoss(task, classes=classes, ignore_index=255, **kw)(scores, target)
    assert close(build_loss({"tversky": kw}, task)(scores, target), ref)


def test_focal_multiclass_matches_smp_softmax_focal_and_is_ce_at_gamma_0():
    scores, target = case("multiclass", 3)
    valid = target != 255
    flat_scores = scores.permute(0, 2, 3, 1)[valid]
    ref = smp_losses._functional.softmax_focal_loss_with_logits(flat_scores, target[valid], gamma=2.0)
    assert close(build_loss("focal")(scores, target), ref)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    ce = F.cross_entropy(scores, target, weight=w, ignore_index=255)
    assert close(build_loss({"focal": {"gamma": 0.0}}, weight=w)(scores, target), ce)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
@pytest.mark.parametrize("alpha", [None, 0.25])
def test_focal_sigmoid_matches_torchvision_and_smp(task, alpha):
    from torchvision.ops import sigmoid_focal_loss

    scores, target = case(task, 4)
    mine = build_loss({"focal": {"alpha": alpha}}, task)(scores, target)
    s = scores[:, 0] if task == "binary" else scores
    valid = target != 255
    ref = sigmoid_focal_loss(s[valid], target[valid].float(), alpha=-1 if alpha is None else alpha, reduction="mean")
    assert close(mine, ref)
    if task == "binary":  # smp's multilabel mode cannot take an ignore index of the targets' shape
        assert close(mine, smp_losses.FocalLoss("binary", alpha=alpha, ignore_index=255)(scores, target))


@pytest.mark.parametrize("seed", range(3))
def test_lovasz_softmax_matches_smp(seed):
    scores, target = case("multiclass", seed, c=5)
    target[target == 2] = 4
    ref = smp_losses.LovaszLoss("multiclass", ignore_index=255)(scores, target)
    assert close(build_loss("lovasz")(scores, target), ref)


def test_lovasz_hinge_matches_smp_binary_and_per_channel():
    scores, target = case("binary", 5)
    ref = smp_losses.LovaszLoss("binary", ignore_index=255)(scores, target)
    assert close(build_loss("lovasz", "binary")(scores, target), ref)
    scores, target = case("multilabel", 5, c=3)
    ref = sum(smp_losses.LovaszLoss("binary", ignore_index=255)(scores[:, k], target[:, k]) for k in range(3)) / 3
    assert close(build_loss("lovasz", "multilabel")(scores, target), ref)


def test_lovasz_hinge_by_hand():
    # One positive pixel with logit 2 (error 1 - 2 = -1 -> relu 0) and one negative with logit 0.5
    # (error 1.5): sorted errors (1.5, -1), labels (0, 1); Jaccard grads: 1 - 1/2 = 0.5, then 1 - 0/2... :
    # gts 1; after pixel 1 (neg): intersection 1, union 2 -> 1 - 1/2 = 0.5; after pixel 2: 1 - 0/2 = 1 -> +0.5.
    scores = torch.tensor([2.0, 0.5]).view(1, 1, 1, 2)
    target = torch.tensor([[[1, 0]]])
    assert close(build_loss("lovasz", "binary")(scores, target), 1.5 * 0.5)


@pytest.mark.parametrize("task", ["binary", "multilabel"])
def test_bce_matches_smp_soft_bce(task):
    scores, target = case(task, 6)
    valid = (target != 255).sum()
    ref = smp_losses.SoftBCEWithLogitsLoss(ignore_index=255, reduction="sum")(
        scores[:, 0] if task == "binary" else scores, target.float())
    assert close(build_loss("bce", task)(scores, target), ref / valid)
    assert close(build_loss("bce", task, reduction="sum")(scores, target), ref)
    pw = torch.tensor(3.0)
    ref = smp_losses.SoftBCEWithLogitsLoss(ignore_index=255, reduction="sum", pos_weight=pw)(
        scores[:, 0] if task == "binary" else scores, target.float())
    assert close(build_loss({"bce": {"pos_weight": 3.0}}, task)(scores, target), ref / valid)


def test_bce_by_hand():
    scores = torch.tensor([0.0, math.log(3.0), 5.0]).view(1, 1, 1, 3)
    target = torch.tensor([[[1, 0, 255]]])
    # -log(sigmoid(0)) = log 2; -log(1 - sigmoid(log 3)) = -log(1/4) = log 4; mean over 2 pixels.
    assert close(build_loss("bce", "binary")(scores, target), (math.log(2) + math.log(4)) / 2)


def hrnet_ohem(score, target, thresh, min_kept, weight=None):
    """HRNet-Semantic-Segmentation's OhemCrossEntropy.forward (lib/core/criterion.py), transcribed."""
    pred = F.softmax(score, dim=1)
    pixel_losses = F.cross_entropy(score, target, weight=weight, ignore_index=255, reduction="none")
    pixel_losses = pixel_losses.contiguous().view(-1)
    mask = target.contiguous().view(-1) != 255
    tmp_target = target.clone()
    tmp_target[tmp_target == 255] = 0
    pred = pred.gather(1, tmp_target.unsqueeze(1))
    pred, ind = pred.contiguous().view(-1,)[mask].contiguous().sort()
    min_value = pred[min(min_kept, pred.numel() - 1)]
    threshold = max(min_value, thresh)
    pixel_losses = pixel_losses[mask][ind]
    pixel_losses = pixel_losses[pred < threshold]
    return pixel_losses.mean()


@pytest.mark.parametrize("min_kept", [0, 10, 150, 10_000])
def test_ohem_matches_hrnet(min_kept):
    scores, target = case("multiclass", 7)
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    for thresh in (0.3, 0.7):
        mine = build_loss({"ohem": {"thresh": thresh, "min_kept": min_kept}}, weight=w)(scores, target)
        assert close(mine, hrnet_ohem(scores, target, thresh, min_kept, w))


def test_ohem_keeps_hard_pixels_only():
    # Pixel 0 confident and right (p ~ 1), pixel 1 wrong: with min_kept 0 only pixel 1's loss counts.
    scores = torch.tensor([[10.0, -10.0], [0.0, 2.0]]).t().reshape(1, 2, 1, 2)
    target = torch.tensor([[[0, 0]]])
    expect = F.cross_entropy(torch.tensor([[0.0, 2.0]]), torch.tensor([0]))
    assert close(build_loss({"ohem": {"min_kept": 0}})(scores, target), expect)


def test_weighted_sum_and_every_loss_ignores_255():
    scores, target = case("multiclass", 8)
    combo = build_loss({"ce": 1.0, "dice": 0.5})(scores, target)
    assert close(combo, build_loss("ce")(scores, target) + 0.5 * build_loss("dice")(scores, target))
    for task, names in (("multiclass", ["ce", "ohem", "dice", "tversky", "focal", "lovasz"]),
                        ("binary", ["bce", "dice", "tversky", "focal", "lovasz"]),
                        ("multilabel", ["bce", "dice", "tversky", "focal", "lovasz"])):
        scores, target = case(task, 9)
        for name in names:
            loss = build_loss(name, task)
            changed = scores.clone()
            changed[(target == 255) if task == "multilabel" else (target == 255)[:, None].expand_as(scores)] = 50.0
            assert close(loss(scores, target), loss(changed, target)), (task, name)
            s = scores.clone().requires_grad_()
            out = loss(s, torch.full_like(target, 255))
            out.backward()
            assert out.item() == 0.0 and s.grad.abs().sum() == 0, (task, name)


def test_default_cross_entropy_with_sampling_is_unchanged():
    """The training loss with the default spec is bit-identical to fcnseg's original one."""
    def original(scores, target, weight=None, reduction="mean", sample=1.0, stride=32):
        if sample < 1.0:
            n, h, w = target.shape
            keep = torch.rand(n, 1, -(-h // stride), -(-w // stride), device=target.device) < sample
            keep = keep.repeat_interleave(stride, 2).repeat_interleave(stride, 3)[:, 0, :h, :w]
            target = target.masked_fill(~keep, 255)
        if not (target != 255).any():
            return scores.sum() * 0.0
        return F.cross_entropy(scores.float(), target, weight=weight, ignore_index=255, reduction=reduction)

    scores, target = case("multiclass", 10, shape=(2, 70, 50))
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    for kw in (dict(), dict(weight=w), dict(reduction="sum", sample=0.5, stride=16), dict(weight=w, sample=0.3)):
        torch.manual_seed(3)
        a = original(scores, target, **kw)
        torch.manual_seed(3)
        loss = build_loss(None, weight=kw.get("weight"), reduction=kw.get("reduction", "mean"))
        b = segmentation_loss(scores, target, loss=loss, **kw)
        torch.manual_seed(3)
        c = segmentation_loss(scores, target, **kw)
        assert torch.equal(a, b) and torch.equal(a, c), kw


def test_sampling_multilabel_masks_whole_cells_in_every_channel():
    from fcnseg.losses import sample_cells

    target = torch.zeros(1, 3, 64, 64, dtype=torch.int64)
    torch.manual_seed(0)
    out = sample_cells(target, 0.5, 32)
    cells = (out == 255).view(3, 2, 32, 2, 32).permute(0, 1, 3, 2, 4).reshape(3, 4, -1)
    assert (cells.all(-1) | ~cells.any(-1)).all()
    assert (cells[0] == cells[1]).all() and (cells[0] == cells[2]).all()


@pytest.mark.parametrize("spec, task, message", [
    ("dcie", "multiclass", "unknown loss 'dcie'; did you mean 'dice'?"),
    ({"ce": 1.0, "lovaz": 1.0}, "multiclass", "did you mean 'lovasz'?"),
    ("bce", "multiclass", "loss 'bce' is for binary/multilabel tasks, not multiclass (use 'ce')"),
    ("ce", "binary", "not binary (use 'bce')"),
    ({"dice": {"smoth": 1}}, "multiclass", "loss 'dice' has no option 'smoth'"),
    ({"dice": -1}, "multiclass", "weight must be a number >= 0"),
    ({}, "multiclass", "loss must be a name or a mapping"),
    ("ce", "multi", "unknown task 'multi'"),
])
def test_bad_specs_name_the_problem(spec, task, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("?", r"\?")):
        parse_loss(spec, task)


def test_shape_mismatch_is_refused():
    with pytest.raises(ValueError, match="target shape"):
        build_loss("bce", "multilabel")(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64))
    with pytest.raises(ValueError, match="1 channel"):
        build_loss("bce", "binary")(torch.zeros(1, 2, 4, 4), torch.zeros(1, 4, 4, dtype=torch.int64))
