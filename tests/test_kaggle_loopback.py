"""The kit against the *real* kaggle client (kaggle 2.x) talking to a Kaggle on loopback
(tests/fake_kaggle.py, strict where Kaggle is strict): the small chain pushed once to a scored
submission (shared by the tests that read it: the version each read names, one Docker image for the
chain), and, with kernels that only say how they ended, the client's failures ending as the README
says — reads that never change a kernel's state, --retry that asks Kaggle first, the weekly quota,
429 + Retry-After, credentials and owners, competition rules, cancels, invalid sources, the
GPU-session refusal, budget stops and continuations; the bill against the account's quota; a
bundle published as a Kaggle Model (versions ready only after a while) and read back."""

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from filelock import FileLock

from fake_kaggle import IMAGE, FakeKaggle, serve
from helpers import PRESET as TINY, tiny_preset, write_preset
from kzlib.errors import UsageError
from kzlib.kaggle import plan
from kzlib.kaggle.api import real_api, user_name
from kzlib.kaggle.build import BuildError, build_dataset, kaggle_user, push as push_dataset
from kzlib.kaggle.plan import PlanError, render
from kzlib.kaggle.push import Scheduler
from kzlib.preset import load_preset

ROOT = Path(__file__).resolve().parents[1]
SAVE = "kernels.KernelsApiService/SaveKernel"
STATUS = "kernels.KernelsApiService/GetKernelSessionStatus"
OUTPUT = "kernels.KernelsApiService/ListKernelSessionOutput"
NEW_IMAGE = "gcr.io/kaggle-gpu-images/python@sha256:" + "b2" * 32


@pytest.fixture
def kaggle(tmp_path, monkeypatch):
    """A loopback Kaggle with the tiny competition, the real client pointed at it (an API key)."""
    data = tmp_path / "competition"
    shutil.copytree(ROOT / "tests" / "fixtures" / "tiny", data)
    with FakeKaggle(tmp_path / "kaggle", data=data) as fake:
        serve(fake, monkeypatch)
        yield fake


def dataset(tmp_path, api) -> None:
    build_dataset(tmp_path / "ds", "test")
    push_dataset(tmp_path / "ds", "test", api=api, poll=0.05, log=lambda *_: None)


def scheduler(kernels, api, log=None, **kw):
    return Scheduler(kernels, api, poll=0.2, log=log or (lambda *_: None), **kw)


def pushes(fake, slug):
    return len(fake.kernels.get(slug, []))


def saves(fake, slug=None, after=0.0, before=float("inf")):
    """SaveKernel requests (of ``slug``) made between two times."""
    return [t for t, name, body in fake.requests
            if name == SAVE and after <= t < before and (slug is None or body["slug"].endswith("/" + slug))]


# ---------------------------------------------------------------- the small chain, pushed once for every test
def chain_preset(tmp_path) -> Path:
    """The tiny preset cut to two folds of one kind, a pseudolabel fine-tune, no refit, one epoch of
    everything, the detector and the classifier on 192 px pages: 8 kernels that each train for
    seconds (an untrained detector at 192 px finds slivers: the boxes files keep none)."""
    preset = tiny_preset()
    kind = {**preset["kinds"]["a"], "epochs": 1, "page_size": 192, "test_size": 192, "crop_height": 96}
    detect = {**preset["detect"], "page_size": 192, "crop_width": 112, "crop_height": 96}
    return write_preset(tmp_path / "small.json", n_folds=2, refit_scratch=False, kinds={"a": kind}, detect=detect,
                        finetune_epochs=1)


