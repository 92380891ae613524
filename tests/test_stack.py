import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from kzlib.detailed import DETAILED_COLUMNS, read_detailed, write_detailed
from kzlib.data import DataError, read_labels_csv
from kzlib.metric import read_submission
from kzlib.detailed import blend
from kzlib.pseudolabel import labels_file, report, select
from kzlib.stack.features import build, encode_class
from kzlib.stack.models import StackConfig, TooFewRows, train_folds
from kzlib.stack.run import build_features, predict, train

A, B, C = "U+3042", "U+3044", "U+3046"


def detailed(rows, true=None):
    """rows: (image_id, x, [(class, logit), ...])"""
    out = []
    for k, (image_id, x, top) in enumerate(rows):
        out.append({"image_id": image_id, "x": float(x), "y": 10.0, "w": 20.0, "h": 20.0, "pred": top[0][0],
                    "true": true[k] if true else "", "top_k_classes": " ".join(c for c, _ in top),
                    "top_k_logits": " ".join(f"{v:.4f}" for _, v in top)})
    return pd.DataFrame(out, columns=DETAILED_COLUMNS)


def test_blend_counts_missing_classes_as_zero():
    m1 = detailed([("p_1", 0, [(A, 8), (B, 2)]), ("p_1", 40, [(C, 6), ("seg_fp", 1)])])
    m2 = detailed([("p_1", 0, [(B, 9), (C, 1)]), ("p_1", 40, [(C, 4), (A, 3)])])
    out = blend([m1, m2], top_k=3)
    # box 1: A (8+0)/2=4, B (2+9)/2=5.5, C (0+1)/2=0.5 ; box 2: C 5, A 1.5, seg_fp 0.5
    assert out["top_k_classes"].tolist() == [f"{B} {A} {C}", f"{C} {A} seg_fp"]
    assert out["top_k_logits"].tolist() == ["5.5000 4.0000 0.5000", "5.0000 1.5000 0.5000"]
    assert out["pred"].tolist() == [B, C]


def test_blend_of_files_without_boxes(tmp_path):
    """A fold whose held-out pages got no boxes (the real sample's detector after a few epochs)."""
    for name in ("a", "b"):
        write_detailed(detailed([]), tmp_path / f"{name}.csv.gz")
    frames = [read_detailed(tmp_path / f"{n}.csv.gz") for n in ("a", "b")]
    out = blend(frames)
    assert len(out) == 0 and list(out.columns) == DETAILED_COLUMNS
    assert report(out, select(out))["kept"] == 0
    rows = build([out, out])
    assert len(rows) == 0 and "g1_cand_score" in rows.columns
    rows["target"] = rows["cand"]
    with pytest.raises(TooFewRows, match="fold 0 has 0 candidate rows"):
        train_folds([rows, rows], tmp_path / "models", StackConfig())


def test_blend_refuses_different_boxes():
    m1 = detailed([("p_1", 0, [(A, 8)]), ("p_1", 40, [(B, 6)])])
    swapped = m1.iloc[::-1].reset_index(drop=True)
    with pytest.raises(DataError, match="row 2: box differs"):
        blend([m1, swapped], names=["a.csv.gz", "b.csv.gz"])
    with pytest.raises(DataError, match="1 boxes, but a.csv.gz has 2"):
        blend([m1, m1.iloc[:1]], names=["a.csv.gz", "b.csv.gz"])


def test_pseudolabel_thresholds_and_labels_file():
    df = detailed([("p_1", 0, [(A, 12), (B, 6)]),     # gap 6, second 6: kept
                   ("p_1", 40, [(A, 12), (B, 8)]),    # gap 4: dropped
                   ("p_2", 0, [(B, 25), (A, 11)]),    # second 11 > 10: dropped
                   ("p_2", 40, [("seg_fp", 20), (A, 1)]),  # seg_fp: kept (as upstream) unless asked
                   ("p_3", 0, [(C, 9), (A, 3.9)])],   # gap 5.1: kept
                  true=[A, A, B, "seg_fp", B])
    assert select(df, min_gap=5, max_second_score=10).tolist() == [True, False, False, True, True]
    keep = select(df, 5, 10, drop_seg_fp=True)
    assert keep.tolist() == [True, False, False, False, True]
    labels = labels_file(df[keep])
    assert labels.to_dict("records") == [{"image_id": "p_1", "labels": f"{A} 0 10 20 20"},
                                         {"image_id": "p_3", "labels": f"{C} 0 10 20 20"}]
    r = report(df, keep)
    assert r["kept"] == 2 and r["kept_fraction"] == pytest.approx(0.4) and r["kept_accuracy"] == pytest.approx(0.5)


def test_pseudolabel_cli(tmp_path):
    df = detailed([("p_1", 0, [(A, 12), (B, 6)]), ("p_1", 40, [(A, 12), (B, 8)])])
    write_detailed(df, tmp_path / "m1.csv.gz")
    write_detailed(df, tmp_path / "m2.csv.gz")
    out = subprocess.run([sys.executable, "-m", "kzlib.pseudolabel", str(tmp_path / "m1.csv.gz"), str(tmp_path / "m2.csv.gz"),
                          "--out", str(tmp_path / "pseudo.csv")], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["kept"] == 1
    assert read_labels_csv(tmp_path / "pseudo.csv")["labels"].tolist() == [f"{A} 0 10 20 20"]
    write_detailed(df.iloc[::-1], tmp_path / "m3.csv.gz")
    out = subprocess.run([sys.executable, "-m", "kzlib.pseudolabel", str(tmp_path / "m1.csv.gz"), str(tmp_path / "m3.csv.gz"),
                          "--out", str(tmp_path / "p2.csv")], capture_output=True, text=True)
    assert out.returncode == 1 and "m3.csv.gz: row 2" in out.stderr and not (tmp_path / "p2.csv").exists()


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
    assert rows.loc[rows["row"] == 0, "max_iou"].iloc[0] == pytest.approx(10 * 20 / (30 * 20))
    assert encode_class(["seg_fp", "U+0041"]).tolist() == [-1, 65]


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
    out = subprocess.run([sys.executable, "-m", "kzlib.stack", "features", str(tmp_path / "groups.json"), "--out",
                          str(tmp_path / "f.csv.gz")], capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("error: groups:")
    out = subprocess.run([sys.executable, "-m", "kzlib.stack", "predict", str(tmp_path), str(tmp_path / "nope.csv.gz"),
                          "--data", str(tmp_path), "--out", str(tmp_path / "s.csv")], capture_output=True, text=True)
    assert out.returncode == 1 and "nope.csv.gz: features file not found" in out.stderr


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
    assert set(meta["features"]) == {"max_iou", "cand"} | {f"g{g}_{n}{r}" for g in (0, 1) for n in ("cls", "score", "is_top")
                                                         for r in range(3)}
    assert not (tmp_path / "models" / "fold0_catboost.model").exists()
    assert {r["method"]: r for r in result["report"]}["level 2"]["all"] > 0.95
