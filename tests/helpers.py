"""Small builders shared by the tests (tests/ is on sys.path: see conftest.py): the tiny configs
(every test's networks are preset_tiny.json's, changed where a test needs it), detailed rows, and a
command's ``main`` run in-process."""

import contextlib
import io
import json
from dataclasses import replace
from pathlib import Path

import pandas as pd

from kzlib.classify.config import ClassifyConfig
from kzlib.config import config_from_dict
from kzlib.detailed import DETAILED_COLUMNS
from kzlib.detect.config import DetectConfig

A, B, C = "U+3042", "U+3044", "U+3046"
ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "tests" / "fixtures" / "preset_tiny.json"


def tiny_preset(**changes) -> dict:
    """preset_tiny.json (3 folds, kinds a and b, pseudolabels with a refit, level 2) with ``changes``."""
    return {**json.loads(PRESET.read_text()), **changes}


def write_preset(path: Path, **changes) -> Path:
    path.write_text(json.dumps(tiny_preset(**changes)))
    return path


def tiny_detect(**changes) -> DetectConfig:
    """The tiny preset's detector (ResNet-18, 16 FPN channels, 256 px pages, 160x128 crops, batch 2,
    1 epoch) on the CPU, 3 folds."""
    values = {**tiny_preset()["detect"], "device": "cpu", "n_folds": 3}
    return replace(config_from_dict(DetectConfig, values, str(PRESET)), **changes)


def tiny_classify(**changes) -> ClassifyConfig:
    """The tiny preset's classifier kind ``a`` (ResNet-18, 256 px pages, 96x128 crops, batch 3, 2
    epochs, fp32) on the CPU, 3 folds."""
    values = {**tiny_preset()["kinds"]["a"], "device": "cpu", "n_folds": 3}
    return replace(config_from_dict(ClassifyConfig, values, str(PRESET)), **changes)


def run_main(main, *argv) -> tuple[int, str, str]:
    """A command's ``main(argv)`` in-process, as its entry point runs it: (exit code, stdout, stderr);
    argparse's exit is its code. (Lines a command writes to the process's own stderr, as ``kzlib read``
    does for a page that fails, are pytest's ``capfd``.)"""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def detailed(rows, true=None):
    """rows: (image_id, x, [(class, logit), ...])"""
    out = []
    for k, (image_id, x, top) in enumerate(rows):
        out.append({"image_id": image_id, "x": float(x), "y": 10.0, "w": 20.0, "h": 20.0, "pred": top[0][0],
                    "true": true[k] if true else "", "top_k_classes": " ".join(c for c, _ in top),
                    "top_k_logits": " ".join(f"{v:.4f}" for _, v in top)})
    return pd.DataFrame(out, columns=DETAILED_COLUMNS)
