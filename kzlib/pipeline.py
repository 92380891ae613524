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
import functools
import hashlib
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Sequence

from kzlib.config import config_dict
from kzlib.data import DataDir, read_labels_csv
from kzlib.errors import EnvironmentProblem, KzError, StageProcessFailed, UsageError
from kzlib.folds import fold_pages
from kzlib.io import ensure_writable, exclusive_lock, io_message, write_json_atomic
from kzlib.preset import PipelineConfig
from kzlib.runs import Stopped, config_conflicts
from kzlib.stages import Stage, plan_stages, stage_config
from kzlib.steps import STEPS, Context
from kzlib.work import WorkDir

STATUSES = ("done", "changed", "stale", "partial", "to do")
SKIPPED_EXIT = 75  # a group's process found one of its stages held by another runner


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
    def run(self, only: str | None = None, dry_run: bool = False, rerun_changed: bool = False, log=print,
            jobs: int = 1, threads: int = 1) -> dict:
        """Run the chosen stages (``only``: one stage or a prefix), each after those it reads.
        ``jobs`` > 1: that many folds' groups of stages at once, each in its own process with
        ``threads`` torch threads (``_run_jobs``)."""
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
        heads = {s.name: f"[{i:>2}/{len(chosen)}] {s.name:<{width}}" for i, s in enumerate(chosen, 1)}
        if jobs > 1:
            return self._run_jobs(chosen, status, redo, heads, jobs, threads, log)
        results, blocked, skipped = {}, [], []
        for s in chosen:
            head = heads[s.name]
            if status[s.name] == "done":
                log(f"{head}  done earlier")
                continue
            waiting = self._waiting(s.deps, blocked + skipped, redo, results)
            if waiting:
                blocked.append(s.name)
                log(f"{head}  waiting for {', '.join(waiting[:3])}{' ...' if len(waiting) > 3 else ''}")
                continue
            outcome, record = self.run_one(s, head, s.name in redo, log)
            if outcome == "skipped":
                skipped.append(s.name)
            elif outcome == "stopped":
                return {"ran": results, "blocked": blocked, "skipped": skipped, "stopped": s.name}
            elif outcome == "ran":
                results[s.name] = record
        return {"ran": results, "blocked": blocked, "skipped": skipped}

    def _waiting(self, deps, not_run: list[str], redo: list[str], results: dict) -> list[str]:
        """Of ``deps``, the stages not done (nor redone by this run when they had to be)."""
        return [d for d in deps if self.record(d) is None or d in not_run or (d in redo and d not in results)]

    def run_one(self, s: Stage, head: str, redo: bool, log=print) -> tuple[str, dict | None]:
        """Run stage ``s`` under its lock (``redo``: its earlier outputs are set aside first) and
        record it: (``ran`` with its record, ``skipped`` when another process holds it, ``meanwhile``
        when another process finished it, or ``stopped`` for the time budget)."""
        with exclusive_lock(self.work.lock(s.name)) as held:
            if not held:
                log(f"{head}  running in another process ({held.owner}); skipped here")
                return "skipped", None
            if self.statuses()[s.name] == "done":
                # another runner finished it after this one looked: the state is read again under the lock
                log(f"{head}  done by another process meanwhile")
                return "meanwhile", None
            if redo:
                self.set_aside(s)
            log(f"{head}  running (log: {self.work.log(s.name)})")
            t0 = time.time()
            result = self.run_stage(s)
            seconds = time.time() - t0
        if result.get("stopped_early"):
            log(f"{head}  stopped for the time budget after {seconds:.0f} s; rerun to resume it")
            return "stopped", None
        record = {"stage": s.name, "seconds": round(seconds, 1), "finished": time.strftime("%Y-%m-%d %H:%M:%S"),
                  "finished_at": time.time(), "fingerprint": self.fingerprint(s),
                  "outputs": [str(p) for p in STEPS[s.step].writes(self.work, s)], "result": _jsonable(result)}
        write_json_atomic(record, self.work.state(s.name))
        log(f"{head}  done in {seconds:6.1f} s  {_brief(result)}")
        return "ran", record

    def _run_jobs(self, chosen: list[Stage], status: dict, redo: list[str], heads: dict, jobs: int, threads: int,
                  log) -> dict:
        """The chosen stages with up to ``jobs`` folds at a time: each fold's group of stages (a
        detector's training and its predictions, a classifier's training and its predictions: a Kaggle
        kernel's) in a process of its own with ``threads`` torch threads, started as soon as the
        stages it reads are done; a stage of every fold (merge, pseudolabels, level 2) in this
        process, alone, once the groups before it have ended. On two CPU cores, two narrow networks
        trained side by side on one thread each get through more steps than one on two threads."""
        if self.ctx.deadline is not None:
            raise UsageError("jobs > 1 cannot stop for a deadline; run with jobs 1")
        units: list[list[Stage]] = []
        for s in chosen:
            if status[s.name] == "done":
                log(f"{heads[s.name]}  done earlier")
            elif units and s.fold is not None and s.kernel and (units[-1][-1].fold, units[-1][-1].kernel) == (
                    s.fold, s.kernel):
                units[-1].append(s)
            else:
                units.append([s])
        spawn = multiprocessing.get_context("spawn")  # not fork: torch's thread pools do not survive one
        running: dict = {}  # process -> (its stages, when it started)
        results, blocked, skipped = {}, [], []
        try:
            while units or running:
                for proc, (unit, t0) in list(running.items()):
                    if proc.exitcode is None:
                        continue
                    del running[proc]
                    for s in unit:
                        rec = self.record(s.name)
                        if rec is not None and rec.get("finished_at", 0.0) >= t0:
                            results[s.name] = rec
                        elif proc.exitcode == SKIPPED_EXIT:
                            skipped.append(s.name)
                        elif proc.exitcode != 0:
                            raise StageProcessFailed(
                                f"stage {s.name} failed in its process (exit code {proc.exitcode}); its log: "
                                f"{self.work.log(s.name)}", proc.exitcode)
                if self._start_next(units, running, results, blocked, skipped, redo, heads, jobs, threads, spawn,
                                    log):
                    continue
                if not running:  # the plan lists every stage after those it reads: this cannot happen
                    raise RuntimeError(f"no stage can start: {[s.name for unit in units for s in unit]}")
                multiprocessing.connection.wait([p.sentinel for p in running], timeout=5)
        finally:
            for proc in running:  # interrupted, or another group failed: the trainings resume on a rerun
                proc.terminate()
            for proc in running:
                proc.join()
        return {"ran": results, "blocked": blocked, "skipped": skipped}

    def _start_next(self, units, running, results, blocked, skipped, redo, heads, jobs, threads, spawn, log) -> bool:
        """Start (or mark as waiting) the first group that can start now; whether one did."""
        pending = {s.name for unit in units for s in unit} | {s.name for unit, _ in running.values() for s in unit}
        for unit in units:
            deps = sorted({d for s in unit for d in s.deps} - {s.name for s in unit})
            if set(deps) & pending:
                continue
            waiting = self._waiting(deps, blocked + skipped, redo, results)
            if not waiting and (len(running) >= jobs if unit[0].fold is not None else bool(running)):
                return False  # a fold's group waits for a free job; a stage of every fold runs alone
            units.remove(unit)
            if waiting:
                for s in unit:
                    blocked.append(s.name)
                    log(f"{heads[s.name]}  waiting for {', '.join(waiting[:3])}{' ...' if len(waiting) > 3 else ''}")
            elif unit[0].fold is None:  # in this process, with every thread
                for s in unit:
                    outcome, record = self.run_one(s, heads[s.name], s.name in redo, log)
                    if outcome == "skipped":
                        skipped.append(s.name)
                    elif outcome == "ran":
                        results[s.name] = record
            else:
                args = (self.data, self.work.root, self.cfg, [(s.name, heads[s.name], s.name in redo) for s in unit],
                        threads)
                proc = spawn.Process(target=_run_group, args=args, name=unit[0].kernel)
                running[proc] = (unit, time.time())
                proc.start()
            return True
        return False

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


def _run_group(data: Path, work: Path, cfg: PipelineConfig, stages: list[tuple[str, str, bool]],
               threads: int) -> None:
    """A process of ``Pipeline._run_jobs``: a fold's stages (name, console head, redo) one after
    the other with ``threads`` torch threads; the kit's errors as one line and their exit code."""
    import torch  # heavy: only in the group's own process

    torch.set_num_threads(threads)
    pipe = Pipeline(data, work, cfg)
    by_name = {s.name: s for s in pipe.stages}
    try:
        for name, head, redo in stages:
            if pipe.run_one(by_name[name], head, redo, functools.partial(print, flush=True))[0] == "skipped":
                sys.exit(SKIPPED_EXIT)
    except KzError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(e.exit_code)
    except OSError as e:
        print(f"error: {io_message(e)}", file=sys.stderr, flush=True)
        sys.exit(EnvironmentProblem.exit_code)
    except KeyboardInterrupt:  # Ctrl-C reaches every process of the terminal: the runner says it once
        sys.exit(130)


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
