"""The whole chain as a graph of resumable stages, for ``run_local.py``.

Every stage writes into its own folder of the work directory, atomically, and records completion
in ``state/<stage>.json``; a rerun skips finished stages and resumes an interrupted training from
its checkpoint. Stages call the same functions as the per-stage CLIs.

Folds: pages are split by book (``kzlib.data.make_folds``). When the data has fewer books than
folds (the real sample is one book), pages are split instead: page i of the sorted page ids goes
to fold i mod n_folds.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from kzlib.classify.config import ClassifyConfig
from kzlib.data import SEG_FP, DataDir, DataError, book_id, make_folds, read_labels_csv
from kzlib.detect.config import DetectConfig
from kzlib.io import write_json_atomic
from kzlib.stack.config import StackConfig
from kzlib.config import ConfigError, check_positive, config_dict, config_from_dict, load_config


@dataclass
class PipelineConfig:
    """A preset: the whole chain's settings. Defaults are the original solution's
    (``configs/preset_full.json`` spells them out; UPSTREAM.md lists every one)."""
    n_folds: int = 5
    device: str = "cuda"
    detect: dict = field(default_factory=dict)          # DetectConfig fields
    kinds: dict = field(default_factory=dict)           # model kind -> ClassifyConfig fields
    n_tta: int = 4
    test_boxes: str = "fold0"                           # test boxes of every classifier: "fold0" (the fold-0
    #                                                     detector's, as upstream) or "vote" (folds voting)
    test_votes: int = 0                                 # with "vote": folds agreeing on a box (0: majority)
    pseudo_kind: str = ""                               # kind refitted with pseudolabels ("" = none)
    pseudo_min_gap: float = 5.0
    pseudo_max_second: float = 10.0
    pseudo_drop_seg_fp: bool = False                    # upstream keeps confident seg_fp boxes as labels
    pseudo_oversample: int = 1
    finetune_epochs: int = 5
    finetune_lr_factor: float = 0.1
    finetune_crops_per_page: int = 3                    # upstream --repeat-train 3 for the fine-tune
    refit_scratch: bool = True
    refit_crops_per_page: int = 4                       # upstream --repeat-train 4 for the from-scratch refit
    stack: dict = field(default_factory=dict)           # StackConfig fields

    def __post_init__(self):
        config_from_dict(DetectConfig, self.detect, None, "detect.")
        if not self.kinds:
            raise ConfigError("kinds: at least one classifier kind is needed")
        for name, values in self.kinds.items():
            config_from_dict(ClassifyConfig, values, None, f"kinds.{name}.")
        if self.pseudo_kind and self.pseudo_kind not in self.kinds:
            raise ConfigError(f"pseudo_kind: {self.pseudo_kind!r} is not one of the kinds ({', '.join(self.kinds)})")
        if self.test_boxes not in ("fold0", "vote"):
            raise ConfigError(f"test_boxes: {self.test_boxes!r} is not fold0 or vote")
        check_positive(self, "n_folds", "n_tta", "pseudo_oversample", "finetune_epochs", "finetune_lr_factor",
                       "finetune_crops_per_page", "refit_crops_per_page")
        if not 0 <= self.test_votes <= self.n_folds:
            raise ConfigError(f"test_votes: must be within 0..{self.n_folds}, got {self.test_votes}")
        config_from_dict(StackConfig, self.stack, None, "stack.")

    def detect_config(self) -> DetectConfig:
        return config_from_dict(DetectConfig, {**self.detect, "device": self.device, "n_folds": self.n_folds})

    def classify_config(self, kind: str) -> ClassifyConfig:
        return config_from_dict(ClassifyConfig, {**self.kinds[kind], "device": self.device, "n_folds": self.n_folds})

    def finetune_config(self, kind: str, init_from: str) -> ClassifyConfig:
        """The pseudolabel fine-tune of ``kind``: from its checkpoint, few epochs, lr / 10."""
        c = self.classify_config(kind)
        return replace(c, init_from=init_from, epochs=self.finetune_epochs, lr=c.lr * self.finetune_lr_factor,
                       warmup_epochs=0.0, pseudo_oversample=self.pseudo_oversample,
                       crops_per_page=self.finetune_crops_per_page)

    def refit_config(self, kind: str) -> ClassifyConfig:
        """The from-scratch refit of ``kind`` with pseudolabels."""
        return replace(self.classify_config(kind), pseudo_oversample=self.pseudo_oversample,
                       crops_per_page=self.refit_crops_per_page)

    def stack_config(self) -> StackConfig:
        return config_from_dict(StackConfig, self.stack)

    def without_pretrained(self) -> "PipelineConfig":
        """The same preset training every network from random weights (``--allow-scratch``)."""
        kinds = {k: {**v, "pretrained": "", "frozen_start": False} for k, v in self.kinds.items()}
        return replace(self, detect={**self.detect, "pretrained": ""}, kinds=kinds)

    def with_weights_dir(self, folder: Path) -> "PipelineConfig":
        """Pretrained weight names resolved to files of ``folder`` (the stages' configs then record
        the file they started from)."""
        from kzlib.weights import resolve

        def fix(values: dict, arch: str) -> dict:
            value = values.get("pretrained", "auto")
            path = resolve(value, arch, folder)
            return {**values, "pretrained": str(path.resolve()) if path else ""}
        det = self.detect_config()
        kinds = {k: fix(v, self.classify_config(k).base) for k, v in self.kinds.items()}
        return replace(self, detect=fix(self.detect, det.backbone), kinds=kinds)


PRESET_DIR = Path(__file__).resolve().parent.parent / "configs"


def preset_path(name: str | Path) -> Path:
    """A preset by name (``full``, ``demo``, ... in ``configs/preset_NAME.json``) or a JSON file."""
    path = Path(name)
    if path.suffix == ".json" or path.exists():
        if not path.is_file():
            raise ConfigError(f"preset file {path} not found")
        return path
    named = PRESET_DIR / f"preset_{name}.json"
    if not named.is_file():
        known = sorted(p.stem.removeprefix("preset_") for p in PRESET_DIR.glob("preset_*.json"))
        raise ConfigError(f"no preset {name!r} (known: {', '.join(known)}; or give a JSON file)")
    return named


def load_preset(path: Path) -> PipelineConfig:
    return load_config(PipelineConfig, path)


def fold_pages(ids: Sequence[str], n_folds: int) -> tuple[list[list[str]], str]:
    """The held-out pages of each fold, and how they were made (by book, or by page when there
    are fewer books than folds)."""
    ids = list(ids)
    if len({book_id(i) for i in ids}) >= n_folds:
        f = make_folds(ids, n_folds)
        return [f.loc[f["fold"] == k, "image_id"].tolist() for k in range(n_folds)], "book"
    if len(ids) < n_folds:
        raise DataError(f"{len(ids)} labelled pages cannot fill {n_folds} folds")
    ordered = sorted(ids)
    return [ordered[k::n_folds] for k in range(n_folds)], "page"


@dataclass
class Stage:
    name: str
    deps: list[str]
    outputs: list[Path]
    run: Callable[[], dict]
    partial: list[Path] = field(default_factory=list)   # files that show an interrupted run


class Pipeline:
    def __init__(self, data: Path, work: Path, cfg: PipelineConfig, folds: Sequence[int] | None = None,
                 deadline: float | None = None):
        """``deadline`` (a ``time.time()`` value): trainings stop before an epoch that would end
        after it, and the run stops there, resumable (used by the Kaggle kernels)."""
        self.data, self.work, self.cfg, self.deadline = Path(data), Path(work), cfg, deadline
        d = DataDir(self.data)
        self.train_ids = read_labels_csv(d.train_csv)["image_id"].tolist()
        self.val_ids, self.fold_mode = fold_pages(self.train_ids, cfg.n_folds)
        self.folds = list(range(cfg.n_folds)) if folds is None else list(folds)
        bad = [k for k in self.folds if not 0 <= k < cfg.n_folds]
        if bad:
            raise ValueError(f"--folds {bad} outside 0..{cfg.n_folds - 1}")
        self.stages = self._plan()

    # ----------------------------------------------------------------------------- paths
    def det_run(self, k: int) -> Path:
        return self.work / "detect" / f"fold{k}"

    def cls_run(self, kind: str, k: int) -> Path:
        return self.work / "classify" / kind / f"fold{k}"

    @property
    def oof_boxes(self) -> Path:
        return self.work / "detect" / "oof_boxes.csv"

    @property
    def test_boxes(self) -> Path:
        return self.work / "detect" / "test_boxes.csv"

    @property
    def pseudo_labels(self) -> Path:
        return self.work / "pseudo" / "pseudo_labels.csv"

    @property
    def submission(self) -> Path:
        return self.work / "submission.csv"

    def kinds(self) -> list[str]:
        """Base kinds, then the pseudolabel kinds."""
        out = list(self.cfg.kinds)
        if self.cfg.pseudo_kind:
            out.append(f"{self.cfg.pseudo_kind}-pl-ft")
            if self.cfg.refit_scratch:
                out.append(f"{self.cfg.pseudo_kind}-pl")
        return out

    # ----------------------------------------------------------------------------- plan
    def _plan(self) -> list[Stage]:
        from kzlib.classify.predict import predict as cls_predict
        from kzlib.classify.train import train as cls_train
        from kzlib.detect.predict import merge_oof, merge_test, predict as det_predict
        from kzlib.detect.train import train as det_train

        cfg, data = self.cfg, self.data
        all_folds = range(cfg.n_folds)
        stages: list[Stage] = []
        for k in all_folds:
            run = self.det_run(k)
            stages += [
                Stage(f"detect-f{k}", [], [run / "best.pth"],
                      lambda k=k, run=run: det_train(data, run, cfg.detect_config(), k, self.val_ids[k], resume=True,
                                                         deadline=self.deadline),
                      [run / "checkpoint.pth"]),
                Stage(f"detect-oof-f{k}", [f"detect-f{k}"], [run / "oof_boxes.csv"],
                      lambda run=run: {"out": str(det_predict(run, data, "oof"))}),
                Stage(f"detect-test-f{k}", [f"detect-f{k}"], [run / "test_boxes.csv"],
                      lambda run=run: {"out": str(det_predict(run, data, "test"))}),
            ]

        def merge():
            oof = merge_oof([self.det_run(k) for k in all_folds], self.oof_boxes, data)
            vote = cfg.test_boxes == "vote"
            test = merge_test([self.det_run(k) / "test_boxes.csv" for k in (all_folds if vote else [0])],
                              self.test_boxes, cfg.test_votes or None if vote else None)
            return {"oof_boxes": len(oof), "test_boxes": len(test)}

        stages.append(Stage("detect-merge", [f"detect-{s}-f{k}" for k in all_folds for s in ("oof", "test")],
                            [self.oof_boxes, self.test_boxes], merge))

        def classify_stages(kind: str, k: int, make_cfg: Callable[[], ClassifyConfig], deps: list[str],
                            pseudo: list[Path]) -> list[Stage]:
            run = self.cls_run(kind, k)

            def do_predict():
                v = cls_predict(run, data, self.oof_boxes, "valid", cfg.n_tta)
                t = cls_predict(run, data, self.test_boxes, "test", cfg.n_tta)
                return {"valid_f1": v["scores"]["f1"], "valid_accuracy": v["scores"]["accuracy"], "test": t["detailed"]}

            return [
                Stage(f"classify-{kind}-f{k}", deps, [run / "best.pth"],
                      lambda: cls_train(data, self.oof_boxes, run, make_cfg(), k, self.val_ids[k], pseudo, resume=True,
                                        deadline=self.deadline),
                      [run / "checkpoint.pth"]),
                Stage(f"classify-{kind}-predict-f{k}", [f"classify-{kind}-f{k}"],
                      [run / "detailed.csv.gz", run / "test_detailed.csv.gz"], do_predict),
            ]

        for kind in cfg.kinds:
            for k in all_folds:
                stages += classify_stages(kind, k, lambda kind=kind: cfg.classify_config(kind), ["detect-merge"], [])
        base_predictions = [f"classify-{kind}-predict-f{k}" for kind in cfg.kinds for k in all_folds]

        if cfg.pseudo_kind:
            stages.append(Stage("pseudolabel", base_predictions, [self.pseudo_labels], self._pseudolabel))
            pk = cfg.pseudo_kind
            for k in all_folds:
                stages += classify_stages(
                    f"{pk}-pl-ft", k, lambda k=k: cfg.finetune_config(pk, str(self.cls_run(pk, k) / "best.pth")),
                    ["pseudolabel"], [self.pseudo_labels])
                if cfg.refit_scratch:
                    stages += classify_stages(f"{pk}-pl", k, lambda: cfg.refit_config(pk), ["pseudolabel"],
                                              [self.pseudo_labels])
        all_predictions = [f"classify-{kind}-predict-f{k}" for kind in self.kinds() for k in all_folds]
        stages.append(Stage("stack", all_predictions, [self.submission], self._stack))
        return stages

    def _pseudolabel(self) -> dict:
        from kzlib.pseudolabel import blend_files, report, select, write_pseudolabels

        cfg = self.cfg
        test = blend_files([self.cls_run(kind, k) / "test_detailed.csv.gz" for kind in cfg.kinds for k in range(cfg.n_folds)])
        valid = pd.concat([blend_files([self.cls_run(kind, k) / "detailed.csv.gz" for kind in cfg.kinds])
                           for k in range(cfg.n_folds)], ignore_index=True)
        gap, second, drop = cfg.pseudo_min_gap, cfg.pseudo_max_second, cfg.pseudo_drop_seg_fp
        result = {"test": write_pseudolabels(test, self.pseudo_labels, gap, second, drop),
                  "valid": report(valid, select(valid, gap, second, drop))}
        write_json_atomic(result, self.pseudo_labels.with_suffix(".json"))
        return result

    def _stack(self) -> dict:
        from kzlib.stack.models import TooFewRows
        from kzlib.stack.run import build_features, predict, train

        cfg, kinds = self.cfg, self.kinds()
        out = self.work / "stack"
        feats = []
        for k in range(cfg.n_folds):
            groups = {kind: [str(self.cls_run(kind, k) / "detailed.csv.gz")] for kind in kinds}
            build_features(groups, out / f"features_fold{k}.csv.gz")
            feats.append(out / f"features_fold{k}.csv.gz")
        test_groups = {kind: [str(self.cls_run(kind, k) / "test_detailed.csv.gz") for k in range(cfg.n_folds)] for kind in kinds}
        info = build_features(test_groups, out / "features_test.csv.gz")
        write_json_atomic(config_dict(cfg.stack_config()), out / "stack_config.json")
        try:
            result = train(feats, self.data, out / "models", out / "stack_config.json")
        except TooFewRows as e:  # e.g. a detector that found almost nothing on the held-out pages
            print(f"{e}; the submission is the plain blend of every kind instead", flush=True)
            return {"level2": f"skipped: {e}", "test_features": info, **self._blend_submission(kinds)}
        sub = predict(out / "models", out / "features_test.csv.gz", self.data, self.submission)
        return {"level2_seconds": result["seconds"], "test_features": info, **sub}

    def _blend_submission(self, kinds: list[str]) -> dict:
        from kzlib.classify.predict import submission_from_detailed
        from kzlib.metric import write_submission
        from kzlib.pseudolabel import blend_files

        test = blend_files([self.cls_run(kind, k) / "test_detailed.csv.gz" for kind in kinds
                            for k in range(self.cfg.n_folds)])
        ids = read_labels_csv(DataDir(self.data).sample_submission_csv)["image_id"].tolist()
        write_submission(submission_from_detailed(test), self.submission, ids)
        return {"submission": str(self.submission), "characters": int((test["pred"] != SEG_FP).sum()), "pages": len(ids)}

    # ----------------------------------------------------------------------------- state
    def state_file(self, name: str) -> Path:
        return self.work / "state" / f"{name}.json"

    def status(self, stage: Stage) -> str:
        if self.state_file(stage.name).exists():
            return "done"
        if any(p.exists() for p in stage.outputs + stage.partial):
            return "partial"
        return "to do"

    def selected(self, stage: Stage, only: str | None) -> bool:
        fold = stage.name.rsplit("-f", 1)
        per_fold = len(fold) == 2 and fold[1].isdigit()
        if per_fold and int(fold[1]) not in self.folds:
            return False
        return only is None or stage.name == only or stage.name.startswith(only + "-")

    def run(self, only: str | None = None, dry_run: bool = False, log=print) -> dict:
        chosen = [s for s in self.stages if self.selected(s, only)]
        if only and not chosen:
            raise ValueError(f"--only {only!r} matches no stage (stages: {', '.join(s.name for s in self.stages)})")
        width = max(len(s.name) for s in chosen)
        if dry_run:
            for s in chosen:
                log(f"{s.name:<{width}}  {self.status(s):<7}  {', '.join(str(p) for p in s.outputs)}")
            return {}
        results, blocked = {}, []
        for i, s in enumerate(chosen, 1):
            head = f"[{i:>2}/{len(chosen)}] {s.name:<{width}}"
            if self.status(s) == "done":
                log(f"{head}  done earlier")
                continue
            waiting = [d for d in s.deps if not self.state_file(d).exists()]
            if waiting:
                blocked.append(s.name)
                log(f"{head}  waiting for {', '.join(waiting[:3])}{' ...' if len(waiting) > 3 else ''}")
                continue
            t0 = time.time()
            log_path = self.work / "logs" / f"{s.name}.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
                print(f"=== {s.name} started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})", flush=True)
                result = s.run() or {}
            seconds = time.time() - t0
            if result.get("stopped_early"):
                log(f"{head}  stopped for the time budget after {seconds:.0f} s; rerun to resume it")
                return {"ran": results, "blocked": blocked, "stopped": s.name}
            record = {"stage": s.name, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "outputs": [str(p) for p in s.outputs], "result": _jsonable(result)}
            write_json_atomic(record, self.state_file(s.name))
            results[s.name] = record
            log(f"{head}  done in {seconds:6.1f} s  {_brief(result)}")
        return {"ran": results, "blocked": blocked}


def _jsonable(obj):
    return json.loads(json.dumps(obj, default=str))


def _brief(result: dict) -> str:
    keys = ("best_f1", "valid_f1", "oof_boxes", "test_boxes", "characters")
    parts = [f"{k}={result[k]:.4f}" if isinstance(result.get(k), float) else f"{k}={result[k]}" for k in keys if k in result]
    return " ".join(parts)


# --------------------------------------------------------------------------------- summary

def summary(p: Pipeline) -> tuple[pd.DataFrame, pd.DataFrame]:
    """F1 of every model kind, the blends, level 2 — on the folds' held-out pages (valid) and, when
    the data folder has ``test_labels.csv`` (synthetic data), on the test pages — plus wall times."""
    from kzlib.metric import score_on_pages
    from kzlib.classify.predict import read_detailed, submission_from_detailed
    from kzlib.pseudolabel import blend_files

    d = DataDir(p.data)
    truth = read_labels_csv(d.train_csv)
    test_truth = read_labels_csv(d.root / "test_labels.csv") if (d.root / "test_labels.csv").exists() else None
    ids_test = read_labels_csv(d.sample_submission_csv)["image_id"].tolist()

    def f1(sub: pd.DataFrame, sol: pd.DataFrame, ids) -> float:
        return score_on_pages(sub, sol, ids)["f1"]

    def kinds_f1(kinds: list[str]) -> tuple[float | None, float | None]:
        folds = range(p.cfg.n_folds)
        valid_files = [[p.cls_run(k, f) / "detailed.csv.gz" for k in kinds] for f in folds]
        test_files = [p.cls_run(k, f) / "test_detailed.csv.gz" for k in kinds for f in folds]
        if not all(x.exists() for fs in valid_files for x in fs) or not all(x.exists() for x in test_files):
            return None, None
        valid = pd.concat([blend_files(fs) if len(fs) > 1 else read_detailed(fs[0]) for fs in valid_files])
        v = f1(submission_from_detailed(valid), truth, p.train_ids)
        t = None
        if test_truth is not None:
            t = f1(submission_from_detailed(blend_files(test_files)), test_truth, ids_test)
        return v, t

    rows = []
    for kind in p.kinds():
        v, t = kinds_f1([kind])
        rows.append({"model": kind, "valid_f1": v, "test_f1": t})
    base = list(p.cfg.kinds)
    if len(base) > 1:
        v, t = kinds_f1(base)
        rows.append({"model": "blend", "valid_f1": v, "test_f1": t})
    if p.cfg.pseudo_kind:
        v, t = kinds_f1(p.kinds())
        rows.append({"model": "blend + pseudolabel models", "valid_f1": v, "test_f1": t})
    report = p.work / "stack" / "models" / "report.json"
    if report.exists():
        level2 = next(r for r in json.loads(report.read_text())["report"] if r["method"] == "level 2")
        t = f1(pd.read_csv(p.submission, dtype=str, keep_default_na=False), test_truth, ids_test) \
            if test_truth is not None and p.submission.exists() else None
        rows.append({"model": "level 2", "valid_f1": level2["all"], "test_f1": t})
    table = pd.DataFrame(rows)
    times = []
    for s in p.stages:
        f = p.state_file(s.name)
        if f.exists():
            times.append({"stage": s.name, "seconds": json.loads(f.read_text())["seconds"]})
    return table, pd.DataFrame(times)


def check_data(data: Path, n_folds: int) -> None:
    from kzlib.data import check_dataset

    report = check_dataset(data, n_folds)
    if not report.ok:
        lines = "\n".join(f"  - {p}" for p in report.problems[:20])
        more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise DataError(f"{data}: the data folder fails `python -m kzlib.data check`:\n{lines}{more}")