def run_chain(tmp: Path) -> dict:
    """Render, push the dataset and every kernel of the small chain through the real client, to the
    end; Kaggle releases a new image after the first push. What the tests read comes back as JSON."""
    data = tmp / "competition"
    shutil.copytree(ROOT / "tests" / "fixtures" / "tiny", data)
    with pytest.MonkeyPatch.context() as mp, FakeKaggle(tmp / "kaggle", data=data) as fake:
        serve(fake, mp)
        api = real_api()
        dataset(tmp, api)
        kernels = render(load_preset(chain_preset(tmp)), kaggle_user(), tmp / "k")
        log = []

        def said(line):
            log.append(line)
            if "pushed (version" in line and fake.image == IMAGE:  # a new Kaggle image, mid-chain
                fake.images.add(NEW_IMAGE)
                fake.image = NEW_IMAGE

        s = Scheduler(tmp / "k", api, poll=0.5, log=said)
        code = s.run(max_weeks=100)
        reads = [(name.rsplit("/", 1)[1], body["kernelSlug"], body.get("versionLabel", ""))
                 for _, name, body in fake.requests if name in (STATUS, OUTPUT)]
        files = []
        if code == 0:
            files, _ = api.kernels_output("test/kzlib-stack", str(tmp / "out"), file_pattern=r"submission\.csv$")
        return {"code": code, "log": log, "user": user_name(api), "rendered": [k.slug for k in kernels],
                "entries": {slug: e.row() for slug, e in s.entries.items()}, "chain": s.chain,
                "versions": {slug: [{"state": v["state"], "working": str(v["working"]), "meta": v["meta"]}
                                    for v in vs] for slug, vs in fake.kernels.items()},
                "reads": reads, "out_files": sorted(Path(f).name for f in files), "out": str(tmp / "out"),
                "truth": str(data / "test_labels.csv")}


@pytest.fixture(scope="session")
def chain(tmp_path_factory):
    """The small chain's run, once per test session: with pytest-xdist the workers share one run
    through a lock in the session's temporary folder (their common parent)."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return json.loads(json.dumps(run_chain(tmp_path_factory.mktemp("chain"))))
    shared = tmp_path_factory.getbasetemp().parent / "kaggle-loopback-chain"
    with FileLock(str(shared) + ".lock"):
        result = shared / "result.json"
        if not result.is_file():
            if shared.exists():
                shutil.rmtree(shared)
            shared.mkdir()
            result.write_text(json.dumps(run_chain(shared)))
    return json.loads(result.read_text())


@pytest.mark.slow
def test_the_small_chain_through_the_real_client_to_a_scored_submission(chain):
    """Rendered for the client's user, the dataset pushed, every kernel pushed in order through the
    real client and run with today's input layout, to a submission that scores."""
    from kzlib.metric import main as metric_main

    assert chain["code"] == 0, "\n".join(chain["log"])[-3000:]
    assert chain["user"] == "test"
    out = "\n".join(chain["log"])
    assert "quota: 25.5 of 30.0 GPU-hours left this week" in out and "GPU-h" in out  # the bill first
    assert all(e["state"] == "complete" and e["version"] for e in chain["entries"].values())
    assert len(chain["versions"]["kzlib-stack"]) == 1 and set(chain["rendered"]) == set(chain["versions"])
    assert chain["out_files"] == ["kzlib-stack.log", "submission.csv"]
    assert metric_main([str(Path(chain["out"]) / "submission.csv"), chain["truth"]]) == 0
    det0 = Path(chain["versions"]["kzlib-detect-f0"][0]["working"])
    status = json.loads((det0 / "kzlib_status.json").read_text())
    assert status["state"] == "done" and set(status["stages"]) == {"detect-f0", "detect-oof-f0", "detect-test-f0"}
    assert status["output_bytes"] > 0 and "packages" in status and "detect/fold0/checkpoint.pth" in status["removed"]
    assert not list(det0.rglob("checkpoint.pth"))  # only what is read on
    cls = Path(chain["versions"]["kzlib-cls-a-f0"][0]["working"])  # a kernel's output holds only its own stages' files
    assert (cls / "classify" / "a" / "fold0" / "test_detailed.csv.gz").exists() and not (cls / "detect" / "fold0").exists()


@pytest.mark.slow
def test_every_read_names_the_version_that_was_pushed(chain):
    """Status and output are asked for the version the push returned, labelled as Kaggle wants it
    ("v1"; the loopback Kaggle answers 404 to anything else, and to no label the latest version)."""
    assert chain["reads"]
    for route, slug, label in chain["reads"]:
        assert label == f"v{chain['entries'][slug]['version']}", (route, slug, label)


