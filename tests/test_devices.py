"""Devices: a GPU asked for that cannot be used says why in one line (a driver too old for the
build: faked here), the device line, mixed precision per device, cuDNN's autotuner on for training
and off for pages."""

import pytest
import torch

from kzlib import devices
from kzlib.classify.config import ClassifyConfig
from kzlib.errors import EnvironmentProblem
from helpers import PRESET, tiny_preset


@pytest.fixture
def old_driver(monkeypatch):
    """This machine as one with a GPU whose driver (535) is older than the CUDA 13.0 build needs."""
    monkeypatch.setattr(devices, "driver_version", lambda: "535.104.05")
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_a_driver_too_old_for_the_build_is_one_line_with_the_fix(old_driver):
    why = devices.why_no_cuda()
    assert "built for CUDA 13.0, which needs NVIDIA driver >= 580; this machine's driver is 535.104.05" in why
    assert "--index-url https://download.pytorch.org/whl/cu126" in why and "\n" not in why
    with pytest.raises(EnvironmentProblem, match="--device cuda asked for, but torch .* needs NVIDIA driver >= 580"):
        devices.pick_device("cuda")
    said = []
    assert devices.pick_device("auto", log=said.append).type == "cpu"  # auto: says why, then the CPU
    assert said and said[0].startswith("warning: torch") and "driver >= 580" in said[0]
    assert devices.describe_asked("cuda").startswith("device: cuda asked, none usable here (torch")


def test_no_driver_and_a_cpu_build_say_so(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "driver_version", lambda: None)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert "no NVIDIA GPU is visible" in devices.why_no_cuda()
    said = []
    assert devices.pick_device("auto", log=said.append).type == "cpu" and not said  # no GPU here: nothing to say
    monkeypatch.setattr(torch.version, "cuda", None)
    assert "CPU-only build" in devices.why_no_cuda()


def test_the_runner_names_the_device_and_the_driver_fix(old_driver, tiny, tmp_path, capsys):
    """A tiny CUDA-less plan prints the device line; the full preset on a GPU whose driver is too old
    stops with the install hint, in one line."""
    from kzlib.run import main as run_main

    preset = PRESET
    assert run_main(["--data", str(tiny), "--work", str(tmp_path / "w"), "--preset", str(preset), "--dry-run"]) == 0
    assert capsys.readouterr().out.startswith("device: CPU (")
    assert run_main(["--data", str(tiny), "--work", str(tmp_path / "w"), "--preset", str(preset),
                     "--device", "cuda", "--dry-run"]) == 0
    assert "device: cuda asked, none usable here (torch" in capsys.readouterr().out
    assert run_main(["--data", str(tiny), "--work", str(tmp_path / "w"), "--preset", str(preset),
                     "--device", "cuda"]) == 3
    err = capsys.readouterr().err
    assert "needs NVIDIA driver >= 580" in err and "--device cpu" in err and len(err.strip().splitlines()) == 1


def test_precision_per_device(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    cfg = ClassifyConfig(amp=True, amp_cpu=True, amp_cpu_dtype="fp16")
    assert devices.Precision.of(cfg, cpu).dtype == torch.float16 and devices.Precision.of(cfg, cpu).scaled
    assert devices.Precision.of(cfg, cuda).dtype == torch.float16
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: False)  # bf16 would be emulated: fp32 instead
    assert devices.Precision.of(ClassifyConfig(amp_cpu=True), cpu).dtype is None
    monkeypatch.setattr(devices, "cpu_has_bf16", lambda: True)
    p = devices.Precision.of(ClassifyConfig(amp_cpu=True), cpu)
    assert p.dtype == torch.bfloat16 and not p.scaled and str(p) == "bf16 autocast"
    assert devices.Precision.of(ClassifyConfig(amp=True, amp_dtype="bf16"), cuda).dtype == torch.bfloat16
    with p.autocast():
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16


def test_cudnn_autotuner_on_in_training_off_for_pages_and_restored():
    before = torch.backends.cudnn.benchmark
    with devices.cudnn_benchmark(True):
        assert torch.backends.cudnn.benchmark
        with devices.cudnn_benchmark(False):
            assert not torch.backends.cudnn.benchmark
        assert torch.backends.cudnn.benchmark
    assert torch.backends.cudnn.benchmark == before


