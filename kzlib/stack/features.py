"""Level-2 features: one row per (box, candidate class), built with pandas/numpy only.

Groups are model kinds; a group's detailed files (e.g. one kind's folds on the test pages) are
blended first. Candidates of a box are the union of the groups' top-3 classes plus ``seg_fp``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kzlib.data import SEG_FP, DataError
from kzlib.detailed import KEY, blend_files, check_same_boxes, top_k_long
from kzlib.stack.config import OVERLAPS

TOP = 3
OVERLAP_COLUMN = {"upstream": "box_overlap", "iou": "max_iou"}


def encode_class(codes) -> np.ndarray:
    """``U+XXXX`` -> its code point; ``seg_fp`` -> -1."""
    s = pd.Series(codes, dtype=object)
    out = np.full(len(s), -1, dtype=np.int64)
    real = (s != SEG_FP).to_numpy()
    out[real] = s[real].str.slice(2).apply(int, base=16).to_numpy(np.int64) if real.any() else []
    return out


def max_overlap(df: pd.DataFrame, kind: str = "upstream") -> np.ndarray:
    """Each box's highest overlap with another box of its page: ``upstream`` (the original
    solution's ``box_overlap``) is the intersection over the *other* box's area, in whole pixels
    with both ends counted (+1), so a box that contains another scores 1 and the contained one the
    ratio of the areas; ``iou`` is the intersection over union, small for both when one box nests
    in a much larger one."""
    if kind not in OVERLAPS:
        raise ValueError(f"overlap {kind!r} is not one of {', '.join(OVERLAPS)}")
    out = np.zeros(len(df))
    b = df[["x", "y", "w", "h"]].to_numpy(np.float64)
    if kind == "iou":
        import torch  # torchvision's box ops, only for this overlap: they bring torch._dynamo along
        from torchvision.ops import box_convert, box_iou

        xyxy = box_convert(torch.tensor(b), "xywh", "xyxy")
    for rows in df.groupby("image_id", sort=False).indices.values():
        if len(rows) < 2:
            continue
        if kind == "iou":
            m = box_iou(xyxy[rows], xyxy[rows]).numpy()
        else:
            x0, y0, x1, y1 = b[rows, 0], b[rows, 1], b[rows, 0] + b[rows, 2], b[rows, 1] + b[rows, 3]
            iw = np.maximum(0, np.minimum(x1[:, None], x1[None]) - np.maximum(x0[:, None], x0[None]) + 1)
            ih = np.maximum(0, np.minimum(y1[:, None], y1[None]) - np.maximum(y0[:, None], y0[None]) + 1)
            m = iw * ih / ((b[rows, 2] + 1) * (b[rows, 3] + 1))[None]  # [i, j]: over box j's area
        np.fill_diagonal(m, 0)
        out[rows] = m.max(axis=1)
    return out


def group_table(df: pd.DataFrame, g: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-box top-3 classes and scores of group g, long (row, cls, score) of its whole top-k)."""
    long = top_k_long(df)
    long["rank"] = long.groupby("row").cumcount()
    top = long[long["rank"] < TOP].pivot(index="row", columns="rank")
    box = pd.DataFrame(index=np.arange(len(df)))
    for r in range(TOP):
        box[f"g{g}_cls{r}"] = top[("cls", r)].reindex(box.index).fillna(SEG_FP).to_numpy() if ("cls", r) in top else SEG_FP
        box[f"g{g}_score{r}"] = top[("logit", r)].reindex(box.index).fillna(-99.0).to_numpy() if ("logit", r) in top else -99.0
    return box, long.rename(columns={"logit": f"g{g}_cand_score"})[["row", "cls", f"g{g}_cand_score"]]


