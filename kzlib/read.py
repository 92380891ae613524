"""Read books with a trained chain: scans in; characters, text in reading order, pictures and a
submission out.

    kzlib read INPUT... --model MODEL_DIR --out OUT_DIR [--png] [--batch-name NAME]

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
the runner's. Pages already read (their JSON exists) are skipped on a rerun; a page that cannot be
read is reported in ``pages.csv`` and on one line, and the others are still read; the exit code is
1 when any page failed. Decoding runs in a background thread while the models work.
"""

from __future__ import annotations

import glob
import html
import json
import sys
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kzlib.cli import one_line_errors, parser
from kzlib.errors import DataError, KzError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp", ".webp")


def expand_inputs(inputs: Sequence[str]) -> list[Path]:
    """Files, folders (their images, sorted) and globs -> image paths, in order, without repeats."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            out += sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.exists():
            out.append(p)
        else:
            matches = sorted(Path(m) for m in glob.glob(item))
            if not matches:
                raise DataError(f"{item}: no such file, folder or glob match")
            out += [m for m in matches if m.is_file()]
    seen, pages = set(), []
    for p in out:
        if p.resolve() not in seen:
            seen.add(p.resolve())
            pages.append(p)
    return pages


def page_ids(paths: Sequence[Path]) -> list[str]:
    """A unique id per page: the file's stem (the folder's name before it when stems repeat)."""
    stems = [p.stem for p in paths]
    return [f"{p.parent.name}_{p.stem}" if stems.count(p.stem) > 1 else p.stem for p in paths]


def upright(path: Path, cache: Path) -> Path:
    """The page as OpenCV reads it right: files whose EXIF orientation turns them, or whose mode
    OpenCV reads differently (palette, 16-bit grey, TIFF variants), are written once to ``cache``
    as an upright RGB PNG; other files are used as they are."""
    from PIL import Image, ImageOps

    from kzlib.data import _open_header

    with _open_header(path) as im:
        turned = im.getexif().get(0x0112, 1) not in (1, None)
        plain = im.format in ("JPEG", "PNG") and im.mode in ("RGB", "L", "RGBA", "CMYK", "I;16", "I;16B")
        if plain and not turned:
            return path
        out = cache / f"{path.stem}.png"
        if out.is_file() and out.stat().st_mtime >= path.stat().st_mtime:
            return out
        im = ImageOps.exif_transpose(im)
        if im.mode in ("I;16", "I;16B", "I"):
            im = Image.fromarray((np.asarray(im, dtype=np.float64) / max(1.0, float(np.asarray(im).max())) * 255)
                                 .astype(np.uint8))
        if im.mode in ("RGBA", "LA", "P"):
            im = im.convert("RGBA")
            background = Image.new("RGBA", im.size, (255, 255, 255, 255))
            im = Image.alpha_composite(background, im)
        im = im.convert("RGB")
        cache.mkdir(parents=True, exist_ok=True)
        from kzlib.io import atomic_path

        with atomic_path(out) as tmp:
            im.save(tmp, format="PNG")
        return out


class Reader:
    """The models of a bundle, and the runner's way of combining them, one page at a time."""

    def __init__(self, model_dir: Path, device: str | None = "auto"):
        from kzlib.classify.predict import load_run as load_classifier, tta_sizes
        from kzlib.detect.predict import load_run as load_detector
        from kzlib.export import load

        self.bundle = b = load(model_dir)
        self.detectors = [load_detector(d, device) for d in b.detectors]
        self.classifiers = {kind: [load_classifier(r, device) for r in runs] for kind, runs in b.classifiers.items()}
        self.sizes = {kind: [tta_sizes(cfg.test_size, cfg.scale_aug, b.n_tta) for cfg, _, _, _ in runs]
                      for kind, runs in self.classifiers.items()}
        self.chars = {}
        if b.unicode_csv is not None:
            t = pd.read_csv(b.unicode_csv, dtype=str, keep_default_na=False)
            self.chars = dict(zip(t["Unicode"], t["char"]))

    def heights(self, path: Path) -> list[int]:
        """Every height the models read this page at (what the decoding thread prepares)."""
        from kzlib.pages import scaled_height

        out = [scaled_height(path, cfg.page_size, cfg.page_side) for cfg, _, _ in self.detectors]
        for kind, runs in self.classifiers.items():
            for (cfg, _, _, _), sizes in zip(runs, self.sizes[kind]):
                out += [scaled_height(path, s, cfg.page_side) for s in sizes]
        return list(dict.fromkeys(out))

    def boxes(self, path: Path) -> np.ndarray:
        """The page's test boxes, rounded as the runner's files hold them."""
        from kzlib.detect.predict import detect_page, vote_boxes

        found = []
        for cfg, model, dev in self.detectors:
            xywh, scores = detect_page(model, path, cfg, dev)
            found.append((np.round(xywh, 1), np.round(scores, 4)))
        if self.bundle.test_boxes == "vote":
            n = len(found)
            xywh, _ = vote_boxes([f[0] for f in found], [f[1] for f in found], self.bundle.test_votes or n // 2 + 1)
            return np.round(xywh, 1)
        return found[0][0]

    def read(self, image_id: str, path: Path) -> pd.DataFrame:
        """One row per kept character: image_id, x, y, w, h, cls, score (seg_fp boxes dropped)."""
        from kzlib.classify.predict import detailed_frame, page_logits
        from kzlib.data import SEG_FP
        from kzlib.detailed import blend
        from kzlib.pages import Page

        page = Page(image_id, path, self.boxes(path))
        empty = pd.DataFrame(columns=["image_id", "x", "y", "w", "h", "cls", "score"])
        if len(page.boxes) == 0:
            return empty
        groups = []
        for kind, runs in self.classifiers.items():
            frames = []
            for (cfg, classes, model, dev), sizes in zip(runs, self.sizes[kind]):
                logits = page_logits(model, page, sizes, dev, cfg)
                frames.append(detailed_frame([page], [logits], classes, cfg.top_k, with_true=False))
            groups.append(blend(frames))
        if self.bundle.level2 is not None:
            from kzlib.stack.features import build
            from kzlib.stack.models import pick_best, predict_rows, read_models

            rows = build(groups, read_models(self.bundle.level2)[1].overlap)
            best = pick_best(rows, predict_rows(self.bundle.level2, rows)).rename(columns={"prob": "score"})
        else:  # the plain blend of every kind, as the runner's submission without level 2
            every = blend([g for g in groups])
            best = every.rename(columns={"pred": "cls"}).assign(
                score=every["top_k_logits"].str.split(" ").str[0].astype(float))
        best = best[best["cls"] != SEG_FP]
        return best[["image_id", "x", "y", "w", "h", "cls", "score"]].reset_index(drop=True)


def page_outputs(image_id: str, file: Path, chars: pd.DataFrame, names: dict, size: tuple[int, int]) -> tuple[dict, str]:
    """The page's JSON and text, in reading order."""
    from kzlib.data import code_to_char
    from kzlib.order import reading_order

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
    doc = {"image_id": image_id, "file": str(file), "width": size[0], "height": size[1], "characters": text,
           "annotations": notes, "text": lines}
    return doc, "\n".join(lines) + ("\n\n" + "\n".join(note_lines) if note_lines else "") + "\n"


def write_picture(path: Path, file: Path, chars: pd.DataFrame, height: int = 1400) -> None:
    import cv2

    from kzlib.data import image_size, read_image
    from kzlib.io import atomic_path
    from kzlib.viz import draw_labels

    h0 = image_size(file)[1]
    small = read_image(file, height=min(height, h0))
    picture = draw_labels(small, chars["cls"].tolist(), chars[["x", "y", "w", "h"]].to_numpy(float), small.shape[0] / h0)
    with atomic_path(path) as tmp:
        png = tmp.with_suffix(".png")
        cv2.imwrite(str(png), cv2.cvtColor(picture, cv2.COLOR_RGB2BGR))
        png.replace(tmp)


def write_index(out: Path, pages: pd.DataFrame) -> None:
    """A static page: each page's picture (or scan) beside its text."""
    from kzlib.io import atomic_path

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
        picture = f"{r.page}.png" if (out / f"{r.page}.png").is_file() else Path(r.file).resolve().as_uri()
        text = (out / f"{r.page}.txt").read_text(encoding="utf-8") if (out / f"{r.page}.txt").is_file() else ""
        parts.append(f"<p>{r.characters} characters, mean score {r.mean_score:.3f}</p></div>"
                     f"<img src='{html.escape(str(picture))}'><pre>{html.escape(text)}</pre></section>")
    with atomic_path(out / "index.html") as tmp:
        tmp.write_text("\n".join(parts), encoding="utf-8")


def read_pages(inputs: Sequence[str], model_dir: Path, out: Path, png: bool = False, device: str = "auto",
               log=print) -> pd.DataFrame:
    """Read every page; returns the pages table (also written as ``pages.csv``)."""
    from tqdm import tqdm

    from kzlib.data import image_size, prefetch_images
    from kzlib.io import ensure_writable, write_csv_atomic, write_json_atomic
    from kzlib.metric import submission_from_points, write_submission

    paths = expand_inputs(inputs)
    if not paths:
        raise DataError(f"no images in {', '.join(inputs)}")
    ids = page_ids(paths)
    out = ensure_writable(out)
    reader = Reader(model_dir, device)
    done_before = pd.read_csv(out / "pages.csv", dtype={"page": str}) if (out / "pages.csv").is_file() else None
    rows, subs = [], {}
    cache = out / ".pages"
    todo = [(i, p) for i, p in zip(ids, paths)]
    with prefetch_images() as prefetch:
        bar = tqdm(todo, unit="page", desc="read", disable=None, file=sys.stderr)
        upcoming = {}

        def ask(k):
            if k < len(todo) and k not in upcoming:
                image_id, path = todo[k]
                try:
                    src = upright(path, cache)
                    upcoming[k] = src
                    if not (out / f"{image_id}.json").is_file():
                        prefetch(src, reader.heights(src))
                except KzError:
                    upcoming[k] = None
        ask(0)
        for k, (image_id, path) in enumerate(bar):
            ask(k + 1)
            t0 = time.time()
            json_path = out / f"{image_id}.json"
            try:
                if json_path.is_file():  # read by an earlier run
                    doc = json.loads(json_path.read_text(encoding="utf-8"))
                    chars = pd.DataFrame([{"cls": c["unicode"], "x": c["x"], "y": c["y"], "w": c["w"], "h": c["h"],
                                           "score": c["score"]} for c in doc["characters"] + doc["annotations"]],
                                         columns=["cls", "x", "y", "w", "h", "score"])
                    seconds = float(done_before.set_index("page")["seconds"].get(image_id, 0.0)) \
                        if done_before is not None and image_id in set(done_before["page"]) else 0.0
                else:
                    src = upcoming.get(k) or upright(path, cache)
                    chars = reader.read(image_id, src)
                    doc, text = page_outputs(image_id, path, chars, reader.chars, image_size(src))
                    (out / f"{image_id}.txt").write_text(text, encoding="utf-8")
                    if png:
                        write_picture(out / f"{image_id}.png", src, chars)
                    write_json_atomic(doc, json_path)
                    seconds = time.time() - t0
                rows.append({"page": image_id, "file": str(path), "characters": len(chars),
                             "mean_score": round(float(chars["score"].mean()), 4) if len(chars) else 0.0,
                             "seconds": round(seconds, 3), "error": ""})
                subs[image_id] = chars
            except (KzError, OSError) as e:
                message = str(e).splitlines()[0]
                tqdm.write(f"error: {path}: {message}" if str(path) not in message else f"error: {message}",
                           file=sys.stderr)
                rows.append({"page": image_id, "file": str(path), "characters": 0, "mean_score": 0.0,
                             "seconds": round(time.time() - t0, 3), "error": message})
            upcoming.pop(k, None)
        bar.close()
    pages = pd.DataFrame(rows, columns=["page", "file", "characters", "mean_score", "seconds", "error"])
    write_csv_atomic(pages, out / "pages.csv")
    good = [i for i in ids if i in subs]
    frames = [subs[i].assign(image_id=i) for i in good if len(subs[i])]
    every = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["image_id", "cls", "x", "y", "w", "h"])
    centres = every[["x", "y"]].to_numpy(float) + every[["w", "h"]].to_numpy(float) / 2
    write_submission(submission_from_points(every["cls"].to_numpy(), centres, every["image_id"].to_numpy()),
                     out / "submission.csv", good)
    write_index(out, pages)
    return pages


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("kzlib read", __doc__)
    p.add_argument("inputs", nargs="+", help="image files, folders or globs")
    p.add_argument("--model", type=Path, required=True, help="a bundle (kzlib export) or a runner's work folder")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--png", action="store_true", help="also draw every page with its characters")
    p.add_argument("--device", default="auto", help="cpu, cuda, or auto (a GPU when there is one)")
    a = p.parse_args(argv)
    t0 = time.time()
    pages = read_pages(a.inputs, a.model, a.out, a.png, a.device)
    failed = pages["error"].astype(bool)
    ran = pages.loc[~failed & (pages["seconds"] > 0), "seconds"]
    print(f"{len(pages)} pages in {time.time() - t0:.1f} s ({(~failed).sum()} read, {int(failed.sum())} failed; "
          f"{ran.mean() if len(ran) else 0:.2f} s a page); {int(pages['characters'].sum())} characters; "
          f"{a.out / 'index.html'}")
    return 1 if failed.any() else 0


if __name__ == "__main__":
    sys.exit(main())
