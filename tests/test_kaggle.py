import ast
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from kaggle.api.kaggle_api_extended import KaggleApi
from slugify import slugify

from helpers import write_preset
from kzlib.kaggle.build import BuildError, build_dataset, kaggle_user, push
from kzlib.kaggle.emulate import EmulationError, emulate
from kzlib.errors import EnvironmentProblem
from kzlib.kaggle.plan import BEGIN, BOOTSTRAP, END, PlanError, kernel_plan, render
from kzlib.stages import plan_stages
from kzlib.preset import load_preset

ROOT = Path(__file__).resolve().parents[1]


def _preset(tmp_path, **changes):
    return load_preset(write_preset(tmp_path / "preset.json", **changes))


def test_kernels_cover_every_stage_in_push_order(tiny, tmp_path):
    cfg = _preset(tmp_path)
    kernels = kernel_plan(cfg)
    stages = {s.name: s for s in plan_stages(cfg)}
    ran = [s for k in kernels for s in k.stages]
    assert set(ran) == set(stages)
    assert [s for s in ran if ran.count(s) > 1] and all(s == "detect-merge" for s in ran if ran.count(s) > 1)
    position = {k.slug: i for i, k in enumerate(kernels)}
    owner = {s: k for k in kernels for s in k.stages if s != "detect-merge"}
    for k in kernels:
        assert all(position[u] < position[k.slug] for u in k.upstream)
        for s in k.stages:  # every dependency is run by the kernel itself or by a kernel it reads
            for dep in stages[s].deps:
                assert dep in k.stages or dep == "detect-merge" or owner[dep].slug in k.upstream, (k.slug, s, dep)
    assert kernels[-1].slug == "kzlib-stack" and len(kernels[-1].upstream) == 3 * 4  # a, b, a-pl-ft, a-pl


def test_only_the_test_box_rules_detectors_predict_the_test_pages(tmp_path):
    """With ``test_box_rule: fold0`` only fold 0's test boxes are read: the other folds' detectors
    predict no test pages, in the runner's plan, in their kernels and in the bill's GPU-hours."""
    from kzlib.kaggle.bill import kernel_hours

    fold0 = _preset(tmp_path, test_box_rule="fold0")
    names = [s.name for s in plan_stages(fold0)]
    assert [n for n in names if n.startswith("detect-test")] == ["detect-test-f0"]
    merge = next(s for s in plan_stages(fold0) if s.name == "detect-merge")
    assert merge.deps == ("detect-oof-f0", "detect-oof-f1", "detect-oof-f2", "detect-test-f0")
    detectors = {k.slug: k for k in kernel_plan(fold0) if k.template == "detect"}
    assert detectors["kzlib-detect-f0"].stages == ["detect-f0", "detect-oof-f0", "detect-test-f0"]
    assert detectors["kzlib-detect-f1"].stages == ["detect-f1", "detect-oof-f1"]
    assert "test boxes" not in detectors["kzlib-detect-f1"].what
    h0, h1 = (kernel_hours(detectors[f"kzlib-detect-f{k}"], fold0, 3000, 4000)[0] for k in (0, 1))
    assert h1 < h0
    vote = _preset(tmp_path, test_box_rule="vote")
    assert [n for n in map(lambda s: s.name, plan_stages(vote)) if n.startswith("detect-test")] == [
        "detect-test-f0", "detect-test-f1", "detect-test-f2"]


def rendered_values(script: str) -> dict:
    """The values block of a rendered kernel script, as Python values."""
    block = script.split(BEGIN)[1].split(END)[0]
    return {node.targets[0].id: ast.literal_eval(node.value) for node in ast.parse(block).body}


