"""An exponential moving average of the weights (``ema_decay``): the average against one computed by hand, a
real run that validates and saves the average, and a resume that continues it exactly."""

import csv

import pytest
import torch
from helpers import StopAt
from test_train import tiny

from fcnseg.data import build_dataset, eval_transforms
from fcnseg.evaluate import evaluate
from fcnseg.io.checkpoint import load_checkpoint
from fcnseg.io.modelfile import load_model, read_model_metadata
from fcnseg.train import load_config, train
from fcnseg.train.ema import decay_at, make_ema


def test_the_decay_warms_up_to_the_configured_value():
    assert decay_at(0.999, 0) == pytest.approx(0.1)
    assert decay_at(0.999, 8) == pytest.approx(0.5)
    assert decay_at(0.999, 10**6) == 0.999
    assert all(decay_at(0.9, n) <= decay_at(0.9, n + 1) for n in range(100))
    with pytest.raises(ValueError, match="ema_decay must be in"):
        make_ema(torch.nn.Linear(2, 2), 1.0)
    with pytest.raises(ValueError, match="ema_decay must be in"):
        load_config(None, ["ema_decay=0"])


def test_the_average_of_weights_and_batchnorm_statistics_is_the_hand_computed_one():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    ema = make_ema(net, 0.9)
    expected = {k: v.clone() for k, v in net.state_dict().items()}
    for n in range(6):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
        net(torch.randn(2, 3, 8, 8))  # moves the running statistics and counts a batch
        ema.update_parameters(net)
        w = 1.0 if n == 0 else 1.0 - decay_at(0.9, n - 1)  # the first update copies
        for k, v in net.state_dict().items():
            expected[k] = v.clone() if not v.is_floating_point() else expected[k] + w * (v - expected[k])
    got = ema.module.state_dict()
    for k, v in expected.items():
        assert torch.allclose(got[k], v, atol=1e-6), k
    assert got["1.num_batches_tracked"] == 6  # a counter is the model's, not averaged
    assert not torch.allclose(got["0.weight"], net.state_dict()["0.weight"])


def _val_mean_iu(out):
    with open(out / "val_log.csv") as f:
        return [float(r["mean_iu"]) for r in csv.DictReader(f)]


def test_a_run_with_ema_validates_and_saves_the_average(tmp_path, shapes):
    cfg = load_config(None, tiny(shapes, tmp_path, epochs=2, ema_decay=0.8, ckpt_every=0))
    train(cfg)
    ckpt = load_checkpoint(tmp_path / "last.pt")
    live, average = ckpt["model"], {k.removeprefix("module."): v for k, v in ckpt["ema"].items()}
    assert int(ckpt["ema"]["n_averaged"]) == ckpt["step"]
    shipped = load_model(tmp_path / "model.safetensors")
    key = "score_fr.weight"
    assert torch.equal(shipped.state_dict()[key], average[key])
    assert not torch.allclose(shipped.state_dict()[key], live[key])  # the average, not the last step's weights
    info = read_model_metadata(tmp_path / "model.safetensors")["info"]
    assert info["weights"] == "ema" and info["ema_decay"] == 0.8
    # The last validation scored the average: its mean IU is that of model.safetensors scored again.
    val = build_dataset("folder", str(shapes), "val", transforms=eval_transforms())
    assert evaluate(shipped, val, torch.device("cpu"))["mean_iu"] == pytest.approx(_val_mean_iu(tmp_path)[-1])


@pytest.mark.slow
def test_a_resumed_run_continues_the_average_exactly(tmp_path, shapes):
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    train(load_config(None, tiny(shapes, whole, epochs=2, ema_decay=0.8, ckpt_every=1)))
    cfg = load_config(None, tiny(shapes, cut, epochs=2, ema_decay=0.8, ckpt_every=1))
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[StopAt(4)])
    train(cfg, resume="auto")
    a = load_model(whole / "model.safetensors")
    b = load_model(cut / "model.safetensors")
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
