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
markers and pastes kernels/bootstrap.py at the bootstrap line; the rest is the template as it is.
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

# ---- bootstrap: find the kit under /kaggle/input, open the session (kernels/bootstrap.py) ----

with session:
    for stage in STAGES:  # level-2 features, models per fold, the submission
        session.run(stage)
raise SystemExit(session.exit_code)
