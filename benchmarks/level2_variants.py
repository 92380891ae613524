"""Level 2 of a finished run under upstream's and today's XGBoost settings and both overlap features.

    .venv/bin/python benchmarks/level2_variants.py --work demo/run --data demo/data [--out /tmp/l2]

From the run's own detailed files (the classifiers' held-out and test predictions), level 2 is
trained again for each combination of the box-overlap feature (upstream's intersection over the
other box's area, or the IoU) and XGBoost's early-stopping metric and split method (upstream's
xgboost 0.90 defaults ``error``/``exact``, or today's ``logloss``/``hist``), once with the run's
libraries and once with XGBoost alone (where the setting acts undiluted). Prints the held-out F1
(the folds' pages) and, when the data folder has ``test_labels.csv``, the test F1 of each.
"""

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from kzlib.config import config_dict, config_from_dict, read_json  # noqa: E402
from kzlib.data import read_labels_csv  # noqa: E402
from kzlib.io import write_json_atomic  # noqa: E402
from kzlib.metric import read_submission, score  # noqa: E402
from kzlib.preset import PipelineConfig  # noqa: E402
from kzlib.stack import run as level2  # noqa: E402
from kzlib.stages import classifier_kinds  # noqa: E402
from kzlib.work import WorkDir  # noqa: E402

XGB = {"upstream (error, exact)": {"eval_metric": "error", "tree_method": "exact"},
       "today (logloss, hist)": {"eval_metric": "logloss", "tree_method": "hist"}}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--work", type=Path, required=True, help="a finished runner work folder")
    p.add_argument("--data", type=Path, required=True, help="its data folder")
    p.add_argument("--out", type=Path, default=Path("/tmp/level2_variants"))
    a = p.parse_args()
    work = WorkDir(a.work)
    cfg = config_from_dict(PipelineConfig, read_json(work.preset), str(work.preset))
    kinds, base = classifier_kinds(cfg), cfg.stack_config()
    truth = a.data / "test_labels.csv"
    rows = []
    for overlap in ("upstream", "iou"):
        feats = []
        for k in range(cfg.n_folds):
            groups = {kind: [str(work.classifier(kind, k).detailed("valid"))] for kind in kinds}
            feats.append(a.out / overlap / f"features_fold{k}.csv.gz")
            level2.build_features(groups, feats[-1], overlap)
        test = a.out / overlap / "features_test.csv.gz"
        level2.build_features({kind: [str(work.classifier(kind, k).detailed("test")) for k in range(cfg.n_folds)]
                               for kind in kinds}, test, overlap)
        for xgb_name, xgb in XGB.items():
            for libraries in (base.libraries, ("xgboost",)):
                weights = base.weights if libraries == base.libraries else (1.0,)
                c = replace(base, overlap=overlap, libraries=tuple(libraries), weights=tuple(weights),
                            xgboost={**base.xgboost, **xgb})
                name = f"{overlap}-{xgb['eval_metric']}-{'+'.join(libraries)}"
                folder = a.out / name
                folder.mkdir(parents=True, exist_ok=True)
                write_json_atomic(config_dict(c), folder / "stack_config.json")
                t0 = time.time()
                result = level2.train(feats, a.data, folder / "models", folder / "stack_config.json")
                valid = next(r["all"] for r in result["report"] if r["method"] == "level 2")
                level2.predict(folder / "models", test, a.data, folder / "submission.csv")
                row = {"overlap": overlap, "xgboost": xgb_name, "libraries": "+".join(libraries),
                       "valid F1": round(valid, 4), "seconds": round(time.time() - t0, 1)}
                if truth.is_file():
                    row["test F1"] = round(score(read_submission(folder / "submission.csv"),
                                                 read_labels_csv(truth))["f1"], 4)
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(pd.DataFrame(rows).to_string(index=False))


if __name__ == "__main__":
    main()
