"""`fcnseg predict --shard I/N`, `--skip-existing` and `--merge-summaries`: two shards write byte-identical files
to one process's, and the merged summary equals its summary (timings aside)."""

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import free_port, save_shapes_model
from PIL import Image

from fcnseg.cli import main
from fcnseg.predict import parse_shard, shard_indices


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("shards")
    model = save_shapes_model(root / "tiny.safetensors")
    rng = np.random.default_rng(0)
    for folder, names in (("a", ["p0.png", "p1.jpg", "p2.png", "x.png"]), ("b", ["q0.png", "x.jpg", "q1.png"])):
        (root / folder).mkdir()
        for k, name in enumerate(names):
            h, w = (40 + 8 * k, 56) if k % 2 else (70, 90)  # mixed sizes; 70x90 is tiled with --tile 64
            Image.fromarray(rng.integers(0, 255, (h, w, 3), np.uint8)).save(root / folder / name)
    (root / "a" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    return root, model


def _predict(root: Path, model: Path, out: Path, *extra: str) -> int:
    return main(["predict", str(root / "a"), str(root / "b"), "--model", str(model), "--out", str(out),
                 "--tile", "64", "--overlap", "16", "--probs", "--quiet", *extra])


def _files(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith("summary")}


def _without_ms(summary: dict) -> dict:
    return {"images": [{k: v for k, v in r.items() if k != "ms"} for r in summary["images"]],
            "errors": summary["errors"]}


def test_two_shards_write_what_one_process_writes(setup, tmp_path, capsys):
    root, model = setup
    single, sharded = tmp_path / "single", tmp_path / "sharded"
    assert _predict(root, model, single) == 1  # the broken file fails, the rest go on
    codes = [_predict(root, model, sharded, "--shard", f"{i}/2") for i in range(2)]
    assert sorted(codes) == [0, 1]  # one shard holds the broken file
    one, two = _files(single), _files(sharded)
    assert len(one) == 7 * 3 and "x.png" in one and "x-2.png" in one  # same stems for same names, across shards
    assert one.keys() == two.keys() and all(one[k] == two[k] for k in one)
    assert not (sharded / "summary.json").exists()
    shard0 = json.loads((sharded / "summary-shard-0-of-2.json").read_text())
    assert shard0["shard"] == [0, 2] and shard0["inputs"] == 8
    assert shard0["error_indices"] == [0] and shard0["indices"] == [2, 4, 6]  # a/broken.jpg is input 0

    assert main(["predict", "--merge-summaries", str(sharded)]) == 0
    assert "merged 7 images and 1 errors" in capsys.readouterr().out
    merged = json.loads((sharded / "summary.json").read_text())
    assert _without_ms(merged) == _without_ms(json.loads((single / "summary.json").read_text()))
    assert "broken.jpg" in merged["errors"][0]

    # A missing shard is named; so are shard files of two different runs.
    (sharded / "summary-shard-1-of-2.json").rename(tmp_path / "aside.json")
    assert main(["predict", "--merge-summaries", str(sharded)]) == 2
    assert "missing summary-shard-1-of-2.json (those shards have not finished)" in capsys.readouterr().err
    (tmp_path / "aside.json").rename(sharded / "summary-shard-1-of-2.json")
    stale = json.loads((sharded / "summary-shard-0-of-2.json").read_text())
    (sharded / "summary-shard-0-of-3.json").write_text(json.dumps({**stale, "shard": [0, 3]}))
    assert main(["predict", "--merge-summaries", str(sharded)]) == 2
    assert "shard summaries from different runs" in capsys.readouterr().err


def test_skip_existing_touches_nothing_and_redoes_what_is_missing(setup, tmp_path, capsys):
    root, model = setup
    out = tmp_path / "out"
    _predict(root, model, out, "--shard", "1/2")
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith("summary")}
    first = json.loads((out / "summary-shard-1-of-2.json").read_text())
    assert _predict(root, model, out, "--shard", "1/2", "--skip-existing") == 0
    assert "wrote 0 predictions" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir() if not p.name.startswith("summary")} == before
    again = json.loads((out / "summary-shard-1-of-2.json").read_text())
    assert all(r["skipped"] and r["ms"] is None for r in again["images"])
    assert [(r["image"], r["size"], r["shares"]) for r in again["images"]] == [
        (r["image"], r["size"], r["shares"]) for r in first["images"]]

    # An image with one output missing is segmented again, to the same bytes.
    victim = out / "x-2_overlay.jpg"  # b/x.jpg, input 7, named after a/x.png (input 4, shard 0)
    old = victim.read_bytes()
    victim.unlink()
    assert _predict(root, model, out, "--shard", "1/2", "--skip-existing") == 0
    assert "wrote 1 predictions" in capsys.readouterr().out and victim.read_bytes() == old


def test_shard_arguments():
    assert parse_shard("1/4") == (1, 4) and shard_indices(10, (1, 4)) == [1, 5, 9]
    assert shard_indices(3, None) == [0, 1, 2] and shard_indices(2, (3, 4)) == []
    for bad, words in (("4/4", "I must be in 0..N-1"), ("1-4", "expected I/N"), ("x/2", "expected I/N")):
        with pytest.raises(ValueError, match=words):
            parse_shard(bad)
    assert main(["predict", "--model", "camvid-fcn8s-lite0"]) == 2


@pytest.mark.slow
def test_torchrun_processes_split_the_work_and_rank0_merges(setup, tmp_path):
    import os
    import subprocess
    import sys

    root, model = setup
    single, out = tmp_path / "single", tmp_path / "torchrun"
    _predict(root, model, single)
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), "-m", "fcnseg.cli", "predict", str(root / "a"), str(root / "b"), "--model",
           str(model), "--out", str(out), "--tile", "64", "--overlap", "16", "--probs", "--quiet", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr  # the broken file, as in a single run
    assert "(shard 0/2)" in r.stdout and "(shard 1/2)" in r.stdout
    assert "merged the summaries of 2 processes" in r.stdout
    one, two = _files(single), _files(out)
    assert one.keys() == two.keys() and all(one[k] == two[k] for k in one)
    assert _without_ms(json.loads((out / "summary.json").read_text())) == _without_ms(
        json.loads((single / "summary.json").read_text()))
