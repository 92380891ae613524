"""kzlib on Kaggle: one classifier kind on one fold.

Reads:  the competition, the kzlib kit dataset (with the preset's pretrained backbone), the five
        detector kernels' outputs and, for the pseudolabel kinds, the pseudolabel kernel's (and, for
        a fine-tune, the base classifier kernel of the same fold), found under /kaggle/input by what
        they hold (either mount layout; each upstream output by its kzlib_status.json).
Runs:   STAGES below, each through kzlib.pipeline:
          detect-merge             kzlib.detect.predict.merge_oof / merge_test
                                   -> detect/oof_boxes.csv (every fold's held-out boxes), detect/test_boxes.csv
          classify-KIND-fFOLD      kzlib.classify.train.train (on the OOF boxes; pseudolabelled test pages
                                   for the -pl kinds; from the base run's best.pth for -pl-ft)
                                   -> classify/KIND/foldFOLD/best.pth, checkpoint.pth, log.csv, curves.png
          classify-KIND-predict-fFOLD  kzlib.classify.predict.predict (valid, then test, TTA)
                                   -> classify/KIND/foldFOLD/detailed.csv.gz, test_detailed.csv.gz
Writes: /kaggle/working (only this kernel's own files: the upstream outputs are linked in and
        unlinked at the end) and kzlib_status.json.
Time:   the training stops before an epoch, the predictions before a part of pages, that would
        end after BUDGET_HOURS; the status says "stopped" and a continuation resumes.

Rendered by `kzlib kaggle render` from kernels/classify.py: it fills in the values between the
markers and pastes kernels/bootstrap.py at the bootstrap line; the rest is the template as it is.
"""
# ---- values filled in by kzlib kaggle render ----
KERNEL = "kzlib-cls-resnet152-f0"
KIND = "resnet152"
FOLD = 0
STAGES = ["detect-merge", "classify-resnet152-f0", "classify-resnet152-predict-f0"]
UPSTREAM = []
GPU = True
CONTINUATION = False
BUDGET_HOURS = 11.0
PRESET = {}
# ---- end of the rendered values ----

# ---- bootstrap: find the kit under /kaggle/input, open the session (kernels/bootstrap.py) ----

with session:
    for stage in STAGES:  # merge the detectors' boxes, train, predict the held-out and the test pages
        session.run(stage)
raise SystemExit(session.exit_code)
