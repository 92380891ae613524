"""The whole chain as a graph of resumable stages, for ``run_local.py`` and the Kaggle kernels.

``plan_stages(cfg)`` is the graph as data: every stage's name, what it runs, what it depends on
and which Kaggle kernel it belongs to — one place that the runner and the Kaggle planner both read.
``Pipeline`` runs it in a work folder: each stage writes into its own folder, atomically, and
records completion in ``state/<stage>.json`` with a fingerprint of its settings and data. A rerun
skips finished stages and resumes an interrupted training from its checkpoint; a stage whose
settings changed since it ran (and everything after it) is reported and only redone with
``rerun_changed``. A lock file per stage lets several runners share a work folder (one GPU each):
a stage another runner holds is skipped with a message.

Folds: ``kzlib.folds`` (by book; by page when the data has fewer books than folds).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from kzlib import weights
from kzlib.config import config_dict
from kzlib.data import DataDir, DataError, read_labels_csv
from kzlib.errors import EnvironmentProblem, UsageError
from kzlib.folds import fold_pages
from kzlib.io import exclusive_lock, write_json_atomic
from kzlib.preset import PipelineConfig
from kzlib.runs import RunDir, Stopped, config_conflicts
from kzlib.steps import STEPS


@dataclass(frozen=True)
class StageSpec:
    """One stage of the chain. ``step`` says what it runs; ``kernel`` groups stages into Kaggle
    kernels (``detect-f0``, ``cls-KIND-f0``, ``pseudolabel``, ``stack``)."""
    name: str
    step: str  # detect-train, detect-oof, detect-test, detect-merge, classify-train, classify-predict, pseudolabel, stack
    deps: tuple[str, ...] = ()
    fold: int | None = None
    kind: str = ""
    kernel: str = ""


def classifier_kinds(cfg: PipelineConfig) -> list[str]:
    """The base kinds, then the pseudolabel kinds (``KIND-pl-ft`` fine-tune, ``KIND-pl`` refit)."""
    out = list(cfg.kinds)
    if cfg.pseudo_kind:
        out.append(f"{cfg.pseudo_kind}-pl-ft")
        if cfg.refit_scratch:
            out.append(f"{cfg.pseudo_kind}-pl")
    return out


def plan_stages(cfg: PipelineConfig) -> list[StageSpec]:
    """Every stage of ``cfg``'s chain, each after the stages it depends on."""
    folds = range(cfg.n_folds)
    out: list[StageSpec] = []
    for k in folds:
        g = f"detect-f{k}"
        out += [StageSpec(f"detect-f{k}", "detect-train", (), k, kernel=g),
                StageSpec(f"detect-oof-f{k}", "detect-oof", (f"detect-f{k}",), k, kernel=g),
                StageSpec(f"detect-test-f{k}", "detect-test", (f"detect-f{k}",), k, kernel=g)]
    test_folds = folds if cfg.test_boxes == "vote" else [0]
    out.append(StageSpec("detect-merge", "detect-merge",
                         tuple(f"detect-oof-f{k}" for k in folds) + tuple(f"detect-test-f{k}" for k in test_folds)))

    def classifier(kind: str, k: int, deps: tuple[str, ...]) -> list[StageSpec]:
        g = f"cls-{kind}-f{k}"
        return [StageSpec(f"classify-{kind}-f{k}", "classify-train", deps, k, kind, g),
                StageSpec(f"classify-{kind}-predict-f{k}", "classify-predict", (f"classify-{kind}-f{k}",), k, kind, g)]

    for kind in cfg.kinds:
        for k in folds:
            out += classifier(kind, k, ("detect-merge",))
    if cfg.pseudo_kind:
        pk = cfg.pseudo_kind
        out.append(StageSpec("pseudolabel", "pseudolabel",
                             tuple(f"classify-{kind}-predict-f{k}" for kind in cfg.kinds for k in folds),
                             kernel="pseudolabel"))
        for k in folds:
            out += classifier(f"{pk}-pl-ft", k, ("detect-merge", "pseudolabel", f"classify-{pk}-f{k}"))
            if cfg.refit_scratch:
                out += classifier(f"{pk}-pl", k, ("detect-merge", "pseudolabel"))
    out.append(StageSpec("stack", "stack", tuple(f"classify-{kind}-predict-f{k}" for kind in classifier_kinds(cfg)
                                                 for k in folds), kernel="stack"))
    return out


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
            raise UsageError(f"--folds {bad} outside 0..{cfg.n_folds - 1}")
        self.stages = plan_stages(cfg)
        self.by_name = {s.name: s for s in self.stages}
        self._data_hash: str | None = None

    # ----------------------------------------------------------------------------- paths
    def det_run(self, k: int) -> Path:
        return self.work / "detect" / f"fold{k}"

    def cls_run(self, kind: str, k: int) -> Path:
        return self.work / "classify" / kind / f"fold{k}"

    oof_boxes = property(lambda self: self.work / "detect" / "oof_boxes.csv")
    test_boxes = property(lambda self: self.work / "detect" / "test_boxes.csv")
    pseudo_labels = property(lambda self: self.work / "pseudo" / "pseudo_labels.csv")
    submission = property(lambda self: self.work / "submission.csv")

    def kinds(self) -> list[str]:
        return classifier_kinds(self.cfg)

    def outputs(self, s: StageSpec) -> list[Path]:
        """The files a finished stage has written (a missing one means it must run again)."""
        if s.step == "detect-train":
            return [RunDir(self.det_run(s.fold)).best]
        if s.step in ("detect-oof", "detect-test"):
            r = RunDir(self.det_run(s.fold))
            return [r.oof_boxes if s.step == "detect-oof" else r.test_boxes]
        if s.step == "detect-merge":
            return [self.oof_boxes, self.test_boxes]
        if s.step == "classify-train":
            return [RunDir(self.cls_run(s.kind, s.fold)).best]
        if s.step == "classify-predict":
            r = RunDir(self.cls_run(s.kind, s.fold))
            return [r.detailed("valid"), r.detailed("test")]
        if s.step == "pseudolabel":
            return [self.pseudo_labels]
        return [self.submission]

    def partial_files(self, s: StageSpec) -> list[Path]:
        if s.step == "detect-train":
            return [RunDir(self.det_run(s.fold)).config]
        if s.step == "classify-train":
            return [RunDir(self.cls_run(s.kind, s.fold)).config]
        return []

    # ----------------------------------------------------------------------------- stage settings
    def detect_config(self):
        return self.cfg.detect_config()

    def classify_config(self, kind: str, k: int):
        """The config of classifier ``kind`` on fold ``k`` (pseudolabel kinds included)."""
        pk = self.cfg.pseudo_kind
        if pk and kind == f"{pk}-pl-ft":
            return self.cfg.finetune_config(pk, str(RunDir(self.cls_run(pk, k)).best))
        if pk and kind == f"{pk}-pl":
            return self.cfg.refit_config(pk)
        return self.cfg.classify_config(kind)

    def settings(self, s: StageSpec) -> dict:
        """What a stage does, as plain values: its fingerprint is the hash of these and the data."""
        cfg = self.cfg
        if s.step in ("detect-train", "detect-oof", "detect-test"):
            out = {"detect": config_dict(self.detect_config()), "fold": s.fold}
        elif s.step == "detect-merge":
            out = {"test_boxes": cfg.test_boxes, "test_votes": cfg.test_votes}
        elif s.step in ("classify-train", "classify-predict"):
            out = {"classify": config_dict(self.classify_config(s.kind, s.fold)), "fold": s.fold}
            if s.step == "classify-predict":
                out["n_tta"] = cfg.n_tta
        elif s.step == "pseudolabel":
            out = {"min_gap": cfg.pseudo_min_gap, "max_second_score": cfg.pseudo_max_second_score,
                   "drop_seg_fp": cfg.pseudo_drop_seg_fp}
        else:
            out = {"stack": config_dict(cfg.stack_config()), "kinds": self.kinds()}
        for c in ("detect", "classify"):  # machine-local settings are not the stage's substance
            if c in out:
                pretrained = out[c].pop("pretrained", "")
                for key in ("device", "workers", "init_from"):
                    out[c].pop(key, None)
                if pretrained:  # what the network starts from: the file's name and SHA-256 (scratch: no key)
                    out["weights"] = weights.identity(weights.resolve(pretrained, out[c]["backbone"]))
        return out

    def data_hash(self) -> str:
        if self._data_hash is None:
            d = DataDir(self.data)
            h = hashlib.sha256()
            for f in (d.train_csv, d.sample_submission_csv):
                if f.is_file():
                    h.update(f.read_bytes())
            self._data_hash = h.hexdigest()
        return self._data_hash

    def fingerprint(self, s: StageSpec) -> str:
        text = json.dumps({"settings": self.settings(s), "data": self.data_hash()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ----------------------------------------------------------------------------- state
    def state_file(self, name: str) -> Path:
        return self.work / "state" / f"{name}.json"

    def record(self, name: str) -> dict | None:
        f = self.state_file(name)
        if not f.exists():
            return None
        try:
            return json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def statuses(self) -> dict[str, str]:
        """Each stage's status: ``done``, ``changed`` (its settings or data changed since it ran),
        ``stale`` (a stage it depends on changed or ran again after it), ``partial`` or ``to do``."""
        out: dict[str, str] = {}
        finished: dict[str, float] = {}
        for s in self.stages:
            rec = self.record(s.name)
            if rec is not None and all(p.exists() for p in self.outputs(s)):
                finished[s.name] = rec.get("finished_at", 0.0)
                if rec.get("fingerprint") not in (None, self.fingerprint(s)):
                    out[s.name] = "changed"
                elif any(out.get(d) in ("changed", "stale") or finished.get(d, 0.0) > finished[s.name]
                         or (out.get(d) not in (None, "done")) for d in s.deps):
                    out[s.name] = "stale"
                else:
                    out[s.name] = "done"
            elif any(p.exists() for p in self.outputs(s) + self.partial_files(s)):
                out[s.name] = "changed" if self._training_changed(s) else "partial"
            else:
                out[s.name] = "to do"
        return out

    def _training_changed(self, s: StageSpec) -> bool:
        """A half-done training whose run folder was started with other settings."""
        if s.step not in ("detect-train", "classify-train"):
            return False
        from kzlib.classify.config import ClassifyConfig
        from kzlib.detect.config import DetectConfig

        if s.step == "detect-train":
            run, cls, cfg = RunDir(self.det_run(s.fold)), DetectConfig, self.detect_config()
        else:
            run, cls, cfg = RunDir(self.cls_run(s.kind, s.fold)), ClassifyConfig, self.classify_config(s.kind, s.fold)
        if not run.started():
            return False
        try:
            return bool(config_conflicts(run.read_config(cls), config_dict(cfg)))
        except UsageError:
            return True

    def selected(self, s: StageSpec, only: str | None) -> bool:
        if s.fold is not None and s.fold not in self.folds:
            return False
        return only is None or s.name == only or s.name.startswith(only + "-")

    # ----------------------------------------------------------------------------- running
    def run(self, only: str | None = None, dry_run: bool = False, rerun_changed: bool = False, log=print) -> dict:
        chosen = [s for s in self.stages if self.selected(s, only)]
        if only and not chosen:
            raise UsageError(f"--only {only!r} matches no stage (stages: {', '.join(s.name for s in self.stages)})")
        width = max(len(s.name) for s in chosen)
        status = self.statuses()
        redo = [s.name for s in chosen if status[s.name] in ("changed", "stale")]
        if dry_run:
            for s in chosen:
                log(f"{s.name:<{width}}  {status[s.name]:<7}  {', '.join(str(p) for p in self.outputs(s))}")
            if redo:
                log(f"{len(redo)} stage(s) changed or stale: a run refuses them unless --rerun-changed")
            return {"redo": redo}
        if redo and not rerun_changed:
            changed = [n for n in redo if status[n] == "changed"]
            raise UsageError(f"{self.work}: the preset or data changed since {', '.join(changed[:4])}"
                             f"{' ...' if len(changed) > 4 else ''} ran ({len(redo) - len(changed)} later stage(s) "
                             "depend on it); rerun with --rerun-changed to redo them, or use another --work")
        self.check_writable()
        write_json_atomic(config_dict(self.cfg), self.work / "preset.json")  # what a model bundle is made with
        results, blocked, skipped = {}, [], []
        for i, s in enumerate(chosen, 1):
            head = f"[{i:>2}/{len(chosen)}] {s.name:<{width}}"
            if status[s.name] == "done":
                log(f"{head}  done earlier")
                continue
            waiting = [d for d in s.deps if self.record(d) is None or d in blocked or d in skipped
                       or (d in redo and d not in results)]
            if waiting:
                blocked.append(s.name)
                log(f"{head}  waiting for {', '.join(waiting[:3])}{' ...' if len(waiting) > 3 else ''}")
                continue
            with self.lock(s) as held:
                if not held:
                    skipped.append(s.name)
                    log(f"{head}  running in another process ({held.owner}); skipped here")
                    continue
                if s.name in redo:
                    self.set_aside(s)
                log(f"{head}  running (log: {self.stage_log(s)})")
                t0 = time.time()
                result = self.run_stage(s)
                seconds = time.time() - t0
            if result.get("stopped_early"):
                log(f"{head}  stopped for the time budget after {seconds:.0f} s; rerun to resume it")
                return {"ran": results, "blocked": blocked, "skipped": skipped, "stopped": s.name}
            record = {"stage": s.name, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "finished_at": time.time(), "fingerprint": self.fingerprint(s),
                      "outputs": [str(p) for p in self.outputs(s)], "result": _jsonable(result)}
            write_json_atomic(record, self.state_file(s.name))
            results[s.name] = record
            log(f"{head}  done in {seconds:6.1f} s  {_brief(result)}")
        return {"ran": results, "blocked": blocked, "skipped": skipped}

    def stage_log(self, s: StageSpec) -> Path:
        return self.work / "logs" / f"{s.name}.log"

    def run_stage(self, s: StageSpec) -> dict:
        """Run one stage with its output in its log (its progress lines on the console too); an I/O
        failure is one line naming the stage, the path and what went wrong, in the log and raised."""
        from kzlib.cli import io_message

        path = self.stage_log(s)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as log_file:
            out = _StageOutput(log_file, sys.stdout, s.name)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                print(f"=== {s.name} started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})", flush=True)
                try:
                    return STEPS[s.step](self, s) or {}
                except Stopped:  # a prediction stopped for the time budget; its finished parts are kept
                    return {"stopped_early": True}
                except OSError as e:
                    message = io_message(e, f"stage {s.name}")
                    print(f"error: {message}", flush=True)
                    raise EnvironmentProblem(message) from None

    def check_writable(self) -> None:
        """The work folder takes files before any compute starts."""
        from kzlib.io import ensure_writable

        ensure_writable(self.work, "work folder")

    def lock(self, s: StageSpec):
        """An exclusive lock on the stage (``locks/<stage>.lock``, ``kzlib.io.exclusive_lock``)."""
        return exclusive_lock(self.work / "locks" / f"{s.name}.lock")

    def set_aside(self, s: StageSpec) -> None:
        """Before a changed stage reruns: its state goes, and a training's run folder is moved to
        ``replaced/`` (nothing trained is deleted)."""
        self.state_file(s.name).unlink(missing_ok=True)
        if s.step in ("detect-train", "classify-train"):
            run = self.det_run(s.fold) if s.step == "detect-train" else self.cls_run(s.kind, s.fold)
            if run.exists():
                dest = self.work / "replaced" / f"{s.name}-{time.strftime('%Y%m%d-%H%M%S')}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                shutil.move(str(run), str(dest))
                print(f"{s.name}: its earlier run folder is kept in {dest}", flush=True)

class _StageOutput(io.TextIOBase):
    """A stage's output: all of it to its log file; its progress lines (epochs, budget stops,
    warnings, errors) also to the console, so a long stage shows it is alive (tqdm's bars are off
    when the console is not a terminal)."""

    PROGRESS = re.compile(r"epoch \d+/\d+|resuming|time budget|warning|error|stopping", re.IGNORECASE)

    def __init__(self, log_file, console, name: str):
        self.log_file, self.console, self.name, self.pending = log_file, console, name, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        self.log_file.write(text)
        self.pending += text
        *lines, self.pending = re.split(r"[\r\n]", self.pending)
        for line in lines:
            if self.PROGRESS.search(line):
                self.console.write(f"      {self.name}: {line.strip()}\n")
                self.console.flush()
        return len(text)

    def flush(self) -> None:
        self.log_file.flush()


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
    from kzlib.detailed import blend_files, read_detailed, submission_from_detailed
    from kzlib.metric import score_on_pages

    d = DataDir(p.data)
    truth = read_labels_csv(d.train_csv)
    test_truth = read_labels_csv(d.root / "test_labels.csv") if (d.root / "test_labels.csv").exists() else None
    ids_test = read_labels_csv(d.sample_submission_csv)["image_id"].tolist()

    def f1(sub: pd.DataFrame, sol: pd.DataFrame, ids) -> float:
        return score_on_pages(sub, sol, ids)["f1"]

    def kinds_f1(kinds: list[str]) -> tuple[float | None, float | None]:
        folds = range(p.cfg.n_folds)
        valid_files = [[RunDir(p.cls_run(k, f)).detailed("valid") for k in kinds] for f in folds]
        test_files = [RunDir(p.cls_run(k, f)).detailed("test") for k in kinds for f in folds]
        if not all(x.exists() for fs in valid_files for x in fs) or not all(x.exists() for x in test_files):
            return None, None
        valid = pd.concat([blend_files(fs) if len(fs) > 1 else read_detailed(fs[0]) for fs in valid_files])
        v = f1(submission_from_detailed(valid), truth, p.train_ids)
        t = None
        if test_truth is not None:
            t = f1(submission_from_detailed(blend_files(test_files)), test_truth, ids_test)
        return v, t

    def agnostic(boxes: Path, sol: pd.DataFrame, ids) -> float | None:
        """The detector's class-agnostic F1: every box and every character made one class."""
        if not boxes.exists():
            return None
        b = pd.read_csv(boxes, dtype={"image_id": str})
        sub = submission_from_detailed(b.assign(pred="U+0000"))
        one = sol.assign(labels=sol["labels"].fillna("").str.replace(r"U\+[0-9A-F]+", "U+0000", regex=True))
        return f1(sub, one, ids)

    rows = [{"model": "detector (class-agnostic)", "valid_f1": agnostic(p.oof_boxes, truth, p.train_ids),
             "test_f1": agnostic(p.test_boxes, test_truth, ids_test) if test_truth is not None else None}]
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
        rec = p.record(s.name)
        if rec is not None:
            times.append({"stage": s.name, "seconds": rec["seconds"]})
    return table, pd.DataFrame(times)


def check_data(data: Path, n_folds: int) -> None:
    from kzlib.data import check_dataset

    report = check_dataset(data, n_folds)
    if not report.ok:
        lines = "\n".join(f"  - {p}" for p in report.problems[:20])
        more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise DataError(f"{data}: the data folder fails `python -m kzlib.data check`:\n{lines}{more}")
