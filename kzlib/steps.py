"""What each kind of stage runs (``kzlib.stages.STEPS`` records what it writes and hashes): one
function per step, given the chain's ``Context`` (data, work folder, preset, time budget) and the
stage. ``RUN`` maps a step's name to its function; the runner calls it with the stage's output going
to its log and records the dict it returns. A training of a preset with ``gpus`` > 1 runs under
``torchrun`` (``launch``)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from kzlib import pseudolabel
from kzlib.classify import predict as classify_inference, train as classify_training
from kzlib.config import config_dict
from kzlib.data import SEG_FP, DataDir, read_labels_csv
from kzlib.detailed import blend_files, submission_from_detailed
from kzlib.detect import predict as detect_inference, train as detect_training
from kzlib.errors import EnvironmentProblem
from kzlib.io import write_json_atomic
from kzlib.metric import write_submission
from kzlib.preset import PipelineConfig
from kzlib.stack import run as level2
from kzlib.stack.models import TooFewRows
from kzlib.stages import STEPS, Stage, classifier_config, classifier_kinds
from kzlib.work import WorkDir


@dataclass
class Context:
    """What every step is given: the data folder, the work folder, the preset and the time budget
    (a ``time.time()`` value: trainings and predictions stop before work that would end after it)."""
    data: Path
    work: WorkDir
    cfg: PipelineConfig
    deadline: float | None = None


def launch(module: str, run: Path, cfg, args: list[str], nproc: int, deadline: float | None, what: str,
           log_path: Path) -> dict:
    """Train with ``torchrun --standalone --nproc-per-node nproc -m module train ...``: the config
    as ``stage_config.json`` in the run folder, the processes' output echoed here (into the caller's
    log), the result read back from ``stage_result.json``. A failure is one EnvironmentProblem."""
    if cfg.device.startswith("cuda") and torch.cuda.device_count() < nproc:
        raise EnvironmentProblem(f"the preset trains on {nproc} GPUs and this machine has "
                                 f"{torch.cuda.device_count()}; set gpus in the preset")
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    config, result = run / "stage_config.json", run / "stage_result.json"
    write_json_atomic(config_dict(cfg), config)
    result.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
           "-m", module, "train", *args, "--out", str(run), "--config", str(config), "--auto",
           "--result", str(result)] + (["--deadline", str(deadline)] if deadline else [])
    print("running: " + " ".join(cmd), flush=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        print(line, end="", flush=True)
    if proc.wait() or not result.is_file():
        raise EnvironmentProblem(f"{what}: torchrun exited with {proc.returncode}; its processes' output is in "
                                 f"{log_path}")
    return json.loads(result.read_text())


def _torchrun(c: Context, s: Stage, module: str, cfg, args: list[str]) -> dict:
    run = (c.work.detector(s.fold) if s.step == "detect-train" else c.work.classifier(s.kind, s.fold)).root
    return launch(module, run, cfg, args + ["--fold", str(s.fold)], c.cfg.gpus, c.deadline, f"stage {s.name}",
                  c.work.log(s.name))


def detect_train(c: Context, s: Stage) -> dict:
    cfg = c.cfg.detect_config()
    if c.cfg.gpus > 1:
        return _torchrun(c, s, "kzlib.detect", cfg, [str(c.data)])
    return detect_training.train(c.data, c.work.detector(s.fold).root, cfg, s.fold, mode="auto", deadline=c.deadline)


def detect_oof(c: Context, s: Stage) -> dict:
    return {"out": str(detect_inference.predict(c.work.detector(s.fold).root, c.data, "valid", deadline=c.deadline))}


def detect_test(c: Context, s: Stage) -> dict:
    return {"out": str(detect_inference.predict(c.work.detector(s.fold).root, c.data, "test", deadline=c.deadline))}


def detect_merge(c: Context, s: Stage) -> dict:
    rule = c.cfg.test_rule()
    oof = detect_inference.merge_oof([c.work.detector(k).root for k in range(c.cfg.n_folds)], c.work.oof_boxes, c.data)
    test = detect_inference.merge_test([c.work.detector(k).test_boxes for k in rule.folds], c.work.test_boxes, rule)
    return {"oof_boxes": len(oof), "test_boxes": len(test)}


def classify_train(c: Context, s: Stage) -> dict:
    pseudo = [c.work.pseudo_labels] if s.kind not in c.cfg.kinds else []
    cfg = classifier_config(c.cfg, c.work, s.kind, s.fold)
    if c.cfg.gpus > 1:
        args = [str(c.data), "--boxes", str(c.work.oof_boxes)] + (["--pseudolabels", *map(str, pseudo)] if pseudo else [])
        return _torchrun(c, s, "kzlib.classify", cfg, args)
    return classify_training.train(c.data, c.work.oof_boxes, c.work.classifier(s.kind, s.fold).root, cfg, s.fold,
                                   pseudolabels=pseudo, mode="auto", deadline=c.deadline)


def classify_predict(c: Context, s: Stage) -> dict:
    run = c.work.classifier(s.kind, s.fold).root
    v = classify_inference.predict(run, c.data, c.work.oof_boxes, "valid", c.cfg.n_tta, deadline=c.deadline)
    t = classify_inference.predict(run, c.data, c.work.test_boxes, "test", c.cfg.n_tta, deadline=c.deadline)
    return {"valid_f1": v["scores"]["f1"], "valid_accuracy": v["scores"]["accuracy"], "test": t["detailed"]}


def pseudolabels(c: Context, s: Stage) -> dict:
    cfg, folds = c.cfg, range(c.cfg.n_folds)
    test = blend_files([c.work.classifier(kind, k).detailed("test") for kind in cfg.kinds for k in folds])
    valid = pd.concat([blend_files([c.work.classifier(kind, k).detailed("valid") for kind in cfg.kinds])
                       for k in folds], ignore_index=True)
    gap, second, drop = cfg.pseudo_min_gap, cfg.pseudo_max_second_score, cfg.pseudo_drop_seg_fp
    result = {"test": pseudolabel.write_pseudolabels(test, c.work.pseudo_labels, gap, second, drop),
              "valid": pseudolabel.report(valid, pseudolabel.select(valid, gap, second, drop))}
    write_json_atomic(result, c.work.pseudo_report)
    return result


def stack(c: Context, s: Stage) -> dict:
    cfg, kinds, work = c.cfg, classifier_kinds(c.cfg), c.work
    stack_cfg = cfg.stack_config()
    feats = []
    for k in range(cfg.n_folds):
        groups = {kind: [str(work.classifier(kind, k).detailed("valid"))] for kind in kinds}
        level2.build_features(groups, work.features(k), stack_cfg.overlap)
        feats.append(work.features(k))
    test_groups = {kind: [str(work.classifier(kind, k).detailed("test")) for k in range(cfg.n_folds)]
                   for kind in kinds}
    info = level2.build_features(test_groups, work.features(None), stack_cfg.overlap)
    write_json_atomic(config_dict(stack_cfg), work.stack / "stack_config.json")
    try:
        result = level2.train(feats, c.data, work.level2, work.stack / "stack_config.json")
    except TooFewRows as e:  # e.g. a detector that found almost nothing on the held-out pages
        print(f"{e}; the submission is the plain blend of every kind instead", flush=True)
        return {"level2": f"skipped: {e}", "test_features": info, **blend_submission(c, kinds)}
    sub = level2.predict(work.level2, work.features(None), c.data, work.submission)
    return {"level2_seconds": result["seconds"], "test_features": info, **sub}


def blend_submission(c: Context, kinds: list[str]) -> dict:
    test = blend_files([c.work.classifier(kind, k).detailed("test") for kind in kinds for k in range(c.cfg.n_folds)])
    ids = read_labels_csv(DataDir(c.data).sample_submission_csv)["image_id"].tolist()
    write_submission(submission_from_detailed(test), c.work.submission, ids)
    return {"submission": str(c.work.submission), "characters": int((test["pred"] != SEG_FP).sum()), "pages": len(ids)}


RUN = {"detect-train": detect_train, "detect-oof": detect_oof, "detect-test": detect_test,
       "detect-merge": detect_merge, "classify-train": classify_train, "classify-predict": classify_predict,
       "pseudolabel": pseudolabels, "stack": stack}
assert set(RUN) == set(STEPS), "every step of kzlib.stages has its function here"
