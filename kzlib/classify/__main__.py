import argparse
import json
import sys
from pathlib import Path

from kzlib.classify import __doc__ as DOC
from kzlib.classify.config import ClassifyConfig
from kzlib.cli import add_training_flags, device_arg, one_line_errors, parser
from kzlib.config import add_config_flags, config_from_args, given_flags
from kzlib.data import DataDir, DataError
from kzlib.runs import RunDir


@one_line_errors(ValueError)
def main(argv=None) -> int:
    p = parser("python -m kzlib.classify", DOC)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one fold's classifier on the detector's OOF boxes")
    t.add_argument("data_dir", type=Path)
    t.add_argument("--boxes", type=Path, required=True, help="oof_boxes.csv (image_id,x,y,w,h,score,true)")
    add_training_flags(t)
    t.add_argument("--pseudolabels", type=Path, nargs="+", default=[],
                   help="pseudolabel files (train.csv format, test images) added to training")
    t.add_argument("--pseudolabels-oversample", dest="pseudo_oversample", type=int,
                   help=argparse.SUPPRESS)  # deprecated name of --pseudo-oversample
    add_config_flags(t.add_argument_group("config"), ClassifyConfig)
    pr = sub.add_parser("predict", help="detailed file and submission for held-out (valid) or test pages")
    pr.add_argument("run_dir", type=Path)
    pr.add_argument("data_dir", type=Path)
    pr.add_argument("--boxes", type=Path, required=True, help="oof_boxes.csv (valid) or test_boxes.csv (test)")
    pr.add_argument("--split", choices=("valid", "test"), required=True)
    pr.add_argument("--n-tta", type=int, default=4, help="number of scales (default 4)")
    pr.add_argument("--out", type=Path, help="output folder (default RUN_DIR)")
    pr.add_argument("--device", type=device_arg, help="override the run's device (cpu, cuda)")
    a = p.parse_args(argv)
    if a.cmd == "train":
        cfg = config_from_args(ClassifyConfig, a, a.config)
        DataDir(a.data_dir).require("train_csv", "train_images")
    else:
        RunDir(a.run_dir).require_trained()
        DataDir(a.data_dir).require()
    for f in [a.boxes, *getattr(a, "pseudolabels", [])]:
        if not f.is_file():
            raise DataError(f"{f}: no such file")
    # torch and the classifier: only once the arguments, the folders and the files are checked
    from kzlib import training
    from kzlib.classify import predict, train

    if a.cmd == "train":
        val = [v for v in a.val_images.split(",") if v] if a.val_images else None
        mode = "auto" if a.auto else "resume" if a.resume else "start"
        result = train.train(a.data_dir, a.boxes, a.out, cfg, a.fold, val, a.pseudolabels, mode,
                             given_flags(ClassifyConfig, a), deadline=a.deadline)
        training.finish_training(result, a.out, a.result)
    else:
        result = predict.predict(a.run_dir, a.data_dir, a.boxes, a.split, a.n_tta, a.out, a.device)
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
