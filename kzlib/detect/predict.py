"""Detector inference on full pages; the matching rule of the held-out ("valid") pages' boxes
(``oof_boxes.csv``: out-of-fold boxes with the class they matched); merging the folds' held-out
boxes; and the test-box rule (fold 0's boxes, or the folds' vote) applied to a page's boxes."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_convert, box_iou, nms
from tqdm import tqdm

from kzlib.data import SEG_FP, DataDir, DataError, parse_labels, read_labels_csv
from kzlib.images import image_size, read_image
from kzlib.config import config_from_dict
from kzlib.detect.config import TEST_MATCHES, DetectConfig, TestBoxRule
from kzlib.detect.model import build_model
from kzlib.devices import Precision, cudnn_benchmark, memory_format, pick_device
from kzlib.io import ensure_writable, write_csv_atomic
from kzlib.pages import Page, best_iou, glyph_zoom, page_scale, scaled_height, to_tensor, xyxy_tensor
from kzlib.metric import score_arrays
from kzlib.runs import PagesInParts, RunDir

OOF_COLUMNS = ["image_id", "x", "y", "w", "h", "score", "true"]
TEST_COLUMNS = OOF_COLUMNS[:-1]


@torch.no_grad()
def detect_at(model, path: Path, height: int, cfg: DetectConfig, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x y w h in original-page pixels) and scores of one full page read ``height`` rows high."""
    w0, h0 = image_size(path)
    image = read_image(path, height=height)
    sx, sy = image.shape[1] / w0, image.shape[0] / h0
    with Precision.of(cfg, device).autocast(), cudnn_benchmark(False):  # pages have many sizes: no autotuning
        out = model([to_tensor(image).to(device)])[0]
    xywh = box_convert(out["boxes"].double().cpu(), "xyxy", "xywh").numpy().reshape(-1, 4) / [sx, sy, sx, sy]
    return xywh, out["scores"].float().cpu().numpy()


GLYPH_MIN_BOXES = 5  # a first pass with fewer boxes than this says too little about the page's glyphs
GLYPH_TOLERANCE = 0.05  # a second pass only when it would read the page more than 5% larger or smaller


def glyph_height_of(path: Path, first: tuple[np.ndarray, np.ndarray], cfg: DetectConfig) -> int | None:
    """The height to read a page at so that the median of its first pass's boxes (those above the
    score threshold) is ``cfg.glyph_height`` pixels high (``glyph_zoom``, within its limits), or None
    where the first pass is enough: normalisation off, too few boxes, or less than 5% to move."""
    if cfg.glyph_height <= 0:
        return None
    boxes = first[0][first[1] >= cfg.score_threshold]
    if len(boxes) < GLYPH_MIN_BOXES:
        return None
    w0, h0 = image_size(path)
    base = page_scale(w0, h0, cfg.page_size, cfg.page_side)
    zoom = glyph_zoom(boxes, base, cfg.glyph_height)
    return int(round(h0 * zoom)) if abs(zoom / base - 1) > GLYPH_TOLERANCE else None


