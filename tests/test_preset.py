"""The folder dataset's default recipe (fcnseg/presets/folder.yaml = configs/folder.yaml): what a run given no
config file starts from, and that it trains."""

from pathlib import Path

import torch
import yaml
from helpers import make_shapes

from fcnseg.train import TrainConfig, load_config, train
from fcnseg.train.config import FOLDER_PRESET

REPO = Path(__file__).resolve().parents[1]


def test_configs_folder_is_the_preset_and_every_key_is_a_config_key():
    assert (REPO / "configs" / "folder.yaml").resolve() == FOLDER_PRESET.resolve()
    preset = yaml.safe_load(FOLDER_PRESET.read_text())
    assert set(preset) <= set(TrainConfig.__dataclass_fields__) and preset["dataset"] == "folder"


def test_a_folder_run_without_a_config_file_gets_the_preset():
    cfg = load_config(None, ["dataset=folder", "root=data/x", "max_steps=50"])
    default = TrainConfig()
    preset = yaml.safe_load(FOLDER_PRESET.read_text())
    assert (cfg.arch, cfg.loss, cfg.crop, cfg.max_steps) == (preset["arch"], preset["loss"], preset["crop"], 50)
    assert cfg.arch != default.arch or cfg.loss != default.loss  # it is not the general default
    # A time budget, not a step count; a user who wants steps turns it off.
    budgeted = load_config(None, ["dataset=folder", "root=data/x"])
    assert budgeted.time_budget_min == preset["time_budget_min"] > 0 and budgeted.max_steps is None
    steps = load_config(None, ["dataset=folder", "root=data/x", "time_budget_min=null", "max_steps=300"])
    assert steps.time_budget_min is None and steps.max_steps == 300
    binary = load_config(None, ["dataset=folder", "root=data/x", "task=binary"])
    assert binary.loss == {"bce": 1.0, "dice": 1.0}  # ce is for softmax only
    grey = load_config(None, ["dataset=folder", "root=data/x", "in_channels=1"])
    assert grey.color_jitter == 0.0 and grey.arch == preset["arch"]  # colour jitter is for RGB images
    heavy = load_config(None, ["dataset=folder", "root=data/x", "mode=heavy"])
    assert (heavy.arch, heavy.optimizer, heavy.crop, heavy.loss) == (default.arch, "sgd", None, None)  # the paper's
    camvid = load_config(None, ["root=data/x"])
    assert (camvid.arch, camvid.loss) == (default.arch, default.loss)  # other datasets keep the defaults


def test_the_preset_trains_two_steps_on_a_tiny_folder_dataset(tmp_path):
    shapes = make_shapes(tmp_path / "shapes", n=8, splits=True)
    out = tmp_path / "run"
    cfg = load_config(None, [f"root={shapes}", "dataset=folder", "max_steps=2", "batch_size=2", "crop=[48,64]",
                             "workers=0", "threads=1", "tensorboard=false", f"out={out}", "val_every=1"])
    result = train(cfg)
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["arch"] == "fcn4s" and saved["loss"] == {"ce": 1.0, "dice": 1.0} and saved["max_steps"] == 2
    rows = [r.split(",") for r in (out / "train_log.csv").read_text().strip().splitlines()[1:]]
    assert [r[0] for r in rows] == ["1", "2"] and all(float(r[2]) > 0 for r in rows)  # two steps, ce + dice
    assert 0 <= result["mean_iu"] <= 1
    from fcnseg.io.modelfile import load_model

    model = load_model(out / "model.safetensors")
    assert model.arch == "fcn4s" and torch.isfinite(model(torch.rand(1, 3, 48, 64))).all()
