"""The competition's files, read right: the dataset folder, labels and classes, and a checker of
the whole folder (images are read by ``kzlib.images``).

A dataset folder has the Kaggle layout (``train.csv``, ``unicode_translation.csv``,
``sample_submission.csv``, ``train_images/``, ``test_images/``); the read-only Kaggle mount
``/kaggle/input/kuzushiji-recognition`` works as it is. Nothing is read at import time.

CLI::

    python -m kzlib data check DATA_DIR [--n-folds 5]
    python -m kzlib data folds DATA_DIR [--n-folds 5] [--out folds.csv]

(``python -m kzlib kaggle download DATA_DIR`` gets the competition through the Kaggle API.)
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from kzlib.cli import one_line_errors, parser
from kzlib.errors import DataError
from kzlib.folds import make_folds
from kzlib.images import image_size, read_image
from kzlib.io import write_csv_atomic

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LABEL_FIELDS = 5  # U+XXXX x y w h
MAX_COORD = 2**31 - 1  # pixels: any coordinate, width or height of a box beyond it is out of range
_CODE_RE = re.compile(r"^U\+[0-9A-F]{4,6}$")


SEG_FP = "seg_fp"  # the class of a detected box that matches no true character


@dataclass(frozen=True)
class DataDir:
    """Paths of a dataset folder in the Kaggle layout."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def train_csv(self) -> Path:
        return self.root / "train.csv"

    @property
    def unicode_csv(self) -> Path:
        return self.root / "unicode_translation.csv"

    @property
    def sample_submission_csv(self) -> Path:
        return self.root / "sample_submission.csv"

    @property
    def train_images(self) -> Path:
        return self.root / "train_images"

    @property
    def test_images(self) -> Path:
        return self.root / "test_images"

    def image_path(self, image_id: str, split: str = "train") -> Path:
        """Path of a page image; ``split`` is ``train`` or ``test``. JPEG first, then PNG."""
        folder = {"train": self.train_images, "test": self.test_images}[split]
        for ext in IMAGE_EXTENSIONS:
            path = folder / f"{image_id}{ext}"
            if path.exists():
                return path
        return folder / f"{image_id}.jpg"

    def require(self, *names: str) -> None:
        """Raise DataError unless each named path (attribute of this class) exists."""
        if not self.root.is_dir():
            raise DataError(f"{self.root}: not a dataset folder (no such directory)")
        for name in names:
            path = getattr(self, name)
            if not path.exists():
                raise DataError(f"{path}: missing from the dataset folder")


# ----------------------------------------------------------------------------------------------
# classes and labels


def read_classes(path: str | Path) -> list[str]:
    """The class codes (``U+XXXX``) of ``unicode_translation.csv``, in file order."""
    path = Path(path)
    df = _read_csv(path, required=("Unicode",))
    codes = df["Unicode"].astype(str).tolist()
    bad = [i for i, c in enumerate(codes) if not _CODE_RE.match(c)]
    if bad:
        raise DataError(f"{path}: row {bad[0] + 2}: bad class code {codes[bad[0]]!r}")
    return codes


def read_labels_csv(path: str | Path) -> pd.DataFrame:
    """A labels file in the ``train.csv`` format (``image_id,labels``); NaN labels = no characters."""
    path = Path(path)
    df = _read_csv(path, required=("image_id", "labels"))
    dup = df["image_id"].duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup.to_numpy())[0])
        raise DataError(f"{path}: row {row + 2}: duplicate image_id {df['image_id'].iloc[row]!r}")
    return df


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, dtype=str)  # "nan" and "" both mean no labels, as in the official metric
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise DataError(f"{path}: unreadable CSV ({str(e).splitlines()[0]})") from None
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)} (header: {','.join(df.columns)})")
    return df


def is_empty(labels: object) -> bool:
    """True for a page without characters: NaN/None or a blank string."""
    return labels is None or (isinstance(labels, float) and np.isnan(labels)) or (
        isinstance(labels, str) and not labels.strip()
    )


