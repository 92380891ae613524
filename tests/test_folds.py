import numpy as np
import pandas as pd
import pytest

from kzlib import folds


@pytest.mark.parametrize(
    "image_id, book",
    [
        ("100241706_00004_2", "100241706"),
        ("200014685-00012_1", "200014685"),
        ("umgy001-028", "umgy"),
        ("hnsd006-026", "hnsd"),
        ("brsk001-001", "brsk"),
        ("200003076_00034_2", "200003076"),
    ],
)
def test_book_id(image_id, book):
    assert folds.book_id(image_id) == book


def test_folds_by_book_sorted_by_page_count():
    ids = [f"big_{i}" for i in range(5)] + [f"mid_{i}" for i in range(3)] + ["small_0", "tiny_0"]
    f = folds.make_folds(ids, n_folds=3)
    fold_of = f.groupby("book_id")["fold"].agg(set)
    assert all(len(s) == 1 for s in fold_of)  # no book in two folds
    # as upstream, fewest pages first (ties by id): small(1) -> 0, tiny(1) -> 1, mid(3) -> 2, big(5) -> 0
    assert {b: s.pop() for b, s in fold_of.items()} == {"small": 0, "tiny": 1, "mid": 2, "big": 0}
    assert f["image_id"].tolist() == ids  # input order kept


def test_folds_deterministic_and_independent_of_order():
    rng = np.random.default_rng(0)
    ids = [f"{b}_{p:05d}_1" for b in range(100, 140) for p in range(int(rng.integers(1, 30)))]
    a = folds.make_folds(ids, 5)
    b = folds.make_folds(list(reversed(ids)), 5).set_index("image_id").loc[ids].reset_index()
    pd.testing.assert_frame_equal(a, b)
    assert a.groupby("book_id")["fold"].nunique().max() == 1
    sizes = a.groupby("fold").size()
    assert sizes.max() - sizes.min() < 30  # big books spread over folds


def test_folds_by_book_or_by_page():
    ids = [f"{b}_{p:05d}_1" for b in ("100", "200", "300") for p in range(1, 3 + (b == "100"))]
    held, mode = folds.fold_pages(ids, 3)
    assert mode == "book" and sorted(map(len, held)) == [2, 2, 3] and all(len({i[:3] for i in f}) == 1 for f in held)
    one_book = [f"100_{p:05d}_1" for p in range(1, 6)]
    held, mode = folds.fold_pages(one_book, 2)
    assert mode == "page" and held == [one_book[0::2], one_book[1::2]]
    assert folds.held_out(one_book, 1, 2) == (one_book[1::2], "page")
    with pytest.raises(ValueError, match="cannot fill"):
        folds.fold_pages(one_book[:1], 2)
