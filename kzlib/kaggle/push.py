"""Push the rendered kernels to Kaggle in dependency order and see them through.

    kzlib kaggle push [--kernels build/kernels] [--max-gpu 2] [--max-cpu 4] [--poll 60]
                      [--retry SLUG ...] [--max-weeks 8] [--force]

Before the first push the bill is shown (``kzlib.kaggle.bill``: GPU-hours, sessions, the account's
quota, weeks) and a plan that would take more than ``--max-weeks`` is refused unless ``--force``;
the kit dataset must be ready on Kaggle. At most ``--max-gpu`` GPU kernels run at a time (an
account gets 2 batch GPU sessions). Each kernel is pushed once every kernel it reads is complete.

What the client says decides (``kzlib.kaggle.api``): Kaggle's quota refusal ("Maximum batch GPU
session count") is retried when a session ends; a transient failure (no connection, HTTP 429/5xx)
is asked again with backoff, at most ``MAX_TRANSIENT`` times in a row, then fails the kernel; a
permanent one (the client's ``ValueError``, HTTP 4xx) fails it at once with the client's message; a
reply naming invalid sources fails it too (it would run without them). Status and output are read
for the version the push returned. A kernel is complete when Kaggle says so *and* its
``kzlib_status.json`` says ``done``; one stopped by the time budget is re-rendered as a
continuation (it reads its own output) and pushed again, up to ``--max-continuations`` times. A
kernel Kaggle ends in error is reported with its own status line and the tail of its log.

State lives in ``<kernels>/push_state.json``: stop any time and run again to carry on;
``--retry SLUG ...`` sets failed kernels back to pending (their continuations as they were)
without touching completed ones. A table shows every kernel's state; the exit code is 0 when
every kernel completed, 1 otherwise (a failed kernel and those waiting on it are listed).

The API object is injected (``Scheduler(api=...)``): the real one is the kaggle package's
``KaggleApi``; the tests use the real one against a loopback Kaggle, and a fake that raises and
answers as the client does.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from kzlib.config import config_from_dict
from kzlib.errors import UsageError
from kzlib.io import write_json_atomic
from kzlib.kaggle import api as kaggle_api
from kzlib.kaggle.bill import bill, format_bill, quota, weeks
from kzlib.kaggle.inputs import STATUS_FILE
from kzlib.kaggle.plan import kernel_plan, render
from kzlib.preset import PipelineConfig

QUOTA_WORDS = ("maximum batch gpu session", "session count", "quota")
MAX_TRANSIENT = 6       # transient failures in a row before a kernel fails
LOG_TAIL = 15           # lines of a failed kernel's log shown


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
    checked_after: float = 0.0    # do not ask before this time (a fresh push; a backoff)
    transient: int = 0            # transient failures in a row

    def row(self) -> dict:
        return {k: getattr(self, k) for k in ("state", "pushes", "continuations", "version", "message", "transient")}

    @property
    def ref_suffix(self) -> str:
        return f"/{self.version}" if self.version else ""


def normal_status(response) -> tuple[str, str]:
    """(queued | running | new_script | complete | error | cancelled, failure message) of the
    client's ``ApiGetKernelSessionStatusResponse`` (its status is a ``KernelWorkerStatus``)."""
    status = getattr(response, "status", response)
    name = str(getattr(status, "name", status)).lower()
    message = getattr(response, "failure_message", "") or ""
    if "cancel" in name:
        name = "cancelled"
    return name, message


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

    def render_options(self) -> dict:
        return json.loads((self.kernels_dir / "render.json").read_text())

    # ------------------------------------------------------------------ before the first push
    def retry(self, slugs: list[str]) -> None:
        """Failed kernels back to pending (a continuation stays one); completed ones untouched."""
        unknown = [s for s in slugs if s not in self.entries]
        if unknown:
            raise UsageError(f"--retry {', '.join(unknown)}: no such kernel in {self.kernels_dir}")
        for slug in slugs:
            e = self.entries[slug]
            if e.state != "failed":
                raise UsageError(f"--retry {slug}: it is {e.state}, not failed; only failed kernels are pushed again")
            e.state, e.message, e.transient, e.checked_after = "pending", "", 0, 0.0
            self.log(f"{slug}: set back to pending (pushed {e.pushes} time(s) so far)")
        self.save()

    def check_before_first_push(self, max_weeks: float, force: bool) -> None:
        """The bill, the account's quota, and the kit dataset ready on Kaggle."""
        opts = self.render_options()
        cfg = config_from_dict(PipelineConfig, opts["preset"], str(self.kernels_dir / "render.json"))
        lines = bill(kernel_plan(cfg, opts["prefix"]), cfg, opts["budget_hours"])
        q = quota(self.api)
        self.log(format_bill(lines, q, cfg.gpus))
        need = weeks(sum(x.gpu_hours for x in lines), q)
        if need > max_weeks and not force:
            raise UsageError(f"the plan takes about {need:.1f} weeks of GPU quota, more than --max-weeks {max_weeks:g}; "
                             "use a smaller preset, or pass --force to push it anyway")
        ref = f"{self.user}/{opts['dataset_slug']}"
        try:
            status = str(self.api.dataset_status(ref) or "").lower()
        except Exception as e:  # noqa: BLE001  (the client's errors, said as the client says them)
            raise UsageError(f"the kit dataset {ref} is not on Kaggle ({kaggle_api.describe(e)}); push it first: "
                             "python -m kzlib dataset --preset PRESET --push") from None
        if "ready" not in status:
            raise UsageError(f"the kit dataset {ref} is {status or 'not ready'} on Kaggle; wait until "
                             f"`kaggle datasets status {ref}` says ready (or push it again), then push the kernels")

    # ------------------------------------------------------------------ one cycle
    def running(self, gpu: bool) -> int:
        return sum(e.state in ("pushed", "running") and e.gpu == gpu for e in self.entries.values())

    def transient(self, e: Entry, now: float, what: str, error: BaseException | str) -> None:
        """A failure to ask again later (with backoff), or, after ``MAX_TRANSIENT`` in a row, a failed kernel."""
        text = error if isinstance(error, str) else kaggle_api.describe(error)
        e.transient += 1
        if e.transient >= MAX_TRANSIENT:
            e.state, e.message = "failed", f"{what} failed {e.transient} times in a row: {text}"
            self.log(f"{e.slug}: {e.message}")
            return
        wait = min(3600.0, self.poll * 2 ** e.transient)
        e.checked_after = now + wait
        e.message = f"{what} failed ({text}); asking again in {wait:.0f} s"
        self.log(f"{e.slug}: {e.message}")

    def refresh(self, now: float) -> None:
        for e in self.entries.values():
            if e.state not in ("pushed", "running") or now < e.checked_after:
                continue
            try:
                status, message = normal_status(self.api.kernels_status(f"{self.user}/{e.slug}{e.ref_suffix}"))
            except Exception as err:  # noqa: BLE001
                # just pushed, Kaggle may not know the version yet: a 404 is asked again too, a few times
                if kaggle_api.is_transient(err) or kaggle_api.http_status(err) == 404:
                    self.transient(e, now, "reading its status", err)
                else:
                    e.state, e.message = "failed", f"its status cannot be read: {kaggle_api.describe(err)}"
                continue
            if status in ("queued", "running", "new_script"):
                e.state, e.transient = "running", 0
            elif status == "complete":
                self._finished(e, now)
            else:
                own = self.read_status(e, now, quiet=True)
                tail = own.get("_log_tail", "") if own else ""
                kernel_line = f"; the kernel says: {own.get('error')}" if own and own.get("error") else ""
                e.state = "failed"
                e.message = f"Kaggle says {status}" + (f": {message}" if message else "") + kernel_line
                self.log(f"{e.slug}: {e.message}" + (f"\n  last lines of its log:\n{tail}" if tail else ""))

    def _finished(self, e: Entry, now: float) -> None:
        status = self.read_status(e, now)
        if status is None:
            return  # not readable now: asked again (bounded) by read_status
        if status.get("continuation", 0) < e.continuations:
            e.state = "running"  # the answer is still the previous version's
        elif status.get("state") == "done":
            e.state, e.message, e.transient = "complete", "", 0
        elif status.get("state") == "stopped":
            e.state, e.message = "stopped", f"stopped by the time budget in {status.get('stopped_at')}"
        else:
            e.state, e.message = "failed", status.get("error", f"status {status.get('state')}")

    def read_status(self, e: Entry, now: float, quiet: bool = False) -> dict | None:
        """The kernel's ``kzlib_status.json`` (and the tail of its log under ``_log_tail``) from the
        pushed version's output; None when it cannot be read now (a transient failure, counted) or
        is missing."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                self.api.kernels_output(f"{self.user}/{e.slug}{e.ref_suffix}", tmp,
                                        file_pattern=re.escape(STATUS_FILE) + "$")
            except Exception as err:  # noqa: BLE001
                if quiet:
                    return None
                if kaggle_api.is_transient(err):
                    self.transient(e, now, "reading its output", err)
                else:
                    e.state, e.message = "failed", f"its output cannot be read: {kaggle_api.describe(err)}"
                return None
            found = list(Path(tmp).rglob(STATUS_FILE))
            logs = sorted(Path(tmp).glob("*.log"))
            status = json.loads(found[0].read_text()) if found else None
            if status is not None and logs:
                lines = logs[0].read_text(errors="replace").splitlines()
                status["_log_tail"] = "\n".join("  " + line for line in lines[-LOG_TAIL:])
        if status is None and not quiet:
            e.state, e.message = "failed", f"complete, but its output has no {STATUS_FILE}"
        return status

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
        opts = self.render_options()
        cfg = config_from_dict(PipelineConfig, opts["preset"], str(self.kernels_dir / "render.json"))
        render(cfg, opts["user"], self.kernels_dir, opts["dataset_slug"], opts["prefix"], continue_=(slug,),
               budget_hours=opts["budget_hours"], only=(slug,), docker_image=opts.get("docker_image", ""))

    def push_ready(self, now: float) -> None:
        refused_gpu = False
        for slug in self.order:
            e = self.entries[slug]
            if e.state != "pending" or now < e.checked_after or any(self.entries[u].state != "complete" for u in e.upstream):
                continue
            if e.gpu and (refused_gpu or self.running(True) >= self.max_gpu):
                continue
            if not e.gpu and self.running(False) >= self.max_cpu:
                continue
            try:
                response = self.api.kernels_push(str(self.kernels_dir / slug))
            except Exception as err:  # noqa: BLE001
                if kaggle_api.is_transient(err):
                    self.transient(e, now, "the push", err)
                else:
                    e.state, e.message = "failed", f"push refused: {kaggle_api.describe(err)}"
                    self.log(f"{slug}: {e.message}")
                continue
            error = getattr(response, "error", "") or ""
            if error:
                if any(w in error.lower() for w in QUOTA_WORDS):
                    e.message = f"refused ({error}); pushed again when a session ends"
                    refused_gpu = refused_gpu or e.gpu
                    continue
                e.state, e.message = "failed", f"push refused: {error}"
                self.log(f"{slug}: {e.message}")
                continue
            invalid = {what: list(getattr(response, f"invalid_{what}_sources", None) or [])
                       for what in ("dataset", "competition", "kernel", "model")}
            invalid = {k: v for k, v in invalid.items() if v}
            e.pushes += 1
            e.version = getattr(response, "version_number", None) or None
            if invalid:
                named = "; ".join(f"{k} {', '.join(v)}" for k, v in invalid.items())
                e.state = "failed"
                e.message = (f"pushed (version {e.version}), but Kaggle does not know its sources: {named}; it stops "
                             "in seconds without them (push the dataset or kernels it reads, then --retry it)")
                self.log(f"{slug}: {e.message}")
                continue
            e.state, e.message, e.transient = "pushed", "", 0
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
    def run(self, max_cycles: int | None = None, clock: Callable[[], float] = time.time, max_weeks: float | None = None,
            force: bool = False) -> int:
        if max_weeks is not None and not any(e.pushes for e in self.entries.values()):
            self.check_before_first_push(max_weeks, force)
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
                self.log("every kernel is complete; the submission is the last one's output: kaggle kernels output "
                         f"{self.user}/{self.order[-1]} -p out/ --file-pattern 'submission\\.csv$'")
                return 0
            active = any(s in ("pushed", "running", "stopped") for s in states)
            waiting = any(e.state == "pending" and e.checked_after > now for e in self.entries.values())
            pushable = [s for s, e in self.entries.items() if e.state == "pending" and s not in self.blocked()]
            if not active and not waiting and (not pushable or all(any(self.entries[u].state != "complete" for u in
                                                                       self.entries[s].upstream) for s in pushable)):
                failed = [s for s, e in self.entries.items() if e.state == "failed"]
                self.log(f"stopped: failed {', '.join(failed) or '-'}; blocked {', '.join(self.blocked()) or '-'}"
                         + (f"; after fixing the cause: kzlib kaggle push --retry {' '.join(failed)}" if failed else ""))
                return 1
            cycle += 1
            if max_cycles is not None and cycle >= max_cycles:
                self.log("stopping here (max cycles); run `kzlib kaggle push` again to carry on")
                return 1
            self.sleep(self.poll)
