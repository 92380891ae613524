import json

import numpy as np
import pandas as pd
import pytest

from kzlib.detailed import read_detailed, write_detailed
from kzlib.detailed import blend
from kzlib.metric import read_submission
from kzlib.stack.features import build, encode_class, max_overlap
from kzlib.stack.models import StackConfig, TooFewRows, train_folds
from kzlib.stack.run import build_features, predict, train

from helpers import A, B, C, detailed, run_main

def test_candidate_rows_hand_worked():
    g0 = detailed([("p_1", 0, [(A, 9), (B, 5), (C, 1)]), ("p_1", 10, [(B, 7), (A, 2), ("seg_fp", 1)])], true=[B, "U+9999"])
    g1 = detailed([("p_1", 0, [(B, 8), (A, 6), ("seg_fp", 3)]), ("p_1", 10, [(B, 4), (C, 3), (A, 2)])], true=[B, "U+9999"])
    rows = build([g0, g1])
    box0 = rows[rows["row"] == 0].set_index("cls")
    assert sorted(box0.index) == sorted([A, B, C, "seg_fp"])  # union of the top-3s plus seg_fp
    assert box0["target"].to_dict() == {A: 0, B: 1, C: 0, "seg_fp": 0}
    assert box0.loc[C, "g1_cand_score"] == 0.0 and box0.loc[C, "g0_cand_score"] == 1.0  # absent: 0
    assert box0.loc[A, "g0_is_top0"] == 1 and box0.loc[A, "g1_is_top1"] == 1 and box0.loc[A, "g1_is_top0"] == 0
    assert box0.loc["seg_fp", "cand"] == -1 and box0.loc[A, "cand"] == 0x3042
    assert box0["g0_cls0"].unique().tolist() == [0x3042] and box0["g0_gap"].unique().tolist() == [4.0]
    box1 = rows[rows["row"] == 1].set_index("cls")
    # the true class U+9999 is no candidate: the target moves to seg_fp
    assert box1["target"].to_dict() == {A: 0, B: 0, C: 0, "seg_fp": 1}
    assert encode_class(["seg_fp", "U+0041"]).tolist() == [-1, 65]


def test_overlap_features_upstream_and_iou():
    """Upstream's box_overlap is the intersection over the *other* box's area with +1 px ends: the
    box that contains another scores 1, the contained one its share; the IoU gives both the ratio."""
    big, small, apart = (0, 0, 30, 20), (5, 0, 10, 20), (100, 0, 10, 20)
    df = pd.DataFrame([("p", *big), ("p", *small), ("p", *apart), ("q", *big)], columns=["image_id", "x", "y", "w", "h"])
    up = max_overlap(df, "upstream")
    assert up[0] == pytest.approx(1.0) and up[1] == pytest.approx(11 / 31) and up[2] == 0 and up[3] == 0
    iou = max_overlap(df, "iou")
    assert iou[0] == pytest.approx(1 / 3) and iou[1] == pytest.approx(1 / 3) and iou[2] == 0 and iou[3] == 0
    g = detailed([("p_1", 0, [(A, 9), (B, 5)]), ("p_1", 10, [(B, 7), (A, 2)])], true=[A, B])
    assert "box_overlap" in build([g, g]).columns and "max_iou" in build([g, g], "iou").columns
    # two boxes 10 px apart, each 20 px wide: upstream counts (20 - 10 + 1) / 21 of the other's width
    assert build([g, g]).loc[0, "box_overlap"] == pytest.approx(11 * 21 / (21 * 21))


def synthetic_level2(tmp_path, folds=3, boxes_per_fold=240, seed=0):
    """Two model kinds: kind 0 always right but hesitant (small logits), kind 1 confident and right
    only half the time. The plain blend follows kind 1; level 2 can learn to trust kind 0."""
    rng = np.random.default_rng(seed)
    classes = ["U+%04X" % c for c in range(0x4E00, 0x4E20)]
    truth_rows, paths = [], []
    for k in range(folds):
        g0, g1, true = [], [], []
        for b in range(boxes_per_fold):
            image_id = f"b{k}_{b // 40:05d}"
            x = 30 * (b % 40)
            t = classes[rng.integers(len(classes))]
            other = [c for c in classes if c != t]
            w1, w2 = rng.choice(other, 2, replace=False)
            g0.append((image_id, x, [(t, 1.0 + rng.random()), (w1, 0.5), (w2, 0.2)]))
            g1.append((image_id, x, [(t, 10.0), (w1, 0.0)] if rng.random() < 0.5 else [(w1, 10.0), (t, 0.0)]))
            true.append(t)
        truth = pd.DataFrame({"image_id": [r[0] for r in g0], "lab": [f"{t} {r[1]} 10 20 20" for t, r in zip(true, g0)]})
        truth_rows.append(truth.groupby("image_id", sort=False)["lab"].agg(" ".join))
        d0, d1 = detailed(g0, true), detailed(g1, true)
        write_detailed(d0, tmp_path / f"k0_f{k}.csv.gz")
        write_detailed(d1, tmp_path / f"k1_f{k}.csv.gz")
        paths.append({"kind0": [str(tmp_path / f"k0_f{k}.csv.gz")], "kind1": [str(tmp_path / f"k1_f{k}.csv.gz")]})
    data = tmp_path / "data"
    data.mkdir()
    truth = pd.concat(truth_rows)
    pd.DataFrame({"image_id": truth.index, "labels": truth.to_numpy()}).to_csv(data / "train.csv", index=False)
    return data, paths


