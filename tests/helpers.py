"""Small builders shared by the tests (tests/ is on sys.path: see conftest.py)."""

import pandas as pd

from kzlib.detailed import DETAILED_COLUMNS

A, B, C = "U+3042", "U+3044", "U+3046"


def detailed(rows, true=None):
    """rows: (image_id, x, [(class, logit), ...])"""
    out = []
    for k, (image_id, x, top) in enumerate(rows):
        out.append({"image_id": image_id, "x": float(x), "y": 10.0, "w": 20.0, "h": 20.0, "pred": top[0][0],
                    "true": true[k] if true else "", "top_k_classes": " ".join(c for c, _ in top),
                    "top_k_logits": " ".join(f"{v:.4f}" for _, v in top)})
    return pd.DataFrame(out, columns=DETAILED_COLUMNS)
