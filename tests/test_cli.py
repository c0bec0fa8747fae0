from helpers import run_cli


def test_models_lists_parameter_counts():
    r = run_cli("models", "--backbone", "resnet18", "--num-classes", "11")
    assert r.returncode == 0, r.stderr
    rows = [line.split() for line in r.stdout.splitlines()[1:]]
    assert [row[1] for row in rows] == ["fcn32s", "fcn16s", "fcn8s", "fcn8s-atonce", "fcn4s", "fcn2s"]
    assert all(int(row[3].replace(",", "")) > 11_000_000 for row in rows)


def test_models_pretrained_lists_every_shipped_model_with_its_held_out_score():
    from fcnseg.pretrained import DEFAULT_MODEL, PRETRAINED, held_out

    r = run_cli("models", "--pretrained")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line for line in r.stdout.splitlines()[1:]}
    assert list(rows) == list(PRETRAINED)
    for name, line in rows.items():
        cells = line.split()
        assert cells[1:3] == [PRETRAINED[name].spec["arch"], PRETRAINED[name].spec["backbone"]]
        # A final model shows its selection run's held-out score and says so.
        assert float(cells[3]) == round(100 * PRETRAINED[held_out(name)].metrics["mean_iu"], 1)
        assert float(cells[4]) == round(PRETRAINED[name].path.stat().st_size / 1e6, 1)
        assert ("default" in line) == (name == DEFAULT_MODEL)
        assert (f"val score of {held_out(name)}" in line) == bool(PRETRAINED[name].selection)


def test_unknown_backbone_is_one_clear_line_and_exit_2():
    r = run_cli("models", "--backbone", "vgg19")
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "unknown backbone 'vgg19'; valid backbones: vgg16, alexnet" in r.stderr
    assert "Traceback" not in r.stderr
