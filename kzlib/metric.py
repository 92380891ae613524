"""The competition's F1, exactly and fast, plus submission validation.

Semantics of the official metric: on each page, for each true box in order, the first unused
prediction (in submission order) of the same class whose point lies strictly inside the box is a
true positive and is used up; unmatched true boxes are false negatives, unused predictions false
positives. F1 is computed from the counts summed over all pages (0 when undefined).

The matching is vectorised: candidate (truth, prediction) pairs come from a sort on (page, class);
a truth whose candidates belong to no other truth is matched without any loop, and only the rare
truths that share a candidate prediction are resolved in order by a short loop. The result is
identical to the official per-box loop.

CLI::

    python -m kzlib.metric SUBMISSION_CSV SOLUTION_CSV
      -> last line: {"f1": ..., "precision": ..., "recall": ..., "tp": ..., "fp": ..., "fn": ...}
"""

from __future__ import annotations

import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from kzlib.cli import one_line_errors, parser
from kzlib.data import DataError, is_empty, read_labels_csv
from kzlib.io import write_csv_atomic

MAX_PREDICTIONS_PER_PAGE = 1200
_CODE_RE = re.compile(r"^U\+[0-9A-F]{4,6}$")


class SubmissionError(DataError):
    """An invalid submission; the message is one line naming the file."""


@dataclass(frozen=True)
class Flat:
    """Labels of many pages flattened: ``page[i]`` is the page index of item i."""

    page: np.ndarray  # int64 [N]
    code: np.ndarray  # str [N]
    values: np.ndarray  # float64 [N, F-1]
    n_pages: int


def flatten(labels: Sequence[object], fields: int, source: str = "labels") -> Flat:
    """Flatten label strings of ``fields`` tokens per item (5 for boxes, 3 for points).

    Fast path: one item per line through pandas' C parser; anything it cannot take cleanly goes
    through the plain tokenizer, which also names the page of a malformed string."""
    counts = np.zeros(len(labels), dtype=np.int64)
    lines = []
    for i, s in enumerate(labels):
        if not is_empty(s):
            s = s.strip()
            counts[i] = s.count("U+")
            lines.append(s.replace(" U+", "\nU+"))
    page = np.repeat(np.arange(len(labels), dtype=np.int64), counts)
    if not lines:
        return Flat(page, np.empty(0, dtype=object), np.empty((0, fields - 1)), len(labels))
    names = ["code"] + [f"v{k}" for k in range(1, fields)]
    try:
        df = pd.read_csv(io.StringIO("\n".join(lines)), sep=" ", header=None, names=names,
                         dtype={n: (str if n == "code" else np.float64) for n in names})
        values = df[names[1:]].to_numpy()
        if len(df) == counts.sum() and not np.isnan(values).any():
            return Flat(page, df["code"].to_numpy(dtype=object), values, len(labels))
    except (ValueError, pd.errors.ParserError):
        pass
    return _flatten_slow(labels, fields, source)


def _flatten_slow(labels: Sequence[object], fields: int, source: str) -> Flat:
    tokens: list[str] = []
    counts = np.zeros(len(labels), dtype=np.int64)
    for i, s in enumerate(labels):
        if is_empty(s):
            continue
        t = s.split()
        if len(t) % fields:
            raise DataError(f"{source}: page {i}: {len(t)} fields, not a multiple of {fields}")
        tokens += t
        counts[i] = len(t) // fields
    table = np.array(tokens, dtype=object).reshape(-1, fields)
    try:
        values = table[:, 1:].astype(np.float64)
    except ValueError as e:
        raise DataError(f"{source}: non-numeric coordinate ({e})") from None
    page = np.repeat(np.arange(len(labels), dtype=np.int64), counts)
    return Flat(page, table[:, 0], values, len(labels))


