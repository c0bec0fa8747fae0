"""Inference backends (fcnseg.backends): each gives eager PyTorch's labels, and the CLI and fcnseg.load take them."""

import json
import sys

import numpy as np
import pytest
import torch

import fcnseg
from fcnseg.cli import main


def _photo(h=61, w=83, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3)).astype(np.uint8)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_backends_give_eager_scores_and_labels(tiny_model_file, backend, tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    eager = fcnseg.load(tiny_model_file)
    run = fcnseg.load(tiny_model_file, backend=backend, threads=1)
    assert run.class_names == eager.class_names and run.palette == eager.palette
    x = torch.rand(1, 3, 61, 83)  # odd sizes: the graph keeps height and width symbolic
    with torch.inference_mode():
        ref, out = eager(x), run(x)
    assert out.shape == ref.shape and out.dtype == torch.float32
    assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()
    assert (run.predict(_photo()) == eager.predict(_photo())).float().mean() > 0.999


class TinySegmenter(torch.nn.Module):
    """Two convolutions with an FCN's attributes: torch.compile takes minutes on a whole trunk of a busy 2-core
    machine, and what is tested here is the wrapper (one compilation per shape, timings, the model's attributes)."""

    num_classes, class_names, palette, task, threshold, in_channels = 3, ["a", "b", "c"], [(0, 0, 0)] * 3, \
        "multiclass", 0.5, 3

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 3, 1))

    def forward(self, x):
        return self.net(x)


def test_compiled_backend_gives_eager_scores_and_reports_compile_time(capsys):
    from fcnseg.backends import CompiledModel

    torch.manual_seed(0)
    eager = TinySegmenter().eval()
    compiled = CompiledModel(eager)
    x = torch.rand(1, 3, 48, 64)
    with torch.inference_mode():
        ref, out = eager(x), compiled(x)
        compiled(x)  # the second call of a shape does not compile again
        labels = compiled.predict(_photo(48, 64))  # the same shape: no second compilation
    assert list(compiled.compile_seconds) == [(1, 3, 48, 64)] and compiled.compile_seconds[(1, 3, 48, 64)] > 0
    assert "compiled for 1x3x48x64 in" in capsys.readouterr().err
    assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
    assert compiled.num_classes == 3 and labels.shape == (48, 64) and set(labels.unique().tolist()) <= {0, 1, 2}


def test_openvino_export_carries_metadata_and_evaluate_and_predict_take_it(tiny_model_file, module_shapes, tmp_path):
    xml = tmp_path / "shapes.xml"
    assert main(["export", "--model", str(tiny_model_file), "--format", "openvino", "--out", str(xml)]) == 0
    assert xml.is_file() and xml.with_suffix(".bin").is_file()
    run = fcnseg.load(xml)
    assert type(run).__name__ == "OpenVinoModel" and run.class_names == ["background", "square", "disc"]
    assert run.input_multiple == 1 and run.quantization is None
    eager = fcnseg.load(tiny_model_file)
    for backend, model in (("openvino", str(xml)), ("torch", str(tiny_model_file))):
        out = tmp_path / f"eval-{backend}"
        assert main(["evaluate", "--model", model, "--dataset", "folder", "--root", str(module_shapes),
                     "--split", "val", "--out", str(out)]) == 0
    ov_iu = json.loads((tmp_path / "eval-openvino" / "metrics.json").read_text())
    torch_iu = json.loads((tmp_path / "eval-torch" / "metrics.json").read_text())
    assert ov_iu["backend"] == "openvino" and ov_iu["num_images"] == 2
    assert abs(ov_iu["mean_iu"] - torch_iu["mean_iu"]) < 1e-3
    photo = tmp_path / "photo.png"
    from PIL import Image

    Image.fromarray(_photo()).save(photo)
    assert main(["predict", str(photo), "--model", str(xml), "--out", str(tmp_path / "p"), "--quiet"]) == 0
    labels = np.asarray(Image.open(tmp_path / "p" / "photo.png"))
    assert (labels == eager.predict(photo).numpy()).mean() > 0.999


