import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kzlib import fonts as kfonts
from kzlib.data import check_dataset, read_labels_csv
from kzlib.folds import book_id
from kzlib.synth import SynthConfig, generate


def bundled():
    path = kfonts.bundled_font()
    if path is None:
        pytest.skip("matplotlib-fontja not installed")
    return path


def small(out, **kw):
    base = dict(books=2, pages_per_book=3, test_pages=2, classes=30, height=300, glyph_scale=2.0,
                seed=3, fonts=[bundled()], workers=1)
    base.update(kw)
    return SynthConfig(out, **base)


def test_generates_a_valid_dataset(tmp_path):
    out = tmp_path / "ds"
    summary = generate(small(out), progress=False)
    report = check_dataset(out)
    assert report.ok, report.problems
    assert report.summary["train pages"] == 6 and report.summary["books"] == 2
    assert report.summary["test pages"] == 2 and summary["characters"] > 0
    sub = pd.read_csv(out / "sample_submission.csv")
    solution = read_labels_csv(out / "test_labels.csv")
    assert sub["image_id"].tolist() == solution["image_id"].tolist()
    assert not set(map(book_id, sub["image_id"])) & set(map(book_id, read_labels_csv(out / "train.csv")["image_id"]))
    meta = json.loads((out / "synth_meta.json").read_text())
    assert [b["split"] for b in meta["books"]] == ["train", "train", "test"]


def test_deterministic_for_a_seed(tmp_path):
    generate(small(tmp_path / "a"), progress=False)
    generate(small(tmp_path / "b", workers=2), progress=False)
    generate(small(tmp_path / "c", seed=4), progress=False)
    a, b, c = ((tmp_path / x / "train.csv").read_text() for x in "abc")
    assert a == b and a != c
    for img in (tmp_path / "a" / "train_images").iterdir():
        assert img.read_bytes() == (tmp_path / "b" / "train_images" / img.name).read_bytes()


def test_more_test_pages_of_one_book_keep_the_pages_already_made(tmp_path):
    # a dev set held out by every fold: more pages of the same test book, the rest unchanged
    generate(small(tmp_path / "a", test_pages=2), progress=False)
    generate(small(tmp_path / "b", test_pages=6, test_books=1), progress=False)
    a, b = (read_labels_csv(tmp_path / x / "test_labels.csv") for x in "ab")
    assert len(b) == 6 and set(map(book_id, b["image_id"])) == set(map(book_id, a["image_id"]))
    assert b.head(2).equals(a) and (tmp_path / "a" / "train.csv").read_text() == (tmp_path / "b" / "train.csv").read_text()
    for img in (tmp_path / "a" / "test_images").iterdir():
        assert img.read_bytes() == (tmp_path / "b" / "test_images" / img.name).read_bytes()
    generate(small(tmp_path / "c", test_pages=6), progress=False)  # the default: one book per 5 test pages
    c = read_labels_csv(tmp_path / "c" / "test_labels.csv")
    assert len(set(map(book_id, c["image_id"]))) == 2
    with pytest.raises(ValueError, match="--test-books"):
        generate(small(tmp_path / "d", test_pages=2, test_books=3), progress=False)


def test_class_frequencies_follow_labels_source(tmp_path):
    src = tmp_path / "real.csv"
    # あ most frequent, then い; う rare; ア never covered by the request of 2 classes
    rows = ["U+3042 1 1 5 5 " * 10 + "U+3044 1 1 5 5 " * 5 + "U+3046 1 1 5 5"]
    pd.DataFrame({"image_id": ["b_1"], "labels": [r.strip() for r in rows]}).to_csv(src, index=False)
    generate(small(tmp_path / "ds", classes=2, labels_source=src), progress=False)
    classes = pd.read_csv(tmp_path / "ds" / "unicode_translation.csv")["Unicode"].tolist()
    assert classes == ["U+3042", "U+3044"]


def test_holdout_font_only_in_test_books(tmp_path):
    found = kfonts.find_fonts()
    faces = sorted({f.typeface for f in found})
    if len(faces) < 2:
        pytest.skip("needs two Japanese typefaces on the system")
    held = faces[0]
    generate(small(tmp_path / "ds", fonts=[], holdout_font=held, classes=20), progress=False)
    meta = json.loads((tmp_path / "ds" / "synth_meta.json").read_text())
    held_paths = {str(f.path) for f in found if f.typeface == held}
    for b in meta["books"]:
        used = set(b["style"]["fonts"])
        assert used <= held_paths if b["split"] == "test" else not used & held_paths


def test_no_font_is_a_clear_error_and_writes_nothing(tmp_path, monkeypatch):
    cfg = small(tmp_path / "ds", fonts=[])
    monkeypatch.setattr(kfonts, "_fontconfig_files", lambda: [])
    monkeypatch.setattr(kfonts, "bundled_font", lambda: None)
    with pytest.raises(kfonts.FontError, match="fonts-kouzan-mouhitsu"):
        generate(cfg, progress=False)
    assert list(tmp_path.iterdir()) == []


def test_label_font_reads_only_the_fonts_it_tries(tmp_path, monkeypatch):
    """The picture's font: the first usable Mincho or Gothic, found without reading every
    installed font's character map (the runner's summary paid 3 s for that)."""
    font = bundled()
    broken = tmp_path / "broken.ttf"
    broken.write_bytes(b"not a font")
    others = [(str(tmp_path / f"brush{i}.ttf"), f"Brush {i}") for i in range(5)]
    for f, _ in others:
        Path(f).symlink_to(font)
    candidates = [*others[:2], (str(broken), "Broken Gothic"), (str(font), "IPAexGothic"), *others[2:]]
    monkeypatch.setattr(kfonts, "_fontconfig_files", lambda: candidates)
    read = []
    real_coverage = kfonts.coverage.__wrapped__
    monkeypatch.setattr(kfonts, "coverage", lambda p: read.append(p) or real_coverage(p))
    assert Path(kfonts.label_font(12).path) == font.resolve()
    assert read == [broken.resolve(), font.resolve()]  # the broken Gothic tried and skipped; no brush font read
    monkeypatch.setattr(kfonts, "_fontconfig_files", lambda: [(str(broken), "Broken Gothic"), *others[:1]])
    read.clear()
    assert Path(kfonts.label_font(12).path) == font.resolve()  # no usable plain font: the first usable one
    monkeypatch.setattr(kfonts, "_fontconfig_files", lambda: [(str(broken), "Broken Gothic")])
    with pytest.raises(kfonts.FontError, match="fonts-kouzan-mouhitsu"):
        kfonts.label_font(12)


def test_cli_errors(tmp_path):
    run = lambda *a: subprocess.run([sys.executable, "-m", "kzlib.synth", *map(str, a)], capture_output=True, text=True)
    r = run(tmp_path / "x", "--font", tmp_path / "nope.ttf")
    assert r.returncode == 3 and "nope.ttf: no such font file" in r.stderr and "Traceback" not in r.stderr
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("x")
    r = run(tmp_path / "full", "--font", bundled())
    assert r.returncode == 1 and "not empty" in r.stderr
    assert [p.name for p in (tmp_path / "full").iterdir()] == ["keep.txt"]
