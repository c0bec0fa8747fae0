"""Property tests (hypothesis) for the joint transforms: whatever the sizes and the random scale, crop and flip,
the labels stay on the pixels they belong to."""

import numpy as np
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fcnseg.data import IGNORE, train_transforms
from fcnseg.data.transforms import seeded

# Block colours of the three labels: far apart, so a pixel mixed from two blocks matches none of them.
COLOURS = np.array([[30, 200, 40], [220, 60, 90], [90, 110, 250]], np.uint8)


def _labels(h: int, w: int, bh: int, bw: int, shift: int) -> np.ndarray:
    """Blocks of labels 0..2 that no flip or translation maps onto themselves (for most parameters)."""
    yy, xx = np.mgrid[:h, :w]
    return ((yy // bh) * 2 + (xx // bw) + shift + (xx > w // 3)) % 3


@settings(max_examples=30, deadline=None)
@given(h=st.integers(4, 40), w=st.integers(4, 40), ch=st.integers(4, 48), cw=st.integers(4, 48),
       flip=st.booleans(), seed=st.integers(0, 2**31 - 1), shift=st.integers(0, 2),
       rare=st.sampled_from([0.0, 0.5, 1.0]))
def test_crop_and_flip_move_each_label_with_its_pixel(h, w, ch, cw, flip, seed, shift, rare):
    """The image encodes each pixel's source (row, column): every output pixel's label is its source's label,
    padding is image 0 with label 255, and the sources form one translated (or mirrored) window; uniform
    and class-placed (``rare_class_crops``) crops alike."""
    lab = _labels(h, w, 3, 4, shift)
    yy, xx = np.mgrid[:h, :w]
    img = np.stack([yy + 1, xx + 1, lab + 1], 0).astype(np.uint8)  # +1: 0 is the crop's padding
    t = train_transforms(scale=None, crop=(ch, cw), flip=flip, rare_class_crops=rare,
                         class_weights=[1.0, 2.0, 5.0] if rare else None)
    x, y = seeded(lambda: t(torch.from_numpy(img), torch.from_numpy(lab)), seed)
    assert x.shape == (3, ch, cw) and y.shape == (ch, cw)
    src = (x * 255).round().long().numpy()
    pad = src[0] == 0
    assert (y.numpy()[pad] == IGNORE).all() and (src[:, pad] == 0).all()
    assert int((~pad).sum()) == min(h, ch) * min(w, cw)  # the kept window
    r, c = src[0][~pad] - 1, src[1][~pad] - 1
    np.testing.assert_array_equal(y.numpy()[~pad], lab[r, c])
    rows, cols = src[0] - 1, src[1] - 1
    # Within the window, a step right is a step of +1 (or -1 if mirrored) in the source column.
    inside = ~pad[:, :-1] & ~pad[:, 1:]
    if inside.any():
        steps = np.unique((cols[:, 1:] - cols[:, :-1])[inside])
        assert len(steps) == 1 and abs(int(steps[0])) == 1
        assert np.unique((rows[:, 1:] - rows[:, :-1])[inside]).tolist() == [0]


@settings(max_examples=30, deadline=None)
@given(h=st.integers(12, 48), w=st.integers(12, 48), lo=st.floats(0.3, 1.0), span=st.floats(0.0, 1.5),
       crop=st.one_of(st.none(), st.tuples(st.integers(8, 40), st.integers(8, 40))), flip=st.booleans(),
       seed=st.integers(0, 2**31 - 1), shift=st.integers(0, 2))
def test_scale_crop_flip_keep_labels_under_their_colours(h, w, lo, span, crop, flip, seed, shift):
    """Image (bilinear, antialiased) and labels (nearest) rescaled by one random factor, cropped and flipped: a
    pixel whose colour is exactly a block's colour (not mixed across a block edge) carries that block's label."""
    lab = _labels(h, w, 9, 11, shift)
    img = COLOURS[lab].transpose(2, 0, 1).copy()
    t = train_transforms(scale=(lo, lo + span), crop=crop, flip=flip)
    x, y = seeded(lambda: t(torch.from_numpy(img), torch.from_numpy(lab)), seed)
    assert x.shape[-2:] == y.shape and (crop is None or tuple(y.shape) == crop)
    got = (x * 255).round().long().permute(1, 2, 0).numpy()
    y = y.numpy()
    assert set(np.unique(y).tolist()) <= {0, 1, 2, IGNORE}  # nearest: no new label values
    assert (got[y == IGNORE] == 0).all()
    pure = np.zeros(y.shape, bool)
    for k, colour in enumerate(COLOURS):
        here = (got == colour).all(-1)
        np.testing.assert_array_equal(y[here], k)  # a block's colour always carries the block's label
        pure |= here
    labelled = y != IGNORE
    if labelled.sum() >= 64:
        assert pure[labelled].mean() > 0.15  # the property was checked on a fair share of the pixels
