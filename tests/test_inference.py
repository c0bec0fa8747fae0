"""Inference: tiled any-size prediction, flip TTA, batches, image modes, bad files, ONNX/TorchScript export,
the ONNX Runtime backend, torchfcn weights and the memory bound on a large image."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import fcnseg
from fcnseg.data.images import ImageError, decode_image
from fcnseg.io.modelfile import save_model
from fcnseg.models.inference import _ramp, _starts, predict_image, probabilities
from fcnseg.predict import predict_iter, read_image

REPO = Path(__file__).resolve().parents[1]


def _cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "fcnseg.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "2"})


@pytest.fixture(scope="module")
def model():
    """A 4-class FCN-8s on MobileNetV3 with random score layers, so its labels vary across an image."""
    torch.manual_seed(0)
    m = fcnseg.build_model("fcn8s", "mobilenet_v3_large", 4, class_names=["a", "b", "c", "d"])
    for conv in m.score_layers():
        torch.nn.init.normal_(conv.weight, std=0.5)
    return m.eval()


@pytest.fixture(scope="module")
def model_file(model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("model") / "m.safetensors"
    save_model(model, path)
    return path


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3)).astype(np.uint8)
    return np.ascontiguousarray(np.kron(base, np.ones((8, 8, 1), np.uint8))[:h, :w])  # blocks, not pixel noise


def _naive_tiled(model, image, tile, overlap):
    """Every window's weighted probabilities summed over the whole image at once (no sliding band)."""
    x = torch.from_numpy(image).permute(2, 0, 1).float() / 255
    _, h, w = x.shape
    th, tw = min(tile, h), min(tile, w)
    ys, xs = _starts(h, th, overlap), _starts(w, tw, overlap)
    weight = torch.outer(_ramp(th, overlap if len(ys) > 1 else 0), _ramp(tw, overlap if len(xs) > 1 else 0))
    acc, wsum = torch.zeros(model.num_classes, h, w), torch.zeros(h, w)
    for y0 in ys:
        for x0 in xs:
            with torch.no_grad():
                p = model(x[None, :, y0:y0 + th, x0:x0 + tw]).softmax(1)[0]
            acc[:, y0:y0 + th, x0:x0 + tw] += p * weight
            wsum[y0:y0 + th, x0:x0 + tw] += weight
    return acc / wsum


