import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from helpers import PRESET, run_main, write_preset
from kzlib.config import ConfigError
from kzlib.data import read_labels_csv
from kzlib.metric import read_submission
from kzlib.preset import load_preset, preset_path
from kzlib.run import main as run_cli
from kzlib.steps import STEPS
from kzlib.work import WorkDir

ROOT = Path(__file__).resolve().parents[1]
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


def test_the_vote_match_is_read_checked_and_fingerprinted_only_where_it_was_chosen(tmp_path):
    demo = load_preset(ROOT / "kzlib" / "configs" / "preset_demo.json")
    assert demo.test_rule().match == "centre"
    merge = lambda cfg: STEPS["detect-merge"].settings(cfg, WorkDir(tmp_path), None)
    assert merge(demo) == {"test_boxes": "vote", "test_votes": 1, "test_match": "centre"}
    # a preset without the key votes by IoU as before, and the stage's fingerprint is the one it had
    write_preset(tmp_path / "old.json", test_box_rule="vote", test_votes=1)
    old = load_preset(tmp_path / "old.json")
    assert old.test_rule().match == "iou" and merge(old) == {"test_boxes": "vote", "test_votes": 1}
    full = load_preset(ROOT / "kzlib" / "configs" / "preset_full.json")
    assert merge(full) == {"test_boxes": "fold0", "test_votes": 0}
    write_preset(tmp_path / "bad.json", test_box_rule="vote", test_match="nearest")
    with pytest.raises(ConfigError, match="test_match: 'nearest' is not centre or iou"):
        load_preset(tmp_path / "bad.json")


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


