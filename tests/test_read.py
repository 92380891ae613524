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
from safetensors.torch import load_file, save_file

from helpers import run_main
from kzlib.detailed import blend_files, submission_from_detailed
from kzlib.errors import DataError
from kzlib.export import BundleError, export, load
from kzlib.read import main as read_cli

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "tiny"


def test_bundle_has_every_part_with_hashes(finished_run, tmp_path):
    data, work = finished_run
    b = export(work, tmp_path / "bundle", log=lambda *_: None)
    m = json.loads((tmp_path / "bundle" / "manifest.json").read_text())
    assert m["detectors"] == ["detect/fold0", "detect/fold1"] and m["test_box_rule"] == "vote" and m["format"] == 3
    assert m["classifiers"] == {"a": ["classify/a/fold0", "classify/a/fold1"]} and m["formats"]["weights"] == "safetensors"
    assert all(len(sha) == 64 for sha in m["files"].values()) and "unicode_translation.csv" in m["files"]
    # no pickle: weights as safetensors, the rest JSON; the run's tensors bit for bit
    every = {p.relative_to(tmp_path / "bundle").as_posix() for p in (tmp_path / "bundle").rglob("*") if p.is_file()}
    assert every == set(m["files"]) | {"manifest.json"} and not any(f.endswith((".pth", ".pkl")) for f in every)
    for rel, run in zip(m["detectors"] + m["classifiers"]["a"],
                        [work / "detect" / "fold0", work / "detect" / "fold1"] + sorted((work / "classify" / "a").glob("fold*"))):
        mine, theirs = load_file(tmp_path / "bundle" / rel / "model.safetensors"), torch.load(run / "best.pth", weights_only=True)
        assert mine.keys() == theirs["model"].keys() and all(torch.equal(mine[k], theirs["model"][k]) for k in mine)
        assert json.loads((tmp_path / "bundle" / rel / "run.json").read_text())["epoch"] == theirs["epoch"]
    assert b.level2 == (tmp_path / "bundle" / "level2" if (work / "stack" / "models" / "stack.json").exists() else None)
    assert m["test_match"] == "iou"  # the tiny preset votes without saying how: by IoU
    manifest = tmp_path / "bundle" / "manifest.json"
    manifest.write_text(json.dumps({**m, "test_match": "centre"}))
    assert load(tmp_path / "bundle").rule.match == "centre"
    manifest.write_text(json.dumps({k: v for k, v in m.items() if k != "test_match"}))
    assert load(tmp_path / "bundle").rule.match == "iou"  # a bundle made before the key: its votes matched by IoU
    manifest.write_text(json.dumps({**m, "test_match": "nearest"}))
    with pytest.raises(BundleError, match="'test_match' is 'nearest', not centre or iou"):
        load(tmp_path / "bundle")
    manifest.write_text(json.dumps(m))
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
    code, _, err = run_main(read_cli, data / "test_images", "--model", tmp_path / "bundle", "--out", out, "--png")
    assert code == 0, err
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
    code, _, _ = run_main(read_cli, data / "test_images", "--model", work, "--out", tmp_path / "out2")
    assert code == 0 and (tmp_path / "out2" / "submission.csv").read_text() == (out / "submission.csv").read_text()


def test_read_without_level2_gives_the_runners_blend(finished_run, tmp_path):
    """The tiny run's level 2 may keep nothing (its classifier is weak); the blend of every fold's
    classifier reads characters, and `read` gives exactly the runner's blend of its test files."""
    data, work = finished_run
    export(work, tmp_path / "bundle", level2=False, log=lambda *_: None)
    out = tmp_path / "out"
    code, _, err = run_main(read_cli, data / "test_images", "--model", tmp_path / "bundle", "--out", out)
    assert code == 0, err
    blend = blend_files(sorted((work / "classify" / "a").glob("fold*/test_detailed.csv.gz")))
    runner = submission_from_detailed(blend).set_index("image_id")["labels"]
    mine = pd.read_csv(out / "submission.csv", keep_default_na=False).set_index("image_id")["labels"]
    assert mine.str.split().str.len().sum() > 0  # characters are read
    assert mine.to_dict() == runner.reindex(mine.index, fill_value="").to_dict()


