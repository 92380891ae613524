"""kzlib on Kaggle: the detector of one fold.

Reads:  the competition (kuzushiji-recognition) and the kzlib kit dataset, found under
        /kaggle/input by what they hold (either mount layout).
Runs:   the fold's detector stages (STAGES below), each through kzlib.pipeline:
          detect-f{FOLD}       kzlib.detect.train.train   -> detect/fold{FOLD}/best.pth, checkpoint.pth, log.csv, curves.png
          detect-oof-f{FOLD}   kzlib.detect.predict.predict(split="oof")   -> detect/fold{FOLD}/oof_boxes.csv
          detect-test-f{FOLD}  kzlib.detect.predict.predict(split="test")  -> detect/fold{FOLD}/test_boxes.csv
Writes: /kaggle/working (those files, logs/, state/) and kzlib_status.json, which the classifier
        kernels and `kzlib kaggle push` read.
Time:   trainings stop before an epoch, and predictions before a part of pages, that would end
        after BUDGET_HOURS; the status then says "stopped" and a continuation picks up from there.

Rendered by `kzlib kaggle render` from kernels/detect.py: it fills in the values between the
markers and pastes kernels/bootstrap.py at the bootstrap line; the rest is the template as it is.
"""
# ---- values filled in by kzlib kaggle render ----
KERNEL = "kzlib-detect-f0"
FOLD = 0
STAGES = ["detect-f0", "detect-oof-f0", "detect-test-f0"]
UPSTREAM = []
GPU = True
CONTINUATION = False
BUDGET_HOURS = 11.0
PRESET = {}
# ---- end of the rendered values ----

# ---- bootstrap: find the kit under /kaggle/input, open the session (kernels/bootstrap.py) ----

with session:
    for stage in STAGES:  # train, then the held-out pages' boxes, then the test pages' boxes
        session.run(stage)
raise SystemExit(session.exit_code)
