"""The kit against the *real* kaggle client (kaggle 2.x) talking to a Kaggle on loopback
(tests/fake_kaggle.py): the whole tiny chain pushed to a scored submission, the client's failures
(permanent push errors, a 500 on one listing, invalid sources, a failed dataset, the GPU-session
refusal, budget stops and continuations, a retry of one failed kernel) ending as the README says,
the bill against the account's quota, a bundle published as a Kaggle Model and read back."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fake_kaggle import FakeKaggle, serve
from kzlib.errors import UsageError
from kzlib.kaggle import plan
from kzlib.kaggle.api import real_api, user_name
from kzlib.kaggle.build import BuildError, build_dataset, kaggle_user, push as push_dataset
from kzlib.kaggle.plan import render
from kzlib.kaggle.push import Scheduler
from kzlib.preset import load_preset

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "tests" / "fixtures" / "preset_tiny.json"


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


def scheduler(kernels, api, log=None):
    return Scheduler(kernels, api, poll=0.2, log=log or (lambda *_: None))


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
BOOT = '''"""Stand-in bootstrap."""
# ---- bootstrap ----
import json, os, sys
from pathlib import Path
mark = Path(os.environ["FAKE_STATE"]) / (KERNEL + ".n")
n = int(mark.read_text()) if mark.exists() else 0
mark.write_text(str(n + 1))
plan = json.loads(os.environ.get("FAKE_OUTCOMES", "{}")).get(KERNEL, [])
outcome = plan[n] if n < len(plan) else "done"
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


def pushes(fake, slug):
    return len(fake.kernels.get(slug, []))


def small_chain(tmp_path):
    """The tiny preset cut to two folds of one kind, a pseudolabel fine-tune, no refit: 8 kernels."""
    preset = json.loads(TINY.read_text())
    preset.update(n_folds=2, refit_scratch=False, kinds={"a": preset["kinds"]["a"]})
    (tmp_path / "small.json").write_text(json.dumps(preset))
    return load_preset(tmp_path / "small.json")


def test_the_whole_tiny_chain_through_the_real_client_to_a_scored_submission(kaggle, tmp_path, capsys):
    """Rendered for the client's user, the dataset pushed, every kernel pushed in order through the
    real client and run with today's input layout, to a submission that scores."""
    from kzlib.metric import main as metric_main

    api = real_api()
    assert user_name(api) == "test"
    dataset(tmp_path, api)
    kernels = render(small_chain(tmp_path), kaggle_user(), tmp_path / "k")
    s = Scheduler(tmp_path / "k", api, poll=0.5)
    assert s.run(max_weeks=100) == 0, capsys.readouterr().out[-3000:]
    out = capsys.readouterr().out
    assert "quota: 25.5 of 30.0 GPU-hours left this week" in out and "GPU-h" in out  # the bill first
    assert all(e.state == "complete" and e.version for e in s.entries.values())
    assert pushes(kaggle, "kzlib-stack") == 1 and len(kernels) == len(kaggle.kernels)
    meta = kaggle.kernels["kzlib-detect-f0"][0]["meta"]
    assert meta["docker_image_pinning_type"] == "original"
    files, _ = api.kernels_output("test/kzlib-stack", str(tmp_path / "out"), file_pattern=r"submission\.csv$")
    assert sorted(Path(f).name for f in files) == ["kzlib-stack.log", "submission.csv"]
    assert metric_main([str(tmp_path / "out" / "submission.csv"), str(kaggle.competitions["kuzushiji-recognition"]
                                                                          / "test_labels.csv")]) == 0
    status = json.loads((kaggle.kernels["kzlib-detect-f0"][0]["working"] / "kzlib_status.json").read_text())
    assert status["state"] == "done" and set(status["stages"]) == {"detect-f0", "detect-oof-f0", "detect-test-f0"}
    assert status["output_bytes"] > 0 and "packages" in status and "detect/fold0/checkpoint.pth" in status["removed"]
    assert not list(kaggle.kernels["kzlib-detect-f0"][0]["working"].rglob("checkpoint.pth"))  # only what is read on
    cls = kaggle.kernels["kzlib-cls-a-f0"][0]["working"]  # a kernel's output holds only its own stages' files
    assert (cls / "classify" / "a" / "fold0" / "test_detailed.csv.gz").exists() and not (cls / "detect" / "fold0").exists()


def test_permanent_push_errors_fail_at_once(kaggle, trivial, tmp_path):
    kernels, _ = trivial
    api = real_api()
    for code, said in ((400, "push refused: HTTP 400: Invalid kernel metadata"), (401, "HTTP 401: Unauthenticated")):
        (kernels / "push_state.json").unlink(missing_ok=True)
        kaggle.push_http = code
        before = kaggle.calls.count("kernels.KernelsApiService/SaveKernel")
        s = scheduler(kernels, api)
        assert s.run(max_cycles=50) == 1
        tried = kaggle.calls.count("kernels.KernelsApiService/SaveKernel") - before
        assert tried == 3  # the three detector kernels, once each: no retry of a permanent refusal
        assert s.entries["kzlib-detect-f0"].state == "failed" and said in s.entries["kzlib-detect-f0"].message


