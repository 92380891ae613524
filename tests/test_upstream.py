"""UPSTREAM.md tells the truth about preset_full: every row's kzlib value is the value of the full
preset's resolved stage configs, and rows marked "same" hold the upstream value."""

import json
import re
from functools import lru_cache
from pathlib import Path

import pytest

from kzlib.config import config_dict
from kzlib.preset import load_preset, preset_path

ROOT = Path(__file__).resolve().parents[1]


def rows():
    out = []
    for line in (ROOT / "UPSTREAM.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[3].startswith("`") and cells[4].startswith("`"):
            out.append(cells)
    return out


@lru_cache(maxsize=1)
def resolved() -> dict:
    cfg = load_preset(preset_path("full"))
    pk = cfg.pseudo_kind
    return {"preset": config_dict(cfg), "detect": config_dict(cfg.detect_config()),
            "kinds": {k: config_dict(cfg.classify_config(k)) for k in cfg.kinds},
            "finetune": config_dict(cfg.finetune_config(pk, "checkpoint.pth")),
            "refit": config_dict(cfg.refit_config(pk)), "stack": config_dict(cfg.stack_config())}


def lookup(values: dict, key: str):
    for part in key.split("."):
        values = values[part]
    return values


def test_the_table_covers_every_stage():
    table = rows()
    assert len(table) > 90
    assert {r[0] for r in table} >= {"folds", "detector", "classifier", "pseudolabels", "level 2", "test boxes"}
    assert all(r[5] in ("same", "different") for r in table)
    assert all(r[6] for r in table if r[5] == "different")  # every difference says why
    keys = {r[3].strip("`") for r in table}
    assert {"stack.xgboost.eval_metric", "stack.xgboost.tree_method", "stack.overlap"} <= keys


@pytest.mark.parametrize("row", rows(), ids=lambda r: r[3].strip("`"))
def test_row_matches_the_resolved_full_preset(row):
    stage, setting, upstream, key, value, same, why = row
    actual = lookup(resolved(), key.strip("`"))
    assert json.loads(value.strip("`")) == actual, f"UPSTREAM.md row {key} says {value}, the full preset has {actual!r}"
    m = re.match(r"^`([^`]+)`", upstream)
    if same == "same" and m:
        try:
            up = json.loads(m.group(1))
        except json.JSONDecodeError:
            return
        assert up == actual, f"{key}: marked same, but upstream {up!r} != kzlib {actual!r}"
    if same == "different" and m:
        try:
            assert json.loads(m.group(1)) != actual
        except json.JSONDecodeError:
            pass
