"""Pretrained weights: fetching through the libraries' loaders (replaced by fakes: no network in
tests), the manifest and its checks, resolution of preset names, and the exact full-preset models
built from files with the real key layout."""

import json
from dataclasses import replace

import pytest
import torch

from helpers import run_main
from kzlib import weights
from kzlib.io import file_sha256
from kzlib.preset import load_preset, preset_path
from kzlib.weights_cli import main as weights_main

ROOT = weights.Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_loaders(monkeypatch):
    calls = []

    def fake(spec):
        calls.append(spec.arch)
        return {"conv1.weight": torch.full((2, 3), float(len(calls))), "fc.bias": torch.zeros(2)}

    monkeypatch.setattr(weights, "LOADERS", {"torchvision": fake, "timm": fake})
    return calls


def test_fetch_writes_files_and_manifest_then_skips_verified(tmp_path, fake_loaders):
    rows = weights.fetch(tmp_path, ["resnet152", "resnext101_32x8d"], log=lambda *_: None)
    assert fake_loaders == ["resnet152", "resnext101_32x8d"]
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest) == {"resnet152_imagenet1k_v1.pth", "resnext101_32x8d_wsl.pth"}
    entry = manifest["resnext101_32x8d_wsl.pth"]
    assert entry["library"] == "timm" and entry["source"] == "resnext101_32x8d.fb_wsl_ig1b_ft_in1k"
    assert entry["sha256"] == file_sha256(tmp_path / "resnext101_32x8d_wsl.pth") and entry["tensors"] == 2
    assert manifest["resnet152_imagenet1k_v1.pth"]["source"] == "IMAGENET1K_V1" and len(rows) == 2
    assert weights.load_state(tmp_path / "resnet152_imagenet1k_v1.pth")["conv1.weight"][0, 0] == 1.0
    weights.fetch(tmp_path, ["resnet152"], log=lambda *_: None)
    assert fake_loaders == ["resnet152", "resnext101_32x8d"]  # verified: not fetched again
    weights.fetch(tmp_path, ["resnet152"], force=True, log=lambda *_: None)
    assert fake_loaders[-1] == "resnet152"


def test_corrupt_missing_and_unknown_files_are_one_line(tmp_path, fake_loaders):
    weights.fetch(tmp_path, ["resnet152"], log=lambda *_: None)
    path = tmp_path / "resnet152_imagenet1k_v1.pth"
    assert weights.status(path) == "verified"
    assert weights.require("auto", "resnet152", tmp_path) == path
    data = path.read_bytes()
    path.write_bytes(data[:-10] + b"0123456789")
    assert weights.status(path) == "corrupt"
    with pytest.raises(weights.WeightsError, match="do not match their SHA-256.*kzlib weights fetch"):
        weights.require("auto", "resnet152", tmp_path)
    with pytest.raises(weights.WeightsError, match="resnext101_32x8d_wsl.pth not found; run `python -m kzlib weights fetch"):
        weights.require("auto", "resnext101_32x8d", tmp_path)
    with pytest.raises(weights.WeightsError, match="no registered pretrained weights"):
        weights.require("auto", "efficientnet_b0", tmp_path)
    # a file without a manifest entry: "unverified" when it loads as a state dict, else "corrupt"
    (tmp_path / "garbage.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(weights.WeightsError, match="garbage.pth: not a readable weight file"):
        weights.load_state(tmp_path / "garbage.pth")
    assert weights.status(tmp_path / "garbage.pth") == "corrupt"
    with pytest.raises(weights.WeightsError, match="garbage.pth not a readable weight file.*replace the file"):
        weights.require("garbage.pth", "resnet152", tmp_path)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "mine.pth")
    assert weights.status(tmp_path / "mine.pth") == "unverified"
    assert weights.require("mine.pth", "resnet152", tmp_path) == tmp_path / "mine.pth"


def test_a_loader_that_fails_is_one_line(tmp_path, monkeypatch):
    def offline(spec):
        raise ConnectionError("Name or service not known")

    monkeypatch.setattr(weights, "LOADERS", {"torchvision": offline, "timm": offline})
    with pytest.raises(weights.WeightsError, match="torchvision could not provide IMAGENET1K_V1 for resnet152.*internet"):
        weights.fetch(tmp_path, ["resnet152"], log=lambda *_: None)
    assert not (tmp_path / "resnet152_imagenet1k_v1.pth").exists()


def test_resolve_names_paths_and_scratch(tmp_path):
    assert weights.resolve("", "resnet152", tmp_path) is None
    assert weights.resolve("auto", "resnet152", tmp_path) == tmp_path / "resnet152_imagenet1k_v1.pth"
    assert weights.resolve("my.pth", "resnet152", tmp_path) == tmp_path / "my.pth"
    assert weights.resolve(str(tmp_path / "x" / "y.pth"), "resnet152", tmp_path) == tmp_path / "x" / "y.pth"


