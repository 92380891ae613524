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
markers; the rest of this file is the template as it is.
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

import os
import sys
from pathlib import Path

INPUT = Path(os.environ.get("KAGGLE_INPUT_ROOT", "/kaggle/input"))


def find_kit(root: Path) -> Path | None:
    """The kit dataset: the folder holding kzlib/__init__.py, at any depth of either layout."""
    for depth in range(6):
        for init in sorted(root.glob("/".join(["*"] * depth + ["kzlib", "__init__.py"]))):
            return init.parent.parent
    return None


KIT = find_kit(INPUT)
if KIT is None:
    print(f"error: the kzlib kit dataset is not attached under {INPUT} (no kzlib/__init__.py); add it to the "
          f"kernel's inputs. Mounted: {sorted(p.name for p in INPUT.glob('*'))}", file=sys.stderr)
    sys.exit(1)
sys.path.insert(0, str(KIT))

from kzlib.kaggle.session import Session  # noqa: E402

session = Session.open(KERNEL, STAGES, UPSTREAM, GPU, CONTINUATION, BUDGET_HOURS, PRESET, KIT)
with session:
    for stage in STAGES:  # train, then the held-out pages' boxes, then the test pages' boxes
        session.run(stage)
sys.exit(session.exit_code)
