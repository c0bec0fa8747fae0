"""The OpenVINO, compiled and int8 checks (``isolated_backends.py``, ``isolated_quantize.py``: every assert
there) run in a pytest process of their own. Loaded into the main test process, OpenVINO and torch.compile
left it to die of a segmentation fault several tests later, in tests that use neither."""

import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.slow
@pytest.mark.parametrize("name", ["isolated_backends.py", "isolated_quantize.py"])
def test_backend_checks_pass_in_a_process_of_their_own(name):
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(HERE / name)],
                       cwd=HERE.parent, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1] and "failed" not in r.stdout.splitlines()[-1]
