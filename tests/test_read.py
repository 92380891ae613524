"""Reading pages with a trained chain: a bundle from a small finished run, every output, the image
formats, a bad page, skip-on-rerun."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from kzlib.detailed import blend_files, submission_from_detailed
from kzlib.errors import DataError
from kzlib.export import export, load

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny"


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
    with pytest.raises(DataError, match="several model bundles under .*bundle.*fast"):
        load(tmp_path)  # two different bundles: which one is not guessed
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="not a runner work folder"):
        load(tmp_path / "empty")


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


def _read(inputs, model, out, *extra):
    return subprocess.run([sys.executable, "-m", "kzlib", "read", *map(str, inputs), "--model", str(model),
                           "--out", str(out), *extra], capture_output=True, text=True)


def test_odd_names_same_stems_links_that_loop_tiny_images_and_the_output_inside(finished_run, tmp_path):
    """A name that is not UTF-8 (cv2.imread segfaulted), p.jpg beside p.png (one id: the second never
    read), a link that loops, a 1x1 image, --out inside the input with --png (a rerun read its own
    pictures): each page read or reported as one row, the others read."""
    data, work = finished_run
    src = sorted((data / "test_images").iterdir())[0]
    pages = tmp_path / "pages"
    pages.mkdir()
    odd = os.fsdecode(b"p\xe9ge.jpg")  # Latin-1 bytes, as unzipped from an old archive
    shutil.copy(src, pages / odd)
    shutil.copy(src, pages / "p.jpg")
    Image.open(src).save(pages / "p.png")
    (pages / "loop.jpg").symlink_to(pages / "loop.jpg")
    Image.new("RGB", (1, 1), "white").save(pages / "dot.png")
    out = pages / "read"
    r = _read([pages], work, out, "--png")
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    table = pd.read_csv(out / "pages.csv", keep_default_na=False).set_index("page")
    assert set(table.index) == {"p\\xe9ge", "p.jpg", "p.png", "loop", "dot"}
    assert set(table.index[table["error"] != ""]) == {"loop", "dot"}
    assert "1x1 px is too small to be a page" in table.loc["dot", "error"]
    assert (out / "p\\xe9ge.json").is_file() and (out / "p.jpg.json").is_file() and (out / "p.png.json").is_file()
    subs = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert sorted(subs["image_id"]) == sorted(["p\\xe9ge", "p.jpg", "p.png"])
    assert (out / "index.html").is_file()
    again = _read([pages], work, out, "--png")  # its own pictures in out/ are not pages
    assert set(pd.read_csv(out / "pages.csv", keep_default_na=False)["page"]) == set(table.index)
    assert again.returncode == 1


def test_a_crash_while_libjpeg_is_heard_still_reports(tmp_path):
    """While fd 2 points at the capture of libjpeg's warnings, a crash report goes to the real stderr."""
    page = tmp_path / "p.jpg"
    Image.new("RGB", (64, 64), "white").save(page)
    code = ("import ctypes, cv2\nfrom kzlib import images\n"
            "cv2.imdecode = lambda data, flags: ctypes.string_at(0)\n"
            f"images.read_image({str(page)!r})\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode < 0 and "Fatal Python error: Segmentation fault" in r.stderr
    assert "read_image" in r.stderr  # the Python stack of the crash


def _read_here(capsys, inputs, model, out, *extra) -> tuple[int, str]:
    """``kzlib read`` in this process (no interpreter start): its exit code and stderr."""
    from kzlib.read import main as read_main

    capsys.readouterr()
    rc = read_main([*map(str, inputs), "--model", str(model), "--out", str(out), *extra])
    return rc, capsys.readouterr().err


def test_a_tampered_or_foreign_bundle_is_refused(finished_run, tmp_path, capsys):
    data, work = finished_run
    bundle = tmp_path / "bundle"
    export(work, bundle, log=lambda *_: None)
    page = sorted((data / "test_images").iterdir())[:1]
    weights_file = next(bundle.glob("classify/a/fold0/best.pth"))
    state = torch.load(weights_file, weights_only=False)
    name = next(k for k, v in state["model"].items() if v.is_floating_point())
    state["model"][name] += 0.01  # still a checkpoint that loads: only the SHA-256 tells
    torch.save(state, weights_file)
    rc, err = _read_here(capsys, page, bundle, tmp_path / "o1")
    assert rc == 1 and f"{weights_file}: its SHA-256 differs from manifest.json" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o1" / "pages.csv").exists()
    assert _read_here(capsys, page, bundle, tmp_path / "o2", "--trust")[0] == 0  # the user's call
    export(work, bundle, log=lambda *_: None)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for key, value, said in (("format", 99, "bundle format 99"), ("kit_version", "9.9.0", "made by kzlib 9.9.0"),
                             ("torch", "99.1.0", "made with torch 99.1.0")):
        (bundle / "manifest.json").write_text(json.dumps({**manifest, key: value}))
        rc, err = _read_here(capsys, page, bundle, tmp_path / f"o-{key}")
        assert rc == 1 and said in err and "--trust" in err, err


def test_export_refuses_a_stale_or_unfinished_work_folder(finished_run, tmp_path, capsys):
    """A bundle must be what the runner's submission used: a train.csv edited since the run (every
    stage changed) is refused, --force exports and the manifest says so; the runner's report marks
    rows of stages that are not current."""
    from kzlib.export import main as export_main
    from kzlib.pipeline import Pipeline
    from kzlib.preset import load_preset
    from kzlib.summary import summary

    data, work = finished_run
    data2, work2 = tmp_path / "data", tmp_path / "work"
    shutil.copytree(data, data2)
    shutil.copytree(work, work2)
    for split in (work2 / "detect").glob("fold*/split.json"):
        s = json.loads(split.read_text())
        split.write_text(json.dumps({**s, "data_dir": str(data2)}))
    truth = pd.read_csv(data2 / "train.csv")
    truth.loc[0, "labels"] = truth.loc[1, "labels"]
    truth.to_csv(data2 / "train.csv", index=False)
    assert export_main([str(work2), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "stage(s) are not done and current (detect-f0 (changed)" in err and "--force" in err
    assert not (tmp_path / "b").exists()
    assert export_main([str(work2), "--out", str(tmp_path / "b"), "--force"]) == 0
    assert "forced" in json.loads((tmp_path / "b" / "manifest.json").read_text())
    table, _ = summary(Pipeline(data2, work2, load_preset(work2 / "preset.json")))
    assert set(table["status"]) == {"changed/stale"} or all(s != "current" for s in table["status"])
    unfinished = tmp_path / "unfinished"
    shutil.copytree(work, unfinished)
    (unfinished / "classify" / "a" / "fold1" / "best.pth").unlink()
    assert export_main([str(unfinished), "--out", str(tmp_path / "c")]) == 1
    assert "the run is not finished" in capsys.readouterr().err