@pytest.mark.slow
def test_the_chain_runs_on_the_image_its_first_kernel_got(chain):
    """Kaggle released a new image after the first push: every kernel still runs on the first one,
    read back from Kaggle and pinned, and the state file records it."""
    first = chain["versions"]["kzlib-detect-f0"][0]["meta"]["docker_image"]
    assert first == IMAGE and chain["chain"]["image"] == IMAGE and chain["chain"]["image_from"] == "kzlib-detect-f0"
    images = {slug: [v["meta"]["docker_image"] for v in vs] for slug, vs in chain["versions"].items()}
    assert all(image == IMAGE for versions in images.values() for image in versions), images
    assert any("the chain's Docker image is " + IMAGE in line for line in chain["log"])


# ---------------------------------------------------------------- kernels that only say how they ended
TRIVIAL = '''"""A kernel of the loopback tests: it ends as FAKE_OUTCOMES says for its KERNEL and attempt."""
# ---- values filled in by kzlib kaggle render ----
KERNEL = ""
STAGES = []
UPSTREAM = []
GPU = False
CONTINUATION = False
BUDGET_HOURS = 11.0
PRESET = {}
# ---- end of the rendered values ----

# ---- bootstrap: a stand-in
'''
BOOT = '''"""Stand-in bootstrap: "slow" sleeps a few seconds, then is done."""
# ---- bootstrap ----
import json, os, sys, time
from pathlib import Path
mark = Path(os.environ["FAKE_STATE"]) / (KERNEL + ".n")
n = int(mark.read_text()) if mark.exists() else 0
mark.write_text(str(n + 1))
plan = json.loads(os.environ.get("FAKE_OUTCOMES", "{}")).get(KERNEL, [])
outcome = plan[n] if n < len(plan) else "done"
if outcome == "slow":
    time.sleep(float(os.environ.get("FAKE_SLOW", "3")))
    outcome = "done"
Path("kzlib_status.json").write_text(json.dumps({"kernel": KERNEL, "state": outcome,
    "continuation": 1 if CONTINUATION else 0, "stopped_at": STAGES[0], "error": "CUDA out of memory"}))
print("line", 1); print("line", 2); print("Traceback: CUDA out of memory", file=sys.stderr)
sys.exit(1 if outcome in ("failed", "error") else 0)
'''


@pytest.fixture
def trivial(tmp_path, monkeypatch):
    """Kernel templates that end at once, as FAKE_OUTCOMES says (the scheduler's logic on the real
    client, without training anything)."""
    folder = tmp_path / "templates"
    folder.mkdir()
    for name in ("detect", "classify", "pseudolabel", "stack"):
        (folder / f"{name}.py").write_text(TRIVIAL)
    (folder / "bootstrap.py").write_text(BOOT)
    monkeypatch.setattr(plan, "template_dir", lambda: folder)
    (tmp_path / "state").mkdir()
    monkeypatch.setenv("FAKE_STATE", str(tmp_path / "state"))

    def outcomes(**plans):
        monkeypatch.setenv("FAKE_OUTCOMES", json.dumps({k.replace("_", "-"): v for k, v in plans.items()}))
    outcomes()
    render(load_preset(TINY), "test", tmp_path / "k")
    return tmp_path / "k", outcomes


def wait_for(fake, slug, states=("RUNNING",), timeout=30.0):
    t0 = time.time()
    while fake.kernels.get(slug, [{}])[-1].get("state") not in states:
        assert time.time() - t0 < timeout, f"{slug} never reached {states}"
        time.sleep(0.05)


def test_permanent_push_errors_fail_at_once_and_refused_credentials_stop_the_run(kaggle, trivial, tmp_path):
    kernels, _ = trivial
    api = real_api()
    kaggle.push_http = 400
    before = len(saves(kaggle))
    s = scheduler(kernels, api)
    assert s.run(max_cycles=50) == 1
    assert len(saves(kaggle)) - before == 3  # the three detector kernels, once each: no retry of a permanent refusal
    assert s.entries["kzlib-detect-f0"].state == "failed"
    assert "push refused: HTTP 400: Invalid kernel metadata" in s.entries["kzlib-detect-f0"].message
    (kernels / "push_state.json").unlink()
    kaggle.push_http = 401
    s = scheduler(kernels, api)
    with pytest.raises(UsageError, match="Kaggle refused the credentials .HTTP 401"):
        s.run(max_cycles=50)
    assert all(e.state == "pending" for e in s.entries.values())  # nothing failed for a credentials problem