def detect_page(model, path: Path, cfg: DetectConfig, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x y w h in original-page pixels) and scores of one full page, read at ``page_size``;
    with ``glyph_height``, read again at the size that brings its glyphs to that height."""
    found = detect_at(model, path, scaled_height(path, cfg.page_size, cfg.page_side), cfg, device)
    height = glyph_height_of(path, found, cfg)
    return found if height is None else detect_at(model, path, height, cfg, device)


def detect_pages(model, pages: Sequence[Page], cfg: DetectConfig, device: torch.device, desc: str = "detect"):
    model.eval()
    return [detect_page(model, p.path, cfg, device) for p in tqdm(pages, desc=desc, leave=False, unit="page", disable=None)]


def agnostic_f1(pages: Sequence[Page], detections) -> dict:
    """The competition F1 with every class made one: centre points of the detections against the
    true boxes."""
    truth = [(["c"] * len(p.boxes), p.boxes) for p in pages]
    preds = [(["c"] * len(b), b[:, :2] + b[:, 2:] / 2) for b, _ in detections]
    return score_arrays(truth, preds)


def match_true(pred_xywh: np.ndarray, gt_xywh: np.ndarray, gt_codes: Sequence[str], iou: float = 0.5) -> list[str]:
    """The class of the ground-truth box of highest IoU with each prediction if that IoU >= ``iou``,
    else ``seg_fp``."""
    best, idx = best_iou(pred_xywh, gt_xywh)
    codes = np.asarray(gt_codes, dtype=object)
    return [codes[j] if v >= iou else SEG_FP for v, j in zip(best.tolist(), idx.tolist())]


@dataclass
class TrainedDetector:
    """A trained detector, ready for pages."""
    cfg: DetectConfig
    model: torch.nn.Module
    device: torch.device


def load_run(run_dir: Path, device: str | None = None, score_threshold: float | None = None) -> TrainedDetector:
    """A trained detector run folder, in eval mode, from its checkpoint (``best.pth``, which holds its
    config too); ``device`` and ``score_threshold`` override the run's."""
    state, path = RunDir(run_dir).trained_state()
    if "config" not in state or "classes" in state:
        raise DataError(f"{path}: not a detector checkpoint")
    cfg = config_from_dict(DetectConfig, state["config"], str(path))
    if device:
        cfg.device = device
    if score_threshold is not None:
        cfg.score_threshold = score_threshold
    dev = pick_device(cfg.device)
    model = build_model(cfg, load_pretrained=False)
    model.load_state_dict(state["model"])
    return TrainedDetector(cfg, memory_format(model.to(dev), cfg.channels_last).eval(), dev)


def solid(xywh: np.ndarray) -> np.ndarray:
    """Which boxes keep a width and a height at the boxes files' 0.1 px (an untrained detector finds
    slivers that round to none: they hold no character, and the classifier refuses them)."""
    r = np.round(np.asarray(xywh, dtype=np.float64).reshape(-1, 4), 1)
    return (r[:, 2] > 0) & (r[:, 3] > 0)


