"""The steps of the chain, one record each (``STEPS``, by the names ``kzlib.stages.Stage.step``
gives): the function it runs, given the chain's ``Context`` (data, work folder, preset, time budget)
and the stage; the files it writes; the settings its fingerprint hashes; a training's run folder.
The runner (``kzlib.pipeline``) reads nothing else about a step. A training of a preset with
``gpus`` > 1 runs under ``torchrun`` (``launch``)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pandas as pd
import torch

from kzlib import pseudolabel, weights
from kzlib.classify import predict as classify_inference, train as classify_training
from kzlib.classify.config import ClassifyConfig
from kzlib.config import config_dict
from kzlib.data import SEG_FP, DataDir, read_labels_csv
from kzlib.detailed import blend_files, submission_from_detailed
from kzlib.detect import predict as detect_inference, train as detect_training
from kzlib.detect.config import DetectConfig
from kzlib.errors import EnvironmentProblem
from kzlib.io import write_json_atomic
from kzlib.metric import write_submission
from kzlib.preset import PipelineConfig
from kzlib.stack import run as level2
from kzlib.stack.models import TooFewRows
from kzlib.runs import RunDir
from kzlib.stages import Stage, classifier_config, classifier_kinds
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


def _network_settings(c: DetectConfig | ClassifyConfig) -> dict:
    """A network config as a fingerprint sees it: machine-local values out (device, workers, where
    the files lie), what the network starts from in (the weight file's name and SHA-256)."""
    values = config_dict(c)
    for key, before in type(c).ADDED.items():  # a field added later changes nothing while it does as before
        if values.get(key) == before:
            values.pop(key)
    pretrained = values.pop("pretrained", "")
    for key in ("device", "workers", "init_from"):
        values.pop(key, None)
    out = {"detect" if isinstance(c, DetectConfig) else "classify": values}
    if pretrained:  # scratch: no key, as before the weights were fingerprinted
        out["weights"] = weights.identity(weights.resolve(pretrained, c.backbone))
    return out


@dataclass(frozen=True)
class Step:
    """What one kind of stage runs, writes and hashes.

    - ``run(context, stage)``: the function the runner calls, its output going to the stage's log;
      the dict it returns is recorded in the stage's state;
    - ``writes(work, stage)``: the files a finished stage has written (one missing: it runs again);
    - ``run_folder(work, stage)``: the training's run folder (trainings only): a half-done training
      leaves its ``config.json`` there, and a redone one is set aside from there;
    - ``settings(cfg, work, stage)``: what the stage does as plain values; its fingerprint is their
      hash with the data's.
    """
    name: str
    run: Callable[[Context, Stage], dict]
    writes: Callable[[WorkDir, Stage], list[Path]]
    settings: Callable[[PipelineConfig, WorkDir, Stage], dict]
    run_folder: Callable[[WorkDir, Stage], RunDir] | None = None

    def partial(self, work: WorkDir, s: Stage) -> list[Path]:
        """What a started but unfinished stage leaves behind."""
        return [self.run_folder(work, s).config] if self.run_folder else []


def _detector(work: WorkDir, s: Stage) -> RunDir:
    return work.detector(s.fold)


def _classifier(work: WorkDir, s: Stage) -> RunDir:
    return work.classifier(s.kind, s.fold)


def _detect_settings(cfg: PipelineConfig, work: WorkDir, s: Stage) -> dict:
    return {**_network_settings(cfg.detect_config()), "fold": s.fold}


def _classify_settings(cfg: PipelineConfig, work: WorkDir, s: Stage) -> dict:
    out = {**_network_settings(classifier_config(cfg, work, s.kind, s.fold)), "fold": s.fold}
    if s.step == "classify-predict":
        out["n_tta"] = cfg.n_tta
    return out


STEPS = {step.name: step for step in [
    Step("detect-train", detect_train,
         lambda w, s: [w.detector(s.fold).best], _detect_settings, _detector),
    Step("detect-oof", detect_oof,
         lambda w, s: [w.detector(s.fold).oof_boxes], _detect_settings),
    Step("detect-test", detect_test,
         lambda w, s: [w.detector(s.fold).test_boxes], _detect_settings),
    Step("detect-merge", detect_merge,
         lambda w, s: [w.oof_boxes, w.test_boxes],
         lambda cfg, w, s: {"test_boxes": cfg.test_box_rule, "test_votes": cfg.test_votes}
         | ({"test_match": cfg.test_match} if cfg.test_box_rule == "vote" and cfg.test_match != "iou" else {})),
    Step("classify-train", classify_train,
         lambda w, s: [w.classifier(s.kind, s.fold).best], _classify_settings, _classifier),
    Step("classify-predict", classify_predict,
         lambda w, s: [w.classifier(s.kind, s.fold).detailed("valid"), w.classifier(s.kind, s.fold).detailed("test")],
         _classify_settings),
    Step("pseudolabel", pseudolabels,
         lambda w, s: [w.pseudo_labels],
         lambda cfg, w, s: {"min_gap": cfg.pseudo_min_gap, "max_second_score": cfg.pseudo_max_second_score,
                            "drop_seg_fp": cfg.pseudo_drop_seg_fp}),
    Step("stack", stack,
         lambda w, s: [w.submission],
         lambda cfg, w, s: {"stack": config_dict(cfg.stack_config()), "kinds": classifier_kinds(cfg)}),
]}