def test_openvino_label_output_and_evaluate_on_it(tiny_model_file, module_shapes, tmp_path):
    xml = tmp_path / "labels.xml"
    assert main(["export", "--model", str(tiny_model_file), "--format", "openvino", "--out", str(xml), "--labels"]) == 0
    run = fcnseg.load(xml)
    x = torch.rand(2, 3, 45, 61, generator=torch.Generator().manual_seed(2))
    labels = run.predict_labels(x)
    assert run.label_output and labels.shape == (2, 45, 61) and torch.equal(labels, run(x).argmax(1))
    scores = {}
    for name, model in (("labels", xml), ("torch", tiny_model_file)):
        assert main(["evaluate", "--model", str(model), "--dataset", "folder", "--root", str(module_shapes),
                     "--split", "val", "--out", str(tmp_path / name)]) == 0
        scores[name] = json.loads((tmp_path / name / "metrics.json").read_text())["mean_iu"]
    assert abs(scores["labels"] - scores["torch"]) < 1e-3


def test_a_legacy_model_keeps_its_input_multiple_in_the_export(tmp_path):
    from fcnseg.export import OnnxModel, export_onnx

    torch.manual_seed(0)
    model = fcnseg.build_model("fcn8s", "efficientnet_lite0", 3, padding="tf", alignment="legacy").eval()
    assert model.input_multiple == 32
    run = OnnxModel(export_onnx(model, tmp_path / "legacy.onnx"))
    assert run.input_multiple == 32
    x = torch.rand(1, 3, 45, 70)  # not a multiple of 32: edge-padded inside the graph, cropped back
    with torch.inference_mode():
        ref, out = model(x), run(x)
    assert out.shape == ref.shape == (1, 3, 45, 70) and (out - ref).abs().max() <= 1e-3 * ref.abs().max()


