"""Push the rendered kernels to Kaggle in dependency order and see them through.

    kzlib kaggle push [--kernels build/kernels] [--max-gpu 2] [--max-cpu 4] [--poll 60]

At most ``--max-gpu`` GPU kernels run at a time (an account gets 2 batch GPU sessions). Each
kernel is pushed once every kernel it reads is complete; a push the API refuses is never taken for
success ("Maximum batch GPU session count" is retried later, any other refusal fails the kernel).
A kernel is complete when Kaggle says so *and* its ``kzlib_status.json`` says ``done``; one stopped
by the time budget is re-rendered as a continuation (it reads its own output) and pushed again, up
to ``--max-continuations`` times. State lives in ``<kernels>/push_state.json``: stop it any time and
run it again to carry on. A table shows every kernel's state; the exit code is 0 when every kernel
completed, 1 otherwise (a failed kernel and those waiting on it are listed).

The API object is injected (``Scheduler(api=...)``): the real one is the kaggle package's
``KaggleApi``; the tests use a fake that models refusals, errors, budget stops and slow kernels.
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kzlib.config import config_from_dict
from kzlib.errors import UsageError
from kzlib.io import write_json_atomic
from kzlib.kaggle.inputs import STATUS_FILE
from kzlib.kaggle.plan import render
from kzlib.preset import PipelineConfig

QUOTA_WORDS = ("maximum batch gpu session", "session count", "quota")


def normal_status(response) -> tuple[str, str]:
    """(queued | running | complete | error | cancelled, failure message) from the API's answer."""
    status = getattr(response, "status", response)
    name = str(getattr(status, "name", status)).lower()
    message = getattr(response, "failure_message", "") or getattr(response, "failureMessage", "") or ""
    if "cancel" in name:
        name = "cancelled"
    return name, message


@dataclass
class Entry:
    slug: str
    gpu: bool
    upstream: list[str]
    state: str = "pending"        # pending, pushed, running, stopped, complete, failed
    pushes: int = 0
    continuations: int = 0
    version: int | None = None
    message: str = ""
    checked_after: float = 0.0    # do not read the status of a fresh push before this time

    def row(self) -> dict:
        return {k: getattr(self, k) for k in ("state", "pushes", "continuations", "version", "message")}