class TestTiling:
    def test_one_window_is_the_plain_forward_pass(self, model):
        image = _image(70, 90)
        labels, probs = predict_image(model, image, tile=None, return_probs=True)
        with torch.no_grad():
            scores = model(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)[0]
        assert np.array_equal(labels, scores.argmax(0).numpy())
        assert np.allclose(probs.astype(np.float32), scores.softmax(0).numpy(), atol=1e-3)
        assert labels.dtype == np.uint8 and len(np.unique(labels)) >= 2

    @pytest.mark.parametrize("tile,overlap,batch", [(48, 16, 1), (64, 24, 3), (40, 0, 2)])
    def test_sliding_band_equals_whole_image_accumulation(self, model, tile, overlap, batch):
        image = _image(150, 131, seed=1)  # sizes that are not multiples of the tile or the stride
        labels, probs = predict_image(model, image, tile=tile, overlap=overlap, batch_size=batch, return_probs=True)
        ref = _naive_tiled(model, image, tile, overlap)
        assert np.allclose(probs.astype(np.float32), ref.numpy(), atol=2e-3)
        assert (labels == ref.argmax(0).numpy()).mean() > 0.995  # float16 ties aside
        assert np.allclose(probs.astype(np.float32).sum(0), 1, atol=5e-3)

    def test_window_weights_fall_off_and_cover(self):
        w = _ramp(64, 16)
        assert w.min() > 0 and w.max() == 1 and w[0] < w[8] < w[16] and torch.equal(w, w.flip(0))
        assert _starts(100, 40, 10) == [0, 30, 60] and _starts(30, 40, 10) == [0]

    def test_shipped_model_tiles_agree_with_whole_image(self):
        net = fcnseg.load("camvid-fcn8s-lite0")
        image = read_image(REPO / "fcnseg" / "demo_images" / "leuvenA.jpg")
        whole, _ = predict_image(net, image, tile=None)
        tiled, _ = predict_image(net, image, tile=400, overlap=128)
        # Windows see less context than the whole photo (measured here: 92.7% of pixels keep their label).
        assert (whole == tiled).mean() > 0.85

    def test_flip_averages_mirrored_probabilities(self, model):
        image = _image(64, 80, seed=2)
        _, probs = predict_image(model, image, tile=None, flip=True, return_probs=True)
        x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            ref = (model(x).softmax(1) + model(x.flip(-1)).softmax(1).flip(-1))[0] / 2
        assert np.allclose(probs.astype(np.float32), ref.numpy(), atol=1e-3)
        with torch.no_grad():
            assert not np.allclose(ref.numpy(), probabilities(model, x)[0].numpy(), atol=1e-3)

    def test_max_size_segments_a_small_copy(self, model):
        labels, probs = predict_image(model, _image(120, 200), max_size=50, return_probs=True)
        assert labels.shape == (120, 200) and probs.shape == (4, 120, 200)

    def test_model_predict_api(self, model, tmp_path):
        image = _image(60, 70, seed=3)
        Image.fromarray(image).save(tmp_path / "x.png")
        by_path = model.predict(tmp_path / "x.png")
        assert by_path.dtype == torch.int64 and by_path.shape == (60, 70)
        assert torch.equal(by_path, model.predict(image))
        assert torch.equal(by_path, model.predict(torch.from_numpy(image).permute(2, 0, 1)))
        batch = torch.from_numpy(np.stack([image, image])).permute(0, 3, 1, 2).float() / 255
        assert torch.equal(model.predict(batch, batch=True), torch.stack([by_path, by_path]))


class TestBatchIterator:
    def test_batches_give_the_same_labels_and_errors_keep_their_place(self, model, tmp_path):
        names = []
        for i, size in enumerate([(40, 56)] * 4 + [(48, 48)] + [(40, 56)] * 2):
            Image.fromarray(_image(*size, seed=i)).save(tmp_path / f"i{i}.png")
            names.append(tmp_path / f"i{i}.png")
        (tmp_path / "bad.png").write_text("not an image")
        names.insert(3, tmp_path / "bad.png")
        one = list(predict_iter(model, names, batch_size=1))
        three = list(predict_iter(model, names, batch_size=3))
        assert [p.path for p in one] == [p.path for p in three] == names
        assert [p.error is not None for p in three] == [n.name == "bad.png" for n in names]
        for a, b in zip(one, three):
            if a.error is None:
                assert (a.labels == b.labels).mean() > 0.999  # batched convolutions may differ in the last bit
        assert "bad.png: cannot read image" in three[3].error

    def test_globs_and_folders(self, model, tmp_path):
        for i in range(3):
            Image.fromarray(_image(32, 32, seed=i)).save(tmp_path / f"g{i}.{'png' if i < 2 else 'jpg'}")
        from fcnseg.predict import collect_images

        assert [p.name for p in collect_images([str(tmp_path / "*.png")])] == ["g0.png", "g1.png"]
        assert [p.name for p in collect_images([tmp_path])] == ["g0.png", "g1.png", "g2.jpg"]
        with pytest.raises(ValueError, match="no images found"):
            collect_images([str(tmp_path / "*.gif")])