def test_list_cli_shows_each_preset_stage_and_status(tmp_path, fake_loaders, capsys):
    assert weights_main(["list", "--dir", str(tmp_path), "--preset", "full", "demo"]) == 1
    out = capsys.readouterr().out
    assert "classify resnext101" in out and "missing" in out and "trains from scratch" in out
    assert "--preset full" in out  # the command that fixes it
    weights.fetch(tmp_path, ["resnet152", "resnext101_32x8d"], log=lambda *_: None)
    assert weights_main(["list", "--dir", str(tmp_path), "--preset", "full"]) == 0
    out = capsys.readouterr().out
    assert out.count("verified") == 3  # detector, resnet152, resnext101
    assert weights_main(["fetch", "--out", str(tmp_path), "--preset", "full"]) == 0  # all verified: no loader call
    assert fake_loaders == ["resnet152", "resnext101_32x8d"]


def test_fetch_gets_every_file_the_presets_name(tmp_path, fake_loaders, capsys):
    """preset_full names its files ("resnet152_imagenet1k_v1.pth", not "auto"): fetch resolves
    registered names to their architecture and gets exactly the files the preset needs."""
    cfg = load_preset(preset_path("full"))
    needed = {weights.resolve(n.value, n.arch, tmp_path).name for n in cfg.weight_needs()}
    assert weights_main(["fetch", "--out", str(tmp_path), "--preset", "full"]) == 0
    assert sorted(fake_loaders) == ["resnet152", "resnext101_32x8d"]
    assert set(json.loads((tmp_path / "manifest.json").read_text())) == needed == {
        "resnet152_imagenet1k_v1.pth", "resnext101_32x8d_wsl.pth"}
    assert "2 weight file(s)" in capsys.readouterr().out
    # a preset that needs nothing says so; a file of the user's own is named, not fetched
    assert weights_main(["fetch", "--out", str(tmp_path / "d"), "--preset", "demo"]) == 0
    assert "preset demo: trains every network from random weights; nothing to fetch" in capsys.readouterr().out
    own = tmp_path / "own.json"
    own.write_text(json.dumps({**json.loads(preset_path("full").read_text()),
                               "detect": {"backbone": "resnet50", "pretrained": "my_resnet50.pth"}}))
    assert weights_main(["fetch", "--out", str(tmp_path / "o"), "--preset", str(own)]) == 0
    assert "names 'my_resnet50.pth', which is not a file kzlib can fetch" in capsys.readouterr().out
    # a registered file of another architecture is refused
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**json.loads(preset_path("full").read_text()),
                               "detect": {"backbone": "resnet50", "pretrained": "resnet152_imagenet1k_v1.pth"}}))
    assert weights_main(["fetch", "--out", str(tmp_path / "b"), "--preset", str(bad)]) == 3
    assert "holds resnet152 weights, but the network is a resnet50" in capsys.readouterr().err


def test_fetched_weights_let_the_full_preset_plan(tmp_path, fake_loaders, tiny, capsys):
    """From a clean folder, loaders faked: fetch, then the full preset's dry run plans without a
    weights error and `list` shows every file verified."""
    from kzlib.run import main as run_main

    folder = tmp_path / "pretrained"
    args = ["--data", str(tiny), "--work", str(tmp_path / "w"), "--preset", "full", "--dry-run",
            "--pretrained-dir", str(folder)]
    assert run_main(args) == 3
    assert f"run `python -m kzlib weights fetch --preset full --out {folder}`" in capsys.readouterr().err
    assert weights_main(["fetch", "--out", str(folder), "--preset", "full"]) == 0
    assert weights_main(["list", "--dir", str(folder), "--preset", "full"]) == 0
    out = capsys.readouterr().out
    assert out.count("verified") == 3 and "missing" not in out
    assert run_main(args) == 0
    assert "classify-resnext101-f4" in capsys.readouterr().out


