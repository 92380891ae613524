import json
import subprocess
import sys

import pytest

from kzlib.data import read_labels_csv
from kzlib.detailed import blend, write_detailed
from kzlib.pseudolabel import labels_file, report, select

from helpers import A, B, C, detailed


def test_pseudolabel_thresholds_and_labels_file():
    df = detailed([("p_1", 0, [(A, 12), (B, 6)]),     # gap 6, second 6: kept
                   ("p_1", 40, [(A, 12), (B, 8)]),    # gap 4: dropped
                   ("p_2", 0, [(B, 25), (A, 11)]),    # second 11 > 10: dropped
                   ("p_2", 40, [("seg_fp", 20), (A, 1)]),  # seg_fp: kept (as upstream) unless asked
                   ("p_3", 0, [(C, 9), (A, 3.9)])],   # gap 5.1: kept
                  true=[A, A, B, "seg_fp", B])
    assert select(df, min_gap=5, max_second_score=10).tolist() == [True, False, False, True, True]
    keep = select(df, 5, 10, drop_seg_fp=True)
    assert keep.tolist() == [True, False, False, False, True]
    labels = labels_file(df[keep])
    assert labels.to_dict("records") == [{"image_id": "p_1", "labels": f"{A} 0 10 20 20"},
                                         {"image_id": "p_3", "labels": f"{C} 0 10 20 20"}]
    r = report(df, keep)
    assert r["kept"] == 2 and r["kept_fraction"] == pytest.approx(0.4) and r["kept_accuracy"] == pytest.approx(0.5)


def test_pseudolabel_cli(tmp_path):
    df = detailed([("p_1", 0, [(A, 12), (B, 6)]), ("p_1", 40, [(A, 12), (B, 8)])])
    write_detailed(df, tmp_path / "m1.csv.gz")
    write_detailed(df, tmp_path / "m2.csv.gz")
    out = subprocess.run([sys.executable, "-m", "kzlib.pseudolabel", str(tmp_path / "m1.csv.gz"), str(tmp_path / "m2.csv.gz"),
                          "--out", str(tmp_path / "pseudo.csv")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kept"] == 1
    assert read_labels_csv(tmp_path / "pseudo.csv")["labels"].tolist() == [f"{A} 0 10 20 20"]
    write_detailed(df.iloc[::-1], tmp_path / "m3.csv.gz")
    out = subprocess.run([sys.executable, "-m", "kzlib.pseudolabel", str(tmp_path / "m1.csv.gz"), str(tmp_path / "m3.csv.gz"),
                          "--out", str(tmp_path / "p2.csv")], capture_output=True, text=True)
    assert out.returncode == 1 and "m3.csv.gz: row 2" in out.stderr and not (tmp_path / "p2.csv").exists()


def test_nothing_to_keep_from_files_without_boxes():
    empty = blend([detailed([]), detailed([])])
    assert report(empty, select(empty)) == {"boxes": 0, "kept": 0, "kept_fraction": 0.0, "pages": 0}