def match_counts(truth: Flat, preds: Flat) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-page (tp, fp, fn) of the official matching. ``truth`` values are x, y, w, h and
    ``preds`` values x, y; both flattened over the same pages in the same order."""
    n_pages = truth.n_pages
    nt, npred = len(truth.page), len(preds.page)
    truth_per_page = np.bincount(truth.page, minlength=n_pages)
    preds_per_page = np.bincount(preds.page, minlength=n_pages)
    matched = np.zeros(nt, dtype=bool)
    if nt and npred:
        code_id, uniques = pd.factorize(np.concatenate([truth.code, preds.code]))
        n_codes = len(uniques)
        t_key = truth.page * n_codes + code_id[:nt]
        p_key = preds.page * n_codes + code_id[nt:]
        order = np.argsort(p_key, kind="stable")  # by key, then submission order
        p_sorted = p_key[order]
        lo = np.searchsorted(p_sorted, t_key, side="left")
        hi = np.searchsorted(p_sorted, t_key, side="right")
        n_cand = hi - lo
        t_idx = np.repeat(np.arange(nt), n_cand)
        starts = np.repeat(lo - np.cumsum(n_cand) + n_cand, n_cand)
        p_idx = order[starts + np.arange(len(t_idx))]
        x0, y0 = truth.values[t_idx, 0], truth.values[t_idx, 1]
        x1, y1 = x0 + truth.values[t_idx, 2], y0 + truth.values[t_idx, 3]
        px, py = preds.values[p_idx, 0], preds.values[p_idx, 1]
        inside = (x0 < px) & (x1 > px) & (y0 < py) & (y1 > py)
        t_idx, p_idx = t_idx[inside], p_idx[inside]
        shared = np.bincount(p_idx, minlength=npred)[p_idx] > 1
        conflicted = np.bincount(t_idx, weights=shared, minlength=nt) > 0
        matched = (np.bincount(t_idx, minlength=nt) > 0) & ~conflicted
        # Truths that share a candidate: resolve in truth order, first unused prediction wins.
        # Their candidates that are exclusive cannot be taken by anyone else, so this is exact.
        sel = conflicted[t_idx]
        used: set[int] = set()
        current = -1
        for t, p in zip(t_idx[sel].tolist(), p_idx[sel].tolist()):
            if t == current:
                continue
            if p not in used:
                used.add(p)
                matched[t] = True
                current = t
    tp = np.bincount(truth.page[matched], minlength=n_pages)
    return tp, preds_per_page - tp, truth_per_page - tp


def flat_from_arrays(pages: Sequence[tuple[Sequence[str], np.ndarray]], width: int) -> Flat:
    """Flatten per-page (codes, values [N, width]) arrays without going through strings."""
    counts = np.array([len(c) for c, _ in pages], dtype=np.int64)
    page = np.repeat(np.arange(len(pages), dtype=np.int64), counts)
    code = np.concatenate([np.asarray(c, dtype=object) for c, _ in pages]) if len(page) else np.empty(0, object)
    values = (np.concatenate([np.asarray(v, dtype=np.float64).reshape(-1, width) for _, v in pages])
              if len(page) else np.empty((0, width)))
    return Flat(page, code, values, len(pages))


def score_arrays(truth: Sequence[tuple[Sequence[str], np.ndarray]],
                 preds: Sequence[tuple[Sequence[str], np.ndarray]]) -> dict:
    """F1 over pages given as arrays: truth (codes, boxes x y w h), preds (codes, points x y).
    For a class-agnostic score pass the same code everywhere."""
    tp, fp, fn = match_counts(flat_from_arrays(truth, 4), flat_from_arrays(preds, 2))
    return f1_from_counts(tp.sum(), fp.sum(), fn.sum())


def f1_from_counts(tp: int, fp: int, fn: int) -> dict:
    tp, fp, fn = int(tp), int(fp), int(fn)
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision > 0 and recall > 0 else 0.0
    return {"f1": f1, "precision": precision, "recall": recall, "tp": tp, "fp": fp, "fn": fn}


def score(submission: pd.DataFrame, solution: pd.DataFrame) -> dict:
    """Competition F1 of ``submission`` (``image_id,labels`` with points) against ``solution``
    (``image_id,labels`` with boxes). Pages of the solution missing from the submission count as
    empty predictions; submission pages not in the solution are ignored."""
    sub = dict(zip(submission["image_id"], submission["labels"]))
    ids = solution["image_id"].tolist()
    truth = flatten(solution["labels"].tolist(), 5, "solution")
    preds = flatten([sub.get(i) for i in ids], 3, "submission")
    tp, fp, fn = match_counts(truth, preds)
    return f1_from_counts(tp.sum(), fp.sum(), fn.sum())


# ----------------------------------------------------------------------------------------------
# submissions


def validate_submission(
    df: pd.DataFrame,
    expected_ids: Iterable[str] | None = None,
    *,
    max_per_page: int = MAX_PREDICTIONS_PER_PAGE,
) -> list[str]:
    """Problems of a submission frame (empty list = valid): header ``image_id,labels``, no
    duplicate ids, every expected id present and no other, at most ``max_per_page`` predictions
    a page, well-formed ``U+XXXX x y`` triples."""
    problems: list[str] = []
    if list(df.columns) != ["image_id", "labels"]:
        return [f"header is {','.join(map(str, df.columns))!r}, expected 'image_id,labels'"]
    ids = df["image_id"].astype(str)
    dups = ids[ids.duplicated()].unique().tolist()
    if dups:
        problems.append(f"duplicate image ids: {_names(dups)}")
    if expected_ids is not None:
        expected = list(expected_ids)
        present = set(ids)
        missing = [i for i in expected if i not in present]
        if missing:
            problems.append(f"missing image ids: {_names(missing)}")
        extra = sorted(present - set(expected))
        if extra:
            problems.append(f"unexpected image ids: {_names(extra)}")
    for row, (image_id, labels) in enumerate(zip(ids, df["labels"]), start=2):
        if is_empty(labels):
            continue
        tokens = str(labels).split()
        where = f"row {row} ({image_id})"
        if len(tokens) % 3:
            problems.append(f"{where}: {len(tokens)} fields, not a multiple of 3 (U+XXXX x y)")
            continue
        if len(tokens) // 3 > max_per_page:
            problems.append(f"{where}: {len(tokens) // 3} predictions, more than {max_per_page}")
        bad = next((c for c in tokens[0::3] if not _CODE_RE.match(c)), None)
        if bad is not None:
            problems.append(f"{where}: bad class code {bad!r}")
        bad = next((v for v in tokens[1::3] + tokens[2::3] if not _is_finite(v)), None)
        if bad is not None:
            problems.append(f"{where}: non-numeric coordinate {bad!r}")
    return problems


def _is_finite(token: str) -> bool:
    try:
        return bool(np.isfinite(float(token)))
    except ValueError:
        return False


def _names(items: list[str], k: int = 5) -> str:
    shown = ", ".join(items[:k])
    return f"{shown} (+{len(items) - k} more)" if len(items) > k else shown


def read_submission(path: str | Path, expected_ids: Iterable[str] | None = None) -> pd.DataFrame:
    """Read and validate a submission CSV; raises SubmissionError (one line) when invalid."""
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, dtype=str)  # "nan" and "" both mean no labels, as in the official metric
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SubmissionError(f"{path}: unreadable CSV ({str(e).splitlines()[0]})") from None
    problems = validate_submission(df, expected_ids)
    if problems:
        raise SubmissionError(f"{path}: " + "; ".join(problems[:5]) + (
            f"; (+{len(problems) - 5} more problems)" if len(problems) > 5 else ""))
    return df


def labels_from_rows(codes: Sequence[str], numbers: np.ndarray, image_ids: Sequence[str]) -> pd.DataFrame:
    """``image_id,labels`` rows (``U+XXXX n1 n2 ...`` per item) from one row per item and its
    integers (points for a submission, boxes for a labels file); pages keep the order they first
    appear in, items their order within a page."""
    numbers = np.asarray(numbers, dtype=np.int64)
    if len(numbers) == 0:
        return pd.DataFrame({"image_id": [], "labels": []})
    tokens = pd.Series(np.asarray(codes, dtype=object))
    for column in numbers.T:
        tokens = tokens + " " + pd.Series(column).astype(str)
    labels = tokens.groupby(np.asarray(image_ids, dtype=object), sort=False).agg(" ".join)
    return pd.DataFrame({"image_id": labels.index.astype(str), "labels": labels.to_numpy()})


def submission_from_points(codes: Sequence[str], points: np.ndarray, image_ids: Sequence[str]) -> pd.DataFrame:
    """A submission (``U+XXXX cx cy`` ...) from one row per prediction."""
    points = np.round(np.asarray(points, dtype=np.float64).reshape(-1, 2))
    return labels_from_rows(codes, points, image_ids)


def score_on_pages(submission: pd.DataFrame, solution: pd.DataFrame, image_ids: Iterable[str]) -> dict:
    """``score`` restricted to ``image_ids``; a page the submission lacks counts as empty."""
    ids = set(image_ids)
    sol = solution[solution["image_id"].isin(ids)]
    return score(sol[["image_id"]].merge(submission, on="image_id", how="left"), sol)


def write_submission(df: pd.DataFrame, path: str | Path, expected_ids: Iterable[str]) -> None:
    """Validate, then write atomically. Expected pages absent from ``df`` are written empty."""
    expected = list(expected_ids)
    labels = dict(zip(df["image_id"], df["labels"]))
    out = pd.DataFrame({"image_id": expected, "labels": [labels.get(i) for i in expected]})
    extra = sorted(set(df["image_id"]) - set(expected))
    problems = validate_submission(out, expected) + (
        [f"unexpected image ids: {_names(extra)}"] if extra else [])
    if problems:
        raise SubmissionError(f"{path}: not written: " + "; ".join(problems[:5]))
    write_csv_atomic(out, path)


@one_line_errors(DataError)
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("python -m kzlib metric", "Score a submission with the competition F1.")
    p.add_argument("submission", type=Path, help="image_id,labels with U+XXXX cx cy triples")
    p.add_argument("solution", type=Path, help="image_id,labels with U+XXXX x y w h (train.csv format)")
    args = p.parse_args(argv)
    solution = read_labels_csv(args.solution)
    sub = read_submission(args.submission, solution["image_id"].tolist())
    result = score(sub, solution)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
