"""Stage 3: blend classifiers' detailed files and keep the confident boxes as pseudolabels.

  python -m kzlib.pseudolabel TEST_DETAILED... --out PSEUDO_CSV [--min-gap 5] [--max-second-score 10]

Blending follows the original solution: per box, a class's score is the mean over models of its
logit in each model's top-k (0 where a model's top-k lacks it). A box is kept when the best score
beats the second by ``min_gap`` and the second is at most ``max_second_score`` (seg_fp boxes
are kept as seg_fp labels unless ``--drop-seg-fp``). The kept boxes are
written in the train.csv format, ready for ``kzlib.classify train --pseudolabels``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kzlib.cli import one_line_errors
from kzlib.classify.predict import DETAILED_COLUMNS, read_detailed
from kzlib.data import SEG_FP, DataError
from kzlib.io import write_csv_atomic, write_json_atomic
from kzlib.metric import labels_from_rows

KEY = ["image_id", "x", "y", "w", "h"]


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


def top_two(df: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    logits = df["top_k_logits"].str.split(" ", expand=True).astype(np.float64).to_numpy()
    if logits.shape[1] == 0:  # no boxes
        return np.zeros(0), np.zeros(0)
    second = logits[:, 1] if logits.shape[1] > 1 else np.full(len(df), -np.inf)
    return logits[:, 0], np.nan_to_num(second, nan=-np.inf)


def select(df: pd.DataFrame, min_gap: float = 5.0, max_second_score: float = 10.0, drop_seg_fp: bool = False) -> np.ndarray:
    """Boolean mask of the confident boxes."""
    top, second = top_two(df)
    keep = (top - second >= min_gap) & (second <= max_second_score)
    if drop_seg_fp:
        keep &= (df["pred"] != SEG_FP).to_numpy()
    return keep


def labels_file(df: pd.DataFrame) -> pd.DataFrame:
    """Kept boxes as ``image_id,labels`` (``U+XXXX x y w h`` ...), pages in order of appearance."""
    b = df[["x", "y", "w", "h"]].to_numpy(np.float64).round().astype(np.int64)
    b[:, 2:] = np.maximum(b[:, 2:], 1)
    return labels_from_rows(df["pred"].to_numpy(object), b, df["image_id"].to_numpy(object))


def report(df: pd.DataFrame, keep: np.ndarray) -> dict:
    out = {"boxes": int(len(df)), "kept": int(keep.sum()), "kept_fraction": float(keep.mean()) if len(df) else 0.0,
           "pages": int(df.loc[keep, "image_id"].nunique())}
    if len(df) and (df["true"] != "").all():  # validation files: the truth is known
        kept = df[keep]
        out["kept_accuracy"] = float((kept["pred"] == kept["true"]).mean()) if len(kept) else float("nan")
        out["all_accuracy"] = float((df["pred"] == df["true"]).mean())
    return out


def write_pseudolabels(blended: pd.DataFrame, out: Path, min_gap: float = 5.0, max_second_score: float = 10.0,
                       drop_seg_fp: bool = False) -> dict:
    """Keep the confident boxes of a blended detailed frame, write them as a labels file, and
    return the report."""
    keep = select(blended, min_gap, max_second_score, drop_seg_fp)
    write_csv_atomic(labels_file(blended[keep]), out)
    return report(blended, keep)


@one_line_errors(DataError)
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m kzlib.pseudolabel", description=__doc__.split("\n")[0],
                                epilog=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("detailed", type=Path, nargs="+", help="test_detailed.csv.gz files of the same boxes")
    p.add_argument("--out", type=Path, required=True, help="pseudolabel file (train.csv format)")
    p.add_argument("--min-gap", type=float, default=5.0)
    p.add_argument("--max-second-score", type=float, default=10.0)
    p.add_argument("--drop-seg-fp", action="store_true",
                   help="drop confident boxes whose blended class is seg_fp (kept by default, as upstream)")
    p.add_argument("--blend-out", type=Path, help="also write the blended detailed file here")
    a = p.parse_args(argv)
    df = blend_files(a.detailed)
    result = write_pseudolabels(df, a.out, a.min_gap, a.max_second_score, a.drop_seg_fp)
    if a.blend_out:
        from kzlib.classify.predict import write_detailed

        write_detailed(df, a.blend_out)
    write_json_atomic(result, a.out.with_suffix(".json"))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
