from helpers import run_cli


def test_models_lists_parameter_counts():
    r = run_cli("models", "--backbone", "resnet18", "--num-classes", "11")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[1] for row in rows] == ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn4s", "fcn2s"]
    assert all(int(row[3].replace(",", "")) > 11_000_000 for row in rows)


def test_unknown_backbone_is_one_clear_line_and_exit_2():
    r = run_cli("models", "--backbone", "vgg19")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "unknown backbone 'vgg19'; valid backbones: vgg16, alexnet" in r.stderr
    assert "Traceback" not in r.stderr
