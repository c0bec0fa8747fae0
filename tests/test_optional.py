"""Optional dependencies (fcnseg._optional): with an extra's package missing, the command that needs it says so in
one line naming the pip extra and exits 2; everything else imports and runs on the core dependencies alone.

A package is made missing by a ``sys.meta_path`` finder installed before fcnseg is imported (``BLOCK``), which
refuses it the way Python refuses a package that is not installed."""

import json

import numpy as np
import pytest
from helpers import REPO, run_cli

import fcnseg
from fcnseg._optional import MissingExtra, available, require

# Every optional package of pyproject.toml's extras, by import name.
OPTIONAL = ("fastapi", "starlette", "pydantic", "uvicorn", "python_multipart", "multipart", "prometheus_client",
            "onnx", "onnxruntime", "matplotlib", "tensorboard", "scipy", "av", "huggingface_hub", "h5py",
            "cityscapesscripts", "skimage")

# sys.argv[1] is the comma-separated packages to refuse; the rest is what follows (a command line, or code).
BLOCK = """
import importlib.abc, importlib.machinery, sys
BLOCKED = set(sys.argv.pop(1).split(","))
class Refuse(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)
        return None
    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r}", name=spec.name)
    def exec_module(self, module):
        pass
sys.meta_path.insert(0, Refuse())
"""
CLI = BLOCK + "from fcnseg.cli import main\nsys.exit(main(sys.argv[1:]))\n"


def cli_without(packages: tuple[str, ...], *args: str):
    """``fcnseg ARGS`` in a subprocess where ``packages`` cannot be imported."""
    return run_cli(",".join(packages), *args, python=("-c", CLI))


def python_without(packages: tuple[str, ...], code: str):
    return run_cli(",".join(packages), python=("-c", BLOCK + code))


def test_require_names_the_extra_and_keeps_the_cause():
    assert require("json", extra="x", what="y") is json
    with pytest.raises(MissingExtra, match=r"^fcnseg thing needs fcnseg_no_such_package: pip install "
                                           r"'fcnseg\[thing\]'$") as e:
        require("fcnseg_no_such_package.sub", extra="thing", what="fcnseg thing")
    assert isinstance(e.value, ImportError) and isinstance(e.value.__cause__, ModuleNotFoundError)
    with pytest.raises(MissingExtra, match="needs python-multipart: "):
        require("fcnseg_no_such_multipart", extra="serve", what="fcnseg serve", package="python-multipart")
    assert available("json") and not available("fcnseg_no_such_package") and not available("fcnseg_no.such")
    assert available("json.decoder")


@pytest.mark.parametrize("blocked,args,message", [
    (("fastapi",), ["serve", "--model", "camvid-fcn8s-lite0"],
     "fcnseg serve needs fastapi: pip install 'fcnseg[serve]'"),
    (("python_multipart",), ["serve"], "fcnseg serve needs python-multipart: pip install 'fcnseg[serve]'"),
    (("uvicorn",), ["serve", "--model", "camvid-fcn8s-lite0"],
     "fcnseg serve needs uvicorn: pip install 'fcnseg[serve]'"),
    (("onnxruntime",), ["predict", "x.png", "--model", "model.onnx"],
     "running ONNX models needs onnxruntime: pip install 'fcnseg[onnx]'"),
    (("matplotlib",), ["evaluate", "--model", "m", "--dataset", "folder", "--root", "r", "--report"],
     "fcnseg evaluate --report needs matplotlib: pip install 'fcnseg[report]'"),
    (("huggingface_hub",), ["predict", "x.png", "--model", "hf://org/name"],
     "hf://org/name: loading from the Hub needs huggingface_hub: pip install 'fcnseg[hub]'"),
])
def test_a_missing_extra_is_one_line_and_exit_2(blocked, args, message):
    r = cli_without(blocked, *args)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip() == f"fcnseg: error: {message}", r.stderr