def test_a_wrong_key_is_refused(kaggle, trivial, tmp_path, monkeypatch, capsys):
    """Kaggle checks the key of every call: a wrong one ends the push before anything is pushed,
    with the line that says how to fix the credentials."""
    from kzlib.kaggle.__main__ import main as kaggle_main

    kernels, _ = trivial
    dataset(tmp_path, real_api())
    monkeypatch.setenv("KAGGLE_KEY", "not-the-key")
    assert kaggle_main(["push", "--kernels", str(kernels), "--poll", "0"]) == 2
    err = capsys.readouterr().err.strip()
    assert "Kaggle refused the credentials (HTTP 401" in err and "KAGGLE_KEY" in err and len(err.splitlines()) == 1
    assert not saves(kaggle)


def test_a_kernel_pushed_under_another_user_is_refused(kaggle, trivial, tmp_path, monkeypatch):
    """Kernels rendered for another account: the kit says so before pushing, and Kaggle refuses the
    push itself (HTTP 403), as it refuses a version of someone else's dataset."""
    kernels, _ = trivial
    api = real_api()
    dataset(tmp_path, api)
    render(load_preset(TINY), "other", tmp_path / "theirs")
    with pytest.raises(UsageError, match="rendered for other, but the credentials are test's"):
        scheduler(tmp_path / "theirs", api).run(max_cycles=5)
    monkeypatch.setattr(Scheduler, "check_account", lambda self: None)  # past the kit's own check: Kaggle's
    s = scheduler(tmp_path / "theirs", api)
    assert s.run(max_cycles=20) == 1
    e = s.entries["kzlib-detect-f0"]
    assert e.state == "failed" and "HTTP 403: Permission 'kernels.edit' was denied" in e.message
    assert not kaggle.kernels
    kaggle.accounts["other"] = "their-key"  # another account adding a version to test's dataset
    serve(kaggle, monkeypatch, user="other", key="their-key")
    build_dataset(tmp_path / "ds2", "test")
    with pytest.raises(BuildError, match="HTTP 403: Permission 'datasets.edit' was denied"):
        push_dataset(tmp_path / "ds2", "test", api=real_api(), poll=0.05, log=lambda *_: None)
    assert len(kaggle.datasets["test/kzlib-kit"]) == 1


def test_a_403_on_one_status_read_leaves_a_running_kernel_pushed(kaggle, trivial, tmp_path, monkeypatch):
    """The client turns a 403 on a status read into a ValueError. The kernel keeps running on
    Kaggle: it stays pushed, is not asked again in this run, the run ends 1 saying how to carry
    on, and the rerun completes the chain without pushing it a second time."""
    kernels, outcomes = trivial
    api = real_api()
    dataset(tmp_path, api)
    outcomes(kzlib_detect_f0=["slow"])
    monkeypatch.setenv("FAKE_SLOW", "1.5")
    logs = []
    kaggle.status_http_once = (1, 403)
    s = scheduler(kernels, api, logs.append)
    s.poll = 0.05
    assert s.run(max_cycles=400) == 1
    e = s.entries["kzlib-detect-f0"]
    assert e.state in ("pushed", "running") and "its status cannot be read" in e.message and e.pushes == 1
    assert "still pushed on Kaggle" in logs[-1] and f"kzlib kaggle push --kernels {kernels}" in logs[-1]
    assert json.loads((kernels / "push_state.json").read_text())["kzlib-detect-f0"]["state"] in ("pushed", "running")
    kaggle.output_lag = 1  # and the listing of a finished session lags behind: read again
    again = scheduler(kernels, api)
    assert again.run(max_cycles=500) == 0
    assert pushes(kaggle, "kzlib-detect-f0") == 1 and all(pushes(kaggle, slug) == 1 for slug in kaggle.kernels)


