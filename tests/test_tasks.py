"""Binary and multilabel tasks: datasets, training, model files, evaluation, prediction and ONNX export,
each checked against a computation written here from the definitions."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from fcnseg.data import DatasetError, build_dataset, eval_transforms, pad_collate
from fcnseg.evaluate import evaluate, write_report
from fcnseg.io.modelfile import load_model
from fcnseg.metrics import MultilabelConfusion
from fcnseg.tasks import decide, labels_from_scores, probabilities
from fcnseg.train import load_config, train


def scene(rng, h=48, w=64):
    """Noise with a red square (left half) and a blue disc (right half) that may reach into the square."""
    img = rng.integers(90, 140, (h, w, 3)).astype(np.uint8)
    square = np.zeros((h, w), bool)
    s = int(rng.integers(h // 4, h // 2))
    y0, x0 = int(rng.integers(0, h - s)), int(rng.integers(0, w // 2 - s // 2))
    square[y0:y0 + s, x0:x0 + s] = True
    yy, xx = np.mgrid[:h, :w]
    cy, cx, r = int(rng.integers(h // 4, 3 * h // 4)), int(rng.integers(w // 2 + 4, w - 6)), h // 6
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    img[square] = [215, 40, 40]
    img[disc] = [40, 60, 215]
    return img, square, disc


def make_binary(root: Path, n: int = 8) -> Path:
    """Masks as they often come: {0, 255} grey PNGs; dataset.yaml maps 255 to the foreground class 1."""
    rng = np.random.default_rng(0)
    (root).mkdir(parents=True)
    (root / "dataset.yaml").write_text(yaml.safe_dump({"classes": ["background", "square"], "remap": {255: 1}}))
    for i in range(n):
        split = "train" if i < n * 3 // 4 else "val"
        img, square, _ = scene(rng)
        for d in ("images", "masks"):
            (root / d / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / split / f"img{i:03d}.png")
        Image.fromarray(square.astype(np.uint8) * 255, mode="L").save(root / "masks" / split / f"img{i:03d}.png")
    return root


def make_multilabel(root: Path, n: int = 8) -> Path:
    """Classes square, disc and 'left' (the left half of every image, overlapping the square)."""
    rng = np.random.default_rng(1)
    for i in range(n):
        split = "train" if i < n * 3 // 4 else "val"
        img, square, disc = scene(rng)
        left = np.zeros_like(square)
        left[:, : square.shape[1] // 2] = True
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(root / "images" / split / f"img{i:03d}.png")
        for name, m in (("square", square), ("disc", disc), ("left", left)):
            (root / "masks" / split / name).mkdir(parents=True, exist_ok=True)
            if name == "disc" and i == 1:
                continue  # a missing class mask: the class is absent from that image
            Image.fromarray(m.astype(np.uint8) * 7, mode="L").save(root / "masks" / split / name / f"img{i:03d}.png")
    (root / "dataset.yaml").write_text(yaml.safe_dump({"classes": ["square", "disc", "left"]}))
    return root


def tiny(root: Path, out: Path, **kw) -> dict:
    base = dict(dataset="folder", root=str(root), train_split="train", val_split="val", arch="fcn8s",
                backbone="efficientnet_lite0", pretrained_backbone="imagenet", crop=[48, 64], scale=None,
                batch_size=2, epochs=4, lr=3e-3, workers=0, threads=2, tensorboard=False, out=str(out),
                warmup_steps=2)
    base.update(kw)
    return base


def test_decisions_by_hand():
    z = torch.tensor([-2.0, 0.0, 0.5, 3.0]).view(1, 1, 1, 4)  # sigmoid: 0.12, 0.5, 0.62, 0.95
    p = probabilities(z, "binary")
    assert p.shape == (1, 2, 1, 4) and torch.allclose(p.sum(1), torch.ones(1, 1, 4))
    assert decide(p, "binary", 0.5).tolist() == [[[0, 1, 1, 1]]]
    assert decide(p, "binary", 0.7).tolist() == [[[0, 0, 0, 1]]]
    assert decide(3.5 * p, "binary", 0.7).tolist() == [[[0, 0, 0, 1]]]  # a weighted sum of windows decides alike
    assert labels_from_scores(z.repeat(1, 2, 1, 1), "multilabel", 0.6).shape == (1, 2, 1, 4)
    multi = torch.tensor([[1.0, 0.0], [0.0, 2.0]]).view(1, 2, 1, 2)
    assert labels_from_scores(multi).tolist() == [[[0, 1]]]


def test_multilabel_confusion_matches_per_class_sets():
    rng = np.random.default_rng(0)
    t = rng.integers(0, 2, (2, 3, 20, 30))
    p = np.where(rng.random(t.shape) < 0.7, t, 1 - t)
    t[rng.random(t.shape) < 0.1] = 255
    t[:, 2] = np.where(t[:, 2] == 255, 255, 0)  # class 2 never present in the truth
    p[:, 2] = 0  # nor predicted: its IU is undefined
    cm = MultilabelConfusion(3)
    cm.update(torch.from_numpy(t), torch.from_numpy(p))
    got = cm.compute()
    for k in range(2):
        valid = t[:, k] != 255
        a, b = t[:, k][valid] == 1, p[:, k][valid] == 1
        assert got["per_class_iu"][k] == pytest.approx((a & b).sum() / (a | b).sum())
        assert got["per_class_dice"][k] == pytest.approx(2 * (a & b).sum() / (a.sum() + b.sum()))
        assert got["per_class_precision"][k] == pytest.approx((a & b).sum() / b.sum())
        assert got["per_class_recall"][k] == pytest.approx((a & b).sum() / a.sum())
    assert got["per_class_iu"][2] is None and got["mean_iu"] == pytest.approx(np.mean(got["per_class_iu"][:2]))
    valid = t != 255
    assert got["pixel_acc"] == pytest.approx((t[valid] == p[valid]).mean())


def test_binary_task_trains_evaluates_predicts_and_exports(tmp_path):
    from fcnseg.export import OnnxModel, export_onnx
    from fcnseg.predict import predict_files

    root = make_binary(tmp_path / "bin")
    cfg = load_config(None, tiny(root, tmp_path / "run", task="binary", threshold=0.4,
                                 loss={"bce": 1.0, "dice": 1.0}))
    result = train(cfg)
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert (model.task, model.threshold, model.score_fr.out_channels) == ("binary", 0.4, 1)
    assert list(result)[:4] == ["foreground_iu", "foreground_dice", "foreground_precision", "foreground_recall"]
    val = build_dataset("folder", root, "val", transforms=eval_transforms())
    again = evaluate(model, val)
    # The reference: sigmoid >= 0.4 on the model's logit, foreground IU from the pixel sets.
    inter = union = 0
    for i in range(len(val)):
        image, labels = val[i]
        with torch.no_grad():
            fg = torch.sigmoid(model(image[None]))[0, 0] >= 0.4
        truth = labels == 1
        inter, union = inter + (fg & truth).sum().item(), union + (fg | truth).sum().item()
    assert again["foreground_iu"] == pytest.approx(inter / union)
    # It learned the square: at the start (zero score layers, every probability 0.5 >= 0.4) all is foreground,
    # a foreground IU of the square's share of the image, 5-19%.
    assert again["foreground_iu"] > 0.3, again["foreground_iu"]
    write_report(again, tmp_path / "eval")
    assert next(iter(json.loads((tmp_path / "eval" / "metrics.json").read_text()))) == "foreground_iu"
    results, errors = predict_files(model, [root / "images" / "val"], tmp_path / "pred", verbose=False)
    assert not errors and len(results) == 2
    labels = np.array(Image.open(tmp_path / "pred" / "img006.png"))
    assert set(np.unique(labels)) <= {0, 1} and (labels == 1).any()
    onnx = OnnxModel(export_onnx(model, tmp_path / "m.onnx"))
    assert (onnx.task, onnx.threshold) == ("binary", 0.4)
    image = root / "images" / "val" / "img006.png"
    assert (onnx.predict(image) == model.predict(image)).float().mean() > 0.999


def test_binary_task_refuses_a_dataset_of_three_classes_and_class_weights(tmp_path, shapes):
    with pytest.raises(ValueError, match="task binary needs 2 classes .* it has 3"):
        train(load_config(None, tiny(shapes, tmp_path / "a", task="binary", max_steps=1)))
    root = make_binary(tmp_path / "bin")
    with pytest.raises(ValueError, match="class weights do not apply to a binary task"):
        train(load_config(None, tiny(root, tmp_path / "b", task="binary", max_steps=1, class_weights=[1.0, 2.0])))


def test_multilabel_dataset_reads_one_folder_per_class(tmp_path):
    root = make_multilabel(tmp_path / "ml")
    ds = build_dataset("multilabel", root, "train")
    assert ds.class_names == ["square", "disc", "left"] and len(ds) == 6
    image, labels = ds[1]
    assert labels.shape == (3, 48, 64) and labels.dtype == torch.int64
    assert set(labels.unique().tolist()) <= {0, 1} and labels[1].sum() == 0  # disc mask missing: absent
    assert labels[2, :, :32].all() and not labels[2, :, 32:].any()
    assert (labels[0] & labels[2]).any()  # square and left overlap: several classes per pixel
    images, batch = pad_collate([(image, labels), (image[:, :40], labels[:, :40])])
    assert batch.shape == (2, 3, 48, 64) and (batch[1, :, 40:] == 255).all()
    for f in (root / "masks" / "train").glob("*/img000.png"):
        f.unlink()
    with pytest.raises(DatasetError, match="img000.png: no mask in any class folder"):
        ds.read_mask(0)
    with pytest.raises(ValueError, match="multilabel training reads one mask folder per class"):
        train(load_config(None, tiny(root, tmp_path / "r", task="multilabel", max_steps=1)))


def test_multilabel_task_trains_evaluates_and_writes_class_masks(tmp_path):
    from fcnseg.predict import predict_files

    root = make_multilabel(tmp_path / "ml")
    cfg = load_config(None, tiny(root, tmp_path / "run", dataset="multilabel", task="multilabel",
                                 loss={"bce": 1.0, "dice": 0.5}))
    train(cfg)
    model = load_model(tmp_path / "run" / "model.safetensors")
    assert model.task == "multilabel" and model.score_fr.out_channels == 3
    val = build_dataset("multilabel", root, "val", transforms=eval_transforms())
    result = evaluate(model, val)
    inter, union = np.zeros(3), np.zeros(3)
    for i in range(len(val)):
        image, labels = val[i]
        with torch.no_grad():
            pred = torch.sigmoid(model(image[None]))[0] >= 0.5
        truth = labels == 1
        inter += (pred & truth).flatten(1).sum(1).numpy()
        union += (pred | truth).flatten(1).sum(1).numpy()
    assert result["per_class_iu"] == pytest.approx((inter / union).tolist())
    assert result["per_class_iu"][2] > 0.5, result  # 'left' is easy
    results, errors = predict_files(model, [root / "images" / "val"], tmp_path / "pred", verbose=False)
    assert not errors
    for name in ("square", "disc", "left"):
        mask = np.array(Image.open(tmp_path / "pred" / "masks" / name / "img006.png"))
        assert mask.shape == (48, 64) and set(np.unique(mask)) <= {0, 255}
    image, _ = val[0]
    with torch.no_grad():
        expect = (torch.sigmoid(model(image[None]))[0, 2] >= 0.5).numpy()
    got = np.array(Image.open(tmp_path / "pred" / "masks" / "left" / f"{val.samples[0].name}.png")) == 255
    assert (got == expect).mean() > 0.999


def test_serve_answers_binary_models_and_refuses_multilabel_ones(tmp_path):
    import io

    import fcnseg
    from fcnseg.io.modelfile import save_model
    from fcnseg.serve import load_models, segment

    torch.manual_seed(0)
    binary = fcnseg.build_model("fcn8s", "mobilenet_v3_large", 2, task="binary").eval()
    for conv in binary.score_layers():
        torch.nn.init.normal_(conv.weight, std=0.5)
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3)).astype(np.uint8)
    with torch.no_grad():
        prob = torch.sigmoid(binary(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255))[0, 0]
    binary.threshold = float(prob.median())  # stored with the model; about half the pixels are foreground
    save_model(binary, tmp_path / "bin.safetensors")
    model = load_models([str(tmp_path / "bin.safetensors")], device="cpu")["bin"]
    assert model.threshold == binary.threshold
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    out = segment(model, buf.getvalue(), "x.png", 10**8, False, None)
    labels = np.array(Image.open(io.BytesIO(out["png"])))
    expect = (prob >= binary.threshold).numpy()
    assert 0.3 < expect.mean() < 0.7 and len(out["shares"]) == 2
    assert (labels == expect).mean() > 0.999
    save_model(fcnseg.build_model("fcn32s", "mobilenet_v3_large", 3, task="multilabel"), tmp_path / "ml.safetensors")
    with pytest.raises(ValueError, match="ml.safetensors: a multilabel model"):
        load_models([str(tmp_path / "ml.safetensors")], device="cpu")


def test_report_gallery_draws_a_binary_models_thresholded_labels(tmp_path, monkeypatch):
    import fcnseg
    from fcnseg import report

    root = make_binary(tmp_path / "bin", n=4)
    val = build_dataset("folder", root, "val", transforms=eval_transforms())
    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", "mobilenet_v3_large", 2, task="binary").eval()
    for conv in model.score_layers():
        torch.nn.init.normal_(conv.weight, std=0.5)
    image, _ = val[0]
    with torch.no_grad():
        prob = torch.sigmoid(model(image[None]))[0, 0]
    model.threshold = float(prob.median())
    drawn = []
    monkeypatch.setattr(report, "thumbnails", lambda shown, truth, pred, palette: drawn.append(pred) or {})
    result = evaluate(model, val, per_image=True)
    report.worst_images(model, val, result["per_image"], 1)
    expect = (prob >= model.threshold).numpy()
    assert 0.3 < expect.mean() < 0.7 and (drawn[0] == expect).mean() > 0.999


def test_threshold_option_of_predict_overrides_the_stored_one(tmp_path, capsys):
    import fcnseg
    from fcnseg.cli import main
    from fcnseg.io.modelfile import save_model

    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", "mobilenet_v3_large", 2, task="binary").eval()
    for conv in model.score_layers():
        torch.nn.init.normal_(conv.weight, std=0.5)
    save_model(model, tmp_path / "bin.safetensors")
    image = np.random.default_rng(0).integers(0, 255, (64, 96, 3)).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "x.png")
    with torch.no_grad():
        prob = torch.sigmoid(model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255))[0, 0]
    for q in (0.25, 0.75):
        t = float(prob.quantile(q))
        args = ["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "bin.safetensors"), "--out",
                str(tmp_path / f"p{q}"), "--threshold", str(t), "--quiet", "--device", "cpu"]
        assert main(args) == 0
        labels = np.array(Image.open(tmp_path / f"p{q}" / "x.png"))
        assert (labels == (prob >= t).numpy()).mean() > 0.999 and abs(labels.mean() - (1 - q)) < 0.05
    multiclass = fcnseg.build_model("fcn32s", "mobilenet_v3_large", 3)
    save_model(multiclass, tmp_path / "mc.safetensors")
    assert main(["predict", str(tmp_path / "x.png"), "--model", str(tmp_path / "mc.safetensors"), "--out",
                 str(tmp_path / "q"), "--threshold", "0.3", "--device", "cpu"]) == 2
    assert "--threshold is for binary and multilabel models" in capsys.readouterr().err
