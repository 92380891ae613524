"""What each stage of the chain runs: one function per step of ``kzlib.pipeline.plan_stages``
(``detect-train``, ``detect-oof``, ... ``stack``), given the ``Pipeline`` (paths, configs, data)
and the stage. ``STEPS`` maps a step name to its function; the runner calls it with the stage's
output going to its log and records the dict it returns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from kzlib.config import config_dict
from kzlib.data import SEG_FP, DataDir, read_labels_csv
from kzlib.io import write_json_atomic
from kzlib.runs import RunDir

if TYPE_CHECKING:
    from kzlib.pipeline import Pipeline, StageSpec


def detect_train(p: "Pipeline", s: StageSpec) -> dict:
    from kzlib.detect.train import train

    if p.cfg.gpus > 1:
        return torchrun(p, "kzlib.detect", p.det_run(s.fold), p.detect_config(), [str(p.data)], s)
    return train(p.data, p.det_run(s.fold), p.detect_config(), s.fold, mode="auto",
                 deadline=p.deadline)


def torchrun(p: "Pipeline", module: str, run: Path, cfg, args: list[str], s: StageSpec) -> dict:
    """A training stage as ``torchrun --nproc-per-node GPUS`` (``kzlib.distributed.launch``)."""
    from kzlib.distributed import launch

    return launch(module, run, cfg, args + ["--fold", str(s.fold)], p.cfg.gpus, p.deadline,
                  f"stage {s.name}", p.stage_log(s))


def detect_oof(p: "Pipeline", s: StageSpec) -> dict:
    from kzlib.detect.predict import predict

    return {"out": str(predict(p.det_run(s.fold), p.data, "oof", deadline=p.deadline))}


def detect_test(p: "Pipeline", s: StageSpec) -> dict:
    from kzlib.detect.predict import predict

    return {"out": str(predict(p.det_run(s.fold), p.data, "test", deadline=p.deadline))}


def detect_merge(p: "Pipeline", s: StageSpec) -> dict:
    from kzlib.detect.predict import merge_oof, merge_test

    cfg = p.cfg
    oof = merge_oof([p.det_run(k) for k in range(cfg.n_folds)], p.oof_boxes, p.data)
    vote = cfg.test_boxes == "vote"
    folds = range(cfg.n_folds) if vote else [0]
    test = merge_test([RunDir(p.det_run(k)).test_boxes for k in folds], p.test_boxes,
                      cfg.test_votes or None if vote else None)
    return {"oof_boxes": len(oof), "test_boxes": len(test)}


def classify_train(p: "Pipeline", s: StageSpec) -> dict:
    from kzlib.classify.train import train

    pseudo = [p.pseudo_labels] if s.kind not in p.cfg.kinds else []
    if p.cfg.gpus > 1:
        args = [str(p.data), "--boxes", str(p.oof_boxes)] + (["--pseudolabels", *map(str, pseudo)] if pseudo else [])
        return torchrun(p, "kzlib.classify", p.cls_run(s.kind, s.fold), p.classify_config(s.kind, s.fold), args, s)
    return train(p.data, p.oof_boxes, p.cls_run(s.kind, s.fold), p.classify_config(s.kind, s.fold),
                 s.fold, pseudolabels=pseudo, mode="auto", deadline=p.deadline)


def classify_predict(p: "Pipeline", s: StageSpec) -> dict:
    from kzlib.classify.predict import predict

    run = p.cls_run(s.kind, s.fold)
    v = predict(run, p.data, p.oof_boxes, "valid", p.cfg.n_tta, deadline=p.deadline)
    t = predict(run, p.data, p.test_boxes, "test", p.cfg.n_tta, deadline=p.deadline)
    return {"valid_f1": v["scores"]["f1"], "valid_accuracy": v["scores"]["accuracy"], "test": t["detailed"]}


def pseudolabel(p: "Pipeline", s: StageSpec) -> dict:
    from kzlib.detailed import blend_files
    from kzlib.pseudolabel import report, select, write_pseudolabels

    cfg = p.cfg
    folds = range(cfg.n_folds)
    test = blend_files([RunDir(p.cls_run(kind, k)).detailed("test") for kind in cfg.kinds for k in folds])
    valid = pd.concat([blend_files([RunDir(p.cls_run(kind, k)).detailed("valid") for kind in cfg.kinds])
                       for k in folds], ignore_index=True)
    gap, second, drop = cfg.pseudo_min_gap, cfg.pseudo_max_second_score, cfg.pseudo_drop_seg_fp
    result = {"test": write_pseudolabels(test, p.pseudo_labels, gap, second, drop),
              "valid": report(valid, select(valid, gap, second, drop))}
    write_json_atomic(result, p.pseudo_labels.with_suffix(".json"))
    return result


def stack(p: "Pipeline", s: StageSpec) -> dict:
    from kzlib.stack.models import TooFewRows
    from kzlib.stack.run import build_features, predict, train

    cfg, kinds = p.cfg, p.kinds()
    overlap = cfg.stack_config().overlap
    out = p.work / "stack"
    feats = []
    for k in range(cfg.n_folds):
        groups = {kind: [str(RunDir(p.cls_run(kind, k)).detailed("valid"))] for kind in kinds}
        build_features(groups, out / f"features_fold{k}.csv.gz", overlap)
        feats.append(out / f"features_fold{k}.csv.gz")
    test_groups = {kind: [str(RunDir(p.cls_run(kind, k)).detailed("test")) for k in range(cfg.n_folds)]
                   for kind in kinds}
    info = build_features(test_groups, out / "features_test.csv.gz", overlap)
    write_json_atomic(config_dict(cfg.stack_config()), out / "stack_config.json")
    try:
        result = train(feats, p.data, out / "models", out / "stack_config.json")
    except TooFewRows as e:  # e.g. a detector that found almost nothing on the held-out pages
        print(f"{e}; the submission is the plain blend of every kind instead", flush=True)
        return {"level2": f"skipped: {e}", "test_features": info, **blend_submission(p, kinds)}
    sub = predict(out / "models", out / "features_test.csv.gz", p.data, p.submission)
    return {"level2_seconds": result["seconds"], "test_features": info, **sub}


def blend_submission(p: "Pipeline", kinds: list[str]) -> dict:
    from kzlib.detailed import blend_files, submission_from_detailed
    from kzlib.metric import write_submission

    test = blend_files([RunDir(p.cls_run(kind, k)).detailed("test") for kind in kinds
                        for k in range(p.cfg.n_folds)])
    ids = read_labels_csv(DataDir(p.data).sample_submission_csv)["image_id"].tolist()
    write_submission(submission_from_detailed(test), p.submission, ids)
    return {"submission": str(p.submission), "characters": int((test["pred"] != SEG_FP).sum()), "pages": len(ids)}


STEPS = {"detect-train": detect_train, "detect-oof": detect_oof, "detect-test": detect_test,
         "detect-merge": detect_merge, "classify-train": classify_train, "classify-predict": classify_predict,
         "pseudolabel": pseudolabel, "stack": stack}