def test_reads_that_keep_failing_stop_polling_not_the_kernel(kaggle, trivial, tmp_path):
    kernels, _ = trivial
    api = real_api()
    dataset(tmp_path, api)
    kaggle.status_http = 404
    s = scheduler(kernels, api)
    s.poll = 0.0
    assert s.run(max_cycles=400) == 1
    e = s.entries["kzlib-detect-f0"]
    assert e.state == "pushed" and "reading its status failed 6 times in a row: HTTP 404" in e.message
    kaggle.status_http = None
    kaggle.output_http_once = (1, 500)  # a 500 on one listing is asked again
    assert scheduler(kernels, api).run(max_cycles=500) == 0
    assert all(pushes(kaggle, slug) == 1 for slug in kaggle.kernels)


def test_retry_asks_kaggle_first_and_pushes_no_running_or_complete_kernel(kaggle, trivial, tmp_path, monkeypatch):
    """A kernel that an older kit marked failed after one unreadable status (its session went on):
    --retry asks Kaggle, follows it instead of pushing it, and a kernel that really ended in error
    is pushed again."""
    kernels, outcomes = trivial
    api = real_api()
    dataset(tmp_path, api)
    outcomes(kzlib_detect_f0=["slow"], kzlib_detect_f2=["failed", "done"])
    monkeypatch.setenv("FAKE_SLOW", "4")
    s = scheduler(kernels, api)
    assert s.run(max_cycles=3) == 1  # pushed, then interrupted
    wait_for(kaggle, "kzlib-detect-f2", ("ERROR",))
    wait_for(kaggle, "kzlib-detect-f1", ("COMPLETE",))
    state = json.loads((kernels / "push_state.json").read_text())
    for slug in ("kzlib-detect-f0", "kzlib-detect-f1", "kzlib-detect-f2"):  # as the old kit left them
        state[slug].update(state="failed", message="its status cannot be read: ValueError: Cannot access kernel")
    (kernels / "push_state.json").write_text(json.dumps(state))
    logs = []
    again = scheduler(kernels, api, logs.append)
    again.retry(["kzlib-detect-f0", "kzlib-detect-f1", "kzlib-detect-f2"])
    assert again.entries["kzlib-detect-f0"].state == "pushed"
    assert any("kzlib-detect-f0: Kaggle says version 1 is running: followed, not pushed again" in x for x in logs)
    assert any("kzlib-detect-f1: Kaggle says version 1 is complete and done" in x for x in logs)
    assert again.entries["kzlib-detect-f2"].state == "pending"
    assert again.run(max_cycles=500) == 0
    assert pushes(kaggle, "kzlib-detect-f0") == 1 and pushes(kaggle, "kzlib-detect-f1") == 1
    assert pushes(kaggle, "kzlib-detect-f2") == 2


def test_a_weekly_quota_refusal_pushes_nothing_before_the_refresh(kaggle, trivial, tmp_path):
    """The weekly GPU quota is used up: the refusal reads the quota's refresh time; beyond
    --max-quota-wait the run ends 1 with that time, a rerun does not push before it either, and one
    allowed to wait pushes right after it and completes."""
    kernels, _ = trivial
    api = real_api()
    dataset(tmp_path, api)
    kaggle.quota_hours = [30.0, 30.0]
    kaggle.quota_refresh_at = refresh = float(int(time.time()) + 3)  # whole seconds: as the API writes it
    logs = []
    s = scheduler(kernels, api, logs.append, max_quota_wait=1.0)
    assert s.run(max_cycles=200) == 1
    assert len(saves(kaggle)) == 1  # one refused push, then none
    assert any("You've exceeded the number of hours allowed to use GPU" in x and "refreshes at" in x for x in logs)
    assert "stopped: the weekly GPU quota is used up until" in logs[-1] and "kzlib kaggle push --kernels" in logs[-1]
    assert json.loads((kernels / "push_state.json").read_text())["_chain"]["quota_until"] == pytest.approx(refresh, abs=0.01)
    again = scheduler(kernels, api, max_quota_wait=60.0)
    assert again.run(max_cycles=500) == 0
    assert len(saves(kaggle, before=refresh)) == 1  # nothing pushed before the refresh
    assert all(pushes(kaggle, slug) == 1 for slug in kaggle.kernels)