@dataclass
class Scheduler:
    kernels_dir: Path
    api: object
    max_gpu: int = 2
    max_cpu: int = 4
    poll: float = 60.0
    max_continuations: int = 3
    continue_stopped: bool = True
    sleep: Callable[[float], None] = time.sleep
    log: Callable[[str], None] = print
    entries: dict[str, Entry] = field(default_factory=dict)

    def __post_init__(self):
        self.kernels_dir = Path(self.kernels_dir)
        order_file = self.kernels_dir / "push_order.txt"
        if not order_file.is_file():
            raise UsageError(f"{self.kernels_dir}: no push_order.txt; render the kernels first (kzlib kaggle render)")
        self.order = order_file.read_text().split()
        self.user = json.loads((self.kernels_dir / self.order[0] / "kernel-metadata.json").read_text())["id"].split("/")[0]
        saved = json.loads(self.state_file.read_text()) if self.state_file.exists() else {}
        for slug in self.order:
            meta = json.loads((self.kernels_dir / slug / "kernel-metadata.json").read_text())
            upstream = [s.split("/", 1)[1] for s in meta["kernel_sources"] if s.split("/", 1)[1] != slug]
            entry = Entry(slug, bool(meta.get("enable_gpu")), upstream)
            for k, v in saved.get(slug, {}).items():
                setattr(entry, k, v)
            self.entries[slug] = entry

    @property
    def state_file(self) -> Path:
        return self.kernels_dir / "push_state.json"

    def save(self) -> None:
        write_json_atomic({s: e.row() for s, e in self.entries.items()}, self.state_file)

    # ------------------------------------------------------------------ one cycle
    def running(self, gpu: bool) -> int:
        return sum(e.state in ("pushed", "running") and e.gpu == gpu for e in self.entries.values())

    def refresh(self, now: float) -> None:
        for e in self.entries.values():
            if e.state not in ("pushed", "running") or now < e.checked_after:
                continue
            try:
                status, message = normal_status(self.api.kernels_status(f"{self.user}/{e.slug}"))
            except Exception as err:  # network hiccups: ask again next cycle
                self.log(f"{e.slug}: status not available ({type(err).__name__}: {err}); asking again later")
                continue
            if status in ("queued", "running", "new_script"):
                e.state = "running"
            elif status == "complete":
                self._finished(e)
            else:
                e.state, e.message = "failed", f"Kaggle says {status}" + (f": {message}" if message else "")

    def _finished(self, e: Entry) -> None:
        status = self.read_status(e.slug)
        if status is None:
            e.state, e.message = "failed", f"complete, but its output has no {STATUS_FILE}"
        elif status.get("continuation", 0) < e.continuations:
            e.state = "running"  # the answer is still the previous version's
        elif status.get("state") == "done":
            e.state, e.message = "complete", ""
        elif status.get("state") == "stopped":
            e.state, e.message = "stopped", f"stopped by the time budget in {status.get('stopped_at')}"
        else:
            e.state, e.message = "failed", status.get("error", f"status {status.get('state')}")

    def read_status(self, slug: str) -> dict | None:
        with tempfile.TemporaryDirectory() as tmp:
            try:
                self.api.kernels_output(f"{self.user}/{slug}", tmp, file_pattern=STATUS_FILE)
            except Exception:
                return None
            found = list(Path(tmp).rglob(STATUS_FILE))
            return json.loads(found[0].read_text()) if found else None

    def continue_stopped_kernels(self) -> None:
        for e in self.entries.values():
            if e.state != "stopped" or not self.continue_stopped:
                continue
            if e.continuations >= self.max_continuations:
                e.state, e.message = "failed", f"still stopped after {e.continuations} continuations; raise the budget"
                continue
            self.render_continuation(e.slug)
            e.continuations += 1
            e.state = "pending"
            self.log(f"{e.slug}: stopped by the time budget; continuation {e.continuations} rendered")

    def render_continuation(self, slug: str) -> None:
        opts = json.loads((self.kernels_dir / "render.json").read_text())
        cfg = config_from_dict(PipelineConfig, opts["preset"], str(self.kernels_dir / "render.json"))
        render(cfg, opts["user"], self.kernels_dir, opts["dataset_slug"], opts["prefix"], continue_=(slug,),
               budget_hours=opts["budget_hours"], only=(slug,))

    def push_ready(self, now: float) -> None:
        refused_gpu = False
        for slug in self.order:
            e = self.entries[slug]
            if e.state != "pending" or any(self.entries[u].state != "complete" for u in e.upstream):
                continue
            if e.gpu and (refused_gpu or self.running(True) >= self.max_gpu):
                continue
            if not e.gpu and self.running(False) >= self.max_cpu:
                continue
            try:
                response = self.api.kernels_push(str(self.kernels_dir / slug))
            except Exception as err:
                self.log(f"{slug}: push failed ({type(err).__name__}: {err}); trying again later")
                continue
            error = getattr(response, "error", "") or ""
            if error:
                if any(w in error.lower() for w in QUOTA_WORDS):
                    e.message = f"refused ({error}); retried later"
                    refused_gpu = refused_gpu or e.gpu
                    continue
                e.state, e.message = "failed", f"push refused: {error}"
                continue
            e.state, e.pushes, e.message = "pushed", e.pushes + 1, ""
            e.version = getattr(response, "versionNumber", None) or getattr(response, "version_number", None)
            e.checked_after = now + self.poll
            self.log(f"{slug}: pushed (version {e.version})")

    def blocked(self) -> list[str]:
        """Kernels that can never run: a kernel they read failed."""
        failed = {s for s, e in self.entries.items() if e.state == "failed"}
        out = []
        for slug in self.order:
            e = self.entries[slug]
            if e.state == "pending" and any(u in failed or u in out for u in e.upstream):
                out.append(slug)
        return out

    def table(self) -> str:
        blocked = set(self.blocked())
        lines = [f"{'kernel':<36} {'gpu':<4} {'state':<9} {'pushes':>6} {'cont.':>5}  note"]
        for slug in self.order:
            e = self.entries[slug]
            state = "blocked" if slug in blocked else e.state
            note = e.message or (f"waits for {', '.join(u for u in e.upstream if self.entries[u].state != 'complete')}"
                                 if state == "pending" and e.upstream else "")
            lines.append(f"{slug:<36} {'yes' if e.gpu else 'no':<4} {state:<9} {e.pushes:>6} {e.continuations:>5}  {note[:90]}")
        return "\n".join(lines)

    # ------------------------------------------------------------------ the loop
    def run(self, max_cycles: int | None = None, clock: Callable[[], float] = time.time) -> int:
        last = None
        cycle = 0
        while True:
            now = clock()
            self.refresh(now)
            self.continue_stopped_kernels()
            self.push_ready(now)
            self.save()
            text = self.table()
            if text != last:
                self.log(text)
                last = text
            states = [e.state for e in self.entries.values()]
            if all(s == "complete" for s in states):
                self.log("every kernel is complete; the submission is the output of the last one "
                         f"(kaggle kernels output {self.user}/{self.order[-1]} -p out/)")
                return 0
            active = any(s in ("pushed", "running", "stopped") for s in states)
            pushable = [s for s, e in self.entries.items() if e.state == "pending" and s not in self.blocked()]
            if not active and (not pushable or all(any(self.entries[u].state != "complete" for u in
                                                       self.entries[s].upstream) for s in pushable)):
                failed = [s for s, e in self.entries.items() if e.state == "failed"]
                self.log(f"stopped: failed {', '.join(failed) or '-'}; blocked {', '.join(self.blocked()) or '-'}")
                return 1
            cycle += 1
            if max_cycles is not None and cycle >= max_cycles:
                self.log("stopping here (max cycles); run `kzlib kaggle push` again to carry on")
                return 1
            self.sleep(self.poll)
