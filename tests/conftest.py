import os
from functools import cache
from pathlib import Path

import pytest
import torch

import fcnseg

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@cache
def cached_model(arch: str, backbone: str, num_classes: int = 5) -> fcnseg.FCN:
    """Models are expensive to build (VGG16: 134M parameters); tests that only read them share one."""
    torch.manual_seed(0)
    return fcnseg.build_model(arch, backbone, num_classes)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED
