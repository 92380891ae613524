"""Folds: which training pages each fold holds out. One home for the by-book split of the
original solution and the by-page fallback for data with fewer books than folds (the real sample
is one book), used by every stage CLI and the runner alike."""

from __future__ import annotations

import re
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from kzlib.errors import DataError

_LETTERS_DIGITS_RE = re.compile(r"^([A-Za-z]+)\d+$")


def book_id(image_id: str) -> str:
    """The book of a page: the part before the first ``_`` or ``-``; for ids like
    ``umgy001-028`` (letters then digits) the leading letters."""
    head = re.split(r"[_-]", image_id, maxsplit=1)[0]
    m = _LETTERS_DIGITS_RE.match(head)
    return m.group(1) if m else head


def make_folds(image_ids: Iterable[str], n_folds: int = 5) -> pd.DataFrame:
    """Split pages into folds by book, as the original solution does: books sorted by page count
    (fewest pages first, ties by book id), book i goes to fold i mod n_folds. Returns
    ``image_id, book_id, fold`` in input order."""
    if n_folds < 1:
        raise ValueError(f"n_folds must be >= 1, got {n_folds}")
    ids = pd.Series(list(image_ids), dtype=str)
    books = ids.map(book_id)
    counts = books.value_counts()
    order = sorted(counts.index, key=lambda b: (counts[b], b))
    fold_of_book = {b: i % n_folds for i, b in enumerate(order)}
    return pd.DataFrame(
        {"image_id": ids, "book_id": books, "fold": books.map(fold_of_book).astype(np.int64)}
    )


def fold_pages(ids: Sequence[str], n_folds: int) -> tuple[list[list[str]], str]:
    """The held-out pages of each fold, and how they were made: ``book`` (``make_folds``), or
    ``page`` when there are fewer books than folds (page i of the sorted ids goes to fold i mod
    n_folds)."""
    ids = list(ids)
    if len({book_id(i) for i in ids}) >= n_folds:
        f = make_folds(ids, n_folds)
        return [f.loc[f["fold"] == k, "image_id"].tolist() for k in range(n_folds)], "book"
    if len(ids) < n_folds:
        raise DataError(f"{len(ids)} labelled pages cannot fill {n_folds} folds")
    ordered = sorted(ids)
    return [ordered[k::n_folds] for k in range(n_folds)], "page"


def held_out(ids: Sequence[str], fold: int, n_folds: int, source: object = "train.csv") -> tuple[list[str], str]:
    """The pages fold ``fold`` holds out, and the split's mode (``book`` or ``page``)."""
    if not 0 <= fold < n_folds:
        raise DataError(f"fold {fold} is outside 0..{n_folds - 1}")
    folds, mode = fold_pages(ids, n_folds)
    if not folds[fold]:
        raise DataError(f"{source}: fold {fold} has no pages; pass --val-images to choose held-out pages")
    return folds[fold], mode
