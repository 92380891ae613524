"""The runner of the chain: runs the stages of ``kzlib.stages.plan_stages`` in a work folder
(``kzlib.work.WorkDir``), for ``kzlib run`` and the Kaggle kernels.

Each stage writes into its own folder, atomically, and records completion in ``state/<stage>.json``
with a fingerprint of its settings and data (``kzlib.steps.STEPS``). A rerun skips finished stages
and resumes an interrupted training from its checkpoint; a stage whose settings changed since it ran
(and everything after it) is reported and only redone with ``rerun_changed``. A lock file per stage
lets several runners share a work folder (one GPU each): a stage another runner holds is skipped with
a message. A stage's output goes to its log, and its progress lines to the console too.
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
from pathlib import Path
from typing import Sequence

from kzlib.config import config_dict
from kzlib.data import DataDir, read_labels_csv
from kzlib.errors import EnvironmentProblem, UsageError
from kzlib.folds import fold_pages
from kzlib.io import ensure_writable, exclusive_lock, io_message, write_json_atomic
from kzlib.preset import PipelineConfig
from kzlib.runs import Stopped, config_conflicts
from kzlib.stages import Stage, plan_stages, stage_config
from kzlib.steps import STEPS, Context
from kzlib.work import WorkDir

STATUSES = ("done", "changed", "stale", "partial", "to do")


class Pipeline:
    def __init__(self, data: Path, work: Path, cfg: PipelineConfig, folds: Sequence[int] | None = None,
                 deadline: float | None = None):
        """``folds``: the folds whose per-fold stages this runner takes (all by default).
        ``deadline`` (a ``time.time()`` value): trainings stop before an epoch that would end after
        it, and the run stops there, resumable (used by the Kaggle kernels)."""
        self.ctx = Context(Path(data), WorkDir(work), cfg, deadline)
        self.data, self.work, self.cfg = self.ctx.data, self.ctx.work, cfg
        self.train_ids = read_labels_csv(DataDir(self.data).train_csv)["image_id"].tolist()
        self.fold_mode = fold_pages(self.train_ids, cfg.n_folds)[1]
        self.folds = list(range(cfg.n_folds)) if folds is None else list(folds)
        bad = [k for k in self.folds if not 0 <= k < cfg.n_folds]
        if bad:
            raise UsageError(f"--folds {bad} outside 0..{cfg.n_folds - 1}")
        self.stages = plan_stages(cfg)
        self._data_hash: str | None = None

    # ----------------------------------------------------------------------------- fingerprints
    def data_hash(self) -> str:
        if self._data_hash is None:
            d = DataDir(self.data)
            h = hashlib.sha256()
            for f in (d.train_csv, d.sample_submission_csv):
                if f.is_file():
                    h.update(f.read_bytes())
            self._data_hash = h.hexdigest()
        return self._data_hash

    def fingerprint(self, s: Stage) -> str:
        settings = STEPS[s.step].settings(self.cfg, self.work, s)
        text = json.dumps({"settings": settings, "data": self.data_hash()}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ----------------------------------------------------------------------------- state
    def record(self, name: str) -> dict | None:
        f = self.work.state(name)
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
            step, rec = STEPS[s.step], self.record(s.name)
            writes = step.writes(self.work, s)
            if rec is not None and all(p.exists() for p in writes):
                finished[s.name] = rec.get("finished_at", 0.0)
                if rec.get("fingerprint") not in (None, self.fingerprint(s)):
                    out[s.name] = "changed"
                elif any(out.get(d) in ("changed", "stale") or finished.get(d, 0.0) > finished[s.name]
                         or (out.get(d) not in (None, "done")) for d in s.deps):
                    out[s.name] = "stale"
                else:
                    out[s.name] = "done"
            elif any(p.exists() for p in writes + step.partial(self.work, s)):
                out[s.name] = "changed" if self._training_changed(s) else "partial"
            else:
                out[s.name] = "to do"
        return out

    def _training_changed(self, s: Stage) -> bool:
        """A half-done training whose run folder was started with other settings."""
        step = STEPS[s.step]
        if step.run_folder is None or not step.run_folder(self.work, s).started():
            return False
        cfg = stage_config(self.cfg, self.work, s)
        try:
            return bool(config_conflicts(step.run_folder(self.work, s).read_config(type(cfg)), config_dict(cfg)))
        except UsageError:
            return True

    def selected(self, s: Stage, only: str | None) -> bool:
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
                writes = STEPS[s.step].writes(self.work, s)
                log(f"{s.name:<{width}}  {status[s.name]:<7}  {', '.join(str(p) for p in writes)}")
            if redo:
                log(f"{len(redo)} stage(s) changed or stale: a run refuses them unless --rerun-changed")
            return {"redo": redo}
        if redo and not rerun_changed:
            changed = [n for n in redo if status[n] == "changed"]
            raise UsageError(f"{self.work}: the preset or data changed since {', '.join(changed[:4])}"
                             f"{' ...' if len(changed) > 4 else ''} ran ({len(redo) - len(changed)} later stage(s) "
                             "depend on it); rerun with --rerun-changed to redo them, or use another --work")
        ensure_writable(self.work.root, "work folder")  # before any compute starts
        write_json_atomic(config_dict(self.cfg), self.work.preset)  # what a model bundle is made with
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
            with exclusive_lock(self.work.lock(s.name)) as held:
                if not held:
                    skipped.append(s.name)
                    log(f"{head}  running in another process ({held.owner}); skipped here")
                    continue
                if self.statuses()[s.name] == "done":
                    # another runner finished it after this one looked: the state is read again under the lock
                    log(f"{head}  done by another process meanwhile")
                    continue
                if s.name in redo:
                    self.set_aside(s)
                log(f"{head}  running (log: {self.work.log(s.name)})")
                t0 = time.time()
                result = self.run_stage(s)
                seconds = time.time() - t0
            if result.get("stopped_early"):
                log(f"{head}  stopped for the time budget after {seconds:.0f} s; rerun to resume it")
                return {"ran": results, "blocked": blocked, "skipped": skipped, "stopped": s.name}
            record = {"stage": s.name, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                      "finished_at": time.time(), "fingerprint": self.fingerprint(s),
                      "outputs": [str(p) for p in STEPS[s.step].writes(self.work, s)], "result": _jsonable(result)}
            write_json_atomic(record, self.work.state(s.name))
            results[s.name] = record
            log(f"{head}  done in {seconds:6.1f} s  {_brief(result)}")
        return {"ran": results, "blocked": blocked, "skipped": skipped}

    def run_stage(self, s: Stage) -> dict:
        """Run one stage with its output in its log (its progress lines on the console too); an I/O
        failure is one line naming the stage, the path and what went wrong, in the log and raised."""
        path = self.work.log(s.name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as log_file:
            out = _StageOutput(log_file, sys.stdout, s.name)
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                print(f"=== {s.name} started {time.strftime('%Y-%m-%d %H:%M:%S')} (pid {os.getpid()})", flush=True)
                try:
                    return STEPS[s.step].run(self.ctx, s) or {}
                except Stopped:  # a prediction stopped for the time budget; its finished parts are kept
                    return {"stopped_early": True}
                except OSError as e:
                    message = io_message(e, f"stage {s.name}")
                    print(f"error: {message}", flush=True)
                    raise EnvironmentProblem(message) from None

    def set_aside(self, s: Stage) -> None:
        """Before a changed stage reruns: its state goes, and a training's run folder is moved to
        ``replaced/`` (nothing trained is deleted)."""
        self.work.state(s.name).unlink(missing_ok=True)
        step = STEPS[s.step]
        if step.run_folder is not None and step.run_folder(self.work, s).root.exists():
            dest = self.work.replaced(s.name, time.strftime("%Y%m%d-%H%M%S"))
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(step.run_folder(self.work, s).root), str(dest))
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
    parts = [f"{k}={result[k]:.4f}" if isinstance(result.get(k), float) else f"{k}={result[k]}" for k in keys
             if k in result and not (k == "best_f1" and result[k] < 0)]  # < 0: the training never validated
    return " ".join(parts)