@pytest.fixture
def console(monkeypatch, capfd):
    """What ``kzlib read`` says about a page goes to the process's own stderr (``kzlib.images.console``,
    found once and kept), which pytest's capfd holds for each test: found again in each."""
    from kzlib import images

    monkeypatch.setattr(images, "_real_stderr", None)
    return capfd


def _read(console, inputs, model, out, *extra) -> tuple[int, str]:
    """``kzlib read`` in this process: its exit code and everything it said on stderr."""
    code, _, err = run_main(read_cli, *inputs, "--model", model, "--out", out, *extra)
    return code, err + console.readouterr().err


def test_formats_a_bad_page_and_skip_on_rerun(finished_run, tmp_path, console):
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
    code, err = _read(console, [pages], work, out)
    assert code == 1 and "Traceback" not in err
    table = pd.read_csv(out / "pages.csv", keep_default_na=False).set_index("page")
    assert set(table.index[table["error"] != ""]) == {"empty", "cut"}
    assert "damaged image" in table.loc["cut", "error"] and "empty.jpg" in err
    for name in ("grey", "rgba", "deep16", "cmyk", "scan"):
        doc = json.loads((out / f"{name}.json").read_text())
        assert (doc["width"], doc["height"]) == (w, h), name
    doc = json.loads((out / "exif.json").read_text())
    assert (doc["width"], doc["height"]) == (w, h)  # upright again
    read_first = {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")}
    assert _read(console, [pages], work, out)[0] == 1
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("*.json")} == read_first  # nothing read twice
    assert sorted(pd.read_csv(out / "submission.csv")["image_id"]) == sorted(
        ["grey", "rgba", "deep16", "cmyk", "scan", "exif"])


def test_odd_names_same_stems_links_that_loop_tiny_images_and_the_output_inside(finished_run, tmp_path, console):
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
    code, err = _read(console, [pages], work, out, "--png")
    assert code == 1 and "Traceback" not in err, err
    table = pd.read_csv(out / "pages.csv", keep_default_na=False).set_index("page")
    assert set(table.index) == {"p\\xe9ge", "p.jpg", "p.png", "loop", "dot"}
    assert set(table.index[table["error"] != ""]) == {"loop", "dot"}
    assert "1x1 px is too small to be a page" in table.loc["dot", "error"]
    assert (out / "p\\xe9ge.json").is_file() and (out / "p.jpg.json").is_file() and (out / "p.png.json").is_file()
    subs = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert sorted(subs["image_id"]) == sorted(["p\\xe9ge", "p.jpg", "p.png"])
    assert (out / "index.html").is_file()
    again = _read(console, [pages], work, out, "--png")  # its own pictures in out/ are not pages
    assert set(pd.read_csv(out / "pages.csv", keep_default_na=False)["page"]) == set(table.index)
    assert again[0] == 1


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
    """A weight changed after export is refused by its SHA-256, --trust or not (--trust skips the
    version checks only); a format this kit does not know is refused; a newer kit or torch is refused
    unless --trust."""
    data, work = finished_run
    bundle = tmp_path / "bundle"
    export(work, bundle, folds="best", log=lambda *_: None)
    page = sorted((data / "test_images").iterdir())[:1]
    weights_file = next(bundle.glob("classify/a/fold*/model.safetensors"))
    state = load_file(weights_file)
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] += 0.01  # still weights that load: only the SHA-256 tells
    save_file(state, weights_file)
    for extra in ((), ("--trust",)):
        rc, err = _read_here(capsys, page, bundle, tmp_path / "o1", *extra)
        assert rc == 1 and f"{weights_file}: its SHA-256 differs from manifest.json" in err
        assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o1" / "pages.csv").exists()
    export(work, bundle, folds="best", log=lambda *_: None)
    manifest = json.loads((bundle / "manifest.json").read_text())
    for key, value, said in (("format", 99, "bundle format 99 is not one this kit reads"),
                             ("kit_version", "9.9.0", "made by kzlib 9.9.0"),
                             ("torch", "99.1.0", "made with torch 99.1.0")):
        (bundle / "manifest.json").write_text(json.dumps({**manifest, key: value}))
        rc, err = _read_here(capsys, page, bundle, tmp_path / f"o-{key}")
        assert rc == 1 and said in err and len(err.strip().splitlines()) == 1, err
        if key != "format":
            assert "--trust" in err and load(bundle, trust=True).detectors  # the user's call
        else:
            with pytest.raises(BundleError, match="bundle format 99"):
                load(bundle, trust=True)


