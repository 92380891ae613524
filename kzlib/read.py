"""Read books with a trained chain: scans in; characters, text in reading order, pictures and a
submission out.

    kzlib read INPUT... --model MODEL_DIR --out OUT_DIR [--png] [--device auto|cpu|cuda] [--trust]

INPUT: image files, folders (their images, sorted) or globs; JPEG, PNG, TIFF, BMP, WebP; grayscale,
RGBA, 16-bit and CMYK pages of any size; the EXIF orientation is honoured. MODEL_DIR: a bundle
(``kzlib export``) or a runner's work folder. Per page, in OUT_DIR:

- ``<page>.json``: every character with its code point, the character, its box (original pixels),
  score, column and position in reading order; small characters between or inside columns
  (reading aids, annotations) are listed apart under ``annotations``;
- ``<page>.txt``: the text in reading order, one column per line (columns right to left, top to
  bottom inside a column), then the annotations after an empty line;
- ``<page>.png`` (with ``--png``): the page with the boxes and characters drawn.

For the whole run: ``pages.csv`` (page, file, characters, mean score, seconds, error),
``submission.csv`` in the competition format (page id = file name stem) and ``index.html`` (the
pages and their text side by side; a static file).

The characters come from the runner's own functions, page by page: each detector's boxes
(``detect_page``), the test-box rule (fold 0's boxes, or the folds' vote), each classifier's TTA
logits (``page_logits``), the detailed rows, the blend of each kind's folds, level 2's candidate
rows and models, the best candidate per box — so on the competition's test pages the submission is
the runner's. Pages already read from the same source (their JSON records the file, its size and
time, and the page of a multi-page TIFF, each of whose pages is read) are skipped on a rerun; a page
that cannot be read (damaged, too small, a strip beyond ``MAX_ASPECT``, a link that loops) is
reported in ``pages.csv`` and on one line, and the others are still read; the exit code is 1 when
any page failed. A full disk stops the run at the first page it cannot write (one line). Decoding runs in a background
thread while the models work. Page ids are the file names' stems, the whole name when two stems
are the same (``p.jpg``, ``p.png``), the folder's name before it when two names are; a name that is
not UTF-8 is kept with its odd bytes escaped. Files in OUT_DIR are never read as pages.
"""

from __future__ import annotations

import errno
import glob
import html
import json
import os
import sys
import time
import urllib.parse
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, PngImagePlugin
from tqdm import tqdm

from kzlib.cli import device_arg, one_line_errors, parser, printable
from kzlib.data import code_to_char
from kzlib.errors import DataError, KzError
from kzlib.export import load
from kzlib.images import (ImageError, console, frame_count, image_size, open_header, prefetch_images, read_image,
                          to_8bit, write_png)
from kzlib.io import atomic_path, ensure_writable, write_csv_atomic, write_json_atomic
from kzlib.metric import submission_from_points, write_submission
from kzlib.order import reading_order
from kzlib.viz import draw_labels

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


MIN_SIDE = 32  # pixels: a smaller image is not a page scan
MAX_ASPECT = 8  # a longer side more than this many times the shorter: a strip, not a page (it would not fit memory)
FULL_DISK = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)  # the output folder fails for every page alike: stop