class TestImageModes:
    def test_modes_become_rgb(self, tmp_path):
        rgb = _image(20, 30)
        Image.fromarray(rgb).convert("L").save(tmp_path / "grey.png")
        Image.fromarray(rgb).convert("RGBA").save(tmp_path / "rgba.png")
        Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
        Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
        Image.fromarray(rgb).convert("LA").save(tmp_path / "la.png")
        grey = np.asarray(Image.fromarray(rgb).convert("L"))
        assert np.array_equal(decode_image(tmp_path / "grey.png"), np.repeat(grey[:, :, None], 3, 2))
        assert np.array_equal(decode_image(tmp_path / "rgba.png"), rgb)
        assert np.abs(decode_image(tmp_path / "pal.png").astype(int) - rgb).mean() < 20
        assert np.abs(decode_image(tmp_path / "cmyk.jpg").astype(int) - rgb).mean() < 20
        assert decode_image(tmp_path / "la.png").shape == (20, 30, 3)

    def test_16_bit_grey_is_scaled_not_clipped(self, tmp_path):
        a = np.array([[0, 257, 32896, 65535]], np.uint16)
        Image.fromarray(a).save(tmp_path / "deep.png")
        with Image.open(tmp_path / "deep.png") as im:
            assert im.mode.startswith("I")
        assert decode_image(tmp_path / "deep.png")[0, :, 0].tolist() == [0, 1, 128, 255]

    def test_exif_orientation_is_honoured_for_photos_only(self, tmp_path):
        rgb = _image(20, 30)
        exif = Image.Exif()
        exif[0x0112] = 6  # rotate 90 degrees clockwise to display
        Image.fromarray(rgb).save(tmp_path / "rot.jpg", exif=exif, quality=100)
        upright = decode_image(tmp_path / "rot.jpg")
        assert upright.shape == (30, 20, 3)
        assert np.abs(upright.astype(int) - np.rot90(rgb, -1)).mean() < 8
        assert decode_image(tmp_path / "rot.jpg", exif=False).shape == (20, 30, 3)

    @pytest.mark.parametrize("content,message", [
        (b"", "empty file"),
        (b"hello, I am text", "cannot read image"),
        (None, "cannot read image"),  # truncated JPEG
    ])
    def test_bad_files_name_the_file(self, tmp_path, content, message):
        path = tmp_path / "bad.jpg"
        if content is None:
            Image.fromarray(_image(64, 64)).save(path, quality=90)
            content = path.read_bytes()[:300]
        path.write_bytes(content)
        with pytest.raises(ImageError, match=f"bad.jpg: {message}"):
            decode_image(path)

    def test_pixel_limit_is_checked_before_decoding(self, tmp_path):
        Image.fromarray(_image(64, 64)).save(tmp_path / "big.png")
        with pytest.raises(ImageError, match="big.png: 64x64 .* more than the limit"):
            decode_image(tmp_path / "big.png", max_pixels=1000)
        with pytest.raises(FileNotFoundError, match="gone.png: no such image file"):
            decode_image(tmp_path / "gone.png")


class TestPredictCli:
    def test_bad_files_are_reported_and_the_rest_written(self, model_file, tmp_path):
        good = tmp_path / "good.png"
        Image.fromarray(_image(40, 56)).save(good)
        (tmp_path / "zero.png").write_bytes(b"")
        (tmp_path / "text.png").write_text("not a png")
        out = tmp_path / "out"
        r = _cli("predict", str(tmp_path / "zero.png"), str(good), str(tmp_path / "text.png"),
                 str(tmp_path / "missing.jpg"), "--model", str(model_file), "--out", str(out), "--probs")
        assert r.returncode == 1, r.stderr
        for name in ("zero.png: empty file", "text.png: cannot read image", "missing.jpg: no such image file",
                     "3 of 4 images failed"):
            assert name in r.stderr
        assert sorted(p.name for p in out.iterdir()) == ["good.png", "good_overlay.jpg", "good_probs.npz",
                                                         "summary.json"]  # nothing for bad files, no temp files
        summary = json.loads((out / "summary.json").read_text())
        assert len(summary["images"]) == 1 and len(summary["errors"]) == 3
        with np.load(out / "good_probs.npz") as z, Image.open(out / "good.png") as lab:
            assert z["probs"].shape == (4, 40, 56) and z["probs"].dtype == np.float16
            assert list(z["class_names"]) == ["a", "b", "c", "d"]
            p, labels = z["probs"].astype(np.float32), np.asarray(lab).astype(np.int64)
            # float16 rounding can tie near-equal classes: the label's probability is the maximum up to rounding
            assert (np.take_along_axis(p, labels[None], 0)[0] >= p.max(0) - 1e-3).all()

    def test_tiles_flip_batch_and_limits(self, model_file, tmp_path):
        for i in range(3):
            Image.fromarray(_image(90, 120, seed=i)).save(tmp_path / f"p{i}.png")
        out = tmp_path / "out"
        r = _cli("predict", str(tmp_path / "*.png"), "--model", str(model_file), "--out", str(out), "--tile", "64",
                 "--overlap", "16", "--flip", "--batch-size", "2", "--quiet")
        assert r.returncode == 0, r.stderr
        assert len(json.loads((out / "summary.json").read_text())["images"]) == 3
        r = _cli("predict", str(tmp_path / "p0.png"), "--model", str(model_file), "--out", str(tmp_path / "o2"),
                 "--max-pixels", "1000")
        assert r.returncode == 1 and "p0.png: 120x90 is 0 Mpixel, more than the limit" in r.stderr