class _Payload:
    """Unpickling it opens (creates) ``marker``: the stranger's code, harmless here."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _sha(path: Path) -> str:
    from kzlib.io import file_sha256

    return file_sha256(path)


def test_a_poisoned_bundle_or_work_folder_runs_nothing(finished_run, tmp_path, capsys):
    """Issue 33's attack: an object whose unpickling runs code, put into a checkpoint of a bundle (and
    its SHA-256 into the manifest, which its author writes anyway) or of a work folder. Nothing of it
    runs: not on `read`, not with --trust, not on `export`; each is one line."""
    from kzlib.export import main as export_main
    from kzlib.reader import Reader

    data, work = finished_run
    page = sorted((data / "test_images").iterdir())[:1]
    marker = tmp_path / "PWNED"
    bundle = tmp_path / "bundle"
    export(work, bundle, folds="best", log=lambda *_: None)
    m = json.loads((bundle / "manifest.json").read_text())
    det = m["detectors"][0]
    poison = {**torch.load(work / "detect" / "fold0" / "best.pth", weights_only=True), "evil": _Payload(marker)}

    # 1. the recipe on a bundle of the old format: best.pth beside the weights, listed with its hash
    old = tmp_path / "old"
    shutil.copytree(bundle, old)
    torch.save(poison, old / det / "best.pth")
    (old / "manifest.json").write_text(json.dumps({**m, "format": 2, "files": {**m["files"], f"{det}/best.pth":
                                                                                 _sha(old / det / "best.pth")}}))
    for extra in ((), ("--trust",)):
        rc, err = _read_here(capsys, page, old, tmp_path / "o1", *extra)
        assert rc == 1 and len(err.strip().splitlines()) == 1, err
        assert "bundle format 2 keeps its weights in pickled torch files" in err
        assert f"make a new bundle from its work folder: kzlib export {work.resolve()} --out NEW_BUNDLE" in err

    # 2. the weights file itself replaced by the pickle, its hash updated
    swapped = tmp_path / "swapped"
    shutil.copytree(bundle, swapped)
    torch.save(poison, swapped / det / "model.safetensors")
    (swapped / "manifest.json").write_text(json.dumps({**m, "files": {**m["files"], f"{det}/model.safetensors":
                                                                        _sha(swapped / det / "model.safetensors")}}))
    for extra in ((), ("--trust",)):
        rc, err = _read_here(capsys, page, swapped, tmp_path / "o2", *extra)
        assert rc == 1 and len(err.strip().splitlines()) == 1 and "model.safetensors: does not load" in err, err

    # 3. a pickle planted beside the weights, not in the manifest: never opened
    torch.save(poison, bundle / det / "best.pth")
    for trust in (False, True):
        assert len(Reader(load(bundle, trust), "cpu").detectors) == 1

    # 4. a work folder used as --model, and exported: its checkpoint is refused, nothing unpickled
    poisoned = tmp_path / "work"
    shutil.copytree(work, poisoned, copy_function=os.link)  # hard links: cheap, and the original stays
    (poisoned / "detect" / "fold0" / "best.pth").unlink()
    torch.save(poison, poisoned / "detect" / "fold0" / "best.pth")
    for extra in ((), ("--trust",)):
        rc, err = _read_here(capsys, page, poisoned, tmp_path / "o4", *extra)
        assert rc == 2 and len(err.strip().splitlines()) == 1, err
        assert "detect/fold0/best.pth: does not load (it holds objects other than tensors and plain values" in err
    capsys.readouterr()
    assert export_main([str(poisoned), "--out", str(tmp_path / "b4")]) == 1
    err = capsys.readouterr().err
    assert "detect/fold0/best.pth: does not load (it holds objects other than tensors" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b4").exists()
    assert not (tmp_path / ".b4.building").exists()
    assert not marker.exists()


def _bundle_refusal(bundle: Path, manifest) -> str:
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError) as e:
        load(bundle, trust=True)  # --trust skips no structural check
    return str(e.value)


def test_a_manifest_must_vouch_for_every_file_inside_the_bundle(finished_run, tmp_path):
    """Every file the reader opens is listed with its hash, lies inside the bundle and is not a link;
    a manifest missing a key or of the wrong shape is one line naming manifest.json and the key."""
    data, work = finished_run
    bundle = tmp_path / "bundle"
    export(work, bundle, folds="best", log=lambda *_: None)
    m = json.loads((bundle / "manifest.json").read_text())
    det = m["detectors"][0]
    where = str(bundle / "manifest.json")
    # defect 2: no files; a detector outside the bundle; an absolute path; a link out of it
    said = _bundle_refusal(bundle, {k: v for k, v in m.items() if k != "files"})
    assert said.startswith(where) and "no 'files'" in said
    outside = tmp_path / "evil" / "detect" / "fold0"
    shutil.copytree(bundle / det, outside)
    files = {**m["files"], **{f"../evil/detect/fold0/{f}": _sha(outside / f) for f in ("model.safetensors", "run.json")}}
    said = _bundle_refusal(bundle, {**m, "detectors": ["../evil/detect/fold0"], "files": files})
    assert said.startswith(where) and "'../evil/detect/fold0/model.safetensors', not a path inside the bundle" in said
    said = _bundle_refusal(bundle, {**m, "detectors": [str(outside)]})
    assert said.startswith(where) and "not a path inside the bundle" in said
    said = _bundle_refusal(bundle, {**m, "files": {k: v for k, v in m["files"].items() if k != f"{det}/run.json"}})
    assert f"detectors names {det}/run.json, which 'files' does not list with its SHA-256" in said
    (bundle / det / "model.safetensors").unlink()
    (bundle / det / "model.safetensors").symlink_to(outside / "model.safetensors")
    said = _bundle_refusal(bundle, m)
    assert said.startswith(f"{bundle / det / 'model.safetensors'}: a link") and "not be links" in said
    (bundle / det / "model.safetensors").unlink()
    shutil.copyfile(outside / "model.safetensors", bundle / det / "model.safetensors")
    # defect 12: keys missing, empty, of the wrong type; a manifest that is not an object
    for manifest, key in (({k: v for k, v in m.items() if k != "detectors"}, "no 'detectors'"),
                          ({k: v for k, v in m.items() if k != "n_tta"}, "no 'n_tta'"),
                          ({**m, "detectors": []}, "'detectors' must name at least one detector folder"),
                          ({**m, "classifiers": {"a": "classify/a/fold0"}}, "'classifiers' must name"),
                          ({**m, "n_tta": "4"}, "'n_tta' is \"4\", not a whole number"),
                          ([m], "a JSON list, not an object")):
        said = _bundle_refusal(bundle, manifest)
        assert said.startswith(where) and key in said and "\n" not in said, said
    (bundle / "manifest.json").write_text(json.dumps(m))
    assert load(bundle).detectors == [bundle / det]


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


@pytest.fixture(scope="module")
def odd_pages(finished_run, tmp_path_factory):
    """One `kzlib read --png` (in this process) of pages a scholar may have: a 50,000x40 strip, a
    3-page TIFF, a name with # % ?, and a damaged file whose name holds terminal escape codes. Returns
    (pages folder, out folder, exit code, what was printed on stderr)."""
    import contextlib
    import io

    from kzlib import read as read_module

    data, work = finished_run
    tmp = tmp_path_factory.mktemp("odd")
    src = sorted((data / "test_images").iterdir())[0]
    rgb = np.asarray(Image.open(src).convert("RGB"))
    half = Image.fromarray(rgb).resize((rgb.shape[1] // 2, rgb.shape[0] // 2))
    pages = tmp / "pages"
    pages.mkdir()
    Image.new("L", (50_000, 40), 255).save(pages / "strip.png")
    half.save(pages / "scan.tif", save_all=True, append_images=[half.rotate(180), half])
    shutil.copyfile(src, pages / "a#b%41?.jpg")
    (pages / "\x1b[2J\x1b[31mred.jpg").write_bytes(b"")
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setattr(read_module, "console", lambda: sys.stderr)  # the error lines, here
        rc = read_module.main([str(pages), "--model", str(work), "--out", str(tmp / "out"), "--png", "--device", "cpu"])
    return pages, tmp / "out", rc, err.getvalue()


def _pages(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "pages.csv", keep_default_na=False, dtype={"page": str}).set_index("page")


def test_a_strip_is_a_row_not_a_crash(odd_pages):
    """Defect 5: a 50,000x40 px strip was scaled to the page height (a 1.3-gigapixel input, killed
    for memory, no pages.csv ever); it is a row saying why, and the other pages are read."""
    pages, out, rc, err = odd_pages
    table = _pages(out)
    assert rc == 1 and "50000x40 px" in table.loc["strip", "error"] and "cut the strip into pages" in table.loc["strip", "error"]


def test_every_page_of_a_multi_page_tiff_is_read(odd_pages):
    """Defect 6: a 3-page TIFF gave its first page only, silently."""
    pages, out, rc, err = odd_pages
    table = _pages(out)
    assert [i for i in table.index if i.startswith("scan")] == ["scan-1", "scan-2", "scan-3"]
    assert (table.loc[["scan-1", "scan-2", "scan-3"], "error"] == "").all()
    docs = [json.loads((out / f"scan-{k}.json").read_text()) for k in (1, 2, 3)]
    assert [d["source"]["frame"] for d in docs] == [0, 1, 2]
    first, second = (np.asarray(Image.open(out / f"scan-{k}.png")) for k in (1, 2))
    assert first.shape == second.shape and not np.array_equal(first, second)  # the second page is its own


def test_a_picture_named_with_url_characters_is_found(odd_pages):
    """Defect 16: `a#b%41?.jpg` with --png: the index's <img src> was the raw name (a fragment and a
    query to the browser), so the picture was missing."""
    from urllib.parse import unquote

    pages, out, rc, err = odd_pages
    html_text = (out / "index.html").read_text()
    assert "src='a%23b%2541%3F.png'" in html_text and (out / unquote("a%23b%2541%3F.png")).is_file()


def test_terminal_escape_codes_in_a_name_are_printed_escaped(odd_pages):
    """Defect 17: a file name holding escape codes was printed raw (it could clear or hide the line)."""
    pages, out, rc, err = odd_pages
    assert "\x1b" not in err and "error: " in err and "\\x1b[2J\\x1b[31mred.jpg" in err
    assert "\x1b" not in (out / "pages.csv").read_text()


def test_a_16_bit_page_of_12_bit_data_is_one_rule_for_png_and_tiff(tmp_path):
    """Defect 7: 16-bit PNG holding 12-bit data went through `>> 8` (nearly black) while a TIFF of
    the same pixels was stretched; one rule now: scaled from the bits the values need."""
    from kzlib.images import read_image
    from kzlib.read import upright

    ramp = (np.linspace(0, 4095, 64 * 48).reshape(64, 48)).astype(np.uint16)  # 12-bit data
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    Image.fromarray(ramp).save(tmp_path / "deep.tif")
    png = read_image(upright(tmp_path / "deep.png", tmp_path / "cache", "png"))
    tif = read_image(upright(tmp_path / "deep.tif", tmp_path / "cache", "tif"))
    assert png.max() == 255 and abs(float(png.mean()) - 127.5) < 2
    assert np.abs(png.astype(int) - tif.astype(int)).max() <= 1


def test_a_page_of_the_same_name_from_another_volume_is_read_again(finished_run, tmp_path, capsys):
    """Defect 3: `read vol1 --out o`, then `read vol2 --out o`, both with 0001.jpg: the second kept
    vol1's text beside vol2's scan. A page is skipped only when its JSON records the same source."""
    data, work = finished_run
    a, b = sorted((data / "test_images").iterdir())[:2]
    for vol, src in (("vol1", a), ("vol2", b)):
        (tmp_path / vol).mkdir()
        shutil.copyfile(src, tmp_path / vol / "0001.jpg")
    out = tmp_path / "o"
    assert _read_here(capsys, [tmp_path / "vol1"], work, out, "--device", "cpu")[0] == 0
    first = json.loads((out / "0001.json").read_text())
    assert first["source"]["path"] == str((tmp_path / "vol1" / "0001.jpg").resolve())
    assert _read_here(capsys, [tmp_path / "vol2"], work, out, "--device", "cpu")[0] == 0
    doc = json.loads((out / "0001.json").read_text())
    assert doc["file"] == str(tmp_path / "vol2" / "0001.jpg") and doc["source"]["path"] == str((tmp_path / "vol2" / "0001.jpg").resolve())
    assert doc["source"]["size"] == b.stat().st_size and _pages(out).loc["0001", "file"] == str(tmp_path / "vol2" / "0001.jpg")
    stamp = (out / "0001.json").stat().st_mtime_ns
    assert _read_here(capsys, [tmp_path / "vol2"], work, out, "--device", "cpu")[0] == 0
    assert (out / "0001.json").stat().st_mtime_ns == stamp  # the same source: not read again


def test_a_full_disk_stops_reading_at_the_first_page(finished_run, tmp_path, capsys, monkeypatch):
    """Defect 11: on a full disk every remaining page was read, each an error row; the first ENOSPC
    now stops the run in one line (exit 3), the pages done before it kept."""
    import errno

    from kzlib import read as read_module

    data, work = finished_run
    pages = tmp_path / "pages"
    pages.mkdir()
    for k in range(3):
        shutil.copyfile(sorted((data / "test_images").iterdir())[0], pages / f"p{k}.jpg")
    tried = []

    def full(reader, image_id, *args, **kwargs):
        tried.append(image_id)
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / f"{image_id}.txt"))

    monkeypatch.setattr(read_module, "read_one", full)
    rc, err = _read_here(capsys, [pages], work, tmp_path / "o", "--device", "cpu")
    assert rc == 3 and tried == ["p0"] and len(err.strip().splitlines()) == 1
    assert f"{tmp_path / 'o' / 'p0.txt'}: No space left on device (free some disk space" in err


def test_export_to_a_full_disk_names_the_destination_and_leaves_nothing(finished_run, tmp_path, capsys, monkeypatch):
    """Defect 10: export to a full disk named the source file and left `.B.building` behind."""
    import errno

    from kzlib.export import main as export_main

    data, work = finished_run
    real = shutil.copyfile

    def full(src, dst, *args, **kwargs):
        if Path(dst).name == "unicode_translation.csv":  # the weights are written by then
            raise OSError(errno.ENOSPC, "No space left on device", str(src))
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full)
    out = tmp_path / "B"
    assert export_main([str(work), "--out", str(out), "--folds", "best"]) == 3
    err = capsys.readouterr().err
    assert f"error: export: {out}: No space left on device" in err and len(err.strip().splitlines()) == 1
    assert str(data) not in err and not out.exists() and not (tmp_path / ".B.building").exists()
    # the disk full while the weights are written (safetensors' own writer made it a traceback)
    write_bytes = Path.write_bytes

    def full_weights(self, data):
        if ".model.safetensors." in self.name:
            raise OSError(errno.ENOSPC, "No space left on device", str(self))
        return write_bytes(self, data)

    monkeypatch.undo()
    monkeypatch.setattr(Path, "write_bytes", full_weights)
    assert export_main([str(work), "--out", str(out), "--folds", "best"]) == 3
    err = capsys.readouterr().err
    assert f"error: export: {out}: No space left on device" in err and len(err.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / ".B.building").exists()


def test_device_names_are_checked_by_the_parser(capsys):
    """Defect 15: `--device gpu` was torch's RuntimeError traceback; it is argparse's one line."""
    from kzlib.read import main as read_main
    from kzlib.run import main as run_main

    for main, args in ((read_main, ["x.jpg", "--model", "m", "--out", "o"]), (run_main, ["--data", "d", "--work", "w"])):
        with pytest.raises(SystemExit) as e:
            main([*args, "--device", "gpu"])
        err = capsys.readouterr().err
        assert e.value.code == 2 and "argument --device: gpu is not a device: one of cpu, cuda (or cuda:N), auto" in err
        assert "Traceback" not in err
