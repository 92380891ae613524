"""kzlib on Kaggle: the competition's test pages read with a trained bundle from Kaggle Models.

Reads:  the competition, the kzlib kit dataset and the bundle MODEL (a Kaggle Model instance made by
        `kzlib kaggle publish BUNDLE --model OWNER/MODEL/pytorch/VARIATION`), found under /kaggle/input
        by what they hold (the bundle by its manifest.json, checked file by file).
Runs:   kzlib.read.read_pages on every test page: the bundle's detectors, its test-box rule, every
        classifier with its TTA scales, level 2 — the runner's own functions, page by page.
Writes: /kaggle/working/submission.csv (every test page), read/ (pages.csv, one JSON and text a page)
        and kzlib_status.json. Submit with `kaggle competitions submit -c kuzushiji-recognition -f
        submission.csv`.

Rendered by `kzlib kaggle render --read-model MODEL` from kernels/read.py: it fills in the values
between the markers and pastes kernels/bootstrap.py at the bootstrap line; the rest is the template
as it is.
"""
# ---- values filled in by kzlib kaggle render ----
KERNEL = "kzlib-read"
MODEL = "OWNER/MODEL/pytorch/VARIATION/1"
STAGES = []
UPSTREAM = []
GPU = True
CONTINUATION = False
BUDGET_HOURS = 11.0
PRESET = {}
# ---- end of the rendered values ----

# ---- bootstrap: find the kit under /kaggle/input, open the session (kernels/bootstrap.py) ----

with session:
    session.read(MODEL)  # every test page, then submission.csv
raise SystemExit(session.exit_code)