def test_fetch_cli_without_network_is_one_line(tmp_path, monkeypatch):
    for name, value in {"HOME": str(tmp_path), "TORCH_HOME": str(tmp_path / "torch"), "https_proxy": "http://127.0.0.1:9",
                        "HTTPS_PROXY": "http://127.0.0.1:9"}.items():  # the download goes nowhere
        monkeypatch.setenv(name, value)
    for name in ("no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
    code, _, err = run_main(weights_main, "fetch", "--out", tmp_path, "--arch", "resnet18", "--preset")
    assert code == 3 and err.startswith("error: torchvision could not provide") and len(err.strip().splitlines()) == 1, err


def test_full_preset_models_train_and_predict_from_weight_files(tmp_path):
    """The exact full-preset networks, built from weight files with the fetched files' key layout
    (random values): one training step and one prediction each on a tiny input."""
    import timm
    import torchvision

    from kzlib.classify.model import FROZEN_MODULES, Classifier
    from kzlib.detect.model import build_model

    torch.manual_seed(0)
    torch.save(torchvision.models.resnet152().state_dict(), tmp_path / "resnet152_imagenet1k_v1.pth")
    torch.save(timm.create_model("resnext101_32x8d").state_dict(), tmp_path / "resnext101_32x8d_wsl.pth")
    cfg = load_preset(preset_path("full")).with_weights_dir(tmp_path)
    file_state = weights.load_state(tmp_path / "resnet152_imagenet1k_v1.pth")

    # detector: ResNet-152 FPN, frozen BatchNorm, layer2-4 trainable, weights from the file
    det_cfg = replace(cfg.detect_config(), device="cpu")
    det = build_model(det_cfg)
    body = det.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, file_state["layer3.0.conv1.weight"])
    assert isinstance(body.bn1, torchvision.ops.FrozenBatchNorm2d)
    assert not body.conv1.weight.requires_grad and not any(p.requires_grad for p in body.layer1.parameters())
    assert all(p.requires_grad for p in body.layer2.parameters())
    det.train()
    image = torch.rand(3, 96, 128)
    target = {"boxes": torch.tensor([[10.0, 10, 30, 34], [50, 40, 70, 66]]), "labels": torch.ones(2, dtype=torch.int64)}
    losses = det([image], [target])
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    torch.optim.SGD([p for p in det.parameters() if p.requires_grad], lr=1e-3).step()
    det.eval()
    with torch.no_grad():
        out = det([image])[0]
    assert set(out) == {"boxes", "scores", "labels"}

    # the classifier kinds: ResNet-152, ResNeXt-101 32x8d with frozen start
    images = torch.rand(2, 3, 128, 96)
    boxes = [torch.tensor([[8.0, 8, 40, 48], [50, 60, 80, 100]]), torch.tensor([[10.0, 20, 60, 70]])]
    for kind in ("resnet152", "resnext101"):
        c = replace(cfg.classify_config(kind), device="cpu")
        model = Classifier(c, n_classes=11)
        state = weights.load_state(tmp_path / weights.SPECS[c.backbone].file)
        assert torch.equal(model.trunk.layer2[0].conv1.weight, state["layer2.0.conv1.weight"])
        frozen = {k: v.clone() for k, v in model.trunk.state_dict().items() if k.split(".")[0] in FROZEN_MODULES}
        assert c.frozen_start == (kind == "resnext101") and len(frozen) > 10
        model.train()
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
        loss = torch.nn.functional.cross_entropy(model(images, boxes), torch.tensor([1, 2, 3]))
        assert torch.isfinite(loss)
        loss.backward()
        opt.step()
        if c.frozen_start:
            assert not model.trunk.bn1.training and not model.trunk.layer1.training
            after = model.trunk.state_dict()
            assert all(torch.equal(v, after[k]) for k, v in frozen.items())  # weights and BatchNorm statistics
        model.eval()
        with torch.no_grad():
            assert model(images, boxes).shape == (3, 11)


def test_kaggle_dataset_carries_the_presets_weights(tmp_path, fake_loaders):
    from kzlib.kaggle.build import build_dataset, preset_weights

    with pytest.raises(weights.WeightsError, match="--preset full: stage detect.*not found"):
        preset_weights(["full"], tmp_path / "w")
    weights.fetch(tmp_path / "w", ["resnet152", "resnext101_32x8d"], log=lambda *_: None)
    files = preset_weights(["full", "demo"], tmp_path / "w")
    assert sorted(weights.Path(f).name for f in files) == ["resnet152_imagenet1k_v1.pth", "resnext101_32x8d_wsl.pth"]
    names = [rel for rel, _ in build_dataset(tmp_path / "ds", "test", pretrained=files)]
    assert {"pretrained/resnet152_imagenet1k_v1.pth", "pretrained/resnext101_32x8d_wsl.pth",
            "pretrained/manifest.json"} <= set(names)
    # the kernels check the dataset's copies the way the runner checks the local folder
    cfg = load_preset(preset_path("full"))
    assert [p.name for p in cfg.check_weights(tmp_path / "ds" / "pretrained")] == \
        ["resnet152_imagenet1k_v1.pth", "resnet152_imagenet1k_v1.pth", "resnext101_32x8d_wsl.pth"]
    assert weights.status(tmp_path / "ds" / "pretrained" / "resnext101_32x8d_wsl.pth") == "verified"


def test_one_loader_by_name_and_shape(tmp_path):
    """Detector backbone and classifier trunk load through one function: every tensor of the
    network from the file (extra tensors of the file left out), else one line naming one missing."""
    import torchvision

    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    net = torchvision.models.resnet18()
    weights.load_into(net, tmp_path / "r18.pth")
    assert torch.equal(net.layer1[0].conv1.weight, torch.load(tmp_path / "r18.pth")["layer1.0.conv1.weight"])
    trunk = torch.nn.Sequential()  # a truncated network: the file's other tensors are not needed
    trunk.add_module("conv1", torchvision.models.resnet18().conv1)
    weights.load_into(trunk, tmp_path / "r18.pth")
    with pytest.raises(weights.WeightsError, match=r"r18.pth: \d+ of \d+ tensors .* missing from the file or of "
                                                   r"another shape \(e.g. layer"):
        weights.load_into(torchvision.models.resnet34(), tmp_path / "r18.pth")
