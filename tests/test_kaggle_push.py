"""The push scheduler's logic against a fake API that answers as the kaggle client does (its reply
objects and enums; tests/test_kaggle_loopback.py runs the real client): dependency order, at most
2 GPU sessions, refused pushes retried, budget-stopped kernels continued, failures reported."""

import json
from pathlib import Path

import pytest
from kagglesdk.kernels.types.kernels_api_service import ApiGetKernelSessionStatusResponse, ApiSaveKernelResponse
from kagglesdk.kernels.types.kernels_enums import KernelWorkerStatus

from helpers import PRESET
from kzlib.kaggle.plan import render
from kzlib.kaggle.push import Scheduler
from kzlib.preset import load_preset

ROOT = Path(__file__).resolve().parents[1]
GPU_LIMIT = 2


def Response(error: str = "", version: int | None = None, status: str = "", failure_message: str = ""):
    """The client's reply objects: a push's (with ``error``/``version``) or a status (an enum)."""
    if status:
        r = ApiGetKernelSessionStatusResponse()
        r.status, r.failure_message = KernelWorkerStatus[status.upper()], failure_message
        return r
    r = ApiSaveKernelResponse()
    r.error, r.version_number = error or None, version
    return r


class FakeKaggle:
    """Kaggle as the scheduler sees it: a kernel runs for ``polls`` status calls, then ends with the
    next of its scripted outcomes (done, stopped, failed, error); GPU pushes beyond 2 running
    sessions are refused, as the real service does; ``refuse_once`` kernels are refused once."""

    def __init__(self, outcomes=None, polls=2, refuse_once=()):
        self.outcomes = {k: list(v) for k, v in (outcomes or {}).items()}
        self.polls, self.refuse_once = polls, set(refuse_once)
        self.sessions = {}  # slug -> dict(gpu, left, outcome, version)
        self.pushed, self.max_gpu_running = [], 0
        self.versions = {}

    def running_gpu(self):
        return sum(s["gpu"] and s["left"] > 0 for s in self.sessions.values())

    def kernels_push(self, folder):
        meta = json.loads((Path(folder) / "kernel-metadata.json").read_text())
        slug = meta["id"].split("/")[1]
        gpu = meta["enable_gpu"]
        if slug in self.refuse_once:
            self.refuse_once.discard(slug)
            return Response(error="Maximum batch GPU session count of 2 reached")
        if gpu and self.running_gpu() >= GPU_LIMIT:
            return Response(error="Maximum batch GPU session count of 2 reached")
        for source in meta["kernel_sources"]:  # Kaggle mounts only complete outputs
            up = source.split("/")[1]
            assert up == slug or self.sessions[up]["outcome"] in ("done", "stopped") and self.sessions[up]["left"] == 0
        script = (Path(folder) / "kernel.py").read_text()
        outcome = (self.outcomes.get(slug) or ["done"]).pop(0) if self.outcomes.get(slug) else "done"
        self.versions[slug] = self.versions.get(slug, 0) + 1
        self.sessions[slug] = {"gpu": gpu, "left": self.polls, "outcome": outcome, "version": self.versions[slug],
                               "continuation": "CONTINUATION = True" in script}
        self.pushed.append(slug)
        self.max_gpu_running = max(self.max_gpu_running, self.running_gpu())
        return Response(version=self.versions[slug])

    def kernels_status(self, kernel):
        s = self.sessions[kernel.split("/")[1]]
        if s["left"] > 0:
            s["left"] -= 1
            return Response(status="running")
        if s["outcome"] == "error":
            return Response(status="error", failure_message="CUDA out of memory")
        return Response(status="complete")

    def kernels_output(self, kernel, path, file_pattern=None):
        slug = kernel.split("/")[1]
        s = self.sessions[slug]
        state = {"done": "done", "stopped": "stopped", "failed": "failed"}[s["outcome"]]
        status = {"kernel": slug, "state": state, "continuation": s["version"] - 1, "stopped_at": "detect-f0",
                  "error": "something broke"}
        Path(path, "kzlib_status.json").write_text(json.dumps(status))
        return [str(Path(path, "kzlib_status.json"))], None