def test_a_status_that_is_never_found_ends_bounded(kaggle, trivial, tmp_path):
    kernels, _ = trivial
    api = real_api()
    dataset(tmp_path, api)
    kaggle.status_http = 404
    s = scheduler(kernels, api)
    s.poll = 0.0
    assert s.run(max_cycles=400) == 1
    e = s.entries["kzlib-detect-f0"]
    assert e.state == "failed" and "reading its status failed 6 times in a row: HTTP 404" in e.message


def test_a_500_on_one_listing_is_asked_again_and_the_chain_completes(kaggle, trivial, tmp_path):
    kernels, _ = trivial
    api = real_api()
    dataset(tmp_path, api)
    kaggle.output_http_once = 1
    s = scheduler(kernels, api)
    assert s.run(max_cycles=500) == 0
    assert all(e.state == "complete" for e in s.entries.values())


def test_invalid_sources_and_a_missing_or_failed_dataset(kaggle, trivial, tmp_path):
    kernels, _ = trivial
    api = real_api()
    with pytest.raises(UsageError, match="the kit dataset test/kzlib-kit is not on Kaggle .HTTP 404"):
        scheduler(kernels, api).run(max_weeks=100)
    s = scheduler(kernels, api)  # pushed anyway (no check): the reply names what Kaggle does not know
    assert s.run(max_cycles=50) == 1
    e = s.entries["kzlib-detect-f0"]
    assert e.state == "failed" and "does not know its sources: dataset test/kzlib-kit" in e.message
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


def test_the_bill_of_the_full_preset_against_the_accounts_quota(kaggle, tmp_path, capsys):
    from kzlib.kaggle.__main__ import main as kaggle_main

    assert kaggle_main(["render", "--preset", "full", "--out", str(tmp_path / "k")]) == 0
    out = capsys.readouterr().out
    assert "kzlib-detect-f0" in out and "kzlib-cls-resnext101-pl-f4" in out
    total = next(line for line in out.splitlines() if line.startswith("total"))
    hours = float(total.split()[1])
    assert 200 < hours < 2000, total
    assert "quota: 25.5 of 30.0 GPU-hours left this week" in out and "week(s)" in out
    assert "estimate" in out
    with pytest.raises(UsageError, match=r"takes about \d+\.\d weeks of GPU quota, more than --max-weeks 8"):
        Scheduler(tmp_path / "k", real_api(), poll=0).run(max_weeks=8)


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


def test_a_bundle_as_a_kaggle_model_read_back_and_in_a_kernel(kaggle, finished_run, tmp_path, capsys):
    from kzlib.export import main as export_main
    from kzlib.kaggle.plan import render_read
    from kzlib.read import main as read_main

    data, work = finished_run
    assert export_main([str(work), "--out", str(tmp_path / "bundle"), "--kaggle-model",
                        "test/kzlib-tiny/pytorch/two-folds"]) == 0
    published = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kaggle_model"]
    assert published == "test/kzlib-tiny/pytorch/two-folds/1"
    mounted = kaggle.root / "models" / "test" / "kzlib-tiny" / "pytorch" / "two-folds"  # as Kaggle mounts it
    assert (mounted / "1" / "detect" / "fold0" / "model.safetensors").is_file()
    assert read_main([str(data / "test_images"), "--model", str(mounted), "--out", str(tmp_path / "read")]) == 0
    mine = (tmp_path / "read" / "submission.csv").read_text()
    assert mine == (work / "submission.csv").read_text()  # the runner's own submission
    # a second export is a second version
    assert export_main([str(work), "--out", str(tmp_path / "bundle"), "--kaggle-model",
                        "test/kzlib-tiny/pytorch/two-folds"]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["kaggle_model"].endswith("/2")
    # a kernel that takes the bundle through model_sources and reads the competition's test pages
    api = real_api()
    dataset(tmp_path, api)
    render_read(published, "test", tmp_path / "k", gpu=False)
    response = api.kernels_push(str(tmp_path / "k" / "kzlib-read"))
    assert response.version_number == 1 and not response.invalid_model_sources
    run = kaggle.kernels["kzlib-read"][0]
    while run["state"] in ("QUEUED", "RUNNING"):
        __import__("time").sleep(0.5)
    assert run["state"] == "COMPLETE", run["log"].read_text()[-2000:]
    sub = pd.read_csv(run["working"] / "submission.csv", keep_default_na=False)
    assert sorted(sub["image_id"]) == sorted(pd.read_csv(data / "sample_submission.csv")["image_id"])
