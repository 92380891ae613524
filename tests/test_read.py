"""Reading pages with a trained chain: a bundle from a small finished run, every output, the image
formats, a bad page, skip-on-rerun."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from kzlib.detailed import blend_files, submission_from_detailed
from kzlib.export import export, load
from kzlib.pipeline import Pipeline
from kzlib.preset import load_preset

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished two-fold run of one small kind on the tiny pages (level 2 included)."""
    tmp = tmp_path_factory.mktemp("run")
    preset = json.loads((ROOT / "tests" / "fixtures" / "preset_tiny.json").read_text())
    preset.update(n_folds=2, pseudo_kind="", kinds={"a": preset["kinds"]["a"]})
    (tmp / "preset.json").write_text(json.dumps(preset))
    data = tmp / "data"
    shutil.copytree(FIXTURE, data)
    work = tmp / "work"
    Pipeline(data, work, load_preset(tmp / "preset.json")).run(log=lambda *_: None)
    assert (work / "submission.csv").is_file()
    return data, work


def test_bundle_has_every_part_with_hashes(finished_run, tmp_path):
    data, work = finished_run
    b = export(work, tmp_path / "bundle", log=lambda *_: None)
    m = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert m["detectors"] == ["detect/fold0", "detect/fold1"] and m["test_box_rule"] == "vote" and m["format"] == 2
    assert m["classifiers"] == {"a": ["classify/a/fold0", "classify/a/fold1"]}
    assert all(len(sha) == 64 for sha in m["files"].values()) and "unicode_translation.csv" in m["files"]
    assert b.level2 == (tmp_path / "bundle" / "level2" if (work / "stack" / "models" / "stack.json").exists() else None)
    fast = export(work, tmp_path / "fast", folds="best", log=lambda *_: None)
    assert len(fast.detectors) == 1 and fast.level2 is None and len(fast.classifiers["a"]) == 1
    with pytest.raises(Exception, match="not a runner work folder"):
        load(tmp_path)


def test_read_writes_every_output_and_the_runners_submission(finished_run, tmp_path):
    """On the run's own test pages, `read` gives the runner's submission (the same functions)."""
    data, work = finished_run
    export(work, tmp_path / "bundle", log=lambda *_: None)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "kzlib.read", str(data / "test_images"), "--model", str(tmp_path / "bundle"),
                        "--out", str(out), "--png"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    ids = sorted(p.stem for p in (data / "test_images").iterdir())
    for i in ids:
        doc = json.loads((out / f"{i}.json").read_text())
        assert doc["image_id"] == i and set(doc) >= {"characters", "annotations", "text", "width", "height"}
        for c in doc["characters"]:
            assert set(c) >= {"unicode", "char", "x", "y", "w", "h", "score", "column", "order"}
        assert [c["order"] for c in doc["characters"] + doc["annotations"]] == sorted(
            c["order"] for c in doc["characters"] + doc["annotations"])
        assert (out / f"{i}.txt").read_text().splitlines()[: len(doc["text"])] == doc["text"]
        assert (out / f"{i}.png").stat().st_size > 0
    pages = pd.read_csv(out / "pages.csv", keep_default_na=False)
    assert sorted(pages["page"]) == ids and (pages["error"] == "").all()
    runner = pd.read_csv(work / "submission.csv", keep_default_na=False).set_index("image_id")["labels"]
    mine = pd.read_csv(out / "submission.csv", keep_default_na=False).set_index("image_id")["labels"]
    assert mine.to_dict() == runner.to_dict()  # the same code path as the runner (level 2)
    assert "<img" in (out / "index.html").read_text()
    # a work folder serves as a bundle too
    same = subprocess.run([sys.executable, "-m", "kzlib.read", str(data / "test_images"), "--model", str(work),
                           "--out", str(tmp_path / "out2")], capture_output=True, text=True)
    assert same.returncode == 0 and (tmp_path / "out2" / "submission.csv").read_text() == (out / "submission.csv").read_text()


def test_read_without_level2_gives_the_runners_blend(finished_run, tmp_path):
    """The tiny run's level 2 may keep nothing (its classifier is weak); the blend of every fold's
    classifier reads characters, and `read` gives exactly the runner's blend of its test files."""
    data, work = finished_run
    export(work, tmp_path / "bundle", level2=False, log=lambda *_: None)
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "kzlib.read", str(data / "test_images"), "--model", str(tmp_path / "bundle"),
                        "--out", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    blend = blend_files(sorted((work / "classify" / "a").glob("fold*/test_detailed.csv.gz")))
    runner = submission_from_detailed(blend).set_index("image_id")["labels"]
    mine = pd.read_csv(out / "submission.csv", keep_default_na=False).set_index("image_id")["labels"]
    assert mine.str.split().str.len().sum() > 0  # characters are read
    assert mine.to_dict() == runner.reindex(mine.index, fill_value="").to_dict()


def test_formats_a_bad_page_and_skip_on_rerun(finished_run, tmp_path):
    data, work = finished_run
    src = sorted((data / "test_images").iterdir())[0]
    rgb = cv2.cvtColor(cv2.imread(str(src)), cv2.COLOR_BGR2RGB)
    h, w = rgb.shape[:2]
    pages = tmp_path / "pages"
    pages.mkdir()
    Image.fromarray(rgb).convert("L").save(pages / "grey.png")
    rgba = np.dstack([rgb, np.full((h, w), 255, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(pages / "rgba.png")
    Image.fromarray((rgb.mean(2) * 257).astype(np.uint16)).save(pages / "deep16.png")
    Image.fromarray(rgb).convert("CMYK").save(pages / "cmyk.jpg")
    Image.fromarray(rgb).save(pages / "scan.tif")
    turned = Image.fromarray(np.rot90(rgb).copy())  # stored turned, with an EXIF tag that turns it back
    exif = turned.getexif()
    exif[0x0112] = 8
    turned.save(pages / "exif.jpg", exif=exif)
    (pages / "empty.jpg").write_bytes(b"")
    (pages / "cut.jpg").write_bytes(src.read_bytes()[: src.stat().st_size // 2])
    out = tmp_path / "out"
    run = lambda: subprocess.run([sys.executable, "-m", "kzlib.read", str(pages), "--model", str(work), "--out", str(out)],
                                 capture_output=True, text=True)
    r = run()
    assert r.returncode == 1 and "Traceback" not in r.stderr
    table = pd.read_csv(out / "pages.csv", keep_default_na=False).set_index("page")
    assert set(table.index[table["error"] != ""]) == {"empty", "cut"}
    assert "damaged image" in table.loc["cut", "error"] and "empty.jpg" in r.stderr
    for name in ("grey", "rgba", "deep16", "cmyk", "scan"):
        doc = json.loads((out / f"{name}.json").read_text())
        assert (doc["width"], doc["height"]) == (w, h), name
    doc = json.loads((out / "exif.json").read_text())
    assert (doc["width"], doc["height"]) == (w, h)  # upright again
    read_first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    r = run()
    assert r.returncode == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == read_first  # nothing read twice
    assert sorted(pd.read_csv(out / "submission.csv")["image_id"]) == sorted(
        ["grey", "rgba", "deep16", "cmyk", "scan", "exif"])