def expand_inputs(inputs: Sequence[str], exclude: Path | None = None) -> list[Path]:
    """Files, folders (their images, sorted) and globs -> image paths, in order, without repeats,
    none inside ``exclude`` (the output folder). An entry that cannot be resolved (a link that loops)
    is kept: reading it then fails as one page."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists() or p.is_symlink():
            out.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(item))
            if not matches:
                raise DataError(f"{item}: no such file, folder or glob match")
            out += [m for m in matches if m.is_file() or m.is_symlink()]
    skip = _resolved(exclude) if exclude is not None else None
    seen, pages = set(), []
    for p in out:
        key = _resolved(p)
        if skip is not None and (key == skip or skip in key.parents):
            continue
        if key not in seen:
            seen.add(key)
            pages.append(p)
    return pages


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a symbolic link loop
        return p.absolute()


def _printable(name: str) -> str:
    """A file name as text: bytes that are not UTF-8 and control characters (a terminal's escape
    codes) escaped (``\\xe9``, ``\\x1b``), so outputs and the console can carry it."""
    return printable(os.fsencode(name).decode("utf-8", "backslashreplace"))


def with_frames(paths: Sequence[Path], ids: Sequence[str]) -> list[tuple[str, Path, int]]:
    """(page id, file, image index) of every page: each image of a multi-page TIFF is a page of its
    own (``scan-1``, ``scan-2`` ...; ids kept unique); other files are one page."""
    out = []
    for path, image_id in zip(paths, ids):
        n = 1
        if path.suffix.lower() in (".tif", ".tiff"):
            try:
                n = frame_count(path)
            except (KzError, OSError, RuntimeError):
                n = 1  # the page's own turn reports it
        out += [(image_id, path, 0)] if n == 1 else [(f"{image_id}-{k + 1}", path, k) for k in range(n)]
    seen = {i for i, _, _ in out}
    if len(seen) < len(out):  # a page of a TIFF named like another file's stem: number the repeats
        count: dict[str, int] = {}
        for k, (i, path, frame) in enumerate(out):
            count[i] = count.get(i, 0) + 1
            if count[i] > 1:
                out[k] = (f"{i}_{count[i]}", path, frame)
    return out


def source_of(path: Path, frame: int = 0) -> dict | None:
    """What a page was read from: the file (resolved), its size and modification time, and the image
    in it; a page whose JSON records another source is read again. None when the file cannot be
    looked at (its own turn reports it)."""
    try:
        st = path.stat()
    except (OSError, RuntimeError):
        return None
    return {"path": _printable(str(_resolved(path))), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "frame": frame}


def page_ids(paths: Sequence[Path]) -> list[str]:
    """A unique id per page: the file's stem; the whole name when stems repeat (p.jpg, p.png); the
    folder's name before it when names repeat too."""
    stems = [_printable(p.stem) for p in paths]
    names = [_printable(p.name) for p in paths]
    out = []
    for p, stem, name in zip(paths, stems, names):
        if stems.count(stem) == 1:
            out.append(stem)
        elif names.count(name) == 1:
            out.append(name)
        else:
            out.append(f"{_printable(p.parent.name)}_{name}")
    if len(set(out)) < len(out):  # the same name in two folders of the same name: number them
        seen: dict[str, int] = {}
        for k, i in enumerate(out):
            seen[i] = seen.get(i, 0) + 1
            if out.count(i) > 1:
                out[k] = f"{i}_{seen[i]}"
    return out


def upright(path: Path, cache: Path, image_id: str, frame: int = 0) -> Path:
    """The page as OpenCV reads it right: files whose EXIF orientation turns them, whose mode OpenCV
    reads differently (palette, TIFF variants) or that hold several pages (``frame``: which one),
    are written once to ``cache`` as an upright RGB PNG that records its source (made again when
    the source differs); other files are used as they are. A page under ``MIN_SIDE`` pixels, or
    whose sides differ more than ``MAX_ASPECT`` times, is an ``ImageError``."""
    with open_header(path) as im:
        if frame:
            im.seek(frame)  # a TIFF's pages may differ in size
        w, h = im.size
        if min(w, h) < MIN_SIDE:
            raise ImageError(f"{path}: {w}x{h} px is too small to be a page (at least {MIN_SIDE}x{MIN_SIDE})")
        if max(w, h) > MAX_ASPECT * min(w, h):
            raise ImageError(f"{path}: {w}x{h} px, sides {max(w, h) / min(w, h):.0f} times as long as each other, "
                             f"more than the {MAX_ASPECT} of a page; cut the strip into pages")
        turned = im.getexif().get(0x0112, 1) not in (1, None)
        plain = im.format in ("JPEG", "PNG") and im.mode in ("RGB", "L", "RGBA", "CMYK", "I;16", "I;16B")
        if plain and not turned and frame == 0:
            return path
        out = cache / f"{image_id}.png"
        source = json.dumps(source_of(path, frame), sort_keys=True)
        if out.is_file():
            try:
                with open_header(out) as made:
                    if made.info.get("kzlib-source") == source:
                        return out
            except ImageError:
                pass  # made again
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            im = Image.fromarray(to_8bit(np.asarray(im)))
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("RGB")
        cache.mkdir(parents=True, exist_ok=True)
        info = PngImagePlugin.PngInfo()
        info.add_text("kzlib-source", source)
        with atomic_path(out) as tmp:
            im.save(tmp, format="PNG", pnginfo=info)
        return out


def page_outputs(image_id: str, file: Path, chars: pd.DataFrame, names: dict, size: tuple[int, int],
                 source: dict | None = None) -> tuple[dict, str]:
    """The page's JSON and text, in reading order."""
    o = reading_order(chars[["x", "y", "w", "h"]].to_numpy())
    items = []
    for k, i in enumerate(o.order, 1):
        r = chars.iloc[int(i)]
        items.append({"unicode": r["cls"], "char": names.get(r["cls"]) or code_to_char(r["cls"]),
                      "x": float(r["x"]), "y": float(r["y"]), "w": float(r["w"]), "h": float(r["h"]),
                      "score": round(float(r["score"]), 4), "column": int(o.column[i]), "order": k,
                      "small": bool(o.small[i])})
    text = [c for c in items if not c["small"]]
    notes = [c for c in items if c["small"]]
    lines = ["".join(c["char"] for c in text if c["column"] == col) for col in sorted({c["column"] for c in text})]
    note_lines = ["".join(c["char"] for c in notes if c["column"] == col) for col in sorted({c["column"] for c in notes})]
    doc = {"image_id": image_id, "file": _printable(str(file)), "source": source, "width": size[0], "height": size[1],
           "characters": text, "annotations": notes, "text": lines}
    return doc, "\n".join(lines) + ("\n\n" + "\n".join(note_lines) if note_lines else "") + "\n"


