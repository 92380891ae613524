import json
import sys
from pathlib import Path

from kzlib.cli import one_line_errors, parser
from kzlib.data import DataError
from kzlib.stack import __doc__ as DOC
from kzlib.stack.config import OVERLAPS
from kzlib.stack.run import build_features, predict, train


@one_line_errors(DataError, ValueError, FileNotFoundError, json.JSONDecodeError)
def main(argv=None) -> int:
    p = parser("python -m kzlib.stack", DOC)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("features", help="candidate rows from groups of detailed files")
    f.add_argument("groups", type=Path, help='JSON: {"kind": [detailed files...], ...}; each group is blended first')
    f.add_argument("--out", type=Path, required=True, help="features file (.csv.gz)")
    f.add_argument("--overlap", choices=OVERLAPS, default="upstream",
                   help="box overlap feature: over the other box's area (upstream) or IoU; as the config's overlap")
    t = sub.add_parser("train", help="per-fold LightGBM, XGBoost and CatBoost on the folds' features")
    t.add_argument("features", type=Path, nargs="+", help="one features file per fold (validation detailed files)")
    t.add_argument("--data", type=Path, required=True, help="dataset folder (train.csv: the truth for F1)")
    t.add_argument("--out", type=Path, required=True, help="model folder")
    t.add_argument("--config", type=Path, help="JSON StackConfig")
    pr = sub.add_parser("predict", help="submission from test features")
    pr.add_argument("model_dir", type=Path)
    pr.add_argument("features", type=Path, help="test features (test_detailed files, same groups)")
    pr.add_argument("--data", type=Path, required=True, help="dataset folder (sample_submission.csv: the page list)")
    pr.add_argument("--out", type=Path, required=True, help="submission.csv")
    a = p.parse_args(argv)

    if a.cmd == "features":
        groups = json.loads(a.groups.read_text())
        print(json.dumps(build_features(groups, a.out, a.overlap)))
    elif a.cmd == "train":
        print(json.dumps(train(a.features, a.data, a.out, a.config), indent=1))
    else:
        print(json.dumps(predict(a.model_dir, a.features, a.data, a.out)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