BUILD_ARCHES = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120"]  # the pinned cu130 build's list


@pytest.fixture
def p100(monkeypatch):
    """This machine as one with a Tesla P100 (sm_60) that torch sees, under a build without sm_60."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla P100-PCIE-16GB")
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: list(BUILD_ARCHES))
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_which_gpus_a_build_runs_on():
    assert devices.build_runs_on((7, 5), BUILD_ARCHES) and devices.build_runs_on((8, 9), BUILD_ARCHES)  # sm_86 code
    assert not devices.build_runs_on((6, 0), BUILD_ARCHES) and not devices.build_runs_on((7, 0), BUILD_ARCHES)
    assert devices.build_runs_on((6, 1), ["sm_60"]) and not devices.build_runs_on((6, 0), ["sm_61"])
    assert devices.build_runs_on((9, 0), ["sm_90a"]) and not devices.build_runs_on((10, 0), ["sm_90a"])
    assert devices.build_runs_on((12, 1), ["sm_90", "compute_120"]) and not devices.build_runs_on((8, 0), ["compute_90"])


def test_a_gpu_the_build_cannot_run_is_one_line_and_auto_falls_back_to_the_cpu(p100, tiny, tmp_path, capsys,
                                                                                 monkeypatch):
    from kzlib.run import main as run_main

    why = devices.gpu_unsupported()
    assert why.startswith("the GPU Tesla P100-PCIE-16GB (sm_60) cannot run this torch build")
    assert " ".join(BUILD_ARCHES) in why and "\n" not in why
    assert f"torch=={torch.__version__.split('+')[0]} torchvision==" in why and "whl/cu126" in why
    with pytest.raises(EnvironmentProblem, match=r"--device cuda asked for, but the GPU Tesla P100.*\(sm_60\)"):
        devices.pick_device("cuda")
    said = []
    assert devices.pick_device("auto", log=said.append).type == "cpu"
    assert len(said) == 1 and said[0].startswith("warning: the GPU Tesla P100") and said[0].endswith("using the CPU")
    assert devices.describe_asked("cuda").startswith("device: cuda asked, none usable here (the GPU Tesla P100")
    preset = PRESET
    assert run_main(["--data", str(tiny), "--work", str(tmp_path / "w"), "--preset", str(preset), "--device", "cuda"]) == 3
    err = capsys.readouterr().err
    assert "(sm_60) cannot run this torch build" in err and len(err.strip().splitlines()) == 1
    # a GPU newer than the build: the hint is a newer CUDA build, not 12.6
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (13, 0))
    assert "(sm_130)" in devices.gpu_unsupported() and "whl/cu126" not in devices.gpu_unsupported()


def test_a_kaggle_training_kernel_on_such_a_gpu_stops_in_one_line(p100, tiny, tmp_path, monkeypatch, capsys):
    """A GPU kernel whose session finds a P100 under a build without sm_60 stops before any stage,
    with one line and a failed status."""
    import json

    from kzlib.kaggle.session import Session

    inp = tmp_path / "input"
    (inp / "competitions").mkdir(parents=True)
    (inp / "competitions" / "kuzushiji-recognition").symlink_to(tiny)
    monkeypatch.setenv("KAGGLE_INPUT_ROOT", str(inp))
    monkeypatch.setenv("KAGGLE_WORKING", str(tmp_path / "working"))
    preset = tiny_preset(device="cuda")
    with pytest.raises(SystemExit) as stop:
        Session.open("kzlib-detect-f0", ["detect-f0"], [], True, False, 1.0, preset, tmp_path / "kit")
    assert stop.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: the GPU Tesla P100-PCIE-16GB (sm_60) cannot run this torch")
    assert "machine_shape NvidiaTeslaT4" in err[0]
    status = json.loads((tmp_path / "working" / "kzlib_status.json").read_text())
    assert status["state"] == "failed" and "sm_60" in status["error"]
