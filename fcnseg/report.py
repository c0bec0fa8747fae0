"""``fcnseg evaluate --report``: one self-contained HTML page of an evaluation.

The page holds the four metrics, a table of per-class IU and accuracy with bars, the confusion matrix (the PNG that
``write_report`` writes, embedded as base64) and a gallery of the images with the lowest per-image mean IU, each as
image, ground truth and prediction thumbnails side by side. Everything is inside the one file (no scripts, no
external files), so it can be mailed or archived as is. The thumbnails come from the user's own dataset.
"""

from __future__ import annotations

import base64
import html
import io
import math
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .data.palettes import colorize, default_palette
from .io.atomic import atomic_write
from .models.inference import forward

THUMB = 320  # longer side of gallery thumbnails, in pixels
SHOWN = 200  # smaller thumbnails are shown enlarged to this longer side (pixelated), so tiny images stay visible
IGNORED = (255, 255, 255)  # ignored pixels (255) in the label thumbnails: white, since class 0 is often black


def _data_url(im: Image.Image, fmt: str) -> str:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **({"quality": 85} if fmt == "JPEG" else {"optimize": True}))
    mime = "image/jpeg" if fmt == "JPEG" else "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def thumbnails(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, palette, size: int = THUMB) -> dict:
    """Data URLs of the image (JPEG) and of the coloured truth and prediction (PNG), longer side ``size``.

    Args:
        image: ``HxWx3`` uint8 RGB.
        truth, pred: ``HxW`` labels (255: ignored, drawn in ``IGNORED``'s colour).
        palette: a colour per class.
        size: longer side of the thumbnails (images are never enlarged).
    """
    h, w = truth.shape
    s = min(1.0, size / max(h, w))
    tw, th = max(1, round(w * s)), max(1, round(h * s))
    photo = Image.fromarray(image).resize((tw, th), Image.LANCZOS)
    # Label maps are shrunk with NEAREST, so no blended colour that belongs to no class appears.
    lab = [Image.fromarray(colorize(a, palette, IGNORED)).resize((tw, th), Image.NEAREST) for a in (truth, pred)]
    return {"image": _data_url(photo, "JPEG"), "truth": _data_url(lab[0], "PNG"), "pred": _data_url(lab[1], "PNG"),
            "width": tw, "height": th}


