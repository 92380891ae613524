"""Run folders: resume or start exactly as asked, conflicting flags refused, damaged checkpoints
named and recovered from the previous epoch's."""

import json
import re
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import torch

from kzlib.config import config_dict
from kzlib.detect.config import DetectConfig
from kzlib.runs import RunDir, RunStateError, Split
from helpers import run_main, tiny_detect
from kzlib.detect.__main__ import main as detect_cli

ROOT = Path(__file__).resolve().parents[1]
TINY = tiny_detect()


def started(tmp_path, cfg=TINY) -> RunDir:
    run = RunDir(tmp_path / "run")
    run.start(cfg, Split("/data", 0, 3, False, ["a"], ["b"], inputs={"train.csv": "abc"}))
    return run


def test_resume_or_start_modes(tmp_path):
    run = RunDir(tmp_path / "none")
    with pytest.raises(RunStateError, match="nothing to resume"):
        run.resume_or_start(DetectConfig, TINY, {}, "resume")
    assert run.resume_or_start(DetectConfig, TINY, {}, "start") == (TINY, None, None)
    run = started(tmp_path, replace(TINY, epochs=7))
    with pytest.raises(RunStateError, match="holds a started run"):
        run.resume_or_start(DetectConfig, TINY, {}, "start")
    # killed in the first epoch: no checkpoint yet, and --resume continues *that* run's config
    cfg, split, ckpt = run.resume_or_start(DetectConfig, DetectConfig(), {}, "resume")
    assert cfg.epochs == 7 and cfg.backbone == "resnet18" and ckpt is None and split.fold == 0
    with pytest.raises(RunStateError, match=r"started with epochs 7 \(asked 3\), lr 0.005 \(asked 0.1\)"):
        run.resume_or_start(DetectConfig, TINY, {"epochs": 3, "lr": 0.1, "device": "cuda"}, "resume")
    # the runner ("auto"): the preset's config must be the run's
    with pytest.raises(RunStateError, match="the preset changed since"):
        run.resume_or_start(DetectConfig, TINY, None, "auto")
    assert run.resume_or_start(DetectConfig, replace(TINY, epochs=7, workers=3), None, "auto")[0].epochs == 7


