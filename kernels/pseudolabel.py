"""kzlib on Kaggle: pseudolabels from the blend of the base classifiers on the test pages.

Reads:  the competition, the kzlib kit dataset and every base classifier kernel's output
        (classify/KIND/foldK/test_detailed.csv.gz and detailed.csv.gz), found under /kaggle/input
        by their kzlib_status.json (either mount layout).
Runs:   pseudolabel  kzlib.detailed.blend_files + kzlib.pseudolabel.write_pseudolabels
                     (a box is kept when top-1 beats top-2 by the preset's min gap)
Writes: /kaggle/working/pseudo/pseudo_labels.csv (train.csv format) and .json (kept fraction, and the
        accuracy of the same rule on the held-out pages), and kzlib_status.json. CPU only.

Rendered by `kzlib kaggle render` from kernels/pseudolabel.py: it fills in the values between the
markers and pastes kernels/bootstrap.py at the bootstrap line; the rest is the template as it is.
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

# ---- bootstrap: find the kit under /kaggle/input, open the session (kernels/bootstrap.py) ----

with session:
    for stage in STAGES:  # the blend of every base classifier, the confident boxes as labels
        session.run(stage)
raise SystemExit(session.exit_code)