@torch.inference_mode()
def worst_images(model, dataset, per_image: list[dict], n: int = 8, device: str | torch.device = "cpu") -> list[dict]:
    """The ``n`` images of ``dataset`` with the lowest per-image mean IU, segmented again for their thumbnails.

    Args:
        model: the evaluated FCN.
        dataset: the evaluated dataset (its ``tensors(i)`` gives the untransformed image and labels).
        per_image: ``evaluate(..., per_image=True)["per_image"]``: ``index``, ``name``, ``mean_iu``, ``pixel_acc``.
        n: how many.
        device: where the model is.

    Returns:
        One dict per image, worst first: ``name``, ``mean_iu``, ``pixel_acc`` and the ``thumbnails`` data URLs.
    """
    net = getattr(model, "module", model)
    scored = [r for r in per_image if not math.isnan(r["mean_iu"])]
    worst = sorted(scored, key=lambda r: (r["mean_iu"], r["name"]))[:max(0, n)]
    was_training = net.training
    net.eval()
    out = []
    for r in worst:
        image, labels = dataset[r["index"]]
        scores = forward(net, image.unsqueeze(0).to(device))
        pred = (net.labels(scores) if hasattr(net, "labels") else scores.argmax(1))[0].cpu().numpy()
        raw, _ = dataset.tensors(r["index"])
        shown = raw.permute(1, 2, 0).numpy()
        if shown.shape[:2] != pred.shape:  # a dataset whose eval transform resizes: show the network's input
            shown = (image.permute(1, 2, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)
        truth = labels.numpy().astype(np.int64)
        out.append({**r, **thumbnails(shown, truth, pred, net.palette)})
    net.train(was_training)
    return out


CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:#1d2330;background:#f5f6f8;
margin:0;padding:1.5rem 2rem}
h1{font-size:1.4rem;margin:0 0 .2rem}h2{font-size:1.1rem;margin:2rem 0 .6rem}.muted{color:#6a7282;font-size:.85rem}
.tiles{display:flex;flex-wrap:wrap;gap:.8rem;margin:1rem 0}.tile{background:#fff;border:1px solid #dde1e8;
border-radius:8px;padding:.6rem 1rem;min-width:8rem}.tile b{display:block;font-size:1.5rem}
table{border-collapse:collapse;background:#fff;border:1px solid #dde1e8}th,td{padding:.3rem .7rem;text-align:left;
border-bottom:1px solid #eef0f4;font-size:.9rem}td.num{text-align:right;font-variant-numeric:tabular-nums}
.sw{display:inline-block;width:.9rem;height:.9rem;border-radius:3px;border:1px solid rgba(0,0,0,.25);
vertical-align:-2px;margin-right:.4rem}.bar{width:16rem;background:#eceff3;border-radius:3px;height:.8rem;
position:relative}.bar span{display:block;height:100%;border-radius:3px;background:#2f6fde}
.bar i{position:absolute;top:-3px;bottom:-3px;border-left:2px solid #d1242f}
.cm{background:#fff;border:1px solid #dde1e8;border-radius:8px;padding:.5rem;max-width:100%}
.gallery{display:flex;flex-direction:column;gap:1rem}.item{background:#fff;border:1px solid #dde1e8;border-radius:8px;
padding:.6rem .8rem}.item .row{display:flex;flex-wrap:wrap;gap:.6rem}.item figure{margin:0}
.item figcaption{font-size:.8rem;color:#6a7282}.item img{display:block;border-radius:4px;max-width:100%;
height:auto;image-rendering:pixelated}
"""


def _pct(v) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def html_report(result: dict, palette, confusion_png: bytes | None = None, gallery: list[dict] | None = None,
                title: str | None = None) -> str:
    """The report page as a string.

    Args:
        result: ``evaluate``'s result (``model``, ``dataset``, ``split`` are shown when present).
        palette: a colour per class (for the swatches).
        confusion_png: the confusion-matrix plot to embed, or None.
        gallery: ``worst_images``' list, or None for no gallery.
        title: the page title (default: model on dataset).
    """
    esc = html.escape
    names = result["class_names"]
    # A model file is named by its file name: the folder it sits in says nothing about it.
    model = Path(str(result.get("model", "model"))).name
    data = f"{result.get('dataset', 'dataset')}:{result.get('split', '')}"
    title = title or f"fcnseg evaluation: {model} on {data.rstrip(':')}"
    conf = np.asarray(result.get("confusion", []), dtype=np.float64)
    gt_pixels = conf.sum(1) if conf.size else np.zeros(len(names))
    total = max(gt_pixels.sum(), 1)
    mean_iu = result["mean_iu"]
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><style>{CSS}</style></head><body>",
             f"<h1>{esc(title)}</h1><p class='muted'>{result.get('num_images', 0)} images · "
             f"{result.get('images_per_s', float('nan')):.2f} images/s · written {time.strftime('%Y-%m-%d %H:%M')}"
             "</p><div class='tiles'>"]
    for key, label in (("pixel_acc", "pixel acc"), ("mean_acc", "mean acc"), ("mean_iu", "mean IU"),
                       ("fw_iu", "f.w. IU")):
        parts.append(f"<div class='tile' id='{key}'><b>{_pct(result[key])}</b><span class='muted'>{label} (%)</span>"
                     "</div>")
    parts.append("</div><h2>Per-class IU</h2><table id='classes'><tr><th>class</th><th>IU %</th>"
                 "<th>IU (red line: mean IU)</th><th>acc %</th><th>pixels %</th></tr>")
    for k, name in enumerate(names):
        iu, acc = result["per_class_iu"][k], result["per_class_acc"][k]
        width = 0.0 if iu is None or math.isnan(iu) else 100 * iu
        colour = "#{:02x}{:02x}{:02x}".format(*(int(v) for v in palette[k][:3])) if k < len(palette) else "#000"
        parts.append(f"<tr><td><span class='sw' style='background:{colour}'></span>{esc(str(name))}</td>"
                     f"<td class='num'>{_pct(iu)}</td><td><div class='bar'><span style='width:{width:.1f}%'></span>"
                     f"<i style='left:{100 * (mean_iu or 0):.1f}%'></i></div></td><td class='num'>{_pct(acc)}</td>"
                     f"<td class='num'>{100 * gt_pixels[k] / total:.1f}</td></tr>")
    parts.append("</table>")
    if confusion_png:
        parts.append("<h2>Confusion matrix</h2><p class='muted'>Rows: true class; columns: predicted; each row sums to "
                     f"100%.</p><img class='cm' id='confusion' alt='confusion matrix' src='data:image/png;base64,"
                     f"{base64.b64encode(confusion_png).decode('ascii')}'>")
    if gallery is not None:
        parts.append(f"<h2>The {len(gallery)} worst images</h2><p class='muted'>Lowest per-image mean IU first; "
                     "image, ground truth (white: ignored) and prediction.</p><div class='gallery' id='gallery'>")
        for g in gallery:
            parts.append(f"<div class='item'><b>{esc(str(g['name']))}</b> <span class='muted'>mean IU "
                         f"{_pct(g['mean_iu'])} · pixel acc {_pct(g['pixel_acc'])}</span><div class='row'>")
            zoom = max(1.0, SHOWN / max(g["width"], g["height"]))
            w, h = round(g["width"] * zoom), round(g["height"] * zoom)
            for key, label in (("image", "image"), ("truth", "ground truth"), ("pred", "prediction")):
                parts.append(f"<figure><img src='{g[key]}' width='{w}' height='{h}' "
                             f"alt='{label}'><figcaption>{label}</figcaption></figure>")
            parts.append("</div></div>")
        parts.append("</div>")
    parts.append("</body></html>\n")
    return "".join(parts)


def write_html(result: dict, out: str | Path, palette=None, gallery: list[dict] | None = None) -> Path:
    """Writes ``out/report.html`` (atomically) from ``evaluate``'s result and the ``confusion_matrix.png`` that
    ``fcnseg.evaluate.write_report`` wrote to ``out`` before; returns the page's path.

    Args:
        result: ``evaluate``'s result (with ``model``, ``dataset``, ``split`` added by the caller, if known).
        out: the folder ``write_report`` wrote.
        palette: a colour per class for the page (default: fcnseg's default palette).
        gallery: ``worst_images``' list for the page's gallery, or None for none.

    Raises:
        FileNotFoundError: no ``confusion_matrix.png`` in ``out`` (a multilabel result has none).
        fcnseg.io.atomic.WriteError: the page could not be written.
    """
    out = Path(out)
    page = html_report(result, palette or default_palette(len(result["class_names"])),
                       (out / "confusion_matrix.png").read_bytes(), gallery)
    atomic_write(out / "report.html", lambda tmp: Path(tmp).write_text(page, encoding="utf-8"))
    return out / "report.html"
