"""Fixtures shared by the tests; the helpers they are built on are in helpers.py."""

import os
from pathlib import Path

import pytest
import torch
from helpers import SHARED, make_shapes, save_shapes_model

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
# fcnseg predict's default backend (auto) loads OpenVINO, after which a long test process died of a segmentation
# fault in later tests (tests/test_backends.py); here, and in the CLI subprocesses, predict runs eager PyTorch
# unless a test asks for auto, which isolated_backends.py tests in a process of its own.
os.environ["FCNSEG_BACKEND"] = "torch"


@pytest.fixture
def shared_data() -> Path:
    if not SHARED.is_dir():
        pytest.skip("../shared/data is absent")
    return SHARED


@pytest.fixture
def shapes(tmp_path) -> Path:
    return make_shapes(tmp_path / "shapes", n=8, splits=True)


@pytest.fixture(scope="module")
def module_shapes(tmp_path_factory) -> Path:
    """The shapes dataset (8 images of 48x64, train/val), one per test module."""
    return make_shapes(tmp_path_factory.mktemp("data") / "shapes", n=8, size=(48, 64), splits=True)


@pytest.fixture(scope="module")
def tiny_model_file(tmp_path_factory) -> Path:
    """A 3-class FCN-8s with random score layers (its labels vary across an image), saved as a model file
    (``save_shapes_model``); one per test module."""
    return save_shapes_model(tmp_path_factory.mktemp("tiny-model") / "tiny.safetensors")
