"""Typed configs: wrong types and values are refused when a config or preset is loaded, with one
line naming the file, the key, the expected type and the value."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kzlib.classify.config import ClassifyConfig
from kzlib.config import ConfigError, config_from_dict, load_config
from kzlib.detect.config import DetectConfig
from kzlib.preset import load_preset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "preset_tiny.json"


@pytest.mark.parametrize("key, value, message", [
    ("epochs", "3", 'epochs: expected int, got "3" (str)'),
    ("epochs", 1.5, "epochs: expected int, got 1.5 (float)"),
    ("lr", None, "lr: expected float, got null (NoneType)"),
    ("amp", "false", 'amp: expected bool, got "false" (str)'),
    ("batch_size", True, "batch_size: expected int, got true (bool)"),
    ("hsv_aug", [7, 10], "hsv_aug: expected 3 values, got [7, 10]"),
    ("anchor_sizes", [12, "x", 32, 64, 96], 'anchor_sizes[1]: expected int, got "x" (str)'),
    ("epochs", 0, "epochs: must be > 0, got 0"),
    ("lr", float("inf"), "lr: expected float"),
])
def test_wrong_values_name_the_file_and_key(tmp_path, key, value, message):
    path = tmp_path / "detect.json"
    path.write_text(json.dumps({key: value}))
    with pytest.raises(ConfigError) as e:
        load_config(DetectConfig, path)
    assert str(e.value).startswith(f"{path}: ") and message in str(e.value)


def test_ints_become_floats_lists_tuples_and_old_names_still_read():
    cfg = config_from_dict(DetectConfig, {"lr": 1, "lr_steps": [3, 4]})
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.lr_steps == (3, 4)
    with pytest.warns(DeprecationWarning, match="base is now called backbone"):
        assert config_from_dict(ClassifyConfig, {"base": "resnet18"}).backbone == "resnet18"
    with pytest.raises(ConfigError, match=r"page_height is now page_size \(with \"page_side\": \"height\""):
        config_from_dict(DetectConfig, {"page_height": 800})


def test_a_preset_names_the_nested_key(tmp_path):
    preset = json.loads(TINY.read_text())
    preset["kinds"]["a"]["epochs"] = "3"
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    with pytest.raises(ConfigError, match=rf'^{path}: kinds.a.epochs: expected int, got "3"'):
        load_preset(path)
    preset = json.loads(TINY.read_text())
    preset["n_folds"] = "2"
    path.write_text(json.dumps(preset))
    with pytest.raises(ConfigError, match=rf'^{path}: n_folds: expected int, got "2"'):
        load_preset(path)


def test_the_runner_refuses_a_bad_preset_before_anything_runs(tmp_path):
    preset = json.loads(TINY.read_text())
    preset["detect"]["epochs"] = None
    path = tmp_path / "p.json"
    path.write_text(json.dumps(preset))
    work = tmp_path / "w"
    r = subprocess.run([sys.executable, str(ROOT / "run_local.py"), "--data", str(ROOT / "tests" / "fixtures" / "tiny"),
                        "--work", str(work), "--preset", str(path), "--dry-run"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.strip() == f"error: {path}: detect.epochs: expected int, got null (NoneType)"
    assert not work.exists()


def test_a_misspelt_bool_flag_is_an_error(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kzlib.detect", "train", str(tmp_path), "--out", str(tmp_path / "r"),
                        "--amp", "flase"], capture_output=True, text=True)
    assert r.returncode == 2 and "argument --amp: expected true or false, got 'flase'" in r.stderr


def test_presets_with_several_gpus_are_checked_when_loaded(tmp_path):
    """gpus > 1 with a batch that does not split, or on the CPU, is refused at load time (it used to
    pass --dry-run and fail after every detector fold had trained)."""
    import json

    from kzlib.preset import load_preset, preset_path

    full = json.loads(preset_path("full").read_text())
    for changes, said in (({"gpus": 2, "kinds": {**full["kinds"], "resnet152": {**full["kinds"]["resnet152"],
                                                                             "batch_size": 9}}},
                           "kinds.resnet152.batch_size: 9 (the global batch) does not split over gpus 2"),
                          ({"gpus": 2, "device": "cpu"}, "gpus: 2 processes train on one GPU each, but device is 'cpu'"),
                          ({"gpus": 3}, "detect.batch_size: 16 (the global batch) does not split over gpus 3")):
        path = tmp_path / "p.json"
        path.write_text(json.dumps({**full, **changes}))
        with pytest.raises(ConfigError, match=re.escape(said)):
            load_preset(path)
    path.write_text(json.dumps({**full, "gpus": 2}))
    assert load_preset(path).gpus == 2


def test_a_time_scale_multiplies_every_budget_and_nothing_else(tmp_path):
    from kzlib.preset import preset_path

    preset = json.loads(preset_path("demo").read_text())
    preset["detect"]["time_budget_s"], preset["kinds"]["resnet18"]["time_budget_s"] = 100.0, 150.0
    preset["finetune_time_budget_s"] = 40.0
    (tmp_path / "timed.json").write_text(json.dumps(preset))
    timed = load_preset(tmp_path / "timed.json")
    x3 = timed.with_time_scale(3)
    assert x3.detect_config().time_budget_s == 3 * 100
    assert x3.classify_config("resnet18").time_budget_s == 3 * 150
    assert x3.finetune_config("resnet18", "c.pth").time_budget_s == 3 * 40
    assert x3.detect_config().epochs == timed.detect_config().epochs and x3.n_folds == timed.n_folds
    for name in ("full", "demo"):  # fixed epochs: nothing to scale (make demo gives the same figures on every run)
        fixed = load_preset(preset_path(name))
        assert fixed.with_time_scale(3) == fixed
    with pytest.raises(ConfigError, match="time scale"):
        timed.with_time_scale(0)


def test_a_time_scale_on_a_preset_without_budgets_is_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "kzlib", "run", "--data", str(tmp_path), "--work", str(tmp_path / "w"),
                          "--preset", "full", "--time-scale", "2", "--dry-run"], capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().splitlines() == [
        "error: --time-scale: preset full has no time budgets (time_budget_s) to scale; its epochs are fixed"]


def test_resized_resnets_have_the_asked_widths_and_blocks():
    """trunk_channels/trunk_blocks (classifier) and backbone_channels/backbone_blocks (detector)
    build a ResNet of those stage widths and depths, from random weights only; left empty, the
    networks are the architectures their names give."""
    from kzlib.classify.model import Classifier
    from kzlib.detect.model import build_model

    c = Classifier(ClassifyConfig(backbone="resnet18", pretrained="", trunk_channels=(24, 48, 96, 192),
                                  trunk_blocks=(1, 1, 1, 1), hidden=16), 5)
    assert c.trunk.feature_info.channels() == [48, 96] and c.trunk.layer1[0].conv1.out_channels == 24
    assert len(c.trunk.layer2) == len(c.trunk.layer3) == 1
    plain = Classifier(ClassifyConfig(backbone="resnet18", pretrained="", hidden=16), 5)
    assert plain.trunk.feature_info.channels() == [128, 256] and len(plain.trunk.layer2) == 2
    d = build_model(DetectConfig(backbone="resnet18", pretrained="", backbone_channels=(32, 64, 128, 256),
                                 backbone_blocks=(1, 2, 1, 1), fpn_channels=16))
    body = d.backbone.body
    assert body.layer1[0].conv1.out_channels == 32 and [len(body[f"layer{i}"]) for i in range(1, 5)] == [1, 2, 1, 1]
    assert [b[0].in_channels for b in d.backbone.fpn.inner_blocks] == [32, 64, 128, 256]
    d.eval()
    assert d(torch.rand(1, 3, 64, 96))[0]["boxes"].shape[1] == 4
    full = build_model(DetectConfig(backbone="resnet18", pretrained="", fpn_channels=16))
    assert [b[0].in_channels for b in full.backbone.fpn.inner_blocks] == [64, 128, 256, 512]
    assert type(full.backbone.body.layer1[0]).__module__.startswith("torchvision")
    for bad, said in [({"backbone_channels": (32, 64)}, "four positive numbers"),
                      ({"backbone_blocks": (1, 0, 1, 1)}, "four positive numbers"),
                      ({"backbone_channels": (8, 8, 8, 8), "pretrained": "auto"}, "no pretrained weights")]:
        with pytest.raises(ConfigError, match=said):
            DetectConfig(backbone="resnet18", **{"pretrained": "", **bad})
    with pytest.raises(ConfigError, match="trunk_channels/trunk_blocks: a ResNet of another size"):
        ClassifyConfig(trunk_blocks=(1, 1, 1, 1))


def test_the_rpn_keeps_the_proposals_asked_in_training():
    from kzlib.detect.model import build_model

    rpn = build_model(DetectConfig(backbone="resnet18", pretrained="", rpn_pre_nms_train=700,
                                   rpn_post_nms_train=300, fpn_channels=16)).rpn
    assert rpn._pre_nms_top_n == {"training": 700, "testing": 1000}
    assert rpn._post_nms_top_n == {"training": 300, "testing": 1000}
    assert build_model(DetectConfig(backbone="resnet18", pretrained="", fpn_channels=16)).rpn._pre_nms_top_n[
        "training"] == 2000  # torchvision's default, as before the setting
