"""int8 export (fcnseg.quantize): calibrated on real image files, metadata carried, accuracy checked, bad input
refused."""

import json

import torch
import yaml
from helpers import make_shapes, run_cli

import fcnseg
from fcnseg.cli import main


def _export(model, data, out, *extra):
    return main(["export", "--model", str(model), "--out", str(out), "--quantize", "int8",
                 "--calibration-dataset", "folder", "--calibration-root", str(data), "--calibration-split", "train",
                 "--calibration-images", "4", *extra])


def test_int8_onnx_export_carries_its_record_and_evaluate_reads_it(tiny_model_file, module_shapes, tmp_path, capsys):
    out = tmp_path / "shapes-int8.onnx"
    assert _export(tiny_model_file, module_shapes, out, "--allow-accuracy-drop") == 0
    printed = capsys.readouterr().out
    assert f"wrote {out}" in printed and "layers kept in fp32" in printed
    assert "check on 4 folder train images" in printed
    run = fcnseg.load(out)
    q = run.quantization
    assert q["calibration"] == {"dataset": "folder", "root": str(module_shapes), "split": "train", "images": 4,
                                "names": ["img000", "img002", "img003", "img005"]}
    assert q["fp32_source"]["model"] == str(tiny_model_file) and len(q["fp32_source"]["sha256"]) == 64
    assert q["fp32_layers"][0].endswith("Conv") and "QDQ" in q["scheme"]
    assert 0.5 < q["check"]["pixel_agreement"] <= 1 and run.class_names == ["background", "square", "disc"]
    import onnx

    ops = {n.op_type for n in onnx.load(str(out)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops  # int8 indeed
    eager = fcnseg.load(tiny_model_file)
    x = torch.rand(1, 3, 48, 64)
    with torch.inference_mode():
        assert run(x).shape == eager(x).shape  # the shape arithmetic survived quantization
    assert main(["evaluate", "--model", str(out), "--dataset", "folder", "--root", str(module_shapes), "--split", "val",
                 "--out", str(tmp_path / "ev")]) == 0
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["num_images"] == 2 and metrics["backend"] == "onnxruntime"
    assert metrics["quantization"]["calibration"]["images"] == 4 and 0 <= metrics["mean_iu"] <= 1


def test_int8_openvino_export_through_nncf(tiny_model_file, module_shapes, tmp_path):
    # NNCF runs in a process of its own, as `fcnseg export` does: it registers its PyTorch integration on import,
    # and a pytest process that went on with it loaded once died of a segmentation fault several tests later.
    out = tmp_path / "q.xml"
    r = run_cli("export", "--model", str(tiny_model_file), "--format", "openvino", "--out", str(out),
                "--quantize", "int8", "--calibration-dataset", "folder", "--calibration-root", str(module_shapes),
                "--calibration-split", "train", "--calibration-images", "3", "--min-agreement", "0",
                "--max-iu-drop", "100", "--labels")
    assert r.returncode == 0, r.stderr
    run = fcnseg.load(out)
    record = run.quantization
    assert "nncf" in record["scheme"] and record["passed"] and record["calibration"]["images"] == 3
    assert run.num_classes == 3 and run.class_names == fcnseg.load(tiny_model_file).class_names
    x = torch.rand(1, 3, 48, 64)
    with torch.inference_mode():
        assert run(x).shape == (1, 3, 48, 64)
        assert run.label_output and torch.equal(run.predict_labels(x), run(x).argmax(1))  # --labels, after NNCF


def test_int8_onnx_label_output_is_the_argmax_of_the_int8_scores(tiny_model_file, module_shapes, tmp_path):
    out = tmp_path / "labels-int8.onnx"
    assert _export(tiny_model_file, module_shapes, out, "--allow-accuracy-drop", "--labels") == 0
    run = fcnseg.load(out)
    x = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(1))
    labels = run.predict_labels(x)
    assert run.label_output and labels.shape == (2, 40, 56) and torch.equal(labels, run(x).argmax(1))


def test_an_accuracy_drop_beyond_the_threshold_exits_non_zero_and_writes_nothing(tiny_model_file, module_shapes,
                                                                               tmp_path, capsys):
    out = tmp_path / "strict.onnx"
    assert _export(tiny_model_file, module_shapes, out, "--min-agreement", "1.01") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"fcnseg: error: {out}: not written: int8 labels equal fp32's on ")
    assert "--allow-accuracy-drop writes it anyway" in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def _one_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_calibration_data_is_refused_before_anything_is_written(tiny_model_file, module_shapes, tmp_path, capsys):
    out = tmp_path / "out" / "q.onnx"
    empty = tmp_path / "empty"
    (empty / "images" / "train").mkdir(parents=True)
    (empty / "masks" / "train").mkdir(parents=True)
    (empty / "dataset.yaml").write_text(yaml.safe_dump({"classes": ["background", "square", "disc"]}))
    assert _export(tiny_model_file, empty, out) == 2
    assert "empty" in _one_error(capsys)

    two = make_shapes(tmp_path / "two", n=4, size=(32, 32), splits=True)
    (two / "dataset.yaml").write_text(yaml.safe_dump({"classes": ["background", "thing"]}))
    assert _export(tiny_model_file, two, out) == 2
    assert "has 2 classes but the model scores 3" in _one_error(capsys)

    broken = make_shapes(tmp_path / "broken", n=4, size=(32, 32), splits=True)
    bad = sorted((broken / "images" / "train").iterdir())[0]
    bad.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    assert _export(tiny_model_file, broken, out) == 2
    assert str(bad) in _one_error(capsys)

    assert main(["export", "--model", str(tiny_model_file), "--out", str(out), "--quantize", "int8"]) == 2
    assert "--quantize int8 needs real images: --calibration-dataset D --calibration-root R" in _one_error(capsys)
    assert not (tmp_path / "out").exists()
