"""kzlib on Kaggle: pseudolabels from the blend of the base classifiers on the test pages.

Reads:  the competition, the kzlib kit dataset and every base classifier kernel's output
        (classify/KIND/foldK/test_detailed.csv.gz and detailed.csv.gz), found under /kaggle/input
        by their kzlib_status.json (either mount layout).
Runs:   pseudolabel  kzlib.detailed.blend_files + kzlib.pseudolabel.write_pseudolabels
                     (a box is kept when top-1 beats top-2 by the preset's min gap)
Writes: /kaggle/working/pseudo/pseudo_labels.csv (train.csv format) and .json (kept fraction, and the
        accuracy of the same rule on the held-out pages), and kzlib_status.json. CPU only.

Rendered by `kzlib kaggle render` from kernels/pseudolabel.py: it fills in the values between the
markers; the rest of this file is the template as it is.
"""
# ---- values filled in by kzlib kaggle render ----
KERNEL = "kzlib-pseudolabel"
STAGES = ["pseudolabel"]
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
    for stage in STAGES:  # the blend of every base classifier, the confident boxes as labels
        session.run(stage)
sys.exit(session.exit_code)
