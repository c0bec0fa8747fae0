"""What a checked dataset holds, in words: sizes, mask values, the label mapping, class shares, warnings.

``summary(ds)`` is what ``fcnseg data check`` prints; ``summary(ds, brief=True)`` the few lines printed before
every ``train`` and ``evaluate``. ``problems(ds)`` are the warnings (training may be wrong, with the
``dataset.yaml`` lines that fix it) and ``training_errors(ds)`` what makes training certainly wrong. All read
``ds.stats``, which ``SegmentationDataset.check`` fills.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from .datasets import IGNORE, SegmentationDataset
from .masks import levels_of, looks_lossy


def _stats(ds: SegmentationDataset):
    if ds.stats is None:
        raise ValueError(f"{ds.name}: check() the dataset before summarising it")
    return ds.stats


def _pct(part: float, total: float) -> str:
    return f"{100 * part / total:.1f}%" if total else "-"


def _sizes(sizes: list[tuple[int, int]]) -> str:
    counts = Counter(sizes)
    if len(counts) == 1:
        w, h = sizes[0]
        return f"{w}x{h}"
    (w, h), n = counts.most_common(1)[0]
    small, large = min(sizes, key=lambda s: s[0] * s[1]), max(sizes, key=lambda s: s[0] * s[1])
    return (f"{len(counts)} sizes, {small[0]}x{small[1]} to {large[0]}x{large[1]} (most common {w}x{h}: "
            f"{n} images)")


def _raw_values(raw: np.ndarray | None) -> str:
    if raw is None:
        return "(colour or MAT masks)"
    values = np.flatnonzero(raw)
    total = raw.sum()
    if len(values) <= 16:
        return ", ".join(f"{v} ({_pct(raw[v], total)})" for v in values)
    top = sorted(values, key=lambda v: -raw[v])[:8]
    return (f"{len(values)} values in {values.min()}..{values.max()}; most pixels: "
            + ", ".join(f"{v} ({_pct(raw[v], total)})" for v in sorted(top)))


def class_shares(ds: SegmentationDataset) -> str:
    """Each class's share of the pixels and the ignored share, e.g. "background 22.0%, object 78.0%, ignored 0.0%"."""
    counts = _stats(ds).label_pixels
    total = counts.sum()
    parts = [f"{name} {_pct(counts[c], total)}" for c, name in enumerate(ds.class_names)]
    return ", ".join(parts + [f"ignored {_pct(counts[-1], total)}"])


def _ignore_hint(ds: SegmentationDataset) -> str:
    """The remap line that makes raw 255 a class, where 255 is ignored by a description that may not mean it."""
    raw = _stats(ds).raw_values
    if ds.mapping_kind != "described" or raw is None or raw[IGNORE] == 0 or ds._lut[IGNORE] != IGNORE:
        return ""
    absent = [c for c in range(ds.num_classes) if ds.stats.label_pixels[c] == 0]
    k = absent[0] if absent else ds.num_classes - 1
    return f"; if 255 marks class {ds.class_names[k]!r} rather than 'ignore', add 'remap: {{255: {k}}}' to dataset.yaml"


def problems(ds: SegmentationDataset) -> list[str]:
    """Warnings about ``ds``: training on it may be wrong. Each is one line, with the fix where one is known."""
    st = _stats(ds)
    counts, total = st.label_pixels, st.label_pixels.sum()
    out = list(ds.notes)
    present = [c for c in range(ds.num_classes) if counts[c] > 0]
    inferred = ds.mapping_kind in ("labels", "levels", "binary", "snapped")
    if inferred and ds.num_classes >= 8 and len(present) <= ds.num_classes // 2:
        out.append(f"{ds.num_classes} classes inferred from the mask values but only {len(present)} occur: if the "
                   "values are not labels 0..N-1, give 'classes' and 'remap' in dataset.yaml")
    elif len(present) < ds.num_classes:
        absent = [f"{ds.class_names[c]!r} ({c})" for c in range(ds.num_classes) if counts[c] == 0]
        out.append(f"{'class' if len(absent) == 1 else f'{len(absent)} classes'} never occur"
                   f"{'s' if len(absent) == 1 else ''} in {ds.name}: {', '.join(absent)}" + _ignore_hint(ds))
    if total and counts[-1] > total / 2:
        out.append(f"{_pct(counts[-1], total)} of the pixels are ignored (label 255)" + _ignore_hint(ds))
    if st.raw_values is not None and ds.mapping_kind != "snapped" and looks_lossy(st.raw_values):
        levels = "/".join(map(str, levels_of(st.raw_values)))
        out.append(f"the mask values look like lossy-compression noise around {levels}: add 'snap: true' or "
                   "'mask_threshold: ...' to dataset.yaml, or save the masks as PNG")
    if ds.mapping_kind == "snapped":
        levels = "/".join(map(str, ds.options.get("levels", [])))
        out.append(f"mask values snapped to the nearest of the levels {levels} (lossy masks)")
    if ds.mapping_kind == "levels":
        out.append(f"evenly spaced grey levels read as classes in order ({ds.mapping_note}); if they mean "
                   "other classes, give 'classes' and 'remap' in dataset.yaml")
    return out


def training_errors(ds: SegmentationDataset) -> list[str]:
    """What makes training on ``ds`` certainly wrong: no labelled pixel, or fewer than two classes present."""
    counts = _stats(ds).label_pixels
    present = [ds.class_names[c] for c in range(ds.num_classes) if counts[c] > 0]
    if not present:
        return [f"{ds.name}: every mask pixel is ignored (label 255): nothing to learn" + _ignore_hint(ds)]
    if len(present) < 2 and ds.num_classes >= 2:
        return [f"{ds.name}: only class {present[0]!r} occurs in the masks: nothing to tell apart" + _ignore_hint(ds)]
    return []


def summary(ds: SegmentationDataset, brief: bool = False) -> str:
    """The dataset in words (``ds`` checked). ``brief``: three lines plus one per warning."""
    st = _stats(ds)
    warn = problems(ds)
    if brief:
        lines = [f"{ds.name}: {len(ds)} images ({_sizes(st.sizes)}), {ds.num_classes} classes: {class_shares(ds)}",
                 f"  labels: {ds.mapping_note or 'as the dataset defines them'}"]
        if st.rotated:
            lines.append(f"  {len(st.rotated)} images turned upright per EXIF (e.g. {st.rotated[0][0]})")
        return "\n".join(lines + [f"  warning: {w}" for w in warn])
    kinds = ", ".join(f"{k} ({n})" for k, n in sorted(st.mask_kinds.items()))
    rows = [("dataset", ds.name), ("images", str(len(ds))), ("sizes", _sizes(st.sizes)),
            ("mask format", f"{ds.mask_format}; files: {kinds}"), ("raw values", _raw_values(st.raw_values)),
            ("labels", ds.mapping_note or "as the dataset defines them"), ("classes", class_shares(ds)),
            ("EXIF rotated", ", ".join(f"{n} (orientation {o})" for n, o in st.rotated) or "none")]
    lines = [f"{k:13s} {v}" for k, v in rows]
    lines += [f"{'warning':13s} {w}" for w in warn] or [f"{'warnings':13s} none"]
    return "\n".join(lines)