def test_429_with_retry_after_is_waited_out(kaggle, trivial, tmp_path):
    """A 429 on a push and on a status read: the kit asks again only after the Retry-After (the
    loopback Kaggle counts calls made before it), counted from when the answer came (the status
    read's comes half a second late, as from a busy server or a paused process), and the chain
    completes."""
    kernels, _ = trivial
    api = real_api()
    dataset(tmp_path, api)
    kaggle.rate_limit("SaveKernel", times=1, seconds=1)
    kaggle.rate_limit("GetKernelSessionStatus", times=1, seconds=1, late=0.5)
    logs = []
    s = scheduler(kernels, api, logs.append)
    s.poll = 0.05
    assert s.run(max_cycles=2000) == 0
    assert kaggle.early_calls == 0
    assert sum("(its Retry-After)" in x for x in logs) >= 2
    assert all(pushes(kaggle, slug) == 1 for slug in kaggle.kernels)


def test_competition_rules_and_unknown_competitions(kaggle, trivial, tmp_path, capsys):
    """A competition whose rules the account has not accepted is named in the push reply, as an
    unknown one is: the kernel fails pointing to the rules page; the download says the same."""
    from kzlib.kaggle.__main__ import main as kaggle_main

    kernels, _ = trivial
    api = real_api()
    dataset(tmp_path, api)
    kaggle.rules_accepted.clear()
    s = scheduler(kernels, api)
    assert s.run(max_cycles=50) == 1
    e = s.entries["kzlib-detect-f0"]
    assert e.state == "failed" and "competition kuzushiji-recognition" in e.message
    assert "accept the competition's rules at https://www.kaggle.com/competitions/kuzushiji-recognition/rules" in e.message
    assert kaggle_main(["download", str(tmp_path / "data")]) != 0
    assert "accept the competition's rules" in capsys.readouterr().err
    meta = json.loads((kernels / "kzlib-detect-f1" / "kernel-metadata.json").read_text())
    meta["competition_sources"] = ["no-such-competition"]
    (kernels / "kzlib-detect-f1" / "kernel-metadata.json").write_text(json.dumps(meta))
    assert list(api.kernels_push(str(kernels / "kzlib-detect-f1")).invalid_competition_sources) == ["no-such-competition"]


def test_the_loopback_kaggle_refuses_what_kaggle_refuses(kaggle, trivial, tmp_path, monkeypatch):
    """Slug and title rules, machine shapes and images are Kaggle's to refuse (HTTP 400); the kit
    validates --docker-image itself; creating a dataset that exists is a 409, which --push turns
    into a new version."""
    from requests import HTTPError

    from kzlib.kaggle.__main__ import main as kaggle_main

    kernels, _ = trivial
    api = real_api()
    folder = kernels / "kzlib-detect-f0"
    good = json.loads((folder / "kernel-metadata.json").read_text())
    slug69 = "kzlib-" + "x" * 63
    for change, said in (({"id": f"test/{slug69}", "title": slug69.replace("-", " ")}, "Invalid kernel slug"),
                         ({"title": "kzlib detector zero"}, "does not make the slug"),
                         ({"machine_shape": "gpu"}, "Invalid machine shape 'gpu'"),
                         ({"docker_image": "not-an-image"}, "Invalid docker image 'not-an-image'")):
        (folder / "kernel-metadata.json").write_text(json.dumps({**good, **change}))
        with pytest.raises(HTTPError, match=said):
            api.kernels_push(str(folder))
    assert not kaggle.kernels
    assert kaggle_main(["render", "--user", "test", "--preset", str(TINY), "--out", str(tmp_path / "k2"),
                        "--docker-image", "not-an-image"]) == 2
    with pytest.raises(PlanError, match="is not a Kaggle image"):
        render(load_preset(TINY), "test", tmp_path / "k3", docker_image="python:3.12")
    dataset(tmp_path, api)
    kaggle.hidden_status.add("test/kzlib-kit")  # Kaggle still processing it: its status not found yet
    logs = []
    push_dataset(tmp_path / "ds", "test", api=api, poll=0.05, wait=0.5, log=logs.append)
    assert any("exists already (HTTP 409" in line for line in logs) and len(kaggle.datasets["test/kzlib-kit"]) == 2


