"""The detailed format: one row per box with its top-k classes and logits, written by every
classifier and read by the blends, pseudolabels, level 2 and the runner's summary. One home for
reading and writing it, blending several files of the same boxes, and turning predictions into a
submission.

Columns: ``image_id,x,y,w,h,pred,true,top_k_classes,top_k_logits`` (top-k as space-separated
strings; ``true`` is empty on test pages). Files of one split hold the same boxes in the same
order whatever the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kzlib.data import SEG_FP, DataError
from kzlib.io import atomic_path
from kzlib.metric import submission_from_points

DETAILED_COLUMNS = ["image_id", "x", "y", "w", "h", "pred", "true", "top_k_classes", "top_k_logits"]
KEY = ["image_id", "x", "y", "w", "h"]


def write_detailed(df: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, compression="gzip")


def read_detailed(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: detailed file not found")
    df = pd.read_csv(path, dtype={"image_id": str, "pred": str, "true": str, "top_k_classes": str,
                                  "top_k_logits": str}, keep_default_na=False)
    missing = [c for c in DETAILED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: not a detailed file (missing {', '.join(missing)})")
    return df


def submission_from_detailed(df: pd.DataFrame, pred_column: str = "pred") -> pd.DataFrame:
    """Boxes whose class (``pred_column``) is not ``seg_fp``, as centre points, in submission rows."""
    keep = df[df[pred_column] != SEG_FP]
    centres = keep[["x", "y"]].to_numpy(np.float64) + keep[["w", "h"]].to_numpy(np.float64) / 2
    return submission_from_points(keep[pred_column].to_numpy(), centres, keep["image_id"].to_numpy())


def top_k_long(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (box, rank): columns row, cls, logit."""
    classes = df["top_k_classes"].str.split(" ", expand=True)
    logits = df["top_k_logits"].str.split(" ", expand=True).astype(np.float64)
    k = classes.shape[1]
    return pd.DataFrame({"row": np.repeat(np.arange(len(df)), k), "cls": classes.to_numpy(object).ravel(),
                         "logit": logits.to_numpy(np.float64).ravel()}).dropna(subset=["cls"])


def check_same_boxes(frames: Sequence[pd.DataFrame], names: Sequence[str]) -> None:
    """Blended files must describe the same boxes in the same order."""
    ref = frames[0][KEY].reset_index(drop=True)
    for df, name in zip(frames[1:], names[1:]):
        if len(df) != len(ref):
            raise DataError(f"{name}: {len(df)} boxes, but {names[0]} has {len(ref)}; blend detailed files of the same boxes")
        cur = df[KEY].reset_index(drop=True)
        same = np.array(cur["image_id"] == ref["image_id"], dtype=bool)
        for c in KEY[1:]:
            same &= np.isclose(cur[c].to_numpy(float), ref[c].to_numpy(float), atol=0.06)
        if not same.all():
            r = int(np.flatnonzero(~same)[0])
            raise DataError(f"{name}: row {r + 2}: box differs from {names[0]} (same boxes in the same order needed)")


def blend(frames: Sequence[pd.DataFrame], top_k: int = 5, names: Sequence[str] | None = None,
          weights: Sequence[float] | None = None) -> pd.DataFrame:
    """A detailed frame whose top-k are the blended scores of ``frames`` (the same boxes)."""
    names = list(names or [f"detailed file {i + 1}" for i in range(len(frames))])
    check_same_boxes(frames, names)
    w = np.ones(len(frames)) if weights is None else np.asarray(weights, dtype=np.float64)
    long = pd.concat([top_k_long(df).assign(logit=lambda t, wi=wi: t["logit"] * wi) for df, wi in zip(frames, w)])
    scores = (long.groupby(["row", "cls"], sort=False)["logit"].sum() / w.sum()).reset_index()
    scores = scores.sort_values(["row", "logit"], ascending=[True, False], kind="stable")
    scores = scores[scores.groupby("row").cumcount() < top_k]
    scores["txt"] = np.char.mod("%.4f", scores["logit"].to_numpy())
    agg = scores.groupby("row").agg(classes=("cls", " ".join), logits=("txt", " ".join))
    out = frames[0][KEY + ["true"]].reset_index(drop=True).copy()
    # as strings even when there are no boxes (an empty reindex would be float)
    out["top_k_classes"] = agg["classes"].reindex(out.index).fillna("").astype(str).to_numpy()
    out["top_k_logits"] = agg["logits"].reindex(out.index).fillna("").astype(str).to_numpy()
    out["pred"] = out["top_k_classes"].str.split(" ").str[0]
    return out[DETAILED_COLUMNS]


def blend_files(paths: Sequence[Path], top_k: int = 5, weights: Sequence[float] | None = None) -> pd.DataFrame:
    paths = [Path(p) for p in paths]
    return blend([read_detailed(p) for p in paths], top_k, [str(p) for p in paths], weights)