def test_rendered_metadata_is_valid_for_the_kaggle_cli(tmp_path):
    cfg = load_preset(ROOT / "kzlib" / "configs" / "preset_full.json")
    kernels = render(cfg, "test", tmp_path / "k", continue_=("kzlib-detect-f3",), budget_hours=10.5)
    api = KaggleApi()
    order = (tmp_path / "k" / "push_order.txt").read_text().split()
    assert order == [k.slug for k in kernels] and len(order) == 5 + 10 + 1 + 10 + 1
    for slug in order:
        folder = tmp_path / "k" / slug
        meta = json.loads((folder / "kernel-metadata.json").read_text())
        assert meta["id"] == f"test/{slug}" and 5 <= len(slug) <= 50 and slugify(meta["title"]) == slug
        api.validate_kernel_string(meta["id"])
        for source in meta["kernel_sources"]:
            api.validate_kernel_string(source)
        for source in meta["dataset_sources"]:
            api.validate_dataset_string(source)
        assert meta["language"] in api.valid_push_language_types
        assert meta["kernel_type"] in api.valid_push_kernel_types
        assert (folder / meta["code_file"]).is_file() and meta["enable_internet"] is False
        assert meta["competition_sources"] == ["kuzushiji-recognition"]
        gpu = slug not in ("kzlib-pseudolabel", "kzlib-stack")
        assert meta["enable_gpu"] == gpu and meta.get("machine_shape") == ("NvidiaTeslaT4" if gpu else None)
        script = (folder / meta["code_file"]).read_text()
        compile(script, slug, "exec")
        values = rendered_values(script)
        assert values["KERNEL"] == slug and values["GPU"] == gpu and values["PRESET"]["device"] == "cuda"
        assert values["BUDGET_HOURS"] == 10.5 and values["CONTINUATION"] == (slug == "kzlib-detect-f3")
        assert values["UPSTREAM"] == [s.split("/")[1] for s in meta["kernel_sources"] if s.split("/")[1] != slug]
    det3 = json.loads((tmp_path / "k" / "kzlib-detect-f3" / "kernel-metadata.json").read_text())
    assert det3["kernel_sources"] == ["test/kzlib-detect-f3"]  # a continuation reads its own output
    ft0 = json.loads((tmp_path / "k" / "kzlib-cls-resnext101-pl-ft-f0" / "kernel-metadata.json").read_text())
    assert ft0["kernel_sources"] == [f"test/kzlib-detect-f{k}" for k in range(5)] + \
        ["test/kzlib-pseudolabel", "test/kzlib-cls-resnext101-f0"]
    assert json.loads((tmp_path / "k" / "render.json").read_text())["budget_hours"] == 10.5


def test_rendered_kernels_are_the_templates_with_their_values(tmp_path):
    """kernels/*.py are what runs on Kaggle: rendering only fills in the values block and pastes
    the shared opening (kernels/bootstrap.py) at the template's bootstrap line."""
    cfg = load_preset(ROOT / "kzlib" / "configs" / "preset_full.json")
    kernels = render(cfg, "test", tmp_path / "k")
    boot = (ROOT / "kernels" / "bootstrap.py").read_text()
    boot = boot[boot.index("\n" + BOOTSTRAP) + 1:]
    used = set()
    for k in kernels:
        script = (tmp_path / "k" / k.slug / "kernel.py").read_text()
        template = (ROOT / "kernels" / f"{k.template}.py").read_text()
        assert script.split(BEGIN)[0] == template.split(BEGIN)[0]
        head, tail = template.split(END)[1].split("\n" + BOOTSTRAP)
        assert script.split(END)[1] == head + "\n" + boot + tail.split("\n", 1)[1]
        assert set(rendered_values(script)) == set(rendered_values(template))
        used.add(k.template)
    assert used == {"detect", "classify", "pseudolabel", "stack"}
    assert rendered_values((tmp_path / "k" / "kzlib-cls-resnext101-pl-f3" / "kernel.py").read_text())["KIND"] == \
        "resnext101-pl"


def test_bad_names_are_refused(tmp_path):
    cfg = _preset(tmp_path, kinds={"A_b": {}, "a-B": {}}, pseudo_kind="")
    with pytest.raises(PlanError, match="same kernel names"):
        kernel_plan(cfg)
    cfg = _preset(tmp_path, kinds={"x" * 60: {}}, pseudo_kind="")
    with pytest.raises(PlanError, match="not valid on Kaggle"):
        kernel_plan(cfg)
    with pytest.raises(PlanError, match="no such kernel"):
        render(_preset(tmp_path), "test", tmp_path / "k", continue_=("kzlib-nope",))
    with pytest.raises(PlanError, match="Kaggle sessions end at 12 h"):
        render(_preset(tmp_path), "test", tmp_path / "k", budget_hours=13)


