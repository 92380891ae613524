"""Push the rendered kernels to Kaggle in dependency order and see them through.

    kzlib kaggle push [--kernels build/kernels] [--max-gpu 2] [--max-cpu 4] [--poll 60]
                      [--retry SLUG ...] [--max-weeks 8] [--force] [--max-quota-wait 24]

Before the first push the bill is shown (``kzlib.kaggle.bill``: GPU-hours, sessions, the account's
quota, weeks) and a plan that would take more than ``--max-weeks`` is refused unless ``--force``;
the kit dataset must be ready on Kaggle, and the kernels must be rendered for the account the
credentials are (Kaggle refuses kernels pushed under another name). At most ``--max-gpu`` GPU
kernels run at a time (an account gets 2 batch GPU sessions). Each kernel is pushed once every
kernel it reads is complete.

What the client says decides (``kzlib.kaggle.api``):

- **Pushes.** Kaggle's refusal "Maximum batch GPU session count" is retried when a session ends.
  Any other refusal of a GPU kernel that is about the GPU quota (it says so, or the quota reads used
  up) reads the quota and its refresh time: no GPU kernel is pushed before that time (it is kept in
  ``push_state.json``, so a rerun does not either); the run waits for it when it is at most
  ``--max-quota-wait`` hours away, else it ends with exit 1 and the time. A transient failure (no
  connection, HTTP 408/429/5xx) is asked again with backoff — after the wait a 429's
  ``Retry-After`` names — at most ``MAX_TRANSIENT`` times in a row, then fails the kernel; HTTP 401
  (the credentials) stops the run with one line; any other permanent one (the client's
  ``ValueError``, HTTP 4xx) fails the kernel at once with the client's message. A reply naming
  invalid sources fails it too (it would run without them); a competition source Kaggle does not
  give the account points to the competition's rules page.
- **Reads never change a kernel's state.** Status and output are read for the version the push
  returned (``OWNER/SLUG/N``; the client asks for label ``vN``). A read that fails — permanently
  (the client turns 401/403 into ``ValueError``), or ``MAX_TRANSIENT`` times in a row (404s, 5xx,
  an output listing that still lacks ``kzlib_status.json`` after Kaggle says complete) — stops
  polling that kernel for this run and says so; the kernel stays ``pushed``/``running``, and the
  run ends with exit 1 and the command that carries on. A kernel is complete when Kaggle says so
  *and* its ``kzlib_status.json`` says ``done``; one stopped by the time budget is re-rendered as a
  continuation (it reads its own output) and pushed again, up to ``--max-continuations`` times. A
  kernel Kaggle ends in error, or whose cancel Kaggle acknowledged, is reported with its own
  status line and the tail of its log (a requested cancel still holds its session: running).
- **One Docker image per chain.** Unless ``render --docker-image`` pinned one, the image Kaggle
  gives the first kernel pushed is read back (``kernels pull``) and recorded; every later push,
  continuations included, is pinned to it. Each finished kernel's packages (``kzlib_status.json``)
  are compared with the first one's, and a difference is said.

State lives in ``<kernels>/push_state.json``: stop any time and run again to carry on.
``--retry SLUG ...`` asks Kaggle first what the failed kernel's last version is doing: one that is
queued, running, or complete and done is followed instead of pushed again; others are set back to
pending (their continuations as they were); completed kernels are never touched. A table shows
every kernel's state; the exit code is 0 when every kernel completed, 1 otherwise (a failed
kernel and those waiting on it are listed, with the command to carry on).

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
from kzlib.kaggle.bill import bill, format_bill, left_out, quota, weeks
from kzlib.kaggle.inputs import STATUS_FILE
from kzlib.kaggle.plan import COMPETITION, kernel_plan, pin_docker_image, render
from kzlib.preset import PipelineConfig

SESSION_WORDS = ("maximum batch gpu session", "session count")   # the 2-session limit: wait for a session
QUOTA_WORDS = ("quota", "hours allowed")                           # the weekly GPU quota: wait for its refresh
RUNNING = ("queued", "running", "new_script", "cancel_requested")  # holding (or waiting for) a session
MAX_TRANSIENT = 6       # transient failures in a row before a push fails, or a read stops polling
LOG_TAIL = 15           # lines of a failed kernel's log shown
MAX_QUOTA_WAIT_HOURS = 24.0
RULES = f"https://www.kaggle.com/competitions/{COMPETITION}/rules"


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
    unread: bool = False          # a read failed: not polled again in this run (not saved)

    def row(self) -> dict:
        return {k: getattr(self, k) for k in ("state", "pushes", "continuations", "version", "message", "transient")}

    @property
    def ref_suffix(self) -> str:
        return f"/{self.version}" if self.version else ""


def normal_status(response) -> tuple[str, str]:
    """(queued | running | new_script | complete | error | cancel_requested | cancelled, failure
    message) of the client's ``ApiGetKernelSessionStatusResponse`` (its status is a
    ``KernelWorkerStatus``)."""
    status = getattr(response, "status", response)
    name = str(getattr(status, "name", status)).lower()
    message = getattr(response, "failure_message", "") or ""
    if "cancel" in name and name != "cancel_requested":
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
    max_quota_wait: float = MAX_QUOTA_WAIT_HOURS * 3600   # seconds the run may wait for the quota's refresh
    entries: dict[str, Entry] = field(default_factory=dict)
    chain: dict = field(default_factory=dict)   # the chain's Docker image and packages, the quota's refresh

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
        self.chain = dict(saved.get("_chain", {}))
        pinned = self.render_options().get("docker_image", "") if (self.kernels_dir / "render.json").is_file() else ""
        if pinned:  # render --docker-image: the chain's image from the start
            self.chain.update(image=pinned, image_from="render --docker-image")
        self.quota_unknown = False  # a quota refusal without a refresh time: no GPU push again in this run
        self.holds: dict[str, float] = {}  # "push" / "read": no such call before this time (a 429's Retry-After)
        self.clock: Callable[[], float] = time.time  # run's clock

    @property
    def state_file(self) -> Path:
        return self.kernels_dir / "push_state.json"

    def save(self) -> None:
        write_json_atomic({**{s: e.row() for s, e in self.entries.items()}, "_chain": self.chain}, self.state_file)

    def render_options(self) -> dict:
        return json.loads((self.kernels_dir / "render.json").read_text())

    def ref(self, e: Entry) -> str:
        """The kernel as the client names it: OWNER/SLUG/VERSION once pushed (the version the push returned)."""
        return f"{self.user}/{e.slug}{e.ref_suffix}"

    def carry_on(self) -> str:
        return f"kzlib kaggle push --kernels {self.kernels_dir}"

    # ------------------------------------------------------------------ before the first push
    def retry(self, slugs: list[str]) -> None:
        """Failed kernels pushed again — after asking Kaggle what their last version is doing: one
        that is queued or running, or complete and done, is followed instead (never a second
        session for one run); completed kernels are never touched."""
        unknown = [s for s in slugs if s not in self.entries]
        if unknown:
            raise UsageError(f"--retry {', '.join(unknown)}: no such kernel in {self.kernels_dir}")
        for slug in slugs:
            e = self.entries[slug]
            if e.state != "failed":
                raise UsageError(f"--retry {slug}: it is {e.state}, not failed; only failed kernels are pushed again")
        for slug in slugs:
            e = self.entries[slug]
            follow = self._still_alive(e)
            e.message, e.transient, e.checked_after = "", 0, 0.0
            if follow:
                e.state, e.message = "pushed", follow
                self.log(f"{slug}: {follow}")
                continue
            e.state = "pending"
            self.log(f"{slug}: set back to pending (pushed {e.pushes} time(s) so far)")
        self.save()

    def _still_alive(self, e: Entry) -> str:
        """Why the kernel's last version must be followed, not pushed again ("" when it may be pushed)."""
        if not e.version:
            return ""  # never pushed (its push was refused): nothing runs
        try:
            status, _ = normal_status(self.api.kernels_status(self.ref(e)))
        except Exception as err:  # noqa: BLE001  (the client's errors)
            raise UsageError(f"--retry {e.slug}: Kaggle does not say what version {e.version} is doing "
                             f"({kaggle_api.describe(err)}); not pushed again, it may still be running. Try again "
                             "later, or look: kaggle kernels status " + self.ref(e)) from None
        if status in RUNNING:
            return f"Kaggle says version {e.version} is {status}: followed, not pushed again"
        if status == "complete":
            own = self.read_status(e, 0.0, quiet=True)
            if own is None:
                raise UsageError(f"--retry {e.slug}: Kaggle says version {e.version} is complete, but its "
                                 f"{STATUS_FILE} cannot be read now; not pushed again. Try again later")
            if own.get("state") == "done":
                return f"Kaggle says version {e.version} is complete and done: its result is read, not pushed again"
        return ""

    def check_before_first_push(self, max_weeks: float, force: bool) -> None:
        """The bill, the account's quota, and the kit dataset ready on Kaggle."""
        opts = self.render_options()
        cfg = config_from_dict(PipelineConfig, opts["preset"], str(self.kernels_dir / "render.json"))
        lines = bill(kernel_plan(cfg, opts["prefix"]), cfg, opts["budget_hours"], prefix=opts["prefix"])
        q = quota(self.api)
        self.log(format_bill(lines, q, cfg.gpus, left_out(cfg, opts["prefix"])))
        need = weeks(sum(x.gpu_hours for x in lines), q)
        if need > max_weeks and not force:
            raise UsageError(f"the plan takes about {need:.1f} weeks of GPU quota, more than --max-weeks {max_weeks:g}; "
                             "use a smaller preset (kaggle_week, kaggle_month), or pass --force to push it anyway")
        ref = f"{self.user}/{opts['dataset_slug']}"
        try:
            status = str(self.api.dataset_status(ref) or "").lower()
        except Exception as e:  # noqa: BLE001  (the client's errors, said as the client says them)
            refused = kaggle_api.credentials_refused(e)
            if refused:
                raise UsageError(refused) from None
            raise UsageError(f"the kit dataset {ref} is not on Kaggle ({kaggle_api.describe(e)}); push it first: "
                             "python -m kzlib dataset --preset PRESET --push") from None
        if "ready" not in status:
            raise UsageError(f"the kit dataset {ref} is {status or 'not ready'} on Kaggle; wait until "
                             f"`kaggle datasets status {ref}` says ready (or push it again), then push the kernels")

    def check_account(self) -> None:
        """The kernels' owner is the account the client speaks for (Kaggle refuses the others' names)."""
        if getattr(self.api, "get_config_value", None) is None:
            return  # not the kaggle client: nothing to compare
        me = kaggle_api.user_name(self.api)
        if me and me != self.user:
            raise UsageError(f"the kernels in {self.kernels_dir} are rendered for {self.user}, but the credentials are "
                             f"{me}'s; Kaggle refuses kernels pushed under another account: render them again with "
                             f"--user {me}")

    # ------------------------------------------------------------------ one cycle
    def running(self, gpu: bool) -> int:
        return sum(e.state in ("pushed", "running") and e.gpu == gpu for e in self.entries.values())

    def transient(self, e: Entry, now: float, what: str, error: BaseException | str, read: bool = False) -> None:
        """A failure to ask again later (with backoff, or after the wait a 429 names); after
        ``MAX_TRANSIENT`` in a row a failed push, or, for a read, a kernel not polled again in this run."""
        text = error if isinstance(error, str) else kaggle_api.describe(error)
        e.transient += 1
        if e.transient >= MAX_TRANSIENT:
            if read:
                self.unread(e, f"{what} failed {e.transient} times in a row: {text}")
            else:
                e.state, e.message = "failed", f"{what} failed {e.transient} times in a row: {text}"
                self.log(f"{e.slug}: {e.message}")
            return
        named = None if isinstance(error, str) else kaggle_api.retry_after(error)
        wait = named if named is not None else min(3600.0, self.poll * 2 ** e.transient)
        e.checked_after = now + wait
        if named is not None:  # Kaggle asked this account to wait: no call of that kind before then,
            kind = "read" if read else "push"  # counted from its answer (``now`` was before the call went out)
            self.holds[kind] = max(self.holds.get(kind, 0.0), max(now, self.clock()) + named)
        e.message = f"{what} failed ({text}); asking again in {wait:.0f} s" + (" (its Retry-After)" if named else "")
        self.log(f"{e.slug}: {e.message}")

    def unread(self, e: Entry, why: str) -> None:
        """A read that failed: the kernel keeps its state (it may well be running), is not polled
        again in this run, and the run ends saying so."""
        e.unread, e.transient = True, 0
        e.message = f"{why}; not asked again in this run, still {e.state} (a read never changes its state)"
        self.log(f"{e.slug}: {e.message}")

    def refresh(self, now: float) -> None:
        for e in self.entries.values():
            if now < self.holds.get("read", 0.0):
                return  # a 429's Retry-After (set by an earlier read, or this one)
            if e.state not in ("pushed", "running") or e.unread or now < e.checked_after:
                continue
            try:
                status, message = normal_status(self.api.kernels_status(self.ref(e)))
            except Exception as err:  # noqa: BLE001
                # just pushed, Kaggle may not know the version yet: a 404 is asked again too, a few times
                if kaggle_api.is_transient(err) or kaggle_api.http_status(err) == 404:
                    self.transient(e, now, "reading its status", err, read=True)
                else:
                    self.unread(e, f"its status cannot be read ({kaggle_api.describe(err)})")
                continue
            if status in RUNNING:
                e.state, e.transient = "running", 0
                e.message = ("a cancel was requested on Kaggle; it holds its session until Kaggle acknowledges it"
                             if status == "cancel_requested" else "")
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
        e.transient = 0
        if status.get("continuation", 0) < e.continuations:
            e.state = "running"  # the answer is still the previous version's
        elif status.get("state") == "done":
            e.state, e.message = "complete", ""
            self._compare_packages(e, status.get("packages"))
        elif status.get("state") == "stopped":
            e.state, e.message = "stopped", f"stopped by the time budget in {status.get('stopped_at')}"
        else:
            e.state, e.message = "failed", status.get("error", f"status {status.get('state')}")

    def read_status(self, e: Entry, now: float, quiet: bool = False) -> dict | None:
        """The kernel's ``kzlib_status.json`` (and the tail of its log under ``_log_tail``) from the
        pushed version's output; None when it cannot be read now (a failure or a listing without it
        yet, counted: ``MAX_TRANSIENT`` in a row stop polling the kernel, its state kept)."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                self.api.kernels_output(self.ref(e), tmp, file_pattern=re.escape(STATUS_FILE) + "$")
            except Exception as err:  # noqa: BLE001
                if quiet:
                    return None
                if kaggle_api.is_transient(err) or kaggle_api.http_status(err) == 404:
                    self.transient(e, now, "reading its output", err, read=True)
                else:
                    self.unread(e, f"its output cannot be read ({kaggle_api.describe(err)})")
                return None
            found = list(Path(tmp).rglob(STATUS_FILE))
            logs = sorted(Path(tmp).glob("*.log"))
            status = json.loads(found[0].read_text()) if found else None
            if status is not None and logs:
                lines = logs[0].read_text(errors="replace").splitlines()
                status["_log_tail"] = "\n".join("  " + line for line in lines[-LOG_TAIL:])
        if status is None and not quiet:  # the listing can lag behind the session's end
            self.transient(e, now, "reading its output", f"Kaggle says complete, but its output lists no "
                                                         f"{STATUS_FILE}", read=True)
        return status

    def _compare_packages(self, e: Entry, packages: dict | None) -> None:
        """The first finished kernel's packages are the chain's; a later kernel with others is told."""
        if not packages:
            return
        first = self.chain.get("packages")
        if first is None:
            self.chain.update(packages=packages, packages_from=e.slug)
            return
        changed = {k: (first.get(k), v) for k, v in packages.items() if first.get(k) != v}
        if changed:
            e.message = (f"its image differs from {self.chain.get('packages_from')}'s: "
                         + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in sorted(changed.items())))
            self.log(f"{e.slug}: {e.message}")

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

    # ------------------------------------------------------------------ the quota and the image
    def gpu_quota_closed(self, now: float) -> bool:
        """No GPU push now: the weekly quota was refused and has not refreshed yet (or its refresh
        time is unknown in this run)."""
        return self.quota_unknown or now < (self.chain.get("quota_until") or 0.0)

    def _quota_refusal(self, e: Entry, error: str, now: float) -> bool:
        """A refusal of a GPU kernel that is about the weekly quota (it says so, or the quota reads
        used up): the refresh time read and recorded; True when it was one."""
        q = quota(self.api)
        said = any(w in error.lower() for w in QUOTA_WORDS)
        if not said and not (q and q["left"] <= 0):
            return False
        at = q.get("refresh_at") if q else None
        e.message = f"refused ({error})"
        if at is None or at <= now:
            self.quota_unknown = True
            self.log(f"{e.slug}: refused ({error}); the quota's refresh time cannot be read, so no GPU kernel is "
                     "pushed again in this run")
            return True
        self.chain.update(quota_until=at, quota_refresh=q["refresh"])
        e.message += f"; the weekly GPU quota refreshes at {q['refresh']} UTC: no GPU kernel is pushed before"
        self.log(f"{e.slug}: {e.message} ({(at - now) / 3600:.1f} h from now)")
        return True

    def _pin_image(self, e: Entry) -> None:
        """Before a push: the kernel pinned to the chain's image, or told the difference."""
        image = self.chain.get("image")
        if not image:
            return
        folder = self.kernels_dir / e.slug
        own = json.loads((folder / "kernel-metadata.json").read_text()).get("docker_image", "")
        if own and own != image:
            self.log(f"{e.slug}: its kernel-metadata.json names the image {own}, not the chain's {image} (from "
                     f"{self.chain.get('image_from')}); it runs on its own")
            return
        pin_docker_image(folder, image)

    def _learn_image(self, e: Entry) -> None:
        """After the chain's first push: the image Kaggle gave it, recorded as the chain's."""
        with tempfile.TemporaryDirectory() as tmp:
            try:
                self.api.kernels_pull(self.ref(e), tmp, metadata=True)
                image = json.loads((Path(tmp) / "kernel-metadata.json").read_text()).get("docker_image") or ""
            except Exception as err:  # noqa: BLE001  (the client's errors)
                self.log(f"{e.slug}: the Docker image it runs on cannot be read ({kaggle_api.describe(err)}); the "
                         "next push tries again, and finished kernels' packages are compared")
                return
        if image:
            self.chain.update(image=image, image_from=e.slug)
            self.log(f"the chain's Docker image is {image} (Kaggle's for {e.slug}); every later push is pinned to it")

    # ------------------------------------------------------------------ pushes
    def push_ready(self, now: float) -> None:
        refused_gpu = self.gpu_quota_closed(now)
        for slug in self.order:
            if now < self.holds.get("push", 0.0):
                return  # a 429's Retry-After
            e = self.entries[slug]
            if e.state != "pending" or now < e.checked_after or any(self.entries[u].state != "complete" for u in e.upstream):
                continue
            if e.gpu and (refused_gpu or self.running(True) >= self.max_gpu):
                continue
            if not e.gpu and self.running(False) >= self.max_cpu:
                continue
            self._pin_image(e)
            try:
                response = self.api.kernels_push(str(self.kernels_dir / slug))
            except Exception as err:  # noqa: BLE001
                refused = kaggle_api.credentials_refused(err)
                if refused:
                    raise UsageError(refused) from None
                if kaggle_api.is_transient(err):
                    self.transient(e, now, "the push", err)
                else:
                    text = kaggle_api.describe(err)
                    rules = f" (accept the competition's rules at {RULES})" if "rule" in text.lower() else ""
                    e.state, e.message = "failed", f"push refused: {text}{rules}"
                    self.log(f"{slug}: {e.message}")
                continue
            error = getattr(response, "error", "") or ""
            if error:
                if any(w in error.lower() for w in SESSION_WORDS):
                    e.message = f"refused ({error}); pushed again when a session ends"
                    refused_gpu = refused_gpu or e.gpu
                    continue
                if e.gpu and self._quota_refusal(e, error, now):
                    refused_gpu = True
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
                fix = [f"accept the competition's rules at {RULES}" if "competition" in invalid else "",
                       "push the dataset or the kernels it reads" if set(invalid) - {"competition"} else ""]
                e.state = "failed"
                e.message = (f"pushed (version {e.version}), but Kaggle does not give it its sources: {named}; it "
                             f"stops in seconds without them ({'; '.join(f for f in fix if f)}, then --retry it)")
                self.log(f"{slug}: {e.message}")
                continue
            e.state, e.message, e.transient = "pushed", "", 0
            e.checked_after = now + self.poll
            self.log(f"{slug}: pushed (version {e.version})")
            if not self.chain.get("image"):
                self._learn_image(e)

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
        self.check_account()
        if max_weeks is not None and not any(e.pushes for e in self.entries.values()):
            self.check_before_first_push(max_weeks, force)
        self.clock = clock
        last = last_wait = None
        cycle = 0
        while True:
            now = clock()
            try:
                self.refresh(now)
                self.continue_stopped_kernels()
                self.push_ready(now)
            finally:
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
            active = any(e.state in ("pushed", "running", "stopped") and not e.unread for e in self.entries.values())
            waiting = (any(e.state == "pending" and e.checked_after > now for e in self.entries.values())
                       or any(t > now for t in self.holds.values()))
            pushable = [s for s, e in self.entries.items() if e.state == "pending" and s not in self.blocked()
                        and all(self.entries[u].state == "complete" for u in e.upstream)]
            quota_bound = [s for s in pushable if self.entries[s].gpu and self.gpu_quota_closed(now)]
            until = self.chain.get("quota_until") or 0.0
            if quota_bound and not active and not waiting and len(quota_bound) == len(pushable):
                if self.quota_unknown or until - now > self.max_quota_wait:
                    when = (f"until {self.chain.get('quota_refresh')} UTC ({(until - now) / 3600:.1f} h from now, more "
                            f"than --max-quota-wait {self.max_quota_wait / 3600:g} h)" if not self.quota_unknown
                            else "and its refresh time cannot be read")
                    self.log(f"stopped: the weekly GPU quota is used up {when}; nothing is pushed before it. "
                             f"Run `{self.carry_on()}` again after it")
                    return 1
                said = f"waiting for the weekly GPU quota's refresh at {self.chain.get('quota_refresh')} UTC"
                if said != last_wait:
                    self.log(f"{said} ({(until - now) / 3600:.2f} h from now)")
                    last_wait = said
            elif not active and not waiting and not pushable:
                failed = [s for s, e in self.entries.items() if e.state == "failed"]
                unread = [s for s, e in self.entries.items() if e.unread]
                self.log(f"stopped: failed {', '.join(failed) or '-'}; blocked {', '.join(self.blocked()) or '-'}"
                         + (f"; not read: {', '.join(unread)} (still pushed on Kaggle; `{self.carry_on()}` "
                            "reads them again)" if unread else "")
                         + (f"; after fixing the cause: {self.carry_on()} --retry {' '.join(failed)}" if failed else ""))
                return 1
            cycle += 1
            if max_cycles is not None and cycle >= max_cycles:
                self.log(f"stopping here (max cycles); run `{self.carry_on()}` again to carry on")
                return 1
            self.sleep(self.poll)