def write_picture(path: Path, file: Path, chars: pd.DataFrame, height: int = 1400) -> None:
    h0 = image_size(file)[1]
    small = read_image(file, height=min(height, h0))
    write_png(path, draw_labels(small, chars["cls"].tolist(), chars[["x", "y", "w", "h"]].to_numpy(float),
                                small.shape[0] / h0))


def write_index(out: Path, pages: pd.DataFrame) -> None:
    """A static page: each page's picture (or scan) beside its text."""
    parts = ["<!doctype html><meta charset='utf-8'><title>kzlib read</title>",
             "<style>body{font-family:sans-serif;margin:1em}section{display:flex;gap:1em;margin:1em 0;"
             "border-top:1px solid #ccc;padding-top:1em}img{max-height:80vh;max-width:50vw}"
             "pre{font-size:1.3em;writing-mode:vertical-rl;max-height:80vh;overflow:auto;line-height:1.6}"
             ".err{color:#b00}</style>",
             f"<h1>{len(pages)} pages</h1>"]
    for r in pages.itertuples():
        parts.append(f"<section><div><h3>{html.escape(r.page)}</h3>")
        if isinstance(r.error, str) and r.error:
            parts.append(f"<p class='err'>{html.escape(r.error)}</p></div></section>")
            continue
        picture = (urllib.parse.quote(f"{r.page}.png") if (out / f"{r.page}.png").is_file()
                   else Path(r.file).resolve().as_uri())  # a name with # % ? is a path, not a fragment or query
        text = (out / f"{r.page}.txt").read_text(encoding="utf-8") if (out / f"{r.page}.txt").is_file() else ""
        parts.append(f"<p>{r.characters} characters, mean score {r.mean_score:.3f}</p></div>"
                     f"<img src='{html.escape(str(picture))}'><pre>{html.escape(text)}</pre></section>")
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")


CHAR_COLUMNS = ["cls", "x", "y", "w", "h", "score"]
PAGE_COLUMNS = ["page", "file", "characters", "mean_score", "seconds", "error"]
PAGE_ERRORS = (KzError, OSError, RuntimeError)  # RuntimeError: pathlib's "Symlink loop"


def read_earlier(json_path: Path) -> pd.DataFrame:
    """The characters of a page an earlier run read (its JSON)."""
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    return pd.DataFrame([{k: c[k] for k in ("x", "y", "w", "h", "score")} | {"cls": c["unicode"]}
                         for c in doc["characters"] + doc["annotations"]], columns=CHAR_COLUMNS)


