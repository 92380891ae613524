"""kzlib on Kaggle: level 2 and the submission.

Reads:  the competition, the kzlib kit dataset and every classifier kernel's output (the detailed
        files of every kind and fold), found under /kaggle/input by their kzlib_status.json.
Runs:   stack  kzlib.stack.run.build_features (one row per box and candidate class, per fold and on
               test), kzlib.stack.run.train (LightGBM and XGBoost per fold, the F1 report),
               kzlib.stack.run.predict -> submission.csv
Writes: /kaggle/working/submission.csv (validated: every test page, at most 1,200 characters a page),
        stack/ (features, models, report) and kzlib_status.json; the log ends with the F1 table.
        CPU only. Submit with `kaggle competitions submit -c kuzushiji-recognition -f submission.csv`.

Rendered by `kzlib kaggle render` from kernels/stack.py: it fills in the values between the
markers; the rest of this file is the template as it is.
"""
# ---- values filled in by kzlib kaggle render ----
KERNEL = "kzlib-stack"
STAGES = ["stack"]
UPSTREAM = []
GPU = False
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
    for stage in STAGES:  # level-2 features, models per fold, the submission
        session.run(stage)
sys.exit(session.exit_code)
