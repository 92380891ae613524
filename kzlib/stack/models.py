"""Level-2 models: per fold, LightGBM, XGBoost and CatBoost binary classifiers on the candidate rows
(train on the other folds, early-stop on the fold), blended, best candidate per box."""

from __future__ import annotations

import inspect
import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from kzlib.data import DataError
from kzlib.config import config_from_dict
from kzlib.stack.config import LIBRARIES, StackConfig
from kzlib.io import atomic_path, write_json_atomic
from kzlib.stack.features import feature_columns

def _fit(lib: str, cfg: StackConfig, X, y, Xv, yv):
    if lib == "lightgbm":
        import lightgbm as lgb

        model = lgb.LGBMClassifier(n_estimators=cfg.rounds, random_state=cfg.seed, n_jobs=cfg.threads or None,
                                   verbose=-1, **cfg.lightgbm)
        # lightgbm 4.7 takes eval_X/eval_y (eval_set is deprecated); the Kaggle image's 4.6 only eval_set
        newer = "eval_X" in inspect.signature(lgb.LGBMClassifier.fit).parameters
        evals = {"eval_X": (Xv,), "eval_y": (yv,)} if newer else {"eval_set": [(Xv, yv)]}
        model.fit(X, y, **evals, callbacks=[lgb.early_stopping(cfg.early_stopping, verbose=False)])
        return model
    if lib == "xgboost":
        import xgboost as xgb

        params = {"tree_method": "hist", "eval_metric": "logloss", **cfg.xgboost}  # today's defaults unless named
        model = xgb.XGBClassifier(n_estimators=cfg.rounds, random_state=cfg.seed, n_jobs=cfg.threads or None,
                                  early_stopping_rounds=cfg.early_stopping, **params)
        model.fit(X, y, eval_set=[(Xv, yv)], verbose=False)
        return model
    if lib == "catboost":
        import catboost as cb

        model = cb.CatBoostClassifier(iterations=cfg.rounds, random_seed=cfg.seed, thread_count=cfg.threads or -1,
                                      verbose=False, early_stopping_rounds=cfg.early_stopping,
                                      allow_writing_files=False, **cfg.catboost)
        model.fit(X, y, eval_set=(Xv, yv))
        return model
    raise ValueError(f"unknown library {lib!r} (one of {', '.join(LIBRARIES)})")


def _save(model, lib: str, path: Path) -> None:
    with atomic_path(path) as tmp:
        if lib == "lightgbm":
            model.booster_.save_model(str(tmp))
        elif lib == "xgboost":
            model.save_model(str(tmp.with_suffix(".json")))
            tmp.with_suffix(".json").rename(tmp)
        else:
            model.save_model(str(tmp))


def _load(lib: str, path: Path):
    if lib == "lightgbm":
        import lightgbm as lgb

        return lgb.Booster(model_file=str(path))  # keeps the early-stopped best iteration
    if lib == "xgboost":
        import xgboost as xgb

        model = xgb.XGBClassifier()
        model.load_model(bytearray(path.read_bytes()))
        return model
    import catboost as cb

    return cb.CatBoostClassifier().load_model(str(path))


def _proba(model, X: pd.DataFrame) -> np.ndarray:
    """Probability of the positive class, from a fitted estimator or a loaded LightGBM booster."""
    return model.predict_proba(X)[:, 1] if hasattr(model, "predict_proba") else model.predict(X)


def blend_probabilities(probs: dict[str, np.ndarray], cfg: StackConfig) -> np.ndarray:
    w = dict(zip(cfg.libraries, cfg.weights))
    total = sum(w[lib] for lib in probs)
    return sum(w[lib] * p for lib, p in probs.items()) / total


def pick_best(rows: pd.DataFrame, prob: np.ndarray) -> pd.DataFrame:
    """Per box, the candidate of highest probability (a box-level frame, in box order)."""
    t = rows[["row", "image_id", "x", "y", "w", "h", "cls"]].assign(prob=prob)
    best = t.sort_values(["row", "prob"], ascending=[True, False], kind="stable").drop_duplicates("row")
    return best.sort_values("row").reset_index(drop=True)


class TooFewRows(DataError):
    """The folds' candidate rows cannot train level 2 (no rows in a fold, or one target class)."""


def train_folds(folds: Sequence[pd.DataFrame], out: Path, cfg: StackConfig) -> pd.DataFrame:
    """Train every library per fold into ``out``; returns the OOF candidate rows with ``prob``."""
    if len(folds) < 2:
        raise DataError("level 2 needs the features of at least two folds (train on the others, stop early on one)")
    for k, f in enumerate(folds):
        if "target" not in f:
            raise DataError(f"fold {k}: features have no target (built from test files?)")
    offsets = np.cumsum([0] + [int(f["row"].max()) + 1 if len(f) else 0 for f in folds])
    data = pd.concat([f.assign(fold=k, row=f["row"] + offsets[k]) for k, f in enumerate(folds)], ignore_index=True)
    for k in range(len(folds)):
        tr, va = data.loc[data["fold"] != k, "target"], data.loc[data["fold"] == k, "target"]
        if tr.nunique() < 2 or len(va) == 0:
            raise TooFewRows(f"level 2 cannot be trained: fold {k} has {len(va)} candidate rows and the other folds "
                             f"{len(tr)} with {int(tr.sum())} positives (both classes and rows in every fold needed)")
    cols = feature_columns(data, cfg.features)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    probs = {lib: np.zeros(len(data)) for lib in cfg.libraries}
    timings = {}
    for k in tqdm(range(len(folds)), desc="level 2 folds", unit="fold", disable=None):
        tr, va = data["fold"] != k, data["fold"] == k
        for lib in cfg.libraries:
            t0 = time.time()
            model = _fit(lib, cfg, data.loc[tr, cols], data.loc[tr, "target"], data.loc[va, cols], data.loc[va, "target"])
            _save(model, lib, out / f"fold{k}_{lib}.model")
            probs[lib][va.to_numpy()] = _proba(model, data.loc[va, cols])
            timings[f"fold{k}_{lib}"] = time.time() - t0
    write_json_atomic({"config": asdict(cfg), "features": cols, "folds": len(folds), "seconds": timings},
                      out / "stack.json")
    data["prob"] = blend_probabilities(probs, cfg)
    for lib in cfg.libraries:
        data[f"prob_{lib}"] = probs[lib]
    return data


def read_models(model_dir: Path) -> tuple[dict, StackConfig]:
    """A level-2 model folder's ``stack.json`` and the config its models were trained with."""
    meta_path = Path(model_dir) / "stack.json"
    if not meta_path.exists():
        raise DataError(f"{model_dir}: not a level-2 model folder (no stack.json)")
    meta = json.loads(meta_path.read_text())
    config = {"overlap": "iou", **meta["config"]}  # models made before the option existed used the IoU
    return meta, config_from_dict(StackConfig, config, str(meta_path))


def predict_rows(model_dir: Path, rows: pd.DataFrame) -> np.ndarray:
    """Blended probability of each candidate row from every fold's models."""
    model_dir = Path(model_dir)
    meta, cfg = read_models(model_dir)
    missing = [c for c in meta["features"] if c not in rows.columns]
    if missing:
        raise DataError(f"features lack column(s) {', '.join(missing[:5])}: build them with the same groups as training")
    X = rows[meta["features"]]
    probs = {}
    for lib in cfg.libraries:
        probs[lib] = np.mean([_proba(_load(lib, model_dir / f"fold{k}_{lib}.model"), X)
                              for k in range(meta["folds"])], axis=0)
    return blend_probabilities(probs, cfg)