def read_earlier_if_same(json_path: Path, source: dict | None) -> pd.DataFrame | None:
    """The characters of a page read before from the same source (file, size, time, image in it);
    None when it must be read (not read yet, read from another file of the same name, or the file
    changed since)."""
    if source is None or not json_path.is_file():
        return None
    try:
        doc = json.loads(json_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return read_earlier(json_path) if isinstance(doc, dict) and doc.get("source") == source else None


def read_one(reader, image_id: str, path: Path, src: Path, out: Path, png: bool,
             source: dict | None = None) -> pd.DataFrame:
    """Read one page with ``reader`` (``kzlib.reader.Reader``) and write its text, picture and JSON (the
    JSON last: it marks the page done)."""
    chars = reader.read(image_id, src)
    doc, text = page_outputs(image_id, path, chars, reader.chars, image_size(src), source)
    with atomic_path(out / f"{image_id}.txt") as tmp:
        tmp.write_text(text, encoding="utf-8")
    if png:
        write_picture(out / f"{image_id}.png", src, chars)
    write_json_atomic(doc, out / f"{image_id}.json")
    return chars


def read_pages(inputs: Sequence[str], model_dir: Path, out: Path, png: bool = False, device: str = "auto",
               trust: bool = False, log=print) -> pd.DataFrame:
    """Read every page; returns the pages table (also written as ``pages.csv``)."""
    out = Path(out)
    paths = expand_inputs(inputs, exclude=out)
    if not paths:
        raise DataError(f"no images in {', '.join(inputs)}")
    pages_in = with_frames(paths, page_ids(paths))
    ids = [i for i, _, _ in pages_in]
    ensure_writable(out)
    bundle = load(model_dir, trust)  # a bundle's manifest and files, checked before torch and the models load
    from kzlib.reader import Reader  # torch and the models: only once the pages, the output and the bundle are checked

    reader = Reader(bundle, device)
    log(reader.describe(device))
    seconds_before = {}
    if (out / "pages.csv").is_file():
        before = pd.read_csv(out / "pages.csv", dtype={"page": str}, keep_default_na=False)
        seconds_before = dict(zip(before["page"], before["seconds"]))
    rows, subs, upcoming = [], {}, {}
    cache = out / ".pages"
    todo = pages_in
    sources = [source_of(path, frame) for _, path, frame in todo]
    earlier = [read_earlier_if_same(out / f"{i}.json", src) for (i, _, _), src in zip(todo, sources)]

    def prepare(k: int, prefetch) -> None:
        """Page k, unless read before, made upright and decoded ahead at every size the models read."""
        if k < len(todo) and k not in upcoming and earlier[k] is None:
            image_id, path, frame = todo[k]
            try:
                upcoming[k] = upright(path, cache, image_id, frame)
                prefetch(upcoming[k], reader.heights(upcoming[k]))
            except PAGE_ERRORS:
                upcoming[k] = None  # the page's own turn reports it

    with prefetch_images() as prefetch:
        prepare(0, prefetch)
        for k, (image_id, path, frame) in enumerate(tqdm(todo, unit="page", desc="read", disable=None, file=console())):
            prepare(k + 1, prefetch)
            t0 = time.time()
            try:
                if earlier[k] is not None:
                    chars, seconds = earlier[k], float(seconds_before.get(image_id, 0.0))
                else:
                    chars = read_one(reader, image_id, path, upcoming.get(k) or upright(path, cache, image_id, frame), out,
                                     png, sources[k])
                    seconds = time.time() - t0
                rows.append({"page": image_id, "file": str(path), "characters": len(chars),
                             "mean_score": round(float(chars["score"].mean()), 4) if len(chars) else 0.0,
                             "seconds": round(seconds, 3), "error": ""})
                subs[image_id] = chars
            except PAGE_ERRORS as e:
                if isinstance(e, OSError) and e.errno in FULL_DISK:
                    raise  # every page after it would fail the same way: one line, the pages done are kept
                message = _printable(str(e).splitlines()[0] if str(e) else type(e).__name__)
                where = _printable(str(path))
                tqdm.write(f"error: {message}" if where in message else f"error: {where}: {message}", file=console())
                rows.append({"page": image_id, "file": where, "characters": 0, "mean_score": 0.0,
                             "seconds": round(time.time() - t0, 3), "error": message})
            upcoming.pop(k, None)
    for row in rows:
        row["file"] = _printable(row["file"])
    pages = pd.DataFrame(rows, columns=PAGE_COLUMNS)
    write_csv_atomic(pages, out / "pages.csv")
    write_submission_of(subs, [i for i in ids if i in subs], out / "submission.csv")
    write_index(out, pages)
    return pages


def write_submission_of(subs: dict[str, pd.DataFrame], ids: list[str], path: Path) -> None:
    """The pages' characters in the competition's format."""
    frames = [subs[i].assign(image_id=i) for i in ids if len(subs[i])]
    every = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image_id", *CHAR_COLUMNS])
    centres = every[["x", "y"]].to_numpy(float) + every[["w", "h"]].to_numpy(float) / 2
    write_submission(submission_from_points(every["cls"].to_numpy(), centres, every["image_id"].to_numpy()), path, ids)


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("kzlib read", __doc__)
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--model", type=Path, required=True, help="a bundle (kzlib export) or a runner's work folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--png", action="store_true", help="also draw every page with its characters")
    p.add_argument("--device", type=device_arg, default="auto", help="cpu, cuda, or auto (a GPU when there is one)")
    p.add_argument("--trust", action="store_true",
                   help="read a bundle without checking its manifest and SHA-256s (or a work folder whose stages "
                        "are not current)")
    a = p.parse_args(argv)
    t0 = time.time()
    pages = read_pages(a.inputs, a.model, a.out, a.png, a.device, a.trust)
    failed = pages["error"].astype(bool)
    ran = pages.loc[~failed & (pages["seconds"] > 0), "seconds"]
    print(f"{len(pages)} pages in {time.time() - t0:.1f} s ({(~failed).sum()} read, {int(failed.sum())} failed; "
          f"{ran.mean() if len(ran) else 0:.2f} s a page); {int(pages['characters'].sum())} characters; "
          f"{a.out / 'index.html'}")
    return 1 if failed.any() else 0


if __name__ == "__main__":
    sys.exit(main())
