import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kzlib import data
from kzlib.data import DataError

from test_images import _textured_jpeg


# ---------------------------------------------------------------- labels

def test_parse_labels_basic_and_roundtrip():
    s = "U+3042 10 20 30 40 U+306E 1 2 3 4"
    codes, boxes = data.parse_labels(s)
    assert codes.tolist() == ["U+3042", "U+306E"]
    assert boxes.tolist() == [[10, 20, 30, 40], [1, 2, 3, 4]]
    assert boxes.dtype == np.int64
    assert data.format_labels(codes, boxes) == s


@pytest.mark.parametrize("empty", [None, float("nan"), "", "   "])
def test_parse_labels_empty_means_no_characters(empty):
    codes, boxes = data.parse_labels(empty)
    assert len(codes) == 0 and boxes.shape == (0, 4)


@pytest.mark.parametrize(
    "labels, problem",
    [
        ("U+3042 10 20 30", "not a multiple of 5"),
        ("U+3042 10 20 30 4.5", "non-integer coordinate '4.5'"),
        ("U+3042 10 x 30 40", "non-integer coordinate 'x'"),
        ("3042 10 20 30 40", "bad class code"),
        ("U+3042 10 20 0 40", "non-positive width or height"),
        ("U+9999 10 20 30 40", "U+9999 is not in unicode_translation.csv"),
        ("U+3042 100000000000000000000 20 30 40", "coordinate 100000000000000000000 out of range"),  # overflowed int64
        (f"U+3042 {2**62} 20 {2**62} 40", f"coordinate {2**62} out of range"),  # x + w wrapped around
    ],
)
def test_parse_labels_errors_name_file_image_and_problem(labels, problem):
    with pytest.raises(DataError) as e:
        data.parse_labels(labels, image_id="book_0001_1", source="train.csv", classes={"U+3042"})
    msg = str(e.value)
    assert "train.csv" in msg and "book_0001_1" in msg and problem in msg
    assert "\n" not in msg


def test_read_labels_csv_treats_nan_strings_as_empty_and_rejects_duplicates(tmp_path):
    p = tmp_path / "train.csv"
    p.write_text("image_id,labels\na_1,U+3042 1 2 3 4\nb_1,nan\nc_1,\n")
    df = data.read_labels_csv(p)
    assert df["labels"].isna().tolist() == [False, True, True]
    p.write_text("image_id,labels\na_1,\na_1,\n")
    with pytest.raises(DataError, match="row 3: duplicate image_id 'a_1'"):
        data.read_labels_csv(p)
    p.write_text("id,labels\na_1,\n")
    with pytest.raises(DataError, match="missing column"):
        data.read_labels_csv(p)


def test_labels_table_one_row_per_character():
    df = pd.DataFrame({"image_id": ["a_1", "b_1"], "labels": ["U+3042 1 2 3 4 U+3044 5 6 7 8", None]})
    t = data.labels_table(df)
    assert t["image_id"].tolist() == ["a_1", "a_1"]
    assert t[["x", "y", "w", "h"]].to_numpy().tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]


# ---------------------------------------------------------------- images

# ---------------------------------------------------------------- check CLI

def _cli(*args):
    return subprocess.run([sys.executable, "-m", "kzlib.data", *map(str, args)], capture_output=True, text=True)


def test_check_fixture_ok(tiny):
    r = _cli("check", tiny)
    assert r.returncode == 0, r.stderr
    assert "train pages: 6" in r.stdout and "books: 3" in r.stdout and "test pages: 2" in r.stdout
    assert "pages per fold: [2, 2, 2, 0, 0]" in r.stdout


def test_check_lists_every_problem_of_a_broken_copy(tiny):
    df = pd.read_csv(tiny / "train.csv")
    ids = df["image_id"].tolist()
    df.loc[0, "labels"] = df.loc[0, "labels"] + " U+3042 1 2"  # 7 fields
    df.loc[1, "labels"] = "U+0041 1 1 5 5"  # unknown class
    df.to_csv(tiny / "train.csv", index=False)
    (tiny / "train_images" / f"{ids[3]}.jpg").unlink()
    (tiny / "train_images" / f"{ids[4]}.jpg").write_bytes(b"garbage")
    r = _cli("check", tiny)
    assert r.returncode == 1
    err = r.stderr
    assert ids[0] in err and "not a multiple of 5" in err
    assert ids[1] in err and "U+0041 is not in unicode_translation.csv" in err
    assert f"{ids[3]}.jpg: no such image file" in err
    assert f"{ids[4]}.jpg" in err
    assert "Traceback" not in err


def test_check_box_outside_image(tiny):
    df = pd.read_csv(tiny / "train.csv")
    code = df.loc[0, "labels"].split()[0]
    df.loc[0, "labels"] = f"{code} 390 10 50 10"
    df.to_csv(tiny / "train.csv", index=False)
    r = _cli("check", tiny)
    assert r.returncode == 1 and "outside the" in r.stderr and df.loc[0, "image_id"] in r.stderr


def test_check_catches_damaged_images_and_an_empty_train_csv(tiny):
    ids = pd.read_csv(tiny / "train.csv")["image_id"].tolist()
    img = tiny / "train_images" / f"{ids[2]}.jpg"
    _textured_jpeg(img, (300, 200))
    raw = bytearray(img.read_bytes())
    raw[len(raw) // 2: len(raw) // 2 + 1024] = bytes(1024)
    img.write_bytes(bytes(raw))
    r = _cli("check", tiny)
    assert r.returncode == 1 and f"{ids[2]}.jpg: damaged image (Corrupt JPEG data" in r.stderr
    (tiny / "train.csv").write_text("image_id,labels\n")
    r = _cli("check", tiny)
    assert r.returncode == 1 and "train.csv: no pages (a header only)" in r.stderr and "Traceback" not in r.stderr


def test_check_missing_folder(tmp_path):
    r = _cli("check", tmp_path / "nope")
    assert r.returncode == 1 and "no such directory" in r.stderr


def test_folds_cli_writes_csv(tiny, tmp_path):
    out = tmp_path / "folds.csv"
    r = _cli("folds", tiny, "--n-folds", "3", "--out", out)
    assert r.returncode == 0, r.stderr
    folds = pd.read_csv(out, dtype=str)
    assert list(folds.columns) == ["image_id", "book_id", "fold"]
    assert folds.groupby("book_id")["fold"].nunique().max() == 1
    assert sorted(folds["fold"].unique()) == ["0", "1", "2"]


def test_check_real_sample_figures(sample):
    r = _cli("check", sample)
    assert r.returncode == 0, r.stderr
    for line in ("train pages: 5", "characters: 464", "classes: 179", "books: 1", "test pages: 19"):
        assert line in r.stdout


def test_check_says_a_box_at_2_62_is_out_of_range(tiny):
    """Defect 13: a box at 2**62 passed `data check` (x + w wrapped around in int64) and training
    took it; 10**20 was an OverflowError traceback. Both are one line: out of range."""
    train = pd.read_csv(tiny / "train.csv", keep_default_na=False)
    code = next(labels.split()[0] for labels in train["labels"] if labels)  # a class the data knows
    train.loc[0, "labels"] = f"{code} {2**62} 10 {2**62} 10 " + train.loc[0, "labels"]
    train.loc[1, "labels"] = f"{code} 100000000000000000000 10 10 10"
    train.to_csv(tiny / "train.csv", index=False)
    report = data.check_dataset(tiny, n_folds=3)
    said = [p for p in report.problems if "out of range" in p]
    assert not report.ok and len(said) == 2 and all("train.csv: row" in p for p in said)
