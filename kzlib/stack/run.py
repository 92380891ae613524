"""The three level-2 jobs behind the CLI: features, train (with the F1 report), predict."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from kzlib.data import SEG_FP, DataDir, DataError, read_labels_csv
from kzlib.detailed import submission_from_detailed
from kzlib.io import atomic_path, write_csv_atomic, write_json_atomic
from kzlib.metric import score_on_pages, write_submission
from kzlib.stack.features import build_from_files
from kzlib.stack.config import StackConfig
from kzlib.stack.models import pick_best, predict_rows, train_folds
from kzlib.config import load_config


def build_features(groups: Mapping[str, Sequence[str]], out: Path, overlap: str = "upstream") -> dict:
    if not isinstance(groups, dict) or not groups or not all(isinstance(v, list) and v for v in groups.values()):
        raise DataError('groups: expected {"kind": ["detailed file", ...], ...} with at least one file per kind')
    t0 = time.time()
    rows = build_from_files({k: [Path(p) for p in v] for k, v in groups.items()}, overlap)
    seconds = time.time() - t0
    with atomic_path(out) as tmp:
        rows.to_csv(tmp, index=False, compression="gzip")
    write_json_atomic({"groups": groups}, Path(str(out) + ".json"))
    return {"features": str(out), "boxes": int(rows["row"].nunique()), "rows": int(len(rows)),
            "seconds": round(seconds, 2), "boxes_per_s": round(rows["row"].nunique() / max(seconds, 1e-9))}


def read_features(path: Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: features file not found (python -m kzlib.stack features ...)")
    return pd.read_csv(path, dtype={"image_id": str, "cls": str, "true": str}, keep_default_na=False)


def f1_of(best: pd.DataFrame, solution: pd.DataFrame) -> float:
    """Competition F1 of a box-level prediction frame (cls per box) on the pages it covers."""
    return score_on_pages(submission_from_detailed(best, "cls"), solution, best["image_id"].unique())["f1"]


def train(features: Sequence[Path], data_dir: Path, out: Path, config: Path | None = None) -> dict:
    cfg = load_config(StackConfig, config) if config else StackConfig()
    folds = [read_features(p) for p in features]
    n_groups = sum(c.endswith("_cand_score") for c in folds[0].columns)
    truth = read_labels_csv(DataDir(Path(data_dir)).train_csv)
    unknown = sorted(set(pd.concat([f["image_id"] for f in folds])) - set(truth["image_id"]))
    if unknown:
        raise DataError(f"features name pages not in {DataDir(Path(data_dir)).train_csv}: {', '.join(unknown[:5])}")
    t0 = time.time()
    data = train_folds(folds, Path(out), cfg)
    seconds = time.time() - t0
    methods = {f"group {g}": data[f"g{g}_cand_score"].to_numpy() for g in range(n_groups)}
    methods["blend"] = data["cand_score_mean"].to_numpy()
    for lib in cfg.libraries:
        methods[lib] = data[f"prob_{lib}"].to_numpy()
    methods["level 2"] = data["prob"].to_numpy()
    table = []
    for name, score in methods.items():
        best = pick_best(data, score)
        per = {}
        for k in range(len(folds)):
            part = pick_best(data[data["fold"] == k], score[(data["fold"] == k).to_numpy()])
            per[f"fold {k}"] = f1_of(part, truth)
        per["all"] = f1_of(best, truth)
        table.append({"method": name, **per})
    report = pd.DataFrame(table)
    write_csv_atomic(report, Path(out) / "report.csv")
    result = {"seconds": round(seconds, 1), "rows": int(len(data)), "report": report.round(4).to_dict("records")}
    write_json_atomic(result, Path(out) / "report.json")
    print(report.round(4).to_string(index=False))
    return result


def predict(model_dir: Path, features: Path, data_dir: Path, out: Path) -> dict:
    rows = read_features(features)
    d = DataDir(Path(data_dir))
    d.require("sample_submission_csv")
    ids = read_labels_csv(d.sample_submission_csv)["image_id"].tolist()
    prob = predict_rows(model_dir, rows)
    best = pick_best(rows, prob)
    write_submission(submission_from_detailed(best, "cls"), out, ids)
    return {"submission": str(out), "boxes": int(len(best)), "characters": int((best["cls"] != SEG_FP).sum()),
            "pages": len(ids)}