def test_dataset_build_is_reproducible_and_validated(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pth").write_bytes(b"weights")
    (run / "config.json").write_text("{}")
    weights = tmp_path / "resnet18.pth"
    weights.write_bytes(b"backbone")
    a = build_dataset(tmp_path / "a", "test", [f"det0={run}"], [str(weights)])
    b = build_dataset(tmp_path / "b", "test", [f"det0={run}"], [str(weights)])
    assert a == b
    for rel, _ in a:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    names = [rel for rel, _ in a]
    assert "kzlib/kaggle/session.py" in names and "kzlib/configs/preset_full.json" in names
    assert "kzlib/synth.py" not in names and "kzlib/kaggle/build.py" not in names  # only what kernels import
    assert {"weights/det0/best.pth", "weights/det0/config.json", "pretrained/resnet18.pth"} <= set(names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    meta = json.loads((tmp_path / "a" / "dataset-metadata.json").read_text())
    assert meta["id"] == "test/kzlib-kit" and 6 <= len(meta["title"]) <= 50 and len(meta["licenses"]) == 1
    KaggleApi().validate_dataset_string(meta["id"])
    manifest = pd.read_csv(tmp_path / "a" / "MANIFEST.tsv", sep="\t")
    assert len(manifest) == len(a) - 1 and manifest["sha256"].str.len().eq(64).all()

    with pytest.raises(BuildError, match="best.pth"):
        build_dataset(tmp_path / "c", "test", [str(tmp_path)])
    with pytest.raises(BuildError, match="6-50"):
        build_dataset(tmp_path / "c", "test", slug="kzlib")
    assert not (tmp_path / "c").exists()
    monkeypatch.delenv("KAGGLE_USERNAME", raising=False)
    monkeypatch.delenv("KAGGLE_KEY", raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(BuildError, match="--user"):
        kaggle_user(None)
    monkeypatch.setattr("kzlib.kaggle.build.real_api", lambda: (_ for _ in ()).throw(
        EnvironmentProblem("the Kaggle API is not usable here")))
    with pytest.raises(EnvironmentProblem, match="not usable"):
        push(tmp_path / "a", "test")
    r = subprocess.run([sys.executable, str(ROOT / "build_dataset.py"), "--out", str(tmp_path / "d")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no Kaggle user name" in r.stderr and not (tmp_path / "d").exists()


@pytest.mark.slow
def test_a_budget_stop_then_its_continuation_on_the_old_layout(tiny, tmp_path):
    """Older sessions mount everything flat (/kaggle/input/<slug>). A detector kernel stops for the
    time budget (status "stopped", exit 0), its downstream refuses in seconds, a kernel rendered as
    a continuation refuses without its previous output, then picks up from it and finishes."""
    cfg = _preset(tmp_path, n_folds=2)
    render(cfg, "test", tmp_path / "kernels")
    build_dataset(tmp_path / "dataset", "test")
    run = lambda **kw: emulate(tmp_path / "kernels", tmp_path / "dataset", tiny, tmp_path / "run", layout="flat", **kw)
    assert run(only=["kzlib-detect-f0"], budget_hours=1e-9)["kzlib-detect-f0"]["state"] == "stopped"
    det0 = tmp_path / "run" / "kzlib-detect-f0"
    log = (det0 / "kernel.log").read_text()
    assert "stopped by the time budget in stage detect-f0; nothing of it had finished yet" in log
    assert json.loads((det0 / "working" / "kzlib_status.json").read_text())["stopped_at"] == "detect-f0"
    run(only=["kzlib-detect-f1"])
    with pytest.raises(EmulationError, match="upstream kernel\\(s\\) not done: kzlib-detect-f0 \\(stopped\\)"):
        run(only=["kzlib-cls-a-f0"])
    render(cfg, "test", tmp_path / "kernels", continue_=("kzlib-detect-f0",), only=("kzlib-detect-f0",))
    shutil.rmtree(det0 / "working")  # as if the first version's output were not attached
    with pytest.raises(EmulationError, match="rendered as a continuation, but its previous version's output is not attached"):
        run(only=["kzlib-detect-f0"])
    assert run(only=["kzlib-detect-f0"], budget_hours=1e-9)["kzlib-detect-f0"]["state"] == "stopped"  # needs one
    render(cfg, "test", tmp_path / "kernels", continue_=(), only=("kzlib-detect-f0",))
    run(only=["kzlib-detect-f0"], budget_hours=1e-9)
    render(cfg, "test", tmp_path / "kernels", continue_=("kzlib-detect-f0",), only=("kzlib-detect-f0",))
    assert run(only=["kzlib-detect-f0"])["kzlib-detect-f0"]["state"] == "done"
    assert "continuing from the previous version's output" in (det0 / "kernel.log").read_text()
    status = json.loads((det0 / "working" / "kzlib_status.json").read_text())
    assert status["continuation"] == 1 and status["stages"]["detect-test-f0"]["state"] == "done"


def test_a_kernel_says_what_is_mounted_when_an_input_is_missing(tiny, tmp_path):
    render(_preset(tmp_path), "test", tmp_path / "kernels")
    build_dataset(tmp_path / "dataset", "test")
    inp = tmp_path / "input"
    inp.mkdir()
    env = {"PATH": "/usr/bin:/bin", "KAGGLE_INPUT_ROOT": str(inp), "KAGGLE_WORKING": str(tmp_path / "working")}
    script = tmp_path / "kernels" / "kzlib-cls-a-f0" / "kernel.py"
    kernel = lambda: subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    r = kernel()
    assert r.returncode == 1 and "the kzlib kit dataset is not attached" in r.stderr and "Traceback" not in r.stderr
    (inp / "datasets" / "test").mkdir(parents=True)
    (inp / "datasets" / "test" / "kzlib-kit").symlink_to(tmp_path / "dataset")
    r = kernel()
    assert r.returncode == 1 and "the competition data (kuzushiji-recognition) is not attached" in r.stderr
    assert "Mounted:" in r.stderr and "kzlib-kit/" in r.stderr and "Traceback" not in r.stderr
    (inp / "competitions").mkdir()
    (inp / "competitions" / "kuzushiji-recognition").symlink_to(tiny)
    r = kernel()
    assert r.returncode == 1 and "kzlib-detect-f0, kzlib-detect-f1, kzlib-detect-f2 are not attached" in r.stderr
    assert json.loads((tmp_path / "working" / "kzlib_status.json").read_text())["state"] == "failed"


def test_download_unpacks_the_nested_archives_and_checks(tiny, tmp_path):
    """`kzlib kaggle download` on a fake Kaggle API that serves an archive of the competition's shape."""
    import zipfile

    from kzlib.kaggle.download import download

    archive = tmp_path / "served.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for csv in ("train.csv", "unicode_translation.csv", "sample_submission.csv"):
            z.write(tiny / csv, csv)
        for folder in ("train_images", "test_images"):
            inner = tmp_path / f"{folder}.zip"
            with zipfile.ZipFile(inner, "w") as zi:
                for f in sorted((tiny / folder).iterdir()):
                    zi.write(f, f.name)
            z.write(inner, f"{folder}.zip")

    class FakeApi:
        calls = 0

        def competition_download_files(self, competition, path=None, quiet=True):
            FakeApi.calls += 1
            shutil.copy(archive, Path(path) / f"{competition}.zip")

    out = tmp_path / "data"
    report = download(out, FakeApi(), log=lambda *_: None)
    assert report.ok and report.summary["train pages"] == 6 and report.summary["test pages"] == 2
    assert sorted(p.name for p in (out / "train_images").iterdir()) == sorted(p.name for p in (tiny / "train_images").iterdir())
    assert not (out / "kuzushiji-recognition.zip").exists()
    assert download(out, FakeApi(), log=lambda *_: None).ok and FakeApi.calls == 2  # the images are not unpacked again

    class Refused:
        def competition_download_files(self, competition, path=None, quiet=True):
            e = RuntimeError("403 Client Error")
            e.response = type("R", (), {"status_code": 403})()
            raise e

    with pytest.raises(EnvironmentProblem, match="accept the competition's rules at https://www.kaggle.com/competitions/kuzushiji-recognition/rules"):
        download(tmp_path / "other", Refused(), log=lambda *_: None)


def test_render_gpus_trains_on_both_t4s(tmp_path):
    """--gpus 2: the GPU kernels' preset trains with 2 processes; more than a session has is refused."""
    cfg = load_preset(ROOT / "kzlib" / "configs" / "preset_full.json")
    render(cfg, "test", tmp_path / "k", only=("kzlib-detect-f0", "kzlib-stack"), gpus=2)
    for slug in ("kzlib-detect-f0", "kzlib-stack"):
        assert rendered_values((tmp_path / "k" / slug / "kernel.py").read_text())["PRESET"]["gpus"] == 2
    assert json.loads((tmp_path / "k" / "render.json").read_text())["preset"]["gpus"] == 2  # continuations too
    meta = json.loads((tmp_path / "k" / "kzlib-detect-f0" / "kernel-metadata.json").read_text())
    assert meta["machine_shape"] == "NvidiaTeslaT4"
    with pytest.raises(PlanError, match="at most 2 GPUs"):
        render(cfg, "test", tmp_path / "k2", gpus=4)
