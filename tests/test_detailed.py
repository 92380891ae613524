import pytest

from kzlib.data import DataError
from kzlib.detailed import DETAILED_COLUMNS, blend, read_detailed, write_detailed

from helpers import A, B, C, detailed


def test_blend_counts_missing_classes_as_zero():
    m1 = detailed([("p_1", 0, [(A, 8), (B, 2)]), ("p_1", 40, [(C, 6), ("seg_fp", 1)])])
    m2 = detailed([("p_1", 0, [(B, 9), (C, 1)]), ("p_1", 40, [(C, 4), (A, 3)])])
    out = blend([m1, m2], top_k=3)
    # box 1: A (8+0)/2=4, B (2+9)/2=5.5, C (0+1)/2=0.5 ; box 2: C 5, A 1.5, seg_fp 0.5
    assert out["top_k_classes"].tolist() == [f"{B} {A} {C}", f"{C} {A} seg_fp"]
    assert out["top_k_logits"].tolist() == ["5.5000 4.0000 0.5000", "5.0000 1.5000 0.5000"]
    assert out["pred"].tolist() == [B, C]


def test_blend_of_files_without_boxes(tmp_path):
    """A fold whose held-out pages got no boxes (the real sample's detector after a few epochs)."""
    for name in ("a", "b"):
        write_detailed(detailed([]), tmp_path / f"{name}.csv.gz")
    frames = [read_detailed(tmp_path / f"{n}.csv.gz") for n in ("a", "b")]
    out = blend(frames)
    assert len(out) == 0 and list(out.columns) == DETAILED_COLUMNS


def test_blend_refuses_different_boxes():
    m1 = detailed([("p_1", 0, [(A, 8)]), ("p_1", 40, [(B, 6)])])
    swapped = m1.iloc[::-1].reset_index(drop=True)
    with pytest.raises(DataError, match="row 2: box differs"):
        blend([m1, swapped], names=["a.csv.gz", "b.csv.gz"])
    with pytest.raises(DataError, match="1 boxes, but a.csv.gz has 2"):
        blend([m1, m1.iloc[:1]], names=["a.csv.gz", "b.csv.gz"])
