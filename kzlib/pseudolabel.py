"""Stage 3: blend classifiers' detailed files and keep the confident boxes as pseudolabels.

  python -m kzlib.pseudolabel TEST_DETAILED... --out PSEUDO_CSV [--min-gap 5] [--max-second-score 10]

Blending follows the original solution: per box, a class's score is the mean over models of its
logit in each model's top-k (0 where a model's top-k lacks it). A box is kept when the best score
beats the second by ``min_gap`` and the second is at most ``max_second_score`` (seg_fp boxes
are kept as seg_fp labels unless ``--drop-seg-fp``). The kept boxes are
written in the train.csv format, ready for ``kzlib.classify train --pseudolabels``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kzlib.cli import one_line_errors, parser
from kzlib.detailed import blend_files, write_detailed
from kzlib.data import SEG_FP, DataError
from kzlib.io import write_csv_atomic, write_json_atomic
from kzlib.metric import labels_from_rows

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
    p = parser("python -m kzlib.pseudolabel", __doc__)
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
        write_detailed(df, a.blend_out)
    write_json_atomic(result, a.out.with_suffix(".json"))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
