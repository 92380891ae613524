import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from kzlib.data import read_labels_csv
from kzlib.metric import read_submission
from kzlib.config import ConfigError
from kzlib.preset import load_preset, preset_path

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "tests" / "fixtures" / "preset_tiny.json"
RUNNER = [sys.executable, str(ROOT / "run_local.py")]


def test_presets_are_valid():
    for name in ("preset_full", "preset_demo"):
        cfg = load_preset(ROOT / "kzlib" / "configs" / f"{name}.json")
        assert cfg.detect_config().n_folds == cfg.n_folds
        for kind in cfg.kinds:
            cfg.classify_config(kind)
    full = load_preset(ROOT / "kzlib" / "configs" / "preset_full.json")
    rx = full.classify_config("resnext101")
    assert (rx.backbone, rx.frozen_start, rx.max_targets, rx.batch_size, rx.lr) == ("resnext101_32x8d", True, 256, 12, 0.016)


def test_preset_names_are_not_shadowed_by_folders(tmp_path, monkeypatch):
    """`make demo` runs `--preset demo` beside its own demo/ folder: the name is still the preset."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    assert preset_path("demo") == ROOT / "kzlib" / "configs" / "preset_demo.json"
    (tmp_path / "mine").write_text("{}")
    assert preset_path("mine") == Path("mine")  # a file is taken as it is
    with pytest.raises(ConfigError, match="not found"):
        preset_path("missing.json")


def _state(work):
    return {p.name: p.stat().st_mtime_ns for p in (work / "state").glob("*.json")}


def test_killed_run_resumes_without_redoing_finished_stages(tiny, tmp_path):
    preset = json.loads(PRESET.read_text())
    preset["kinds"]["a"]["epochs"] = 4  # a wider window to kill the classifier in
    preset["n_folds"] = 2  # every kind of stage, a third of the trainings fewer
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    work = tmp_path / "work"
    cmd = RUNNER + ["--data", str(tiny), "--work", str(work), "--preset", str(tmp_path / "preset.json")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    ckpt = work / "classify" / "a" / "fold0" / "checkpoint.pth"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert ckpt.exists(), proc.stdout.read()
    assert not (work / "state" / "classify-a-f0.json").exists()  # killed in the middle of the stage
    before = _state(work)
    assert "detect-merge.json" in before

    plan = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True)
    status = {line.split()[0]: line.split()[1] for line in plan.stdout.splitlines()}
    assert status["detect-f0"] == "done" and status["classify-a-f0"] == "partial" and status["stack"] == "to"

    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "resuming" in (work / "logs" / "classify-a-f0.log").read_text()
    after = _state(work)
    assert all(after[k] == v for k, v in before.items())  # finished stages were not redone
    assert "classify-a-f0.json" in after and "stack.json" in after
    sub = read_submission(work / "submission.csv")
    assert sub["image_id"].tolist() == read_labels_csv(tiny / "sample_submission.csv")["image_id"].tolist()
    table = pd.read_csv(work / "summary.csv")
    assert {"a", "b", "a-pl-ft", "a-pl", "blend", "level 2"} <= set(table["model"])
    assert (work / "page.png").exists()
    again = subprocess.run(cmd, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("done earlier") == len(after)

    # the preset edited: level 2 changed, so the stack stage is refused until --rerun-changed
    preset["stack"]["rounds"] = 25
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    plan = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True)
    status = {line.split()[0]: line.split()[1] for line in plan.stdout.splitlines() if "  " in line}
    assert status["stack"] == "changed" and status["detect-merge"] == "done", plan.stdout
    refused = subprocess.run(cmd, capture_output=True, text=True)
    assert refused.returncode == 2 and "changed since stack ran" in refused.stderr and "--rerun-changed" in refused.stderr
    redo = subprocess.run(cmd + ["--rerun-changed"], capture_output=True, text=True)
    assert redo.returncode == 0, redo.stderr
    assert _state(work)["stack.json"] != after["stack.json"] and _state(work)["detect-f0.json"] == after["detect-f0.json"]
    # a changed detector makes everything after it stale
    preset["detect"]["lr"] = 0.004
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    plan = subprocess.run(cmd + ["--dry-run"], capture_output=True, text=True)
    status = {line.split()[0]: line.split()[1] for line in plan.stdout.splitlines() if "  " in line}
    assert status["detect-f0"] == "changed" and status["detect-merge"] == "stale" and status["stack"] == "stale"


def test_bad_data_stops_before_training(tiny, tmp_path):
    next((tiny / "train_images").iterdir()).unlink()
    work = tmp_path / "work"
    out = subprocess.run(RUNNER + ["--data", str(tiny), "--work", str(work), "--preset", str(PRESET)],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "fails `python -m kzlib data check`" in out.stderr and "  - " in out.stderr
    assert not (work / "state").exists()


def test_full_preset_needs_weights_then_a_gpu(tiny, tmp_path):
    """Without weights: one line naming the fetch command, even for a dry run, before anything runs.
    With them (files of one's own here: no manifest, but they load) the plan shows; training
    still needs a GPU unless --device cpu is given; planning never does."""
    work = tmp_path / "w"
    base = RUNNER + ["--data", str(tiny), "--work", str(work), "--preset", "full"]
    env = {**os.environ, "KZLIB_PRETRAINED": str(tmp_path / "weights")}
    out = subprocess.run(base + ["--dry-run"], capture_output=True, text=True, env=env)
    assert out.returncode == 3 and f"python -m kzlib weights fetch --preset full --out {tmp_path / 'weights'}" in out.stderr
    assert "resnet152_imagenet1k_v1.pth not found" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    assert not work.exists()
    (tmp_path / "weights").mkdir()
    for name in ("resnet152_imagenet1k_v1.pth", "resnext101_32x8d_wsl.pth"):
        __import__("torch").save({"conv1.weight": __import__("torch").zeros(1)}, tmp_path / "weights" / name)
    plan = subprocess.run(base + ["--dry-run"], capture_output=True, text=True, env=env)
    assert plan.returncode == 0 and "classify-resnext101-f4" in plan.stdout, plan.stderr
    if not __import__("torch").cuda.is_available():
        out = subprocess.run(base, capture_output=True, text=True, env=env)
        assert out.returncode == 3 and "--device cpu" in out.stderr and len(out.stderr.strip().splitlines()) == 1
    scratch = subprocess.run(base + ["--dry-run", "--allow-scratch"], capture_output=True, text=True,
                             env={**env, "KZLIB_PRETRAINED": str(tmp_path / "none")})
    assert scratch.returncode == 0 and "--allow-scratch" in scratch.stdout


def test_a_stage_another_runner_holds_is_skipped(tiny, tmp_path):
    from kzlib.io import exclusive_lock
    from kzlib.work import WorkDir

    work = tmp_path / "work"
    with exclusive_lock(WorkDir(work).lock("detect-f0")) as held:
        assert held
        out = subprocess.run(RUNNER + ["--data", str(tiny), "--work", str(work), "--preset", str(PRESET),
                                       "--only", "detect-f0"], capture_output=True, text=True)
    assert out.returncode == 0 and "running in another process (pid" in out.stdout, out.stdout + out.stderr
    assert not (work / "state" / "detect-f0.json").exists() and not (work / "detect" / "fold0").exists()


def test_a_full_disk_is_one_line_naming_the_stage_and_file(tiny, tmp_path, monkeypatch):
    import errno

    from kzlib.errors import EnvironmentProblem
    from kzlib.pipeline import Pipeline
    from kzlib.steps import RUN

    def full(c, s):
        raise OSError(errno.ENOSPC, "No space left on device", str(c.work.detector(s.fold).checkpoint))

    monkeypatch.setitem(RUN, "detect-train", full)
    pipe = Pipeline(tiny, tmp_path / "work", load_preset(PRESET))
    with pytest.raises(EnvironmentProblem) as e:
        pipe.run("detect-f0", log=lambda *_: None)
    assert str(e.value).startswith("stage detect-f0: ") and "checkpoint.pth: No space left on device" in str(e.value)
    assert f"error: {e.value}" in (tmp_path / "work" / "logs" / "detect-f0.log").read_text()
    assert not (tmp_path / "work" / "state" / "detect-f0.json").exists()


def test_a_stage_trained_from_scratch_is_changed_once_weights_are_present(tiny, tmp_path, monkeypatch, capsys):
    """The weights' identity is part of a training stage's fingerprint: a detector trained with
    --allow-scratch does not count as done for a run with real weights."""
    import torch
    import torchvision

    from kzlib import weights
    from kzlib.run import main as run_main

    preset = json.loads(PRESET.read_text())
    preset["detect"]["pretrained"] = "resnet18_imagenet1k_v1.pth"
    (tmp_path / "p.json").write_text(json.dumps(preset))
    folder, work = tmp_path / "pretrained", tmp_path / "w"
    base = ["--data", str(tiny), "--work", str(work), "--preset", str(tmp_path / "p.json"),
            "--pretrained-dir", str(folder), "--only", "detect-f0"]
    assert run_main(base + ["--allow-scratch"]) == 0
    assert run_main(base + ["--allow-scratch", "--dry-run"]) == 0
    assert "detect-f0  done" in capsys.readouterr().out
    torch.manual_seed(0)
    monkeypatch.setattr(weights, "LOADERS", {"torchvision": lambda spec: torchvision.models.resnet18().state_dict()})
    weights.fetch(folder, ["resnet18"], log=lambda *_: None)
    assert run_main(base + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "detect-f0  changed" in out and "changed or stale: a run refuses them unless --rerun-changed" in out


def test_a_stage_another_runner_finished_meanwhile_is_not_run_again(finished_run, monkeypatch):
    """Defect 9: two runners on one fresh work folder each repeated the other's finished stages: the
    state was read once, before the lock. It is read again once a stage's lock is taken."""
    from kzlib.pipeline import Pipeline

    data, work = finished_run
    pipe = Pipeline(data, work, load_preset(work / "preset.json"))
    real = pipe.statuses
    seen = iter([{name: "to do" for name in real()}])  # what this runner saw before the other finished
    monkeypatch.setattr(pipe, "statuses", lambda: next(seen, None) or real())

    def ran_again(s):
        raise AssertionError(f"{s.name} ran again")

    monkeypatch.setattr(pipe, "run_stage", ran_again)
    said = []
    result = pipe.run(log=said.append)
    assert result["ran"] == {} and said and all(line.endswith("done by another process meanwhile") for line in said)


def test_folds_that_are_not_numbers_are_the_parsers_one_line(capsys):
    """Defect 14: `kzlib run --folds a` (or 0-1) was a ValueError traceback."""
    from kzlib.run import main as run_main

    for folds in ("a", "0-1"):
        with pytest.raises(SystemExit) as e:
            run_main(["--data", "d", "--work", "w", "--folds", folds])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument --folds: '{folds}': comma-separated fold numbers" in err
        assert "Traceback" not in err