class TestExport:
    def test_onnx_matches_pytorch_on_several_sizes_and_carries_metadata(self, model, tmp_path):
        from fcnseg.export import OnnxModel, export_onnx, verify

        path = export_onnx(model, tmp_path / "m.onnx")
        rows = verify(model, path, sizes=((33, 47), (64, 96), (120, 90)), batch=2)
        for row in rows:
            assert row["max_abs_diff"] < 1e-4 * max(1.0, row["max_abs_score"]) and row["label_agreement"] > 0.999
        onnx_model = OnnxModel(path)
        assert onnx_model.class_names == ["a", "b", "c", "d"] and onnx_model.palette == model.palette
        image = _image(70, 90, seed=4)
        assert (onnx_model.predict(image) == model.predict(image)).float().mean() > 0.999

    def test_label_output_is_the_uint8_argmax_of_the_graphs_scores(self, model, tmp_path):
        import onnx

        from fcnseg.export import OnnxModel, export_onnx, verify

        path = export_onnx(model, tmp_path / "m.onnx", labels=True)
        outputs = {o.name: o.type.tensor_type.elem_type for o in onnx.load(str(path)).graph.output}
        assert outputs == {"scores": onnx.TensorProto.FLOAT, "labels": onnx.TensorProto.UINT8}
        rows = verify(model, path, sizes=((33, 47), (120, 90)), batch=2)
        assert [row["label_output_agreement"] for row in rows] == [1.0, 1.0]
        run = OnnxModel(path)
        x = torch.rand(2, 3, 57, 71, generator=torch.Generator().manual_seed(3))
        labels = run.predict_labels(x)
        assert run.label_output and labels.dtype == torch.int64 and labels.shape == (2, 57, 71)
        assert torch.equal(labels, run(x).argmax(1))
        image = _image(70, 90, seed=4)  # predict takes the label output; tiles and flips still need the scores
        plain = OnnxModel(export_onnx(model, tmp_path / "s.onnx"))
        assert np.array_equal(run.predict(image, tile=None), plain.predict(image, tile=None))
        flipped = run.predict(image, tile=None, flip=True) == model.predict(image, tile=None, flip=True)
        assert flipped.float().mean() > 0.999

    def test_label_output_refused_where_the_labels_are_not_an_argmax(self, tmp_path):
        from fcnseg.export import export

        binary = fcnseg.build_model("fcn32s", "resnet18", 2, task="binary")
        with pytest.raises(ValueError, match="labels of a binary model depend on --threshold"):
            export(binary, tmp_path / "b.onnx", labels=True)
        with pytest.raises(ValueError, match="not torchscript"):
            export(binary, tmp_path / "b.pt", "torchscript", labels=True)
        assert not list(tmp_path.iterdir())

    def test_torchscript_matches_pytorch(self, model, tmp_path):
        from fcnseg.export import export_torchscript, verify

        path = export_torchscript(model, tmp_path / "m.pt")
        for row in verify(model, path, sizes=((40, 72), (97, 61))):
            assert row["max_abs_diff"] < 1e-4 * max(1.0, row["max_abs_score"])

    def test_cli_export_and_onnxruntime_backend(self, model_file, tmp_path):
        env_cache = {"FCNSEG_CACHE": str(tmp_path / "cache")}
        r = _cli("export", "--model", str(model_file), "--out", str(tmp_path / "m.onnx"))
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("same labels at") == 4
        Image.fromarray(_image(60, 80)).save(tmp_path / "x.png")
        runs = {}
        for name, extra in {"torch": [], "file": ["--model", str(tmp_path / "m.onnx")],
                            "cached": ["--backend", "onnxruntime"]}.items():
            model_args = [] if name == "file" else ["--model", str(model_file)]
            r = subprocess.run([sys.executable, "-m", "fcnseg.cli", "predict", str(tmp_path / "x.png"), *model_args,
                                *extra, "--out", str(tmp_path / name)], capture_output=True, text=True, cwd=REPO,
                               env={**os.environ, "OMP_NUM_THREADS": "2", **env_cache})
            assert r.returncode == 0, r.stderr
            runs[name] = np.asarray(Image.open(tmp_path / name / "x.png"))
        assert (runs["torch"] == runs["file"]).mean() > 0.999 and (runs["torch"] == runs["cached"]).mean() > 0.999
        assert len(list((tmp_path / "cache" / "onnx").glob("*.onnx"))) == 1


