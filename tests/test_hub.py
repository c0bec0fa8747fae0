"""Hub-style model folders: save_pretrained / load round trip, hf:// through a pre-populated Hugging Face cache
(offline, in a subprocess with its own HF_HOME), the push dry run's file set, and the errors of bad folders."""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import save_shapes_model
from PIL import Image

import fcnseg
from fcnseg.cli import main
from fcnseg.hub import HUB_FILES, parse_hf, save_pretrained
from fcnseg.io.modelfile import save_model

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A 3-class FCN-8s with random score layers, loaded back from its .safetensors file (info: val metrics)."""
    path = save_shapes_model(tmp_path_factory.mktemp("hub-model") / "tiny.safetensors",
                             val={"pixel_acc": 0.91, "mean_acc": 0.8, "mean_iu": 0.7, "fw_iu": 0.85}, epoch=3)
    return fcnseg.load(path)


@pytest.fixture
def folder(tiny, tmp_path) -> Path:
    return save_pretrained(tiny, tmp_path / "tiny-hub")


def _scores(model) -> torch.Tensor:
    torch.manual_seed(1)
    with torch.inference_mode():
        return model(torch.rand(1, 3, 45, 61))


def test_round_trip_gives_identical_outputs_and_a_model_card(tiny, folder):
    assert sorted(p.name for p in folder.iterdir()) == sorted(HUB_FILES)
    config = json.loads((folder / "config.json").read_text())
    assert config["format"] == "fcnseg-hub-1" and config["model"] == json.loads(json.dumps(tiny.spec.to_dict()))
    assert config["info"]["val"]["mean_iu"] == 0.7
    back = fcnseg.load(folder)
    assert torch.equal(_scores(back), _scores(tiny))
    assert back.class_names == tiny.class_names and back.palette == tiny.palette
    assert back.spec == tiny.spec and back.info["epoch"] == 3
    card = (folder / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fcnseg\n")
    colours = ["#{:02x}{:02x}{:02x}".format(*c) for c in tiny.palette]
    for text in (f"| 1 | square | {colours[1]} |", f"| 2 | disc | {colours[2]} |", "| mean_iu | 70.0 |", "fcn8s",
                 "mobilenet_v3_large", 'fcnseg.load("hf://ORG/tiny-hub")'):
        assert text in card, text
    # Saving the loaded model again writes the same weights and config.
    again = save_pretrained(back, folder.parent / "again")
    assert (again / "config.json").read_text() == (folder / "config.json").read_text()


def test_class_names_edited_in_config_json_are_used(folder):
    config = json.loads((folder / "config.json").read_text())
    config["model"]["class_names"] = ["bg", "box", "ball"]
    (folder / "config.json").write_text(json.dumps(config))
    assert fcnseg.load(folder).class_names == ["bg", "box", "ball"]


def _edit_config(folder: Path, **model) -> None:
    config = json.loads((folder / "config.json").read_text())
    config["model"].update(model)
    (folder / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("damage, file, words", [
    (lambda f: (f / "model.safetensors").unlink(), "model.safetensors", "weights are absent"),
    (lambda f: (f / "config.json").unlink(), "config.json", "missing"),
    (lambda f: (f / "config.json").write_text("{not json"), "config.json", "not readable JSON"),
    (lambda f: (f / "config.json").write_text('{"format": "other"}'), "config.json", "not 'fcnseg-hub-1'"),
    (lambda f: _edit_config(f, num_classes=5), "model.safetensors", "num_classes=3 but"),
    (lambda f: _edit_config(f, backbone="vgg16"), "model.safetensors", "backbone='mobilenet_v3_large' but"),
    (lambda f: _edit_config(f, class_names=["a", "b"]), "config.json", "2 class_names for 3 classes"),
    (lambda f: (f / "model.safetensors").write_bytes(b"\0" * 64), "model.safetensors", "not a safetensors"),
])
def test_bad_folders_are_one_line_naming_the_file(folder, damage, file, words, capsys):
    damage(folder)
    with pytest.raises((ValueError, FileNotFoundError)) as e:
        fcnseg.load(folder)
    msg = str(e.value)
    assert msg.startswith(str(folder / file)) and words in msg and "\n" not in msg, msg
    # The command line says the same in one line, exit 2.
    assert main(["predict", str(REPO / "fcnseg" / "demo_images" / "leuvenA.jpg"), "--model", str(folder),
                 "--out", str(folder / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"fcnseg: error: {msg}"]


def test_parse_hf():
    assert parse_hf("hf://org/name") == ("org/name", None)
    assert parse_hf("hf://org/name@v1.0") == ("org/name", "v1.0")
    for bad in ("hf://name", "hf://org/name@", "hf://a/b/c", "hf:///x"):
        with pytest.raises(ValueError, match="expected hf://ORG/NAME"):
            parse_hf(bad)


def _populate_cache(cache: Path, repo: str, folder: Path, commit: str, refs: dict[str, str]) -> Path:
    """The layout huggingface_hub writes: blobs by hash, snapshots/<commit>/ of symlinks to them, refs/<name>."""
    base = cache / ("models--" + repo.replace("/", "--"))
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "blobs").mkdir(exist_ok=True)
    for f in folder.iterdir():
        digest = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.copyfile(f, base / "blobs" / digest)
        os.symlink(Path("..", "..", "blobs", digest), snap / f.name)
    (base / "refs").mkdir(exist_ok=True)
    for ref, target in refs.items():
        (base / "refs" / ref).write_text(target)
    return snap


def _offline_cli(args: list[str], hf_home: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_CACHE": str(hf_home / "hub"), "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "fcnseg.cli", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.slow
def test_hf_spec_loads_from_a_prepopulated_cache_offline(tiny, folder, tmp_path):
    hf_home = tmp_path / "hf"
    main_commit, old_commit = "a" * 40, "b" * 40
    _populate_cache(hf_home / "hub", "someorg/tiny", folder, main_commit, {"main": main_commit})
    # An older revision whose class names differ: @REV must pick it, not main.
    old = tmp_path / "old"
    shutil.copytree(folder, old)
    _edit_config(old, class_names=["old0", "old1", "old2"])
    _populate_cache_revision(hf_home / "hub", "someorg/tiny", old, old_commit)
    photo = tmp_path / "in" / "p.png"
    photo.parent.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 52, 3), np.uint8)).save(photo)

    r = _offline_cli(["predict", str(photo), "--model", "hf://someorg/tiny", "--out", str(tmp_path / "o1"),
                      "--no-overlay", "--quiet"], hf_home)
    assert r.returncode == 0, r.stderr
    from fcnseg.predict import predict_files

    predict_files(tiny, [photo], tmp_path / "o0", save_overlay=False, verbose=False, progress=False)
    assert (tmp_path / "o1" / "p.png").read_bytes() == (tmp_path / "o0" / "p.png").read_bytes()

    r = _offline_cli(["predict", str(photo), "--model", f"hf://someorg/tiny@{old_commit}", "--out",
                      str(tmp_path / "o2"), "--no-overlay", "--quiet"], hf_home)
    assert r.returncode == 0, r.stderr
    summary = json.loads((tmp_path / "o2" / "summary.json").read_text())
    assert set(summary["images"][0]["shares"]) <= {"old0", "old1", "old2"}

    r = _offline_cli(["predict", str(photo), "--model", "hf://someorg/absent", "--out", str(tmp_path / "o3")],
                     hf_home)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("fcnseg: error: hf://someorg/absent: cannot get the model")
    assert "HF_HUB_OFFLINE" in lines[0]


def _populate_cache_revision(cache: Path, repo: str, folder: Path, commit: str) -> None:
    base = cache / ("models--" + repo.replace("/", "--"))
    shutil.copytree(folder, base / "snapshots" / commit)


def test_push_dry_run_lists_the_exact_files(folder, tiny, tmp_path, capsys):
    assert main(["push", "--model", str(folder), "--repo", "org/name", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "would upload 3 files to org/name:"
    listed = {line.split("\t")[0].strip(): int(line.split("\t")[1]) for line in out[1:]}
    assert listed == {f: (folder / f).stat().st_size for f in HUB_FILES}
    # Extra files in the folder are not part of the upload.
    (folder / "notes.txt").write_text("private")
    assert main(["push", "--model", str(folder), "--repo", "org/name", "--dry-run"]) == 0
    assert "notes.txt" not in capsys.readouterr().out
    # A .safetensors file is staged as a Hub folder first.
    tiny_file = tmp_path / "m.safetensors"
    save_model(tiny, tiny_file)
    assert main(["push", "--model", str(tiny_file), "--repo", "org/name", "--dry-run"]) == 0
    names = [line.split("\t")[0].strip() for line in capsys.readouterr().out.splitlines()[1:]]
    assert names == list(HUB_FILES)
    # A folder that does not load is refused before anything is sent; so is a malformed repo.
    (folder / "model.safetensors").unlink()
    assert main(["push", "--model", str(folder), "--repo", "org/name", "--dry-run"]) == 2
    assert "model.safetensors: missing" in capsys.readouterr().err
    assert main(["push", "--model", str(tiny_file), "--repo", "justname", "--dry-run"]) == 2
    assert "expected hf://ORG/NAME" in capsys.readouterr().err


def test_onnxruntime_backend_takes_a_folder(folder, tmp_path, monkeypatch):
    monkeypatch.setenv("FCNSEG_CACHE", str(tmp_path / "cache"))
    photo = tmp_path / "p.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 255, (40, 52, 3), np.uint8)).save(photo)
    assert main(["predict", str(photo), "--model", str(folder), "--backend", "onnxruntime", "--out",
                 str(tmp_path / "ort"), "--quiet", "--no-overlay"]) == 0
    assert [p.name.startswith("tiny-hub-") for p in (tmp_path / "cache" / "onnx").iterdir()] == [True]
    assert main(["predict", str(photo), "--model", str(folder), "--out", str(tmp_path / "pt"), "--quiet",
                 "--no-overlay"]) == 0
    ort = np.asarray(Image.open(tmp_path / "ort" / "p.png"))
    pt = np.asarray(Image.open(tmp_path / "pt" / "p.png"))
    assert (ort == pt).mean() > 0.999


def test_serve_names_folders_and_hub_models(folder):
    from fcnseg.serve import model_name

    assert model_name(str(folder)) == "tiny-hub"
    assert model_name("hf://org/street-fcn8s") == "street-fcn8s"
    assert model_name("hf://org/street-fcn8s@v2") == "street-fcn8s-v2"
