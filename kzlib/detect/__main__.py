import argparse
import sys
from pathlib import Path

from kzlib.cli import add_training_flags, device_arg, one_line_errors, parser
from kzlib.config import add_config_flags, config_from_args, given_flags
from kzlib.data import DataDir
from kzlib.detect import __doc__ as DOC
from kzlib.detect.config import TEST_MATCHES, DetectConfig, TestBoxRule
from kzlib.runs import RunDir


@one_line_errors(ValueError)
def main(argv=None) -> int:
    p = parser("python -m kzlib.detect", DOC, epilog=False)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train", help="train one fold's detector")
    t.add_argument("data_dir", type=Path)
    add_training_flags(t)
    add_config_flags(t.add_argument_group("config"), DetectConfig)
    pr = sub.add_parser("predict", help="boxes for the run's held-out pages (oof) or the test pages")
    pr.add_argument("run_dir", type=Path)
    pr.add_argument("data_dir", type=Path)
    pr.add_argument("--split", choices=("valid", "test", "oof"), required=True,
                    help="valid: the run's held-out train pages (-> oof_boxes.csv; oof is an old name of it), or test")
    pr.add_argument("--out", type=Path, help="default: RUN_DIR/oof_boxes.csv (valid) or RUN_DIR/test_boxes.csv")
    pr.add_argument("--device", type=device_arg, help="override the run's device (cpu, cuda)")
    pr.add_argument("--score-threshold", type=float, help="override the run's inference score threshold")
    m = sub.add_parser("merge-oof", help="concatenate the folds' OOF boxes")
    m.add_argument("run_dirs", type=Path, nargs="+")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--data", type=Path, help="dataset folder (default: the one the runs were trained on)")
    mt = sub.add_parser("merge-test", help="vote the folds' test boxes into one shared set")
    mt.add_argument("files", type=Path, nargs="+", help="the folds' test_boxes.csv")
    mt.add_argument("--out", type=Path, required=True)
    mt.add_argument("--test-votes", type=int, dest="min_votes",
                    help="folds that must agree on a box (default: a majority), as the preset's test_votes")
    mt.add_argument("--min-votes", type=int, dest="min_votes", help=argparse.SUPPRESS)  # deprecated name
    mt.add_argument("--test-match", choices=TEST_MATCHES, default="iou",
                    help="two folds' boxes are one glyph when their IoU is at least 0.5 (iou, the default) or "
                         "when the centre of either lies inside the other (centre); the preset's test_match")
    a = p.parse_args(argv)
    if a.cmd == "train":
        cfg = config_from_args(DetectConfig, a, a.config)
        DataDir(a.data_dir).require("train_csv", "train_images")
    elif a.cmd == "predict":
        RunDir(a.run_dir).require_trained()
        DataDir(a.data_dir).require()
    # torch and the detector: only once the arguments and the folders are checked
    from kzlib import training
    from kzlib.detect import predict, train

    if a.cmd == "train":
        val = [v for v in a.val_images.split(",") if v] if a.val_images else None
        mode = "auto" if a.auto else "resume" if a.resume else "start"
        result = train.train(a.data_dir, a.out, cfg, a.fold, val, mode, given_flags(DetectConfig, a),
                             deadline=a.deadline)
        training.finish_training(result, a.out, a.result)
    elif a.cmd == "predict":
        out = predict.predict(a.run_dir, a.data_dir, a.split, a.out, a.device, a.score_threshold)
        print(f"wrote {out}")
    elif a.cmd == "merge-test":
        rule = TestBoxRule("vote" if len(a.files) > 1 else "fold0", a.min_votes or 0, len(a.files), a.test_match)
        df = predict.merge_test(a.files, a.out, rule)
        print(f"wrote {a.out}: {len(df)} boxes of {df['image_id'].nunique()} pages")
    else:
        df = predict.merge_oof(a.run_dirs, a.out, a.data)
        print(f"wrote {a.out}: {len(df)} boxes of {df['image_id'].nunique()} pages")
    return 0


if __name__ == "__main__":
    sys.exit(main())
