"""Reference: the official Python metric's per-box loop, restated for tests and benchmarks.

Semantics as in Kaggle's published kuzushiji metric (score_page / kuzushiji_f1); used only to check
that kzlib.metric gives identical counts.
"""

import numpy as np
import pandas as pd


def official_page(preds, truth):
    tp = fp = fn = 0
    if pd.isna(truth) and pd.isna(preds):
        return tp, fp, fn
    if pd.isna(truth):
        return 0, len(preds.split(" ")) // 3, 0
    if pd.isna(preds):
        return 0, 0, len(truth.split(" ")) // 5
    t = truth.split(" ")
    label = np.array(t[0::5])
    x0 = np.array(t[1::5]).astype(float)
    y0 = np.array(t[2::5]).astype(float)
    x1 = x0 + np.array(t[3::5]).astype(float)
    y1 = y0 + np.array(t[4::5]).astype(float)
    p = preds.split(" ")
    plabel = np.array(p[0::3])
    px = np.array(p[1::3]).astype(float)
    py = np.array(p[2::3]).astype(float)
    unused = np.ones(len(plabel), dtype=bool)
    for a, b, c, d, lab in zip(x0, x1, y0, y1, label):
        m = (a < px) & (b > px) & (c < py) & (d > py) & (plabel == lab) & unused
        if m.sum() == 0:
            fn += 1
        else:
            tp += 1
            unused[np.argmax(m)] = False
    fp += int(unused.sum())
    return tp, fp, fn


def official_counts(preds_list, truth_list):
    tp = fp = fn = 0
    for p, t in zip(preds_list, truth_list):
        a, b, c = official_page(p, t)
        tp, fp, fn = tp + a, fp + b, fn + c
    return tp, fp, fn