@pytest.mark.slow
def test_a_killed_run_resumes_without_redoing_finished_stages(tiny, tmp_path, capsys):
    """Killed in the middle of a classifier's training (the runner in a process of its own), the
    plan says what is done and what is partial; the rerun resumes that training and runs the rest of
    the chain, pseudolabels, their fine-tune and refit and level 2 included, to a submission and a
    summary; finished stages are not redone."""
    preset = write_preset(tmp_path / "preset.json", n_folds=2)  # kinds a and b, the pseudolabel kind a refitted
    work = tmp_path / "work"
    args = ["--data", tiny, "--work", work, "--preset", preset]
    proc = subprocess.Popen(RUNNER + list(map(str, args)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
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

    code, out, _ = run_main(run_cli, *args, "--dry-run")
    status = {line.split()[0]: line.split()[1] for line in out.splitlines() if "  " in line}
    assert code == 0 and status["detect-f0"] == "done" and status["classify-a-f0"] == "partial"
    assert status["stack"] == "to"

    code, out, err = run_main(run_cli, *args)
    assert code == 0, out + err
    assert "resuming" in (work / "logs" / "classify-a-f0.log").read_text()
    after = _state(work)
    assert all(after[k] == v for k, v in before.items())  # finished stages were not redone
    assert {"classify-a-f0.json", "pseudolabel.json", "classify-a-pl-ft-f1.json", "classify-a-pl-f1.json",
            "stack.json"} <= set(after)
    sub = read_submission(work / "submission.csv")
    assert sub["image_id"].tolist() == read_labels_csv(tiny / "sample_submission.csv")["image_id"].tolist()
    table = pd.read_csv(work / "summary.csv")
    assert {"a", "b", "a-pl-ft", "a-pl", "blend", "level 2"} <= set(table["model"])
    assert (work / "page.png").exists()


def test_a_changed_preset_is_refused_then_redone_with_what_depends_on_it(finished_run, tmp_path):
    """On a copy of the finished chain: run again, every stage is done earlier; level 2 edited in the
    preset, the stack stage is changed and refused until --rerun-changed, which redoes it alone; a
    changed detector makes every stage after it stale."""
    data, finished = finished_run
    work = tmp_path / "work"
    # hard links for the files the runner replaces whole; the logs (appended to) copied, the locks its own
    shutil.copytree(finished, work, copy_function=os.link, ignore=shutil.ignore_patterns("logs", "locks"))
    shutil.copytree(finished / "logs", work / "logs")
    preset = json.loads((data.parent / "preset.json").read_text())
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    args = ["--data", data, "--work", work, "--preset", tmp_path / "preset.json"]
    before = _state(work)
    code, out, _ = run_main(run_cli, *args)
    assert code == 0 and out.count("done earlier") == len(before) and _state(work) == before

    def plan() -> dict:
        code, out, _ = run_main(run_cli, *args, "--dry-run")
        assert code == 0, out
        return {line.split()[0]: line.split()[1] for line in out.splitlines() if "  " in line}

    preset["stack"]["rounds"] = 25
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    status = plan()
    assert status["stack"] == "changed" and status["detect-merge"] == "done", status
    code, _, err = run_main(run_cli, *args)
    assert code == 2 and "changed since stack ran" in err and "--rerun-changed" in err
    code, out, err = run_main(run_cli, *args, "--rerun-changed")
    assert code == 0, out + err
    after = _state(work)
    assert after["stack.json"] != before["stack.json"] and all(after[k] == v for k, v in before.items() if k != "stack.json")
    preset["detect"]["lr"] = 0.004
    (tmp_path / "preset.json").write_text(json.dumps(preset))
    status = plan()
    assert status["detect-f0"] == "changed" and status["detect-merge"] == "stale" and status["stack"] == "stale"


def test_bad_data_stops_before_training(tiny, tmp_path):
    next((tiny / "train_images").iterdir()).unlink()
    work = tmp_path / "work"
    code, _, err = run_main(run_cli, "--data", tiny, "--work", work, "--preset", PRESET)
    assert code == 1 and "fails `python -m kzlib data check`" in err and "  - " in err
    assert not (work / "state").exists()


def test_full_preset_needs_weights_then_a_gpu(tiny, tmp_path, monkeypatch):
    """Without weights: one line naming the fetch command, even for a dry run, before anything runs.
    With them (files of one's own here: no manifest, but they load) the plan shows; training
    still needs a GPU unless --device cpu is given; planning never does."""
    import torch

    work = tmp_path / "w"
    base = ["--data", tiny, "--work", work, "--preset", "full"]
    monkeypatch.setenv("KZLIB_PRETRAINED", str(tmp_path / "weights"))
    code, _, err = run_main(run_cli, *base, "--dry-run")
    assert code == 3 and f"python -m kzlib weights fetch --preset full --out {tmp_path / 'weights'}" in err
    assert "resnet152_imagenet1k_v1.pth not found" in err and len(err.strip().splitlines()) == 1
    assert not work.exists()
    (tmp_path / "weights").mkdir()
    for name in ("resnet152_imagenet1k_v1.pth", "resnext101_32x8d_wsl.pth"):
        torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "weights" / name)
    code, out, err = run_main(run_cli, *base, "--dry-run")
    assert code == 0 and "classify-resnext101-f4" in out, err
    if not torch.cuda.is_available():
        code, _, err = run_main(run_cli, *base)
        assert code == 3 and "--device cpu" in err and len(err.strip().splitlines()) == 1
    monkeypatch.setenv("KZLIB_PRETRAINED", str(tmp_path / "none"))
    code, out, _ = run_main(run_cli, *base, "--dry-run", "--allow-scratch")
    assert code == 0 and "--allow-scratch" in out


def test_a_stage_another_runner_holds_is_skipped(tiny, tmp_path):
    """The lock is flock's: held through another open file (as another runner holds it), here."""
    from kzlib.io import exclusive_lock
    from kzlib.work import WorkDir

    work = tmp_path / "work"
    with exclusive_lock(WorkDir(work).lock("detect-f0")) as held:
        assert held
        code, out, err = run_main(run_cli, "--data", tiny, "--work", work, "--preset", PRESET, "--only", "detect-f0")
    assert code == 0 and "running in another process (pid" in out, out + err
    assert not (work / "state" / "detect-f0.json").exists() and not (work / "detect" / "fold0").exists()


@pytest.mark.slow
def test_jobs_run_the_folds_in_processes_of_their_own_with_the_files_of_one_thread(tiny, tmp_path):
    """jobs 2 (the demo's): each fold's detector stages in a process of its own with the threads it
    is given (2 here: the tests' processes have 1, OMP_NUM_THREADS), the merge in the runner after
    them; every file and weight is the same as the same stages' one after the other in one process
    on as many threads."""
    import torch

    from kzlib.pipeline import Pipeline
    from kzlib.runs import load_checkpoint

    cfg = load_preset(write_preset(tmp_path / "p.json", n_folds=2))
    said = []
    par = Pipeline(tiny, tmp_path / "par", cfg).run("detect", log=said.append, jobs=2, threads=2)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        ser = Pipeline(tiny, tmp_path / "ser", cfg).run("detect", log=lambda *_: None)
    finally:
        torch.set_num_threads(before)
    assert set(par["ran"]) == set(ser["ran"]) and {"detect-f0", "detect-f1", "detect-merge"} <= set(par["ran"])
    assert any(line.startswith("[") and "detect-merge" in line and "done in" in line for line in said)
    pids = {k: re.search(r"\(pid (\d+)\)", (tmp_path / "par" / "logs" / f"detect-{k}.log").read_text()).group(1)
            for k in ("f0", "f1", "merge")}
    assert pids["merge"] == str(os.getpid()) and len(set(pids.values())) == 3
    for fold in ("f0", "f1"):  # the device line of each training: the threads it was given
        assert "device: CPU (2 threads of " in (tmp_path / "par" / "logs" / f"detect-{fold}.log").read_text()
    csvs = sorted(p.relative_to(tmp_path / "ser") for p in (tmp_path / "ser" / "detect").rglob("*.csv")
                  if p.name != "log.csv")
    assert len(csvs) >= 4
    for rel in csvs:
        assert (tmp_path / "par" / rel).read_bytes() == (tmp_path / "ser" / rel).read_bytes(), rel
    for fold in ("fold0", "fold1"):
        a, b = (load_checkpoint(tmp_path / w / "detect" / fold / "best.pth")["model"] for w in ("par", "ser"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), fold


@pytest.mark.slow
def test_a_fold_failing_in_its_process_ends_the_run_with_its_exit_code(tiny, tmp_path):
    """A fold's process that fails (here its run folder is a file) prints its own error line; the
    runner stops the others and ends with that process's exit code, naming the stage and its log;
    nothing after it is recorded."""
    work = tmp_path / "work"
    (work / "detect").mkdir(parents=True)
    (work / "detect" / "fold1").write_text("not a folder")
    preset = write_preset(tmp_path / "p.json", n_folds=2)
    code, out, err = run_main(run_cli, "--data", tiny, "--work", work, "--preset", preset, "--only", "detect",
                              "--jobs", "2")
    assert code == 3, out + err
    assert err.startswith("error: stage detect-f1 failed in its process (exit code 3); its log: ") and (
        "detect-f1.log" in err), err
    assert "jobs: 2 folds at a time" in out
    assert not (work / "state" / "detect-f1.json").exists() and not (work / "state" / "detect-merge.json").exists()
    assert "error: stage detect-f1: " in (work / "logs" / "detect-f1.log").read_text()


def test_a_full_disk_is_one_line_naming_the_stage_and_file(tiny, tmp_path, monkeypatch):
    import errno

    from dataclasses import replace

    from kzlib.errors import EnvironmentProblem
    from kzlib.pipeline import Pipeline
    from kzlib.steps import STEPS

    def full(c, s):
        raise OSError(errno.ENOSPC, "No space left on device", str(c.work.detector(s.fold).checkpoint))

    monkeypatch.setitem(STEPS, "detect-train", replace(STEPS["detect-train"], run=full))
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

    preset = json.loads(PRESET.read_text())
    preset["detect"]["pretrained"] = "resnet18_imagenet1k_v1.pth"
    (tmp_path / "p.json").write_text(json.dumps(preset))
    folder, work = tmp_path / "pretrained", tmp_path / "w"
    base = ["--data", str(tiny), "--work", str(work), "--preset", str(tmp_path / "p.json"),
            "--pretrained-dir", str(folder), "--only", "detect-f0"]
    assert run_cli(base + ["--allow-scratch"]) == 0
    assert run_cli(base + ["--allow-scratch", "--dry-run"]) == 0
    assert "detect-f0  done" in capsys.readouterr().out
    torch.manual_seed(0)
    monkeypatch.setattr(weights, "LOADERS", {"torchvision": lambda spec: torchvision.models.resnet18().state_dict()})
    weights.fetch(folder, ["resnet18"], log=lambda *_: None)
    assert run_cli(base + ["--dry-run"]) == 0
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
    for folds in ("a", "0-1"):
        with pytest.raises(SystemExit) as e:
            run_cli(["--data", "d", "--work", "w", "--folds", folds])
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"argument --folds: '{folds}': comma-separated fold numbers" in err
        assert "Traceback" not in err


def test_jobs_below_one_are_refused_before_anything_is_read(tmp_path):
    code, out, err = run_main(run_cli, "--data", tmp_path / "none", "--work", tmp_path / "w", "--jobs", "0")
    assert code == 2 and err.strip() == "error: --jobs: 0: at least 1", err
    assert not (tmp_path / "w").exists()
