import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from kaggle.api.kaggle_api_extended import KaggleApi
from slugify import slugify

from kzlib.kaggle.build import BuildError, build_dataset, kaggle_user, push
from kzlib.kaggle.emulate import emulate
from kzlib.kaggle.plan import PlanError, kernel_plan, render
from kzlib.metric import read_submission
from kzlib.pipeline import Pipeline
from kzlib.preset import load_preset

ROOT = Path(__file__).resolve().parents[1]
TINY_PRESET = ROOT / "tests" / "fixtures" / "preset_tiny.json"


def _preset(tmp_path, **changes):
    preset = {**json.loads(TINY_PRESET.read_text()), **changes}
    path = tmp_path / "preset.json"
    path.write_text(json.dumps(preset))
    return load_preset(path)


def test_kernels_cover_every_stage_in_push_order(tiny, tmp_path):
    cfg = _preset(tmp_path)
    kernels = kernel_plan(cfg)
    stages = {s.name: s for s in Pipeline(tiny, tmp_path / "w", cfg).stages}
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


def test_rendered_metadata_is_valid_for_the_kaggle_cli(tmp_path):
    cfg = load_preset(ROOT / "kzlib" / "configs" / "preset_full.json")
    kernels = render(cfg, "test", tmp_path / "k", resume=("kzlib-detect-f3",))
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
        assert meta["enable_gpu"] == (slug not in ("kzlib-pseudolabel", "kzlib-stack"))
        script = (folder / meta["code_file"]).read_text()
        compile(script, slug, "exec")
        spec = json.loads(script.split('r"""')[1].split('"""')[0])
        assert spec["kernel"] == slug and spec["gpu"] == meta["enable_gpu"] and spec["preset"]["device"] == "cuda"
        assert spec["upstream"] == [s.split("/")[1] for s in meta["kernel_sources"] if s.split("/")[1] != slug]
    det3 = json.loads((tmp_path / "k" / "kzlib-detect-f3" / "kernel-metadata.json").read_text())
    assert det3["kernel_sources"] == ["test/kzlib-detect-f3"]  # a continuation reads its own output
    ft0 = json.loads((tmp_path / "k" / "kzlib-cls-resnext101-pl-ft-f0" / "kernel-metadata.json").read_text())
    assert ft0["kernel_sources"] == [f"test/kzlib-detect-f{k}" for k in range(5)] + \
        ["test/kzlib-pseudolabel", "test/kzlib-cls-resnext101-f0"]


def test_bad_names_are_refused(tmp_path):
    cfg = _preset(tmp_path, kinds={"A_b": {}, "a-B": {}}, pseudo_kind="")
    with pytest.raises(PlanError, match="same kernel names"):
        kernel_plan(cfg)
    cfg = _preset(tmp_path, kinds={"x" * 60: {}}, pseudo_kind="")
    with pytest.raises(PlanError, match="not valid on Kaggle"):
        kernel_plan(cfg)
    with pytest.raises(PlanError, match="no such kernel"):
        render(_preset(tmp_path), "test", tmp_path / "k", resume=("kzlib-nope",))


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
    assert "kzlib/kaggle/runtime.py" in names and "kzlib/configs/preset_full.json" in names
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
    monkeypatch.setenv("PATH", str(Path(sys.executable).parent))  # the venv's kaggle CLI
    with pytest.raises(BuildError, match="credentials"):
        push(tmp_path / "a", "test")
    r = subprocess.run([sys.executable, str(ROOT / "build_dataset.py"), "--out", str(tmp_path / "d")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "no Kaggle user name" in r.stderr and not (tmp_path / "d").exists()


def test_emulated_kaggle_chain_ends_in_a_scored_submission(tiny, tmp_path):
    """The proof that the kernels chain: rendered for a test user, the dataset built, every kernel
    run in push order in its own working folder with the Kaggle input layout."""
    one_kind = {"a": json.loads(TINY_PRESET.read_text())["kinds"]["a"]}
    cfg = _preset(tmp_path, n_folds=2, refit_scratch=False, kinds=one_kind)
    kernels = render(cfg, "test", tmp_path / "kernels")
    build_dataset(tmp_path / "dataset", "test")
    # A detector kernel first stops at once for the time budget, then is pushed again as a
    # continuation that reads its own previous output, and finishes.
    emulate(tmp_path / "kernels", tmp_path / "dataset", tiny, tmp_path / "run", only=["kzlib-detect-f0"],
            budget_hours=1e-9)
    det0 = tmp_path / "run" / "kzlib-detect-f0"
    assert "stopped by the time budget" in (det0 / "kernel.log").read_text()
    assert not (det0 / "working" / "state" / "detect-f0.json").exists()
    render(cfg, "test", tmp_path / "kernels", resume=("kzlib-detect-f0",))
    results = emulate(tmp_path / "kernels", tmp_path / "dataset", tiny, tmp_path / "run")
    assert list(results) == [k.slug for k in kernels]
    assert "continuing from the previous version's output" in (det0 / "kernel.log").read_text()
    assert (det0 / "working" / "state" / "detect-f0.json").exists()
    # kernels' outputs hold only their own stages' files
    cls = tmp_path / "run" / "kzlib-cls-a-f0" / "working"
    assert (cls / "classify" / "a" / "fold0" / "test_detailed.csv.gz").exists() and not (cls / "detect" / "fold0").exists()
    sub = tmp_path / "run" / "kzlib-stack" / "working" / "submission.csv"
    ids = pd.read_csv(tiny / "sample_submission.csv")["image_id"]
    assert sorted(read_submission(sub)["image_id"]) == sorted(ids)
    r = subprocess.run([sys.executable, "-m", "kzlib.metric", str(sub), str(tiny / "test_labels.csv")],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert 0.0 <= json.loads(r.stdout)["f1"] <= 1.0


def test_kernel_without_its_upstream_outputs_says_which(tiny, tmp_path):
    render(_preset(tmp_path), "test", tmp_path / "kernels")
    build_dataset(tmp_path / "dataset", "test")
    inp = tmp_path / "input"
    inp.mkdir()
    (inp / "kzlib-kit").symlink_to(tmp_path / "dataset")
    env = {"PATH": "/usr/bin:/bin", "KAGGLE_INPUT_ROOT": str(inp), "KAGGLE_WORKING": str(tmp_path / "working")}
    script = tmp_path / "kernels" / "kzlib-cls-a-f0" / "kernel.py"
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "kuzushiji-recognition competition" in r.stderr
    (inp / "kuzushiji-recognition").symlink_to(tiny)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 1 and "kzlib-detect-f0, kzlib-detect-f1, kzlib-detect-f2 are not attached" in r.stderr
    assert not (tmp_path / "working").exists()
