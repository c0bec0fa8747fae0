"""Staged training's initialisation: FCN-16s from FCN-32s, FCN-8s from FCN-16s, and on below stride 8:
FCN-4s from FCN-8s, FCN-2s from FCN-4s."""

import pytest
import torch

import fcnseg


def _trained_like(model):
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for conv in model.score_layers():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=g))
            conv.bias.copy_(torch.randn(conv.bias.shape, generator=g))
    return model.eval()


@pytest.mark.parametrize("backbone", [pytest.param("vgg16", marks=pytest.mark.slow), "resnet18"])
def test_new_skip_adds_exactly_zero_and_agrees_with_its_parent(backbone, record_property):
    torch.manual_seed(0)
    m32 = _trained_like(fcnseg.build_model("fcn32s", backbone, 6))
    m16 = fcnseg.staged_init(m32).eval()
    seen = {}
    m16.score_pool4.register_forward_hook(lambda m, i, o: seen.__setitem__("pool4", o.clone()))
    x = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        s32, s16 = m32(x), m16(x)
    assert seen["pool4"].abs().max() == 0
    m8 = fcnseg.staged_init(_trained_like(m16)).eval()  # m16 "trained" further before growing
    m8.score_pool3.register_forward_hook(lambda m, i, o: seen.__setitem__("pool3", o.clone()))
    with torch.no_grad():
        s16b, s8 = m16(x), m8(x)
    assert seen["pool3"].abs().max() == 0
    assert (m16.arch, m8.arch) == ("fcn16s", "fcn8s")
    # Inherited layers are copies, not shared.
    assert torch.equal(m16.score_fr.weight, m32.score_fr.weight)
    assert m16.score_fr.weight.data_ptr() != m32.score_fr.weight.data_ptr()
    # Only the upsampling path changed (two bilinear steps instead of one), so the labels barely move.
    agree16 = (s16.argmax(1) == s32.argmax(1)).float().mean().item()
    agree8 = (s8.argmax(1) == s16b.argmax(1)).float().mean().item()
    record_property("argmax_agreement_16s_vs_32s", agree16)
    record_property("argmax_agreement_8s_vs_16s", agree8)
    print(f"{backbone}: same argmax 16s/32s {agree16:.4f}, 8s/16s {agree8:.4f}")
    assert agree16 > 0.9 and agree8 > 0.9


@pytest.mark.parametrize("backbone", ["efficientnet_lite0", pytest.param("vgg16", marks=pytest.mark.slow)])
def test_finer_skips_grow_from_fcn8s_adding_exactly_zero(backbone, record_property):
    """8s -> 4s -> 2s as the paper grows 32s -> 16s -> 8s: the new score layer (score_pool2, score_pool1) starts
    at zero, everything else is copied, and only the extra bilinear step moves the labels."""
    torch.manual_seed(0)
    m8 = _trained_like(fcnseg.build_model("fcn8s", backbone, 4))
    m4 = fcnseg.staged_init(m8).eval()
    seen = {}
    m4.score_pool2.register_forward_hook(lambda m, i, o: seen.__setitem__("pool2", o.clone()))
    x = torch.rand(1, 3, 80, 112)
    with torch.no_grad():
        s8, s4 = m8(x), m4(x)
    assert m4.arch == "fcn4s" and seen["pool2"].abs().max() == 0
    for name in ("score_fr", "score_pool4", "score_pool3"):
        assert torch.equal(getattr(m4, name).weight, getattr(m8, name).weight)
    m2 = fcnseg.staged_init(_trained_like(m4)).eval()
    m2.score_pool1.register_forward_hook(lambda m, i, o: seen.__setitem__("pool1", o.clone()))
    with torch.no_grad():
        s4b, s2 = m4(x), m2(x)
    assert m2.arch == "fcn2s" and seen["pool1"].abs().max() == 0
    assert torch.equal(m2.score_pool2.weight, m4.score_pool2.weight)
    agree4 = (s4.argmax(1) == s8.argmax(1)).float().mean().item()
    agree2 = (s2.argmax(1) == s4b.argmax(1)).float().mean().item()
    record_property("argmax_agreement_4s_vs_8s", agree4)
    record_property("argmax_agreement_2s_vs_4s", agree2)
    assert agree4 > 0.9 and agree2 > 0.9
    assert fcnseg.staged_init(m8, "fcn2s").arch == "fcn2s"  # two stages at once, as 32s -> 8s


