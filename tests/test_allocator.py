"""The memory allocator: which one a process runs under, and `fcnseg train` restarting itself under tcmalloc
where it is installed (docs/training.md: 1.41x the training throughput of glibc's malloc on a 2-core CPU)."""

import os
import subprocess
import sys

import pytest
from helpers import REPO
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