def test_a_cancelled_kernel_holds_its_session_until_kaggle_acknowledges(kaggle, trivial, tmp_path, monkeypatch):
    kernels, outcomes = trivial
    api = real_api()
    dataset(tmp_path, api)
    outcomes(kzlib_detect_f0=["slow"])
    monkeypatch.setenv("FAKE_SLOW", "30")
    kaggle.cancel_delay = 1.0
    logs = []
    s = scheduler(kernels, api, logs.append)
    s.poll = 0.05
    assert s.run(max_cycles=2) == 1
    wait_for(kaggle, "kzlib-detect-f0")
    kaggle.cancel("kzlib-detect-f0")
    s.refresh(time.time() + 1)
    assert s.entries["kzlib-detect-f0"].state == "running" and "a cancel was requested" in s.entries["kzlib-detect-f0"].message
    assert s.run(max_cycles=400) == 1
    e = s.entries["kzlib-detect-f0"]
    assert e.state == "failed" and e.message.startswith("Kaggle says cancelled")


def test_invalid_sources_and_a_missing_or_failed_dataset(kaggle, trivial, tmp_path):
    kernels, _ = trivial
    api = real_api()
    with pytest.raises(UsageError, match="the kit dataset test/kzlib-kit is not on Kaggle .HTTP 404"):
        scheduler(kernels, api).run(max_weeks=100)
    s = scheduler(kernels, api)  # pushed anyway (no check): the reply names what Kaggle does not know
    assert s.run(max_cycles=50) == 1
    e = s.entries["kzlib-detect-f0"]
    assert e.state == "failed" and "does not give it its sources: dataset test/kzlib-kit" in e.message
    assert "push the dataset" in e.message and "rules" not in e.message
    kaggle.dataset_state = "FAILED"
    build_dataset(tmp_path / "ds", "test")
    with pytest.raises(BuildError, match="could not process test/kzlib-kit .status failed"):
        push_dataset(tmp_path / "ds", "test", api=api, poll=0.05, wait=30, log=lambda *_: None)


def test_the_session_refusal_a_budget_stop_and_a_retry(kaggle, trivial, tmp_path):
    """Three GPU kernels ready at once: the third is refused and pushed later. A budget stop is
    continued; a kernel that failed is pushed again with --retry, nothing else is."""
    kernels, outcomes = trivial
    api = real_api()
    dataset(tmp_path, api)
    outcomes(kzlib_detect_f0=["stopped", "done"], kzlib_detect_f1=["failed", "done"])
    logs = []
    s = scheduler(kernels, api, logs.append)
    s.max_gpu = 3  # asks for more than an account may run: Kaggle refuses the third session
    assert s.run(max_cycles=500) == 1
    assert any("Maximum batch GPU session count of 2 reached" in line for line in logs)
    assert s.entries["kzlib-detect-f0"].state == "complete" and s.entries["kzlib-detect-f0"].continuations == 1
    f1 = s.entries["kzlib-detect-f1"]
    assert f1.state == "failed" and "the kernel says: CUDA out of memory" in f1.message
    assert any("last lines of its log" in line and "Traceback: CUDA out of memory" in line for line in logs)
    assert "kzlib-stack" in s.blocked()
    done = {slug: pushes(kaggle, slug) for slug in kaggle.kernels}
    again = scheduler(kernels, api)
    again.retry(["kzlib-detect-f1"])
    with pytest.raises(UsageError, match="it is complete, not failed"):
        again.retry(["kzlib-detect-f0"])
    assert again.run(max_cycles=500) == 0
    assert pushes(kaggle, "kzlib-detect-f1") == done["kzlib-detect-f1"] + 1
    assert all(pushes(kaggle, slug) == n for slug, n in done.items() if slug != "kzlib-detect-f1")