def build(groups: Sequence[pd.DataFrame], overlap: str = "upstream") -> pd.DataFrame:
    """Candidate rows for blended detailed frames of the same boxes (one per group); ``overlap``
    chooses the box-overlap feature (``max_overlap``), named after it."""
    if not groups:
        raise DataError("no groups of detailed files given")
    check_same_boxes(groups, [f"group {g}" for g in range(len(groups))])
    base = groups[0][KEY + ["true"]].reset_index(drop=True)
    boxes = base.copy()
    boxes[OVERLAP_COLUMN[overlap]] = max_overlap(base, overlap)
    boxes["page_boxes"] = base.groupby("image_id")["x"].transform("size").to_numpy()
    cands, longs = [], []
    for g, df in enumerate(groups):
        box, long = group_table(df.reset_index(drop=True), g)
        boxes = pd.concat([boxes, box], axis=1)
        longs.append(long)
        for r in range(TOP):
            cands.append(pd.DataFrame({"row": np.arange(len(df)), "cls": box[f"g{g}_cls{r}"].to_numpy()}))
    cands.append(pd.DataFrame({"row": np.arange(len(base)), "cls": SEG_FP}))
    rows = pd.concat(cands).drop_duplicates(["row", "cls"]).sort_values(["row"], kind="stable").reset_index(drop=True)
    for long in longs:
        rows = rows.merge(long.drop_duplicates(["row", "cls"]), on=["row", "cls"], how="left")
    rows = rows.merge(boxes, left_on="row", right_index=True, how="left")
    for g in range(len(groups)):
        rows[f"g{g}_cand_score"] = rows[f"g{g}_cand_score"].fillna(0.0)  # absent from the top-k: 0, as in blending
        for r in range(TOP):
            rows[f"g{g}_is_top{r}"] = (rows[f"g{g}_cls{r}"] == rows["cls"]).astype(np.int8)
            rows[f"g{g}_cls{r}"] = encode_class(rows[f"g{g}_cls{r}"])
        rows[f"g{g}_gap"] = rows[f"g{g}_score0"] - rows[f"g{g}_score1"]
    score_cols = [f"g{g}_cand_score" for g in range(len(groups))]
    rows["cand_score_mean"] = rows[score_cols].mean(axis=1)
    rows["cand_rank"] = rows.groupby("row")["cand_score_mean"].rank(ascending=False, method="first")
    rows["cand"] = encode_class(rows["cls"])
    rows["cand_is_seg_fp"] = (rows["cls"] == SEG_FP).astype(np.int8)
    if (base["true"] != "").all():
        true = base["true"].to_numpy(object)
        in_cands = pd.Series(False, index=np.arange(len(base)))
        hit = rows.loc[rows["cls"].to_numpy(object) == true[rows["row"].to_numpy()], "row"].unique()
        in_cands[hit] = True
        true = np.where(in_cands.to_numpy(), true, SEG_FP)  # an unreachable class counts as seg_fp
        rows["target"] = (rows["cls"].to_numpy(object) == true[rows["row"].to_numpy()]).astype(np.int8)
    return rows


UPSTREAM_FEATURE = re.compile(r"^(g\d+_(cls|score|is_top)\d+|box_overlap|max_iou|cand)$")


def feature_columns(rows: pd.DataFrame, features: str = "extended") -> list[str]:
    """The model inputs: ``upstream`` = the original solution's (each kind's top-3 classes and
    scores, whether each is the candidate, the box's overlap with others, the candidate class);
    ``extended`` adds each kind's score of the candidate, the gaps, the mean score and rank of the
    candidate, the box size and the page's box count."""
    skip = {"row", "cls", "image_id", "x", "y", "true", "target", "fold"}
    cols = [c for c in rows.columns if c not in skip and not c.startswith("prob")]
    return [c for c in cols if UPSTREAM_FEATURE.match(c)] if features == "upstream" else cols


def build_from_files(groups: Mapping[str, Sequence[Path]], overlap: str = "upstream") -> pd.DataFrame:
    """Blend each group's files, then build the candidate rows."""
    blended = [blend_files([Path(p) for p in paths]) for paths in groups.values()]
    rows = build(blended, overlap)
    rows.attrs["groups"] = list(groups)
    return rows