def test_level2_beats_the_plain_blend_and_writes_a_valid_submission(tmp_path):
    data, groups = synthetic_level2(tmp_path)
    feats = []
    for k, g in enumerate(groups):
        info = build_features(g, tmp_path / f"features_{k}.csv.gz")
        assert info["boxes"] == 240
        feats.append(tmp_path / f"features_{k}.csv.gz")
    (tmp_path / "stack.json").write_text(json.dumps({"rounds": 60, "early_stopping": 10, "threads": 1,
                                                     "libraries": ["lightgbm", "xgboost", "catboost"],
                                                     "weights": [1, 1, 1], "features": "extended"}))
    result = train(feats, data, tmp_path / "models", tmp_path / "stack.json")
    report = {r["method"]: r for r in result["report"]}
    assert report["blend"]["all"] < 0.7
    assert report["level 2"]["all"] > 0.95
    assert report["level 2"]["all"] > report["blend"]["all"] + 0.25
    for lib in ("lightgbm", "xgboost", "catboost"):
        assert (tmp_path / "models" / f"fold0_{lib}.model").exists()

    # test side: the blend of the kinds' files, every fold's models, a validated submission
    (data / "sample_submission.csv").write_text("image_id,labels\n" + "".join(
        f"{i},U+3042 1 1\n" for i in ["b0_00000", "b0_00001", "empty_1"]))
    test = {"kind0": [str(tmp_path / "k0_f0.csv.gz")], "kind1": [str(tmp_path / "k1_f0.csv.gz")]}
    for kind, files in test.items():  # keep two pages only, and drop the truth (as on test)
        df = read_detailed(files[0])
        write_detailed(df[df["image_id"].isin(["b0_00000", "b0_00001"])].assign(true=""), tmp_path / f"test_{kind}.csv.gz")
        test[kind] = [str(tmp_path / f"test_{kind}.csv.gz")]
    build_features(test, tmp_path / "test_features.csv.gz")
    out = predict(tmp_path / "models", tmp_path / "test_features.csv.gz", data, tmp_path / "submission.csv")
    sub = read_submission(tmp_path / "submission.csv")
    assert sub["image_id"].tolist() == ["b0_00000", "b0_00001", "empty_1"]
    assert sub["labels"].isna().tolist() == [False, False, True] or sub["labels"].fillna("").eq("").tolist() == [False, False, True]
    assert out["characters"] > 70


def test_stack_cli_errors(tmp_path):
    (tmp_path / "groups.json").write_text(json.dumps({"kind0": []}))
    from kzlib.stack.__main__ import main as stack_cli

    code, _, err = run_main(stack_cli, "features", tmp_path / "groups.json", "--out", tmp_path / "f.csv.gz")
    assert code == 1 and err.startswith("error: groups:")
    code, _, err = run_main(stack_cli, "predict", tmp_path, tmp_path / "nope.csv.gz", "--data", tmp_path,
                            "--out", tmp_path / "s.csv")
    assert code == 1 and "nope.csv.gz: features file not found" in err


def test_upstream_level2_uses_the_original_features_and_libraries(tmp_path):
    """The default (full preset) level 2: LightGBM + XGBoost on the original solution's features."""
    data, groups = synthetic_level2(tmp_path)
    feats = []
    for k, g in enumerate(groups):
        build_features(g, tmp_path / f"features_{k}.csv.gz")
        feats.append(tmp_path / f"features_{k}.csv.gz")
    (tmp_path / "stack.json").write_text(json.dumps({"rounds": 40, "threads": 1}))
    result = train(feats, data, tmp_path / "models", tmp_path / "stack.json")
    meta = json.loads((tmp_path / "models" / "stack.json").read_text())
    assert meta["config"]["libraries"] == ["lightgbm", "xgboost"] and meta["config"]["lightgbm"]["num_leaves"] == 41
    assert meta["config"]["xgboost"]["eval_metric"] == "error" and meta["config"]["xgboost"]["tree_method"] == "exact"
    assert set(meta["features"]) == {"box_overlap", "cand"} | {f"g{g}_{n}{r}" for g in (0, 1) for n in ("cls", "score", "is_top")
                                                         for r in range(3)}
    assert not (tmp_path / "models" / "fold0_catboost.model").exists()
    assert {r["method"]: r for r in result["report"]}["level 2"]["all"] > 0.95


def test_level2_of_folds_without_boxes_is_a_clear_error(tmp_path):
    """A fold whose held-out pages got no boxes (the real sample's detector after a few epochs)."""
    empty = blend([detailed([]), detailed([])])
    rows = build([empty, empty])
    assert len(rows) == 0 and "g1_cand_score" in rows.columns
    rows["target"] = rows["cand"]
    with pytest.raises(TooFewRows, match="fold 0 has 0 candidate rows"):
        train_folds([rows, rows], tmp_path / "models", StackConfig())