def round_boxes(xywh: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Boxes and scores as the boxes files hold them (0.1 px, 4 decimals), the boxes that round to
    no width or height dropped (``solid``)."""
    keep = solid(xywh)
    return np.round(np.asarray(xywh, dtype=np.float64).reshape(-1, 4)[keep], 1), np.round(np.asarray(scores)[keep], 4)


def combine_test_boxes(found: Sequence[tuple[np.ndarray, np.ndarray]], rule: TestBoxRule) -> tuple[np.ndarray, np.ndarray]:
    """One page's test boxes from the boxes (rounded) of the rule's detectors, in ``rule.folds``
    order: fold 0's as they are, or the folds' vote (``vote_boxes``), rounded as written."""
    if len(found) != len(rule.folds):
        raise ValueError(f"the test-box rule reads {len(rule.folds)} detector(s), {len(found)} given")
    xywh, scores = vote_boxes([b for b, _ in found], [s for _, s in found], rule.min_votes, match=rule.match)
    return round_boxes(xywh, scores)


def predict(run_dir: Path, data_dir: Path, split: str, out: Path | None = None, device: str | None = None,
            score_threshold: float | None = None, deadline: float | None = None) -> Path:
    """Write ``oof_boxes.csv`` (split ``valid``: the run's held-out train pages, each box with the
    class it matched) or ``test_boxes.csv`` (``test``). Pages are done in resumable parts; with
    ``deadline`` (a ``time.time()`` value) it raises ``kzlib.runs.Stopped`` before a part that would
    end after it, and a rerun continues."""
    split = "valid" if split == "oof" else split  # the old name of the held-out pages' split
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, not {split!r}")
    run, d = RunDir(run_dir), DataDir(Path(data_dir))
    out = Path(out) if out else run.oof_boxes if split == "valid" else run.test_boxes
    ensure_writable(out.parent)
    det = load_run(run_dir, device, score_threshold=score_threshold)
    if split == "valid":
        ids = run.read_split().val_ids
        if not ids:
            raise DataError(f"{run_dir}: the run's fold has no held-out pages; nothing to predict")
        labels = read_labels_csv(d.train_csv).set_index("image_id")["labels"]
        missing = [i for i in ids if i not in labels.index]
        if missing:
            raise DataError(f"{d.train_csv}: held-out pages of {run_dir} missing: {', '.join(missing[:5])}")
        pages = {}
        for i in ids:
            codes, boxes = parse_labels(labels[i], image_id=i, source=d.train_csv)
            pages[i] = (Page(i, d.image_path(i, "train"), boxes), codes)
    else:
        d.require("sample_submission_csv", "test_images")
        ids = read_labels_csv(d.sample_submission_csv)["image_id"].tolist()
        pages = {i: (Page(i, d.image_path(i, "test"), np.empty((0, 4))), []) for i in ids}
    bar = tqdm(total=len(ids), desc=f"predict {split}", unit="page", disable=None)

    def boxes_of(part: list[str]) -> pd.DataFrame:
        rows = []
        for i in part:
            page, codes = pages[i]
            xywh, scores = detect_page(det.model, page.path, det.cfg, det.device)
            keep = solid(xywh)
            xywh, scores = xywh[keep], scores[keep]
            frame = boxes_frame(page.image_id, *round_boxes(xywh, scores))
            if split == "valid":
                frame["true"] = match_true(xywh, page.boxes, codes)
            rows.append(frame)
            bar.update(1)
        columns = OOF_COLUMNS if split == "valid" else TEST_COLUMNS
        return pd.concat(rows, ignore_index=True)[columns] if rows else pd.DataFrame(columns=columns)

    parts = PagesInParts(out.parent / "parts", out.stem, ids)
    df = parts.run(boxes_of, deadline)
    bar.close()
    df = df if df is not None else pd.DataFrame(columns=OOF_COLUMNS if split == "valid" else TEST_COLUMNS)
    write_csv_atomic(df, out)
    parts.clean()
    return out


def merge_oof(run_dirs: Sequence[Path], out: Path, data_dir: Path | None = None) -> pd.DataFrame:
    """Concatenate the folds' OOF files; every train page must be held out by exactly one run."""
    seen: Counter = Counter()
    frames = []
    for run in map(RunDir, run_dirs):
        split = run.read_split()
        if not run.oof_boxes.exists():
            raise DataError(f"{run.oof_boxes}: missing; run `python -m kzlib.detect predict {run} DATA_DIR --split valid` first")
        seen.update(split.val_ids)
        data_dir = data_dir or Path(split.data_dir)
        frames.append(pd.read_csv(run.oof_boxes, dtype={"image_id": str, "true": str}))
    ids = read_labels_csv(DataDir(Path(data_dir)).train_csv)["image_id"].tolist()
    twice = sorted(i for i, n in seen.items() if n > 1)
    missing = [i for i in ids if i not in seen]
    if twice or missing:
        parts = ([f"held out by several runs: {', '.join(twice[:5])}"] if twice else []) + (
            [f"{len(missing)} train pages held out by no run: {', '.join(missing[:5])}"] if missing else [])
        raise DataError("merge-oof: " + "; ".join(parts))
    df = pd.concat(frames, ignore_index=True)
    write_csv_atomic(df, out)
    return df


def centre_groups(xyxy: np.ndarray, fold: np.ndarray, scores: np.ndarray) -> list[list[int]]:
    """Boxes of several detectors (``xyxy``, the detector ``fold`` of each) grouped by glyph, from the
    highest score down: a box joins the group whose first box is nearest (centre to centre) among
    those whose first box holds its centre or has its centre inside it, and that has no box of its
    detector yet; else it starts a group. One detector's boxes never share a group."""
    centre = (xyxy[:, :2] + xyxy[:, 2:]) / 2
    holds = ((centre[:, None] >= xyxy[None, :, :2]) & (centre[:, None] <= xyxy[None, :, 2:])).all(-1)  # [i, j]: i's centre in j
    near = holds | holds.T
    head = np.empty(len(xyxy), np.int64)  # group -> its first box
    has = np.zeros((len(xyxy), int(fold.max()) + 1), bool)  # group -> the detectors with a box in it
    groups: list[list[int]] = []
    for i in np.argsort(-scores, kind="stable"):
        g = len(groups)
        cand = np.flatnonzero(near[i, head[:g]] & ~has[:g, fold[i]])
        if len(cand):
            g = cand[np.argmin(((centre[head[cand]] - centre[i]) ** 2).sum(-1))]
            groups[g].append(i)
        else:
            head[g] = i
            groups.append([i])
        has[g, fold[i]] = True
    return groups


def vote_boxes(fold_boxes: Sequence[np.ndarray], fold_scores: Sequence[np.ndarray], min_votes: int,
               iou: float = 0.5, match: str = "iou") -> tuple[np.ndarray, np.ndarray]:
    """Merge one page's boxes from several detectors, each box kept when at least ``min_votes``
    detectors found its glyph; the kept box is the mean of the voting detectors' boxes and its
    score the mean over all detectors (0 for a detector without a match). ``match``: ``centre``,
    the glyphs are ``centre_groups``; ``iou``, clusters around the boxes that survive NMS over all
    of them, a detector voting with its box of highest IoU >= ``iou`` with the cluster's seed."""

    if match not in TEST_MATCHES:
        raise ValueError(f"match: {match!r} is not one of {', '.join(TEST_MATCHES)}")
    n = len(fold_boxes)
    boxes = [np.asarray(b, np.float64).reshape(-1, 4) for b in fold_boxes]
    if n == 1:
        return boxes[0], np.asarray(fold_scores[0], np.float64)
    if match == "centre":
        every = np.concatenate(boxes)
        if len(every) == 0:
            return np.empty((0, 4)), np.empty(0)
        score = np.concatenate([np.asarray(s, np.float64).reshape(-1) for s in fold_scores])
        fold = np.repeat(np.arange(n), [len(b) for b in boxes])
        groups = centre_groups(xyxy_tensor(every).numpy(), fold, score)
        kept = [g for g in groups if len(g) >= min_votes]
        xywh = np.array([every[g].mean(0) for g in kept]).reshape(-1, 4)
        return xywh, np.array([score[g].sum() / n for g in kept])
    xyxy = [xyxy_tensor(b) for b in boxes]
    every = torch.cat(xyxy)
    if len(every) == 0:
        return np.empty((0, 4)), np.empty(0)
    scores = torch.cat([torch.as_tensor(np.array(s, np.float64)) for s in fold_scores])
    seeds = every[nms(every.float(), scores.float(), iou)]
    total = torch.zeros(len(seeds), 4, dtype=torch.float64)
    votes = torch.zeros(len(seeds), dtype=torch.int64)
    score_sum = torch.zeros(len(seeds), dtype=torch.float64)
    for b, s in zip(xyxy, fold_scores):
        if len(b) == 0:
            continue
        m, j = box_iou(seeds, b).max(dim=1)
        hit = m >= iou
        total[hit] += b[j[hit]]
        votes += hit.long()
        score_sum[hit] += torch.as_tensor(np.array(s, np.float64))[j[hit]]
    keep = votes >= min_votes
    mean = box_convert(total[keep] / votes[keep, None], "xyxy", "xywh")
    return mean.numpy(), (score_sum[keep] / n).numpy()


def boxes_frame(image_id: str, xywh: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    frame = pd.DataFrame(xywh, columns=["x", "y", "w", "h"])
    frame.insert(0, "image_id", image_id)
    frame["score"] = scores
    return frame


def merge_test(files: Sequence[Path], out: Path, rule: TestBoxRule) -> pd.DataFrame:
    """The test boxes every classifier reads: the ``rule``'s folds' ``test_boxes.csv`` (``files``, in
    ``rule.folds`` order) combined page by page (``combine_test_boxes``)."""
    frames = []
    for f in map(Path, files):
        if not f.exists():
            raise DataError(f"{f}: missing; run `python -m kzlib.detect predict RUN DATA_DIR --split test` first")
        frames.append(pd.read_csv(f, dtype={"image_id": str}))
    ids = list(dict.fromkeys(i for f in frames for i in f["image_id"]))
    groups = [dict(tuple(f.groupby("image_id", sort=False))) for f in frames]
    rows = []
    for image_id in ids:
        parts = [g.get(image_id) for g in groups]
        found = [(p[["x", "y", "w", "h"]].to_numpy(np.float64), p["score"].to_numpy(np.float64)) if p is not None
                 else (np.empty((0, 4)), np.empty(0)) for p in parts]
        rows.append(boxes_frame(image_id, *combine_test_boxes(found, rule)))
    df = pd.concat(rows, ignore_index=True) if rows else pd.DataFrame(columns=TEST_COLUMNS)
    write_csv_atomic(df[TEST_COLUMNS], out)
    return df