@pytest.mark.slow
def test_export_and_videos_name_their_extras(tmp_path, tiny_model_file):
    r = cli_without(("onnx",), "export", "--model", str(tiny_model_file), "--out", str(tmp_path / "m.onnx"))
    assert r.returncode == 2 and r.stderr.strip() == (
        "fcnseg: error: exporting to ONNX needs onnx: pip install 'fcnseg[onnx]'"), r.stderr
    assert not (tmp_path / "m.onnx").exists()
    (tmp_path / "clip.mp4").write_bytes(b"\x00" * 64)
    r = cli_without(("av",), "predict", str(tmp_path / "clip.mp4"), "--model", str(tiny_model_file),
                    "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and r.stderr.strip() == (
        "fcnseg: error: reading and writing videos needs av: pip install 'fcnseg[video]'"), r.stderr


@pytest.mark.slow
def test_the_core_imports_and_runs_without_any_extra(tmp_path):
    code = """
import importlib, json
import fcnseg
for m in ("fcnseg.cli", "fcnseg.train", "fcnseg.predict", "fcnseg.evaluate", "fcnseg.export", "fcnseg.video",
          "fcnseg.hub", "fcnseg.demo", "fcnseg.report", "fcnseg.data", "fcnseg.metrics", "fcnseg.losses"):
    importlib.import_module(m)
print(json.dumps({"version": fcnseg.__version__}))
"""
    r = python_without(OPTIONAL, code)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"version": fcnseg.__version__}
    # What `make demo` runs on what it installs (the core): the shipped model on the demo photos.
    r = cli_without(OPTIONAL, "demo", "--out", str(tmp_path / "demo"), "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "demo").glob("*.png")) == ["leuvenA.png", "leuvenB.png"]


def test_metrics_without_matplotlib_are_written_without_plots(tmp_path):
    code = f"""
import warnings
from fcnseg.evaluate import write_report
result = {{"pixel_acc": 0.5, "mean_acc": 0.5, "mean_iu": 0.25, "fw_iu": 0.3, "per_class_iu": [0.5, 0.0],
          "class_names": ["a", "b"], "confusion": [[1, 1], [0, 0]]}}
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    write_report(result, {str(tmp_path / "out")!r})
print(caught[0].message)
"""
    r = python_without(("matplotlib",), code)
    assert r.stdout.strip() == "matplotlib is not installed: metrics.json without plots (pip install 'fcnseg[report]')"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["metrics.json"]
    assert r.returncode == 0, r.stderr


def test_sbd_masks_name_the_sbd_extra(tmp_path):
    r = python_without(("scipy",), f"""
from pathlib import Path
from fcnseg.data.datasets import _read_raw_mask
_read_raw_mask(Path({str(tmp_path / "x.mat")!r}), "mat")
""")
    assert r.returncode == 1 and r.stderr.strip().splitlines()[-1] == (
        "fcnseg._optional.MissingExtra: reading SBD's .mat masks needs scipy: pip install 'fcnseg[sbd]'")


def test_one_version_number():
    text = (REPO / "pyproject.toml").read_text()
    assert f'\nversion = "{fcnseg.__version__}"\n' in text
    copies = [p for p in (REPO / "fcnseg").rglob("*.py") if fcnseg.__version__ in p.read_text()]
    assert copies == [], copies


def test_auto_backend_without_the_exported_runtimes_runs_eager_pytorch(tmp_path, tiny_model_file):
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    r = cli_without(("onnx", "onnxruntime", "openvino"), "predict", str(tmp_path / "a.png"), "--model",
                    str(tiny_model_file), "--backend", "auto", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("backend auto: "))
    assert line.startswith("backend auto: torch for 1x3x40x56 (torch ") and line.count(" ms") == 1, line
    assert (tmp_path / "out" / "a.png").is_file()


def test_a_wrong_fcnseg_backend_variable_is_one_line(tmp_path, tiny_model_file):
    r = run_cli("predict", "x.png", "--model", str(tiny_model_file), "--out", str(tmp_path / "out"),
                env={"FCNSEG_BACKEND": "tensorrt"})
    assert r.returncode == 2 and r.stderr.strip() == (
        "fcnseg: error: FCNSEG_BACKEND='tensorrt' is not a backend; valid: auto, torch, compiled, onnxruntime, "
        "openvino"), r.stderr
    assert not (tmp_path / "out").exists()