def parse_labels(
    labels: object,
    *,
    image_id: str = "?",
    source: str | Path = "labels",
    classes: set[str] | None = None,
    allow_seg_fp: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Parse ``U+XXXX x y w h ...`` into (codes [N] str, boxes [N, 4] int64 as x, y, w, h).

    Empty/NaN means no characters. A malformed string raises DataError naming ``source`` and
    ``image_id``: count not a multiple of 5, a non-integer coordinate, a bad code, a class not in
    ``classes`` (when given), or a non-positive width/height. ``allow_seg_fp`` also accepts the
    ``seg_fp`` class (pseudolabel files keep confident detector false positives).
    """
    if is_empty(labels):
        return np.empty(0, dtype=object), np.empty((0, 4), dtype=np.int64)
    where = f"{source}: image {image_id}"
    tokens = str(labels).split()
    if len(tokens) % LABEL_FIELDS:
        raise DataError(f"{where}: {len(tokens)} label fields, not a multiple of {LABEL_FIELDS}")
    table = np.array(tokens, dtype=object).reshape(-1, LABEL_FIELDS)
    codes = table[:, 0]
    try:
        values = [int(t) for t in table[:, 1:].ravel()]
    except ValueError:
        bad = next(t for t in table[:, 1:].ravel() if not _is_int(t))
        raise DataError(f"{where}: non-integer coordinate {bad!r}") from None
    out_of_range = next((v for v in values if not -MAX_COORD <= v <= MAX_COORD), None)
    if out_of_range is not None:  # 1e20 overflows int64; 2**62 fits, but x + w wraps around
        raise DataError(f"{where}: coordinate {out_of_range} out of range (a page's pixels are within "
                        f"+-{MAX_COORD:,})")
    boxes = np.array(values, dtype=np.int64).reshape(-1, 4)
    bad_code = next((c for c in codes if not _CODE_RE.match(c) and not (allow_seg_fp and c == SEG_FP)), None)
    if bad_code is not None:
        raise DataError(f"{where}: bad class code {bad_code!r} (expected U+XXXX)")
    if classes is not None:
        unknown = next((c for c in codes if c not in classes), None)
        if unknown is not None:
            raise DataError(f"{where}: class {unknown} is not in unicode_translation.csv")
    if (boxes[:, 2:] <= 0).any():
        i = int(np.flatnonzero((boxes[:, 2:] <= 0).any(axis=1))[0])
        raise DataError(f"{where}: character {i} ({codes[i]}) has a non-positive width or height")
    return codes, boxes


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def format_labels(codes: Iterable[str], boxes: np.ndarray) -> str:
    """Inverse of :func:`parse_labels` (an empty page gives an empty string)."""
    boxes = np.asarray(boxes).reshape(-1, 4)
    return " ".join(
        f"{c} {int(x)} {int(y)} {int(w)} {int(h)}" for c, (x, y, w, h) in zip(codes, boxes)
    )


def labels_table(
    df: pd.DataFrame, *, source: str | Path = "labels", classes: set[str] | None = None
) -> pd.DataFrame:
    """One row per character (``image_id, code, x, y, w, h``) from an ``image_id,labels`` frame."""
    parts = []
    for image_id, labels in zip(df["image_id"], df["labels"]):
        codes, boxes = parse_labels(labels, image_id=image_id, source=source, classes=classes)
        part = pd.DataFrame(boxes, columns=["x", "y", "w", "h"])
        part.insert(0, "code", codes.astype(str))
        part.insert(0, "image_id", image_id)
        parts.append(part)
    if not parts:
        return pd.DataFrame(
            {"image_id": pd.Series(dtype=str), "code": pd.Series(dtype=str)}
            | {k: pd.Series(dtype=np.int64) for k in "xywh"}
        )
    return pd.concat(parts, ignore_index=True)


def code_to_char(code: str) -> str:
    """``U+3042`` -> ``あ``."""
    return chr(int(code[2:], 16))


def char_to_code(char: str) -> str:
    """``あ`` -> ``U+3042``."""
    return f"U+{ord(char):04X}"


# ----------------------------------------------------------------------------------------------
# whole-folder check


@dataclass
class CheckReport:
    summary: dict
    problems: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems


def check_dataset(root: str | Path, n_folds: int = 5, progress: bool = False) -> CheckReport:
    """Validate a dataset folder: every label parses, every class is known, every image is present
    and decodable, every box lies inside its image. Collects every problem (one line each)."""
    d = DataDir(Path(root))
    problems: list[str] = []
    summary: dict = {}
    if not d.root.is_dir():
        return CheckReport(summary, [f"{d.root}: no such directory"])
    for name in ("train_csv", "unicode_csv", "sample_submission_csv", "train_images", "test_images"):
        if not getattr(d, name).exists():
            problems.append(f"{getattr(d, name)}: missing")

    classes: set[str] | None = None
    if d.unicode_csv.exists():
        try:
            classes = set(read_classes(d.unicode_csv))
        except DataError as e:
            problems.append(str(e))

    train = _try(lambda: read_labels_csv(d.train_csv), problems) if d.train_csv.exists() else None
    test_ids: list[str] = []
    if d.sample_submission_csv.exists():
        sub = _try(lambda: read_labels_csv(d.sample_submission_csv), problems)
        if sub is not None:
            test_ids = sub["image_id"].tolist()

    n_chars, used = 0, set()
    train_pages: list[tuple[str, np.ndarray]] = []
    if train is not None:
        for row, (image_id, labels) in enumerate(zip(train["image_id"], train["labels"]), start=2):
            try:
                codes, boxes = parse_labels(
                    labels, image_id=image_id, source=f"{d.train_csv}: row {row}", classes=classes
                )
            except DataError as e:
                problems.append(str(e))
                continue
            n_chars += len(codes)
            used.update(codes.tolist())
            train_pages.append((image_id, boxes))
        summary["train pages"] = len(train)
        if len(train) == 0:
            problems.append(f"{d.train_csv}: no pages (a header only); nothing to train on")
        summary["characters"] = n_chars
        summary["classes"] = len(used)
        folds = make_folds(train["image_id"], n_folds)
        summary["books"] = int(folds["book_id"].nunique())
    summary["test pages"] = len(test_ids)

    jobs = [(i, b, "train") for i, b in train_pages] + [(i, None, "test") for i in test_ids]
    for image_id, boxes, split in tqdm(jobs, desc="images", disable=not progress, leave=False):
        path = d.image_path(image_id, split)
        try:
            w, h = image_size(path)
            read_image(path, height=max(1, h // 8))  # decodable (reduced decode: fast)
        except DataError as e:
            problems.append(str(e))
            continue
        if boxes is not None and len(boxes):
            outside = (boxes[:, 0] < 0) | (boxes[:, 1] < 0) | (boxes[:, 0] + boxes[:, 2] > w) | (
                boxes[:, 1] + boxes[:, 3] > h
            )
            for k in np.flatnonzero(outside):
                x, y, bw, bh = boxes[k].tolist()
                problems.append(
                    f"{d.train_csv}: image {image_id}: box {k} ({x} {y} {bw} {bh}) "
                    f"outside the {w}x{h} image"
                )
    if train is not None:
        counts = folds.groupby("fold").size().reindex(range(n_folds), fill_value=0)
        summary["pages per fold"] = counts.tolist()
    return CheckReport(summary, problems)


def _try(fn, problems: list[str]):
    try:
        return fn()
    except DataError as e:
        problems.append(str(e))
        return None


# ----------------------------------------------------------------------------------------------
# CLI


def require_valid(data: Path, n_folds: int) -> None:
    """Stop with one ``DataError`` listing the problems (20 at most) unless the folder passes ``check``."""
    report = check_dataset(data, n_folds)
    if not report.ok:
        lines = "\n".join(f"  - {p}" for p in report.problems[:20])
        more = f"\n  ... and {len(report.problems) - 20} more" if len(report.problems) > 20 else ""
        raise DataError(f"{data}: the data folder fails `python -m kzlib data check`:\n{lines}{more}")


def print_report(report: CheckReport) -> int:
    """A check's summary on stdout and its problems on stderr; the exit code (1 with problems)."""
    for key, value in report.summary.items():
        print(f"{key}: {value}")
    if report.problems:
        print(f"{len(report.problems)} problem(s):", file=sys.stderr)
        for line in report.problems:
            print(line, file=sys.stderr)
        return 1
    print("ok")
    return 0


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("python -m kzlib data", __doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("check", help="validate a dataset folder and print a summary")
    c.add_argument("data_dir", type=Path)
    c.add_argument("--n-folds", type=int, default=5)
    f = sub.add_parser("folds", help="write/print image_id,book_id,fold")
    f.add_argument("data_dir", type=Path)
    f.add_argument("--n-folds", type=int, default=5)
    f.add_argument("--out", type=Path, help="CSV to write (default: print to stdout)")
    args = p.parse_args(argv)
    if args.cmd == "check":
        return print_report(check_dataset(args.data_dir, args.n_folds, progress=sys.stderr.isatty()))
    train = read_labels_csv(DataDir(args.data_dir).train_csv)
    folds = make_folds(train["image_id"], args.n_folds)
    if args.out:
        write_csv_atomic(folds, args.out)
        print(f"wrote {len(folds)} pages, {folds['book_id'].nunique()} books to {args.out}")
    else:
        folds.to_csv(sys.stdout, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