def test_the_bills_against_the_accounts_quota(kaggle, tmp_path, capsys):
    from kzlib.kaggle.__main__ import main as kaggle_main

    assert kaggle_main(["render", "--preset", "full", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "kzlib-detect-f0" in out and "kzlib-cls-resnext101-pl-ft-f4" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    hours = float(total.split()[1])
    assert 200 < hours < 2000, total
    assert "quota: 25.5 of 30.0 GPU-hours left this week" in out and "week(s)" in out
    assert "estimate" in out
    with pytest.raises(UsageError, match=r"takes about \d+\.\d weeks of GPU quota, more than --max-weeks 8"):
        Scheduler(tmp_path / "k", real_api(), poll=0).run(max_weeks=8)
    capsys.readouterr()
    for preset, limit in (("kaggle_week", 30), ("kaggle_month", 120)):
        assert kaggle_main(["render", "--preset", preset, "--out", str(tmp_path / preset)]) == 0
        out = capsys.readouterr().out
        total = next(line for line in out.splitlines() if line.startswith("total"))
        assert float(total.split()[1]) <= limit, total
        assert "against upstream: epochs 50->" in out and "against upstream's recipe" in out


def test_an_access_token_user_is_named_by_the_client(tmp_path, monkeypatch):
    with FakeKaggle(tmp_path / "kaggle") as fake:
        serve(fake, monkeypatch, token=True)
        assert kaggle_user() == "test"
        assert "security.OAuthService/IntrospectToken" in fake.calls


def test_the_competition_through_the_real_client(kaggle, tmp_path, capsys):
    from kzlib.kaggle.__main__ import main as kaggle_main

    assert kaggle_main(["download", str(tmp_path / "data")]) == 0
    assert "ok" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "data" / "test_images").iterdir()) == sorted(
        p.name for p in (kaggle.competitions["kuzushiji-recognition"] / "test_images").iterdir())


@pytest.mark.slow
def test_a_bundle_as_a_kaggle_model_read_back_and_in_a_kernel(kaggle, finished_run, tmp_path, capsys):
    """Published as a Kaggle Model whose new versions Kaggle lists only once it has processed them:
    the version printed is the one uploaded; a kernel attaches it through model_sources and reads
    the competition's test pages into the runner's own submission."""
    from kzlib.export import main as export_main
    from kzlib.kaggle.__main__ import main as kaggle_main
    from kzlib.kaggle.models import publish
    from kzlib.kaggle.plan import render_read

    data, work = finished_run
    kaggle.model_delay = 0.5
    assert export_main([str(work), "--out", str(tmp_path / "bundle")]) == 0
    capsys.readouterr()
    assert kaggle_main(["publish", str(work), "--model", "test/kzlib-tiny/pytorch/two-folds"]) == 2  # not a bundle
    assert "not a bundle (no manifest.json)" in capsys.readouterr().err
    assert kaggle_main(["publish", str(tmp_path / "bundle"), "--model", "test/kzlib-tiny/pytorch/two-folds"]) == 0
    published = capsys.readouterr().out.strip().splitlines()[-1]
    assert published == "test/kzlib-tiny/pytorch/two-folds/1"
    mounted = kaggle.root / "models" / "test" / "kzlib-tiny" / "pytorch" / "two-folds"  # as Kaggle mounts it
    assert (mounted / "1" / "detect" / "fold0" / "model.safetensors").is_file()
    api = real_api()  # a second publication is a second version, reported once Kaggle lists it
    assert publish(tmp_path / "bundle", "test/kzlib-tiny/pytorch/two-folds", api, log=lambda *_: None,
                   poll=0.2) == "test/kzlib-tiny/pytorch/two-folds/2"
    dataset(tmp_path, api)
    render_read(published, "test", tmp_path / "k", gpu=False)
    response = api.kernels_push(str(tmp_path / "k" / "kzlib-read"))
    assert response.version_number == 1 and not response.invalid_model_sources
    run = kaggle.kernels["kzlib-read"][0]
    while run["state"] in ("QUEUED", "RUNNING"):
        time.sleep(0.5)
    assert run["state"] == "COMPLETE", run["log"].read_text()[-2000:]
    assert (run["working"] / "submission.csv").read_text() == (work / "submission.csv").read_text()