def test_damaged_checkpoints_fall_back_or_say_how_to_recover(tmp_path, capsys):
    run = started(tmp_path)
    run.save_epoch({"model": {"w": torch.ones(2)}, "epoch": 0, "best_f1": 0.1})
    run.save_epoch({"model": {"w": torch.full((2,), 2.0)}, "epoch": 1, "best_f1": 0.2})
    assert run.previous.exists() and run.load_checkpoint()["epoch"] == 1
    good = run.checkpoint.read_bytes()
    for damage in (b"", b"garbage" * 10, good[: len(good) // 2]):  # zero bytes, garbage, truncated
        run.checkpoint.write_bytes(damage)
        assert run.load_checkpoint()["epoch"] == 0
        assert re.search(r"warning: .*: checkpoint.pth: .*; resuming from checkpoint.prev.pth \(epoch 1\)",
                         capsys.readouterr().out)
    run.previous.write_bytes(b"")
    with pytest.raises(RunStateError, match=r"no loadable checkpoint \(checkpoint.pth: .*checkpoint.prev.pth: .*\); "
                                            "delete checkpoint.pth and checkpoint.prev.pth"):
        run.load_checkpoint()
    run.best.write_bytes(b"junk")
    with pytest.raises(RunStateError, match="best.pth: does not load"):
        run.trained_state()


def test_resume_cli_after_a_kill_in_the_first_epoch(tiny, tmp_path):
    """The run folder holds config.json and split.json only: --resume trains the run's own config
    (not the defaults), a conflicting flag is refused, the held-out fold is kept."""
    out = tmp_path / "run"
    cfg = replace(TINY, epochs=1)
    (tmp_path / "cfg.json").write_text(json.dumps(config_dict(cfg)))
    RunDir(out).start(cfg, Split(str(tiny), 1, 3, False, [], [], inputs={}))
    base = ["train", tiny, "--out", out, "--resume"]
    code, _, err = run_main(detect_cli, *base, "--epochs", "3")
    assert code == 2 and "started with epochs 1 (asked 3)" in err and len(err.splitlines()) == 1
    code, _, err = run_main(detect_cli, *base, "--fold", "2")
    assert code == 2 and "holds out fold 1, not 2" in err
    code, _, err = run_main(detect_cli, *base)
    assert code == 0, err
    assert json.loads((out / "config.json").read_text())["backbone"] == "resnet18"  # not the default resnet152
    assert pd.read_csv(out / "log.csv")["epoch"].tolist() == [0]
    assert RunDir(out).read_split().fold == 1
    code, _, err = run_main(detect_cli, "train", tiny, "--out", tmp_path / "new", "--resume")
    assert code == 2 and "nothing to resume" in err


def test_changed_inputs_are_refused_on_resume(tiny, tmp_path):
    from kzlib.detect.train import train

    out = tmp_path / "run"
    train(tiny, out, TINY, 0, max_epochs=0)  # started, no epoch yet
    labels = (tiny / "train.csv").read_text()
    (tiny / "train.csv").write_text(labels.replace("U+", "U+", 1) + "\n")
    with pytest.raises(RunStateError, match="its train.csv has changed since the run started"):
        train(tiny, out, TINY, mode="resume")


def test_a_full_disk_under_torchs_zip_writer_is_the_oserror_naming_the_file(tmp_path, monkeypatch):
    """torch's zip writer hides a failed write behind RuntimeError("[enforce fail at
    inline_container.cc] ..."); the kit raises the OSError itself (ENOSPC, naming the checkpoint),
    which the CLIs and the runner print as one line."""
    import errno
    import io

    import torch

    from kzlib import runs

    class AlmostFullDisk(io.FileIO):
        def write(self, b):
            if self.tell() + len(b) > 4096:
                raise OSError(errno.ENOSPC, "No space left on device")
            return super().write(b)

    monkeypatch.setattr(runs, "open", lambda path, mode: AlmostFullDisk(path, mode), raising=False)
    with pytest.raises(OSError) as e:
        runs.save_checkpoint({"model": torch.zeros(100_000)}, tmp_path / "checkpoint.pth")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "checkpoint.pth")
    assert not list(tmp_path.iterdir())  # nothing half-written left
    monkeypatch.undo()
    runs.save_checkpoint({"model": torch.zeros(10)}, tmp_path / "ok.pth")  # a disk with room: saved
    assert runs.load_checkpoint(tmp_path / "ok.pth")["model"].shape == (10,)


class _Payload:
    """Unpickling it opens (creates) ``marker``: what a planted checkpoint object would run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_checkpoints_load_weights_only_and_carry_a_format_checked_on_load(tmp_path):
    """Every checkpoint loads with weights_only=True: an object planted in one is refused, nothing of
    it runs (resume, init_from, inference). A checkpoint of the kit before versions (no "format")
    resumes; an unknown format is one line saying what to do."""
    from kzlib.runs import CHECKPOINT_FORMAT, load_other_checkpoint
    from kzlib.errors import DataError

    run = started(tmp_path)
    state = {"format": CHECKPOINT_FORMAT, "model": {"w": torch.ones(2)}, "epoch": 0, "best_f1": 0.1,
             "config": config_dict(TINY), "scores": {"f1": 0.1}}
    run.save_epoch(state)
    run.save_best(state)
    assert torch.load(run.checkpoint, weights_only=True)["format"] == CHECKPOINT_FORMAT
    old = {k: v for k, v in state.items() if k != "format"}  # written by the kit before versions
    run.save_epoch(old)
    assert run.load_checkpoint()["epoch"] == 0 and run.trained_state()[0]["model"]["w"].sum() == 2
    marker = tmp_path / "PWNED"
    for path in (run.checkpoint, run.previous, run.best):
        torch.save({**state, "evil": _Payload(marker)}, path)
    with pytest.raises(RunStateError, match="holds objects other than tensors and plain values"):
        run.load_checkpoint()
    with pytest.raises(RunStateError, match="best.pth: does not load .*does not unpickle"):
        run.trained_state()
    with pytest.raises(DataError, match="does not load .*does not unpickle"):
        load_other_checkpoint(run.best, "the checkpoint to start from")
    assert not marker.exists()
    run.save_epoch({**state, "format": 99})
    run.previous.unlink()
    with pytest.raises(RunStateError, match=r"checkpoint.pth: checkpoint format 99 is not one this kit reads "
                                            r"\(1, 2\); it was made by a newer kit: update kzlib"):
        run.load_checkpoint()
    with pytest.raises(RunStateError, match="checkpoint format 99"):
        load_other_checkpoint(run.checkpoint, "the checkpoint to start from")