@pytest.fixture
def kernels(tmp_path):
    render(load_preset(PRESET), "test", tmp_path / "k")
    return tmp_path / "k"


def scheduler(kernels, api, **kw):
    return Scheduler(kernels, api, poll=0.0, sleep=lambda s: None, log=lambda s: None, **kw)


def test_every_kernel_in_order_never_more_than_two_gpu_sessions(kernels):
    api = FakeKaggle(refuse_once={"kzlib-detect-f1"})
    s = scheduler(kernels, api)
    assert s.run(max_cycles=500) == 0
    order = (kernels / "push_order.txt").read_text().split()
    assert sorted(api.pushed) == sorted(order + ["kzlib-detect-f1"]) or sorted(api.pushed) == sorted(order)
    assert api.max_gpu_running <= GPU_LIMIT
    assert all(e.state == "complete" for e in s.entries.values())
    position = {slug: api.pushed.index(slug) for slug in order}
    for slug, e in s.entries.items():
        assert all(position[u] < position[slug] for u in e.upstream)
    assert s.entries["kzlib-detect-f1"].pushes == 1  # the refused push did not count as a push


def test_a_refused_push_is_retried_and_the_quota_respected_even_when_asked_for_more(kernels):
    api = FakeKaggle()
    s = scheduler(kernels, api, max_gpu=3)  # asks for more than the account may run: Kaggle refuses the third
    assert s.run(max_cycles=500) == 0
    assert api.max_gpu_running <= GPU_LIMIT


def test_a_budget_stopped_kernel_is_continued(kernels):
    api = FakeKaggle(outcomes={"kzlib-detect-f0": ["stopped", "done"]})
    s = scheduler(kernels, api)
    assert s.run(max_cycles=500) == 0
    e = s.entries["kzlib-detect-f0"]
    assert e.continuations == 1 and e.pushes == 2 and api.pushed.count("kzlib-detect-f0") == 2
    meta = json.loads((kernels / "kzlib-detect-f0" / "kernel-metadata.json").read_text())
    assert "test/kzlib-detect-f0" in meta["kernel_sources"]  # the continuation reads its own output
    assert "CONTINUATION = True" in (kernels / "kzlib-detect-f0" / "kernel.py").read_text()
    # its downstream kernels were pushed only after the continuation completed
    assert api.pushed.index("kzlib-cls-a-f0") > len(api.pushed) - 1 - api.pushed[::-1].index("kzlib-detect-f0")


def test_a_failed_kernel_is_reported_and_blocks_its_downstream(kernels, capsys):
    api = FakeKaggle(outcomes={"kzlib-detect-f2": ["error"]})
    s = Scheduler(kernels, api, poll=0.0, sleep=lambda s: None)
    assert s.run(max_cycles=500) == 1
    out = capsys.readouterr().out
    assert s.entries["kzlib-detect-f2"].state == "failed" and "CUDA out of memory" in s.entries["kzlib-detect-f2"].message
    assert "kzlib-cls-a-f0" in s.blocked() and "kzlib-stack" in s.blocked()
    assert "stopped: failed kzlib-detect-f2" in out and "blocked" in out
    assert not any(p.startswith("kzlib-cls") for p in api.pushed)


def test_state_survives_a_restart(kernels):
    api = FakeKaggle()
    s = scheduler(kernels, api)
    assert s.run(max_cycles=3) == 1  # interrupted
    pushed = list(api.pushed)
    assert pushed and json.loads((kernels / "push_state.json").read_text())[pushed[0]]["pushes"] == 1
    again = scheduler(kernels, api)
    assert again.run(max_cycles=500) == 0
    assert all(api.pushed.count(slug) == 1 for slug in set(api.pushed))  # nothing pushed twice