def test_staged_init_keeps_preprocessing_and_refuses_wrong_order():
    m2 = fcnseg.build_model("fcn2s", "resnet18", 3)
    with pytest.raises(ValueError, match="grows fcn32s -> fcn16s -> fcn8s -> fcn4s -> fcn2s; got a fcn2s"):
        fcnseg.staged_init(m2)
    with pytest.raises(ValueError, match="got a fcn8s-atonce"):
        fcnseg.staged_init(fcnseg.build_model("fcn8s-atonce", "resnet18", 3))
    with pytest.raises(ValueError, match="cannot grow a fcn8s into 'fcn16s'"):
        fcnseg.staged_init(fcnseg.build_model("fcn8s", "resnet18", 3), "fcn16s")
    with pytest.raises(ValueError, match="'alexnet' has no stride-2 features"):
        fcnseg.staged_init(fcnseg.build_model("fcn4s", "alexnet", 3))
    m32 = fcnseg.build_model("fcn32s", "efficientnet_lite0", 3)
    assert fcnseg.staged_init(m32, "fcn8s").preprocessing == m32.preprocessing


@pytest.mark.parametrize("with_spec", [False, True], ids=["config-only", "spec"])
def test_a_training_checkpoint_rebuilds_the_model_it_saved(tmp_path, with_spec):
    """``init_from: last.pt``: the spec comes from the checkpoint's ``spec`` entry or, in checkpoints written
    without one, from its training config and preprocessing."""
    from fcnseg.io.checkpoint import checkpoint_spec, load_checkpoint, save_checkpoint
    from fcnseg.preprocessing import CAFFE_BGR

    torch.manual_seed(0)
    model = _trained_like(fcnseg.build_model("fcn16s", "alexnet", 3, upsampling="learned"))
    model.normalize.set(CAFFE_BGR)  # not the trunk's default: the checkpoint must carry it
    config = {"arch": "fcn16s", "backbone": "alexnet", "padding": "paper", "upsampling": "learned", "lr": 1e-3}
    save_checkpoint({"model": model.state_dict(), "config": config, "preprocessing": CAFFE_BGR.to_dict()},
                    tmp_path / "last.pt", spec=model.spec if with_spec else None)
    state = load_checkpoint(tmp_path / "last.pt")
    assert ("spec" in state) == with_spec
    names = ["background", "a", "b"]
    spec = checkpoint_spec(state, names)
    assert spec.preprocessing == CAFFE_BGR and spec.alignment == "exact" and spec.class_names == tuple(names)
    again = spec.build().eval()
    again.load_state_dict(state["model"])
    x = torch.rand(1, 3, 37, 45)
    with torch.no_grad():
        assert torch.equal(again(x), model(x))
    assert again.spec == model.spec.replace(class_names=tuple(names))


def test_init_from_grows_a_saved_fcn8s_into_fcn4s_and_fcn2s(tmp_path):
    """The train config's ``init_from`` takes the staged step below stride 8 too (8s -> 4s, 8s -> 2s)."""
    from fcnseg.io.modelfile import save_model
    from fcnseg.train import load_config
    from fcnseg.train.model import build

    names = ["background", "vessel"]
    m8 = _trained_like(fcnseg.build_model("fcn8s", "efficientnet_lite0", 2, class_names=names))
    save_model(m8, tmp_path / "m8.safetensors")
    x = torch.rand(1, 3, 48, 64)
    for arch in ("fcn4s", "fcn2s"):
        cfg = load_config(None, {"arch": arch, "init_from": str(tmp_path / "m8.safetensors"), "dataset": "folder",
                                 "root": str(tmp_path)})
        model = build(cfg, names, [(0, 0, 0), (255, 0, 0)]).eval()
        assert model.arch == arch and torch.equal(model.score_pool3.weight, m8.score_pool3.weight)
        assert model.score_pool2.weight.abs().max() == 0
        with torch.no_grad():
            agree = (model(x).argmax(1) == m8(x).argmax(1)).float().mean().item()
        assert agree > 0.9, (arch, agree)
