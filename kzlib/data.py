"""The competition's files, read right: labels, classes, book folds, images, and a dataset checker.

A dataset folder has the Kaggle layout (``train.csv``, ``unicode_translation.csv``,
``sample_submission.csv``, ``train_images/``, ``test_images/``); the read-only Kaggle mount
``/kaggle/input/kuzushiji-recognition`` works as it is. Nothing is read at import time.

CLI::

    python -m kzlib.data check DATA_DIR [--n-folds 5]
    python -m kzlib.data folds DATA_DIR [--n-folds 5] [--out folds.csv]
    python -m kzlib.data download DATA_DIR [--keep-archive]   (the competition, via the Kaggle API)
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

import cv2
import numpy as np
import pandas as pd
from PIL import Image

from kzlib.cli import one_line_errors
from kzlib.errors import DataError
from kzlib.folds import make_folds


KAGGLE_DATA_DIR = Path("/kaggle/input/kuzushiji-recognition")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
LABEL_FIELDS = 5  # U+XXXX x y w h
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
        boxes = np.array([int(t) for t in table[:, 1:].ravel()], dtype=np.int64).reshape(-1, 4)
    except ValueError:
        bad = next(t for t in table[:, 1:].ravel() if not _is_int(t))
        raise DataError(f"{where}: non-integer coordinate {bad!r}") from None
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
# books and folds


# ----------------------------------------------------------------------------------------------
# images


class ImageError(DataError):
    """A missing, corrupt or truncated image; the message names the file."""


def image_size(path: str | Path) -> tuple[int, int]:
    """(width, height) from the file header, without decoding the pixels."""
    with _open_header(Path(path)) as im:
        return im.size


def read_image(path: str | Path, height: int | None = None, min_height: int | None = None) -> np.ndarray:
    """Read a page as RGB uint8 [H, W, 3]; grayscale, RGBA (composited on white), 16-bit and PNG
    handled. With ``height``, the result is resized to exactly that height (aspect kept); when
    that is at most half the original, JPEGs use OpenCV's reduced decode (1/2, 1/4, 1/8) first.
    With ``min_height`` instead, the page is only decoded at the strongest JPEG reduction that
    keeps at least that many rows, and not resized (callers that crop before resizing).
    """
    path = Path(path)
    if _prefetched is not None:
        img = _prefetched.pop((str(path), height, min_height), None)
        if img is not None:
            return img
    with _open_header(path) as im:
        (w0, h0), fmt, mode = im.size, im.format, im.mode
    factor = 1
    target = height if height is not None else min_height
    if target is not None:
        if target <= 0:
            raise ValueError(f"height must be positive, got {target}")
        factor = next((f for f in (8, 4, 2) if h0 >= f * target), 1)
    simple = fmt == "JPEG" and mode in ("RGB", "L", "CMYK")
    if simple:
        flags = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}[factor]
    else:
        flags = cv2.IMREAD_UNCHANGED
    img, messages = _imread_checked(path, flags | cv2.IMREAD_IGNORE_ORIENTATION)
    damaged = [m for m in messages if any(w in m for w in _DAMAGE_WORDS)]
    if damaged:
        raise ImageError(f"{path}: damaged image ({damaged[0].strip()})")
    if img is None:
        raise ImageError(f"{path}: cannot decode image")
    img = _to_rgb8(img)
    if height is not None and img.shape[0] != height:
        width = max(1, round(w0 * height / h0))
        interp = cv2.INTER_AREA if height < img.shape[0] else cv2.INTER_LINEAR
        img = cv2.resize(img, (width, height), interpolation=interp)
    return img


def max_pixels() -> int:
    """Pages larger than this many pixels are refused (``$KZLIB_MAX_PIXELS``; real scans are ~10 M)."""
    return int(os.environ.get("KZLIB_MAX_PIXELS", 200_000_000))


_PILLOW_LIMIT = threading.Lock()  # Image.MAX_IMAGE_PIXELS is process-wide; read's decoder thread opens pages too


def _open_header(path: Path) -> Image.Image:
    if not path.is_file():
        raise ImageError(f"{path}: no such image file")
    with _PILLOW_LIMIT:  # Pillow's own bomb check off while the header is read: the kit's limit follows
        saved, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            im = Image.open(path)
        except (OSError, SyntaxError, ValueError) as e:
            raise ImageError(f"{path}: not a readable image ({e})") from None
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    w, h = im.size
    if w * h > max_pixels():
        im.close()
        raise ImageError(f"{path}: {w}x{h} = {w * h:,} pixels, more than the limit of {max_pixels():,} "
                         "($KZLIB_MAX_PIXELS); is this a page scan?")
    return im


# libjpeg's warnings for data it could not decode (it decodes on, filling the rest with grey)
_DAMAGE_WORDS = ("Corrupt JPEG data", "Premature end of JPEG", "JPEG datastream contains no image",
                 "Invalid JPEG file structure", "Bogus", "Unsupported marker")
_capture = None
_capture_lock = threading.Lock()  # the C-level stderr is one per process
_prefetched: dict | None = None   # (path, height, min_height) -> image, filled by ``prefetch``


@contextmanager
def prefetch_images():
    """Inside this block, ``prefetch(path, heights)`` decodes pages in a background thread (OpenCV
    releases the GIL) and ``read_image`` takes them from there: decoding overlaps inference, and
    the images are exactly those ``read_image`` would have made. At most the pages asked for ahead
    are held."""
    global _prefetched
    from concurrent.futures import ThreadPoolExecutor

    _prefetched = {}
    pool = ThreadPoolExecutor(1, thread_name_prefix="kzlib-decode")

    def work(path: Path, heights):
        for h in heights:
            try:
                img = read_image(path, height=h)
            except Exception:  # the reader will meet the error itself, on its own thread
                return
            if _prefetched is not None:
                _prefetched[(str(path), h, None)] = img

    def ask(path: Path, heights) -> None:
        pool.submit(work, Path(path), list(heights))

    try:
        yield ask
    finally:
        pool.shutdown(wait=True)
        _prefetched = None


def _imread_checked(path: Path, flags: int) -> tuple[np.ndarray | None, list[str]]:
    """``cv2.imread`` with what libjpeg writes to the C-level stderr captured: a JPEG with damaged
    data (a zeroed block, a truncated file) decodes without an error, and only these warnings
    tell. Valid files with bytes after the end marker decode without warnings."""
    global _capture
    with _capture_lock:
        if _capture is None:
            _capture = tempfile.TemporaryFile()
        sys.stderr.flush()
        saved = os.dup(2)
        _capture.seek(0)
        _capture.truncate()
        try:
            os.dup2(_capture.fileno(), 2)
            img = cv2.imread(str(path), flags)
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        _capture.seek(0)
        text = _capture.read().decode("utf-8", "replace")
    return img, text.splitlines()


def _to_rgb8(img: np.ndarray) -> np.ndarray:
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:
        img = cv2.normalize(img, None, 0, 255, cv2.NORM_MINMAX).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        alpha = img[:, :, 3:4].astype(np.float32) / 255.0
        bgr = img[:, :, :3].astype(np.float32) * alpha + 255.0 * (1.0 - alpha)
        return cv2.cvtColor(np.clip(bgr + 0.5, 0, 255).astype(np.uint8), cv2.COLOR_BGR2RGB)
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


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
    from tqdm import tqdm

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


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kzlib.data", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="validate a dataset folder and print a summary")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--n-folds", type=int, default=5)
    p = sub.add_parser("download", help="the competition data through the Kaggle API, unpacked and checked")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip")
    p = sub.add_parser("folds", help="write/print image_id,book_id,fold")
    p.add_argument("data_dir", type=Path)
    p.add_argument("--n-folds", type=int, default=5)
    p.add_argument("--out", type=Path, help="CSV to write (default: print to stdout)")
    args = parser.parse_args(argv)

    if args.cmd in ("check", "download"):
        if args.cmd == "download":
            from kzlib.kaggle.download import download

            report = download(args.data_dir, keep_archive=args.keep_archive)
        else:
            report = check_dataset(args.data_dir, args.n_folds, progress=sys.stderr.isatty())
        for key, value in report.summary.items():
            print(f"{key}: {value}")
        if report.problems:
            print(f"{len(report.problems)} problem(s):", file=sys.stderr)
            for line in report.problems:
                print(line, file=sys.stderr)
            return 1
        print("ok")
        return 0

    train = read_labels_csv(DataDir(args.data_dir).train_csv)
    folds = make_folds(train["image_id"], args.n_folds)
    if args.out:
        from kzlib.io import write_csv_atomic

        write_csv_atomic(folds, args.out)
        print(f"wrote {len(folds)} pages, {folds['book_id'].nunique()} books to {args.out}")
    else:
        folds.to_csv(sys.stdout, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
