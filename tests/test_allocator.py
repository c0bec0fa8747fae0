"""The memory allocator: which one a process runs under, and `fcnseg train`, `evaluate` and `predict` restarting
themselves under tcmalloc where it is installed (docs/training.md: 1.41x the training throughput of glibc's malloc
on a 2-core CPU; docs/inference.md for inference)."""

import json
import os
import subprocess
import sys

import pytest
from helpers import REPO, save_shapes_model
from test_train import tiny

from fcnseg.runtime.allocator import find_tcmalloc, loaded_allocator, tcmalloc_env


def test_loaded_allocator_reads_the_process_maps(tmp_path):
    maps = tmp_path / "maps"
    maps.write_text("7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.10\n")
    assert loaded_allocator(maps) == "tcmalloc"
    maps.write_text("7f00-7f10 r-xp 00000000 08:01 123 /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    assert loaded_allocator(maps) == "system"
    assert loaded_allocator(tmp_path / "absent") == "system"


def test_tcmalloc_env_prepends_the_library_once_and_can_be_refused():
    lib = find_tcmalloc()
    env = tcmalloc_env({"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"})
    if lib is None or not sys.platform.startswith("linux") or loaded_allocator() != "system":
        assert env is None
        return
    assert env["LD_PRELOAD"] == f"{lib} /opt/other.so" and env["PATH"] == "/bin"
    assert tcmalloc_env(env) is None  # restarted once: never again (a library that fails to load would loop)
    assert tcmalloc_env({"FCNSEG_ALLOCATOR": "system"}) is None


@pytest.mark.parametrize("choice", ["auto", "system"])
def test_fcnseg_train_runs_under_tcmalloc_unless_told_not_to(tmp_path, shapes, choice):
    cfg = tiny(shapes, tmp_path / "run", max_steps=1, val_split=None)
    args = [f"{k}={'null' if v is None else v}".replace("'", "") for k, v in cfg.items()]
    env = {k: v for k, v in os.environ.items() if not k.startswith("FCNSEG_ALLOCATOR")}
    env.update(OMP_NUM_THREADS="2", FCNSEG_ALLOCATOR=choice)
    proc = subprocess.run([sys.executable, "-m", "fcnseg.cli", "train", *args], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    expected = "tcmalloc" if choice == "auto" and find_tcmalloc() and sys.platform.startswith("linux") else "system"
    assert f"memory allocator: {expected}" in proc.stdout, proc.stdout[-2000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()


@pytest.mark.slow
def test_fcnseg_evaluate_and_predict_run_under_tcmalloc_unless_told_not_to(tmp_path, shapes):
    model = save_shapes_model(tmp_path / "m.safetensors")
    expected = {"auto": "tcmalloc" if find_tcmalloc() and sys.platform.startswith("linux") else "system",
                "system": "system"}
    for choice in ("auto", "system"):
        env = {k: v for k, v in os.environ.items() if not k.startswith("FCNSEG_ALLOCATOR")}
        env.update(OMP_NUM_THREADS="2", FCNSEG_ALLOCATOR=choice)
        ev = subprocess.run([sys.executable, "-m", "fcnseg.cli", "evaluate", "--model", str(model), "--dataset",
                             "folder", "--root", str(shapes), "--split", "val", "--out", str(tmp_path / choice)],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert ev.returncode == 0, ev.stderr[-2000:]
        assert json.loads((tmp_path / choice / "metrics.json").read_text())["allocator"] == expected[choice]
        pr = subprocess.run([sys.executable, "-m", "fcnseg.cli", "predict", "--model", str(model), "--quiet",
                             str(shapes / "images" / "val"), "--out", str(tmp_path / f"pred-{choice}")],
                            capture_output=True, text=True, env=env, cwd=REPO, timeout=300)
        assert pr.returncode == 0, pr.stderr[-2000:]
        assert f"memory allocator: {expected[choice]}" in pr.stdout, pr.stdout[-2000:]
    # The allocator moves no number: the same labels, byte for byte.
    labels = {c: {p.name: p.read_bytes() for p in (tmp_path / f"pred-{c}").glob("*.png")} for c in expected}
    assert labels["auto"] and labels["auto"] == labels["system"]


def test_the_command_line_restarts_before_importing_torch():
    """The restart happens after parsing the arguments: torch must not be imported by then, or every restarted
    command would pay for its import twice (about 2.5 s on a 2-core machine)."""
    code = ("import sys, fcnseg.cli; assert 'torch' not in sys.modules, 'torch imported'; "
            "import fcnseg; assert callable(fcnseg.load) and 'fcn8s' in fcnseg.ARCHS and 'torch' in sys.modules; "
            "assert {'load', 'FCN', 'build_model'} <= set(dir(fcnseg))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        import fcnseg

        fcnseg.nothing  # noqa: B018


@pytest.mark.skipif(find_tcmalloc() is None or not sys.platform.startswith("linux"), reason="no tcmalloc here")
def test_commands_that_may_run_openvino_keep_the_system_allocator(tmp_path, module_shapes, tiny_model_file):
    """OpenVINO's runtime aborts under a preloaded tcmalloc ("free(): invalid pointer"): predict with --backend
    openvino or auto keeps glibc's malloc, and a process that has tcmalloc anyway is told so in one line instead of
    dying."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FCNSEG_ALLOCATOR", "FCNSEG_BACKEND"))}
    env.update(OMP_NUM_THREADS="1", FCNSEG_CACHE=str(tmp_path / "cache"))
    images = str(module_shapes / "images" / "val")

    def predict(backend: str, out: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "fcnseg.cli", "predict", images, "--model", str(tiny_model_file),
                               "--backend", backend, "--quiet", "--out", str(tmp_path / out)],
                              capture_output=True, text=True, env={**env, **extra}, cwd=REPO, timeout=300)

    for backend, allocator in (("openvino", "system"), ("auto", "system")):  # torch: the slow test above
        r = predict(backend, backend)
        assert r.returncode == 0, r.stderr[-2000:]
        assert r.stdout.splitlines()[-1].endswith(f"memory allocator: {allocator}"), r.stdout
    r = predict("openvino", "preloaded", LD_PRELOAD=str(find_tcmalloc()), FCNSEG_ALLOCATOR="system")
    assert r.returncode == 2 and r.stderr.strip().endswith(
        "OpenVINO aborts in a process with tcmalloc preloaded (LD_PRELOAD); run it without, e.g. "
        "FCNSEG_ALLOCATOR=system and LD_PRELOAD unset"), r.stderr
    assert not (tmp_path / "preloaded").exists()
