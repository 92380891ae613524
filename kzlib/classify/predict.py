"""Classifier inference: whole pages at several scales (TTA, logits averaged), the detailed file
with each box's top-k classes and logits, and the submission made from it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from kzlib.classify.config import ClassifyConfig
from kzlib.classify.dataset import check_inside, page_input, pages_from_boxes, read_boxes
from kzlib.classify.model import Classifier
from kzlib.devices import Precision, cudnn_benchmark, memory_format, pick_device
from kzlib.data import SEG_FP, DataDir, DataError, read_labels_csv
from kzlib.images import image_size
from kzlib.io import ensure_writable, write_json_atomic
from kzlib.detailed import DETAILED_COLUMNS, submission_from_detailed, write_detailed
from kzlib.metric import score_arrays, write_submission
from kzlib.pages import Page, glyph_zoom, page_scale, split_pages
from kzlib.config import config_from_dict
from kzlib.runs import PagesInParts, RunDir

def tta_sizes(test_size: int, scale_aug: float, n: int) -> list[int]:
    """Page sizes test_size * (1 + s), s evenly spaced from 0 to the training scale range."""
    if n < 1:
        raise ValueError(f"n_tta must be >= 1, not {n}")
    return [int(round(test_size * (1 + s))) for s in np.linspace(0.0, scale_aug, n)] if n > 1 else [test_size]


def page_sizes(page: Page, sizes: Sequence[int], cfg: ClassifyConfig) -> list[float]:
    """The TTA page sizes of one page: ``sizes``, moved by glyph-height normalisation when the
    config has it (the page's median box brought to ``cfg.glyph_height``, as in training)."""
    if cfg.glyph_height <= 0:
        return list(sizes)
    w0, h0 = image_size(page.path)
    base = page_scale(w0, h0, cfg.test_size, cfg.page_side)
    m = glyph_zoom(page.boxes, base, cfg.glyph_height) / base
    return [s * m for s in sizes]


@torch.no_grad()
def page_logits(model: Classifier, page: Page, sizes: Sequence[int], device: torch.device,
                cfg: ClassifyConfig) -> torch.Tensor:
    """[boxes, classes] logits of one page, averaged over the page sizes in ``sizes``."""
    total = None
    for size in page_sizes(page, sizes, cfg):
        image, boxes = page_input(page, size, cfg.page_side)
        with Precision.of(cfg, device).autocast(), cudnn_benchmark(False):  # pages have many sizes: no autotuning
            logits = model(image[None].to(device), [boxes.to(device)]).float().cpu()
        total = logits if total is None else total + logits
    return total / len(sizes)


def predict_pages(model: Classifier, pages: Sequence[Page], sizes: Sequence[int], device: torch.device,
                  cfg: ClassifyConfig, n_classes: int, desc: str = "classify") -> list[torch.Tensor]:
    model.eval()
    return [page_logits(model, p, sizes, device, cfg) if len(p.boxes) else torch.zeros(0, n_classes)
            for p in tqdm(pages, desc=desc, leave=False, unit="page", disable=None)]


def detailed_frame(pages: Sequence[Page], logits: Sequence[torch.Tensor], classes: Sequence[str], top_k: int,
                   with_true: bool) -> pd.DataFrame:
    """One row per box: position, top-1 class, true class (empty on test), top-k classes and logits."""
    names = np.asarray(classes, dtype=object)
    k = min(top_k, len(classes))
    ids, boxes, true, top_c, top_l = [], [], [], [], []
    for p, lg in zip(pages, logits):
        if len(p.boxes) == 0:
            continue
        values, idx = lg.topk(k, dim=1)
        ids += [p.image_id] * len(p.boxes)
        boxes.append(p.boxes)
        true += list(p.codes) if with_true else [""] * len(p.boxes)
        top_c.append(names[idx.numpy()])
        top_l.append(values.numpy())
    if not ids:
        return pd.DataFrame(columns=DETAILED_COLUMNS)
    top_c, top_l = np.concatenate(top_c), np.concatenate(top_l)
    df = pd.DataFrame(np.round(np.concatenate(boxes), 1), columns=["x", "y", "w", "h"])
    df.insert(0, "image_id", ids)
    df["pred"] = top_c[:, 0]
    df["true"] = true
    df["top_k_classes"] = [" ".join(r) for r in top_c]
    df["top_k_logits"] = [" ".join(f"{v:.4f}" for v in r) for r in top_l]
    return df[DETAILED_COLUMNS]


def detailed_scores(df: pd.DataFrame, truth_pages: Sequence[Page]) -> dict:
    """Competition F1 of the detailed file's predictions against the true characters of the pages,
    plus the box accuracy (pred == true) and how many detector false positives seg_fp removes."""
    by_page = {i: g for i, g in df[df["pred"] != SEG_FP].groupby("image_id", sort=False)}
    truth, preds = [], []
    for p in truth_pages:
        g = by_page.get(p.image_id)
        truth.append((p.codes, p.boxes))
        if g is None:
            preds.append(([], np.empty((0, 2))))
        else:
            preds.append((g["pred"].tolist(), g[["x", "y"]].to_numpy(float) + g[["w", "h"]].to_numpy(float) / 2))
    scores = score_arrays(truth, preds)
    fp = df["true"] == SEG_FP
    scores.update(accuracy=float((df["pred"] == df["true"]).mean()) if len(df) else 0.0, boxes=int(len(df)),
                  detector_fp=int(fp.sum()), detector_fp_removed=int((fp & (df["pred"] == SEG_FP)).sum()),
                  true_boxes_vetoed=int((~fp & (df["pred"] == SEG_FP)).sum()))
    return scores


@dataclass
class TrainedClassifier:
    """A trained classifier, ready for pages."""
    cfg: ClassifyConfig
    classes: list[str]
    model: Classifier
    device: torch.device


def load_run(run_dir: Path, device: str | None = None) -> TrainedClassifier:
    """A trained classifier run folder, in eval mode, from its checkpoint (``best.pth``, which holds
    its config and class list); ``device`` overrides the run's."""
    state, path = RunDir(run_dir).trained_state()
    if "classes" not in state or "config" not in state:
        raise DataError(f"{path}: not a classifier checkpoint (no class list)")
    cfg = config_from_dict(ClassifyConfig, state["config"], str(path))
    if device:
        cfg.device = device
    dev = pick_device(cfg.device)
    model = Classifier(cfg, len(state["classes"]), load_pretrained=False)
    model.load_state_dict(state["model"])
    return TrainedClassifier(cfg, list(state["classes"]), memory_format(model.to(dev), cfg.channels_last).eval(), dev)


def predict(run_dir: Path, data_dir: Path, boxes: Path, split: str, n_tta: int = 4, out_dir: Path | None = None,
            device: str | None = None, deadline: float | None = None) -> dict:
    """Write ``detailed.csv.gz`` + ``submission.csv`` (+ ``scores.json``) for the run's held-out
    pages (split valid) or ``test_detailed.csv.gz`` + ``test_submission.csv`` for the test pages.
    Pages are done in resumable parts; with ``deadline`` (a ``time.time()`` value) it raises
    ``kzlib.runs.Stopped`` before a part that would end after it, and a rerun continues."""
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, not {split!r}")
    run_dir, d = Path(run_dir), DataDir(Path(data_dir))
    out_dir = ensure_writable(Path(out_dir) if out_dir else run_dir)
    c = load_run(run_dir, device)
    cfg, classes, model, dev = c.cfg, c.classes, c.model, c.device
    if split == "valid":
        split_info = RunDir(run_dir).read_split()
        ids = split_info.val_ids
        if not ids:
            raise DataError(f"{run_dir}: the run has no held-out pages; nothing to validate")
        others, truth = split_pages(d.root, split_info.fold, split_info.n_folds, ids)
        paths = {p.image_id: p.path for p in others + truth}
        table = read_boxes(boxes, list(paths), need_true=True)
    else:
        d.require("sample_submission_csv", "test_images")
        ids = read_labels_csv(d.sample_submission_csv)["image_id"].tolist()
        paths = {i: d.image_path(i, "test") for i in ids}
        table = read_boxes(boxes, ids, need_true=False, what="sample_submission.csv")
    table = table[table["image_id"].isin(set(ids))]
    check_inside(table, {i: image_size(paths[i]) for i in table["image_id"].unique()}, Path(boxes))
    pages = {p.image_id: p for p in pages_from_boxes(table, ids, paths)}
    sizes = tta_sizes(cfg.test_size, cfg.scale_aug, n_tta)
    bar = tqdm(total=len(ids), desc=f"classify {split}", unit="page", disable=None)

    def rows_of(part: list[str]) -> pd.DataFrame:
        chosen = [pages[i] for i in part]
        logits = [page_logits(model, p, sizes, dev, cfg) if len(p.boxes)
                  else torch.zeros(0, len(classes)) for p in chosen]
        bar.update(len(part))
        return detailed_frame(chosen, logits, classes, cfg.top_k, with_true=split == "valid")

    model.eval()
    prefix = "" if split == "valid" else "test_"
    parts = PagesInParts(out_dir / "parts", f"{prefix}detailed", ids)
    detailed = parts.run(rows_of, deadline)
    bar.close()
    out_dir.mkdir(parents=True, exist_ok=True)
    result = {"detailed": str(out_dir / f"{prefix}detailed.csv.gz"), "submission": str(out_dir / f"{prefix}submission.csv"),
              "sizes": sizes}
    write_detailed(detailed, Path(result["detailed"]))
    write_submission(submission_from_detailed(detailed), result["submission"], ids)
    parts.clean()
    if split == "valid":
        result["scores"] = detailed_scores(detailed, truth)
        write_json_atomic(result["scores"], out_dir / "scores.json")
    return result