def test_torchfcn_weights_give_the_same_scores(tmp_path):
    import types

    sys.modules.setdefault("fcn", types.ModuleType("fcn"))  # torchfcn imports it only to download weights
    torchfcn = pytest.importorskip("torchfcn", reason="torchfcn is a benchmark/dev dependency (make bench-deps)")
    from fcnseg.io.modelfile import load_torchfcn

    torch.manual_seed(0)
    ref = torchfcn.models.FCN8s(n_class=21).eval()
    with torch.no_grad():
        for m in ref.modules():
            if isinstance(m, torch.nn.Conv2d):
                torch.nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                torch.nn.init.normal_(m.bias, std=0.01)
    torch.save({"model_state_dict": ref.state_dict()}, tmp_path / "fcn8s.pth")  # pytorch-fcn's checkpoint layout
    ours = load_torchfcn(tmp_path / "fcn8s.pth")
    assert ours.class_names[15] == "person" and ours.preprocessing.bgr
    x = torch.rand(1, 3, 50, 70)
    with torch.no_grad():
        a, b = ours(x), ref(ours.normalize(x))
    assert a.shape == b.shape == (1, 21, 50, 70)
    assert torch.allclose(a, b, atol=1e-4 * b.abs().max().item()) and b.abs().max() > 1


@pytest.mark.slow
def test_large_image_stays_under_2_gb(tmp_path):
    """A 4000x3000 photo through `fcnseg predict` (tiled), peak RSS measured by the kernel from outside."""
    photo = Image.open(REPO / "fcnseg" / "demo_images" / "leuvenA.jpg").resize((4000, 3000))
    photo.save(tmp_path / "big.jpg", quality=90)
    r = subprocess.run([sys.executable, str(REPO / "benchmarks" / "peak_rss.py"), sys.executable, "-m", "fcnseg.cli",
                        "predict", str(tmp_path / "big.jpg"), "--out", str(tmp_path / "out")],
                       capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"})
    assert r.returncode == 0, r.stderr
    mb = float(r.stderr.split("peak RSS:")[1].split()[0])
    assert mb < 2000, r.stderr
    with Image.open(tmp_path / "out" / "big.png") as lab:
        assert lab.size == (4000, 3000)