def test_a_backend_that_cannot_run_the_file_or_is_unknown_says_so(tiny_model_file, tmp_path, capsys):
    from fcnseg.export import export_onnx

    onnx = export_onnx(fcnseg.load(tiny_model_file), tmp_path / "m.onnx")
    with pytest.raises(ValueError, match=r"m.onnx: a .onnx file runs with --backend onnxruntime or openvino, not "
                                         r"torch"):
        fcnseg.load(onnx, backend="torch")
    with pytest.raises(ValueError,
                       match="unknown backend 'tensorrt'; valid: auto, torch, compiled, onnxruntime, openvino"):
        fcnseg.load(tiny_model_file, backend="tensorrt")
    assert main(["predict", str(tmp_path), "--model", str(onnx), "--backend", "compiled", "--out",
                 str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fcnseg: error: {onnx}: a .onnx file runs with --backend onnxruntime or openvino, not compiled"]


def test_a_missing_backend_package_is_named_with_the_pip_command(tiny_model_file, tmp_path, monkeypatch, capsys):
    # None in sys.modules makes Python's import fail as it does for a package that is not installed.
    monkeypatch.setitem(sys.modules, "openvino", None)
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    with pytest.raises(ImportError, match=r"the OpenVINO backend needs openvino: pip install 'fcnseg\[openvino\]'"):
        fcnseg.load(tiny_model_file, backend="openvino")
    out = tmp_path / "m.xml"
    assert main(["export", "--model", str(tiny_model_file), "--format", "openvino", "--out", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "fcnseg: error: the OpenVINO backend needs openvino: pip install 'fcnseg[openvino]'"]
    assert not list(tmp_path.glob("m.*"))


def test_cpu_flags_are_read_from_cpuinfo(tmp_path, monkeypatch):
    from fcnseg.runtime import cpu

    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: fpu sse avx2 avx512f avx512_vnni\n")
    monkeypatch.setattr(cpu, "CPUINFO", info)
    assert cpu.cpu_name() == "Test CPU 9000"
    assert {"avx2", "avx512f", "avx512_vnni"} <= cpu.cpu_flags() and not cpu.cpu_has_fast_bf16()
    info.write_text("model name\t: Test CPU 9001\nflags\t\t: avx2 avx512_bf16 amx_bf16 amx_tile\n")
    assert cpu.cpu_has_fast_bf16()


def test_serve_loads_every_model_with_the_backend_given(tiny_model_file, tmp_path, monkeypatch):
    from fcnseg.serve import load_models

    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    models = load_models([str(tiny_model_file)], "cpu", "onnxruntime")
    assert list(models) == [tiny_model_file.stem]  # a model is named after its file
    model = models[tiny_model_file.stem]
    assert type(model).__name__ == "OnnxModel" and model.source == str(tiny_model_file)
    assert (model.predict(_photo()) == fcnseg.load(tiny_model_file).predict(_photo())).float().mean() > 0.999


def test_auto_backend_times_every_installed_backend_and_runs_the_fastest(tiny_model_file, tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    eager = fcnseg.load(tiny_model_file)
    auto = fcnseg.load(tiny_model_file, backend="auto", threads=1)
    assert auto.class_names == eager.class_names and auto.num_classes == 3
    x = torch.rand(1, 3, 61, 83)
    with torch.inference_mode():
        ref, out = eager(x), auto(x)
    shape = (1, 3, 61, 83)
    times = auto.timings[shape]
    assert set(times) == {"torch", "openvino", "onnxruntime"} and all(ms > 0 for ms in times.values())
    assert auto.choice[shape] == min(times, key=times.get)
    assert (out - ref).abs().max() <= 1e-3 * ref.abs().max()
    # From then on the chosen backend alone runs that shape: the others would fail the call.
    chosen = auto.choice[shape]
    assert set(auto._runs) == {"torch", chosen}  # the others' copies of the weights were released
    runs = dict(auto._runs)
    for name in set(times) - {chosen}:
        auto._runs[name] = lambda _, name=name: pytest.fail(f"{name} ran after {chosen} was chosen")
    auto(x)
    assert auto.timings == {shape: times}
    auto._runs.clear()
    auto._runs.update(runs)
    labels = auto.predict(_photo(48, 64))  # a new shape: timed and chosen on its own
    assert set(auto.choice) == {shape, (1, 3, 48, 64)} and labels.shape == (48, 64)
    assert auto.describe(shape).startswith(f"{chosen} for 1x3x61x83 ({chosen} ")


def test_predict_runs_auto_by_default_and_reports_its_choice(tiny_model_file, tmp_path, monkeypatch, capsys):
    from PIL import Image

    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("FCNSEG_BACKEND")
    Image.fromarray(_photo(96, 128)).save(tmp_path / "a.png")
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(tiny_model_file), "--out",
                 str(tmp_path / "auto")]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("backend auto: ")]
    assert len(lines) == 1 and lines[0].split()[2] in ("torch", "openvino", "onnxruntime")
    assert "for 1x3x96x128 (" in lines[0]
    assert main(["predict", str(tmp_path / "a.png"), "--model", str(tiny_model_file), "--backend", "torch",
                 "--out", str(tmp_path / "torch")]) == 0
    assert "backend auto" not in capsys.readouterr().out
    auto, eager = (np.array(Image.open(tmp_path / d / "a.png")) for d in ("auto", "torch"))
    assert auto.shape == (96, 128) and (auto == eager).mean() > 0.999


def test_evaluate_with_auto_records_the_choice(tiny_model_file, module_shapes, tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    for backend in ("auto", "torch"):
        assert main(["evaluate", "--model", str(tiny_model_file), "--backend", backend, "--dataset", "folder",
                     "--root", str(module_shapes), "--split", "val", "--out", str(tmp_path / backend)]) == 0
    auto, eager = (json.loads((tmp_path / b / "metrics.json").read_text()) for b in ("auto", "torch"))
    assert auto["backend"] == "auto" and len(auto["backend_choice"]) == 1
    assert auto["backend_choice"][0].split()[:3][1:] == ["for", "1x3x48x64"]
    assert "backend_choice" not in eager and abs(auto["mean_iu"] - eager["mean_iu"]) < 1e-3
