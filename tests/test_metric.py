import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings, strategies as st

from kzlib import metric
from official_metric import official_counts


def frames(preds, truth, ids=None):
    ids = ids or [f"p_{i}" for i in range(len(truth))]
    return (pd.DataFrame({"image_id": ids, "labels": preds}),
            pd.DataFrame({"image_id": ids, "labels": truth}))


def counts(preds, truth):
    r = metric.score(*frames(preds, truth))
    return r["tp"], r["fp"], r["fn"]


# ---------------------------------------------------------------- hand-worked cases

def test_perfect_and_wrong_class():
    truth = ["U+3042 0 0 10 10 U+3044 20 0 10 10"]
    assert counts(["U+3042 5 5 U+3044 25 5"], truth) == (2, 0, 0)
    assert counts(["U+3044 5 5 U+3042 25 5"], truth) == (0, 2, 2)


def test_point_on_the_edge_is_not_inside():
    truth = ["U+3042 10 10 10 10"]
    for x, y in [(10, 15), (20, 15), (15, 10), (15, 20)]:
        assert counts([f"U+3042 {x} {y}"], truth) == (0, 1, 1)
    assert counts(["U+3042 10.5 19.99"], truth) == (1, 0, 0)


def test_duplicate_predictions_count_once():
    assert counts(["U+3042 5 5 U+3042 6 6 U+3042 7 7"], ["U+3042 0 0 10 10"]) == (1, 2, 0)


def test_a_prediction_is_used_up_by_the_first_box():
    # two overlapping same-class boxes, one point in the overlap: only the first box gets it
    truth = ["U+3042 0 0 10 10 U+3042 5 0 10 10"]
    assert counts(["U+3042 7 5"], truth) == (1, 0, 1)
    # box 1 takes the first matching point (7,5); (2,5) lies outside box 2, so box 2 is missed
    assert counts(["U+3042 7 5 U+3042 2 5"], truth) == (1, 1, 1)
    # submission order decides: the first unused matching prediction wins
    assert counts(["U+3042 2 5 U+3042 7 5"], truth) == (2, 0, 0)


def test_empty_and_nan_pages():
    nan = float("nan")
    assert counts([nan], [nan]) == (0, 0, 0)
    assert counts(["U+3042 1 1 U+3044 2 2"], [nan]) == (0, 2, 0)
    assert counts([nan], ["U+3042 0 0 10 10 U+3044 0 0 5 5"]) == (0, 0, 2)
    assert counts([None, "U+3042 5 5"], ["U+3042 0 0 10 10", "U+3042 0 0 10 10"]) == (1, 0, 1)


def test_f1_zero_when_undefined():
    r = metric.score(*frames([float("nan")], [float("nan")]))
    assert r["f1"] == 0 and r["precision"] == 0 and r["recall"] == 0


def test_missing_submission_page_counts_as_empty():
    sub = pd.DataFrame({"image_id": ["a"], "labels": ["U+3042 5 5"]})
    sol = pd.DataFrame({"image_id": ["a", "b"], "labels": ["U+3042 0 0 10 10", "U+3042 0 0 10 10"]})
    r = metric.score(sub, sol)
    assert (r["tp"], r["fp"], r["fn"]) == (1, 0, 1)
    assert r["f1"] == pytest.approx(2 / 3)


def test_counts_per_page():
    tp, fp, fn = metric.match_counts(metric.flatten(["U+3042 0 0 10 10", "U+3042 0 0 10 10"], 5),
                                     metric.flatten(["U+3042 5 5", "U+3042 50 50"], 3))
    assert [tp.tolist(), fp.tolist(), fn.tolist()] == [[1, 0], [0, 1], [0, 1]]


# ---------------------------------------------------------------- against the official loop

CLASSES = ["U+3042", "U+3044", "U+3046"]


@st.composite
def page(draw):
    """Small grids make overlaps, shared points, edge points and duplicates common."""
    n_t = draw(st.integers(0, 8))
    n_p = draw(st.integers(0, 10))
    coord = st.integers(0, 12)
    truth = " ".join(
        f"{draw(st.sampled_from(CLASSES))} {draw(coord)} {draw(coord)} {draw(st.integers(1, 8))} {draw(st.integers(1, 8))}"
        for _ in range(n_t))
    pts = " ".join(
        f"{draw(st.sampled_from(CLASSES))} {draw(coord) + draw(st.sampled_from([0, 0.5]))} {draw(coord)}"
        for _ in range(n_p))
    return pts or float("nan"), truth or float("nan")


@settings(max_examples=400, deadline=None)
@given(st.lists(page(), min_size=1, max_size=6))
def test_identical_to_official_on_random_adversarial_pages(pages):
    preds = [p for p, _ in pages]
    truth = [t for _, t in pages]
    assert counts(preds, truth) == official_counts(preds, truth)


def test_identical_to_official_on_dense_overlaps():
    rng = np.random.default_rng(1)
    preds, truth = [], []
    for _ in range(200):
        n = int(rng.integers(1, 60))
        b = rng.integers(0, 40, (n, 2))
        wh = rng.integers(1, 25, (n, 2))
        c = rng.choice(["U+3042", "U+3044"], n)
        truth.append(" ".join(f"{c[i]} {b[i,0]} {b[i,1]} {wh[i,0]} {wh[i,1]}" for i in range(n)))
        m = int(rng.integers(0, 80))
        pc = rng.choice(["U+3042", "U+3044"], m)
        xy = rng.integers(0, 60, (m, 2))
        preds.append(" ".join(f"{pc[i]} {xy[i,0]} {xy[i,1]}" for i in range(m)) or float("nan"))
    assert counts(preds, truth) == official_counts(preds, truth)


def test_identical_to_official_on_real_labels(sample):
    sol = pd.read_csv(sample / "train_labels_777.csv").head(200)
    rng = np.random.default_rng(0)
    preds = []
    for s in sol["labels"]:
        if not isinstance(s, str) or s == "nan":
            preds.append(float("nan"))
            continue
        t = np.array(s.split(), dtype=object).reshape(-1, 5)
        xy = t[:, 1:].astype(float)
        keep = rng.random(len(t)) < 0.9
        codes = np.where(rng.random(len(t)) < 0.05, "U+3042", t[:, 0])
        preds.append(" ".join(f"{c} {x + w / 2} {y + h / 2}" for c, (x, y, w, h), k in zip(codes, xy, keep) if k))
    r = metric.score(pd.DataFrame({"image_id": sol["image_id"], "labels": preds}), sol)
    assert (r["tp"], r["fp"], r["fn"]) == official_counts(preds, sol["labels"].tolist())


# ---------------------------------------------------------------- validation and CLI

def test_validate_submission():
    ok = pd.DataFrame({"image_id": ["a", "b"], "labels": ["U+3042 1 2", None]})
    assert metric.validate_submission(ok, ["a", "b"]) == []
    probs = metric.validate_submission(ok, ["a", "b", "c"])
    assert probs == ["missing image ids: c"]
    dup = pd.DataFrame({"image_id": ["a", "a"], "labels": [None, None]})
    assert "duplicate image ids: a" in metric.validate_submission(dup, ["a"])
    extra = pd.DataFrame({"image_id": ["a", "z"], "labels": [None, None]})
    assert metric.validate_submission(extra, ["a"]) == ["unexpected image ids: z"]
    bad = pd.DataFrame({"image_id": ["a", "b", "c"], "labels": ["U+3042 1", "X 1 2", "U+3042 1 y"]})
    probs = " | ".join(metric.validate_submission(bad, ["a", "b", "c"]))
    assert "row 2 (a): 2 fields" in probs and "row 3 (b): bad class code 'X'" in probs
    assert "row 4 (c): non-numeric coordinate 'y'" in probs
    many = pd.DataFrame({"image_id": ["a"], "labels": [" ".join(["U+3042 1 1"] * 1201)]})
    assert "1201 predictions, more than 1200" in metric.validate_submission(many, ["a"])[0]
    header = pd.DataFrame({"id": ["a"], "labels": [None]})
    assert "expected 'image_id,labels'" in metric.validate_submission(header, ["a"])[0]


def test_write_submission_fills_empty_pages_and_refuses_invalid(tmp_path):
    out = tmp_path / "sub.csv"
    metric.write_submission(pd.DataFrame({"image_id": ["b"], "labels": ["U+3042 1 2"]}), out, ["a", "b"])
    df = pd.read_csv(out)
    assert df["image_id"].tolist() == ["a", "b"] and df["labels"].isna().tolist() == [True, False]
    with pytest.raises(metric.SubmissionError):
        metric.write_submission(pd.DataFrame({"image_id": ["a"], "labels": ["U+3042 1"]}), tmp_path / "x.csv", ["a"])
    assert not (tmp_path / "x.csv").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sub.csv"]


def _score_cli(tmp_path, solution: str, submission: str):
    """Run the metric CLI on two CSV texts."""
    sol, sub = tmp_path / "sol.csv", tmp_path / "sub.csv"
    sol.write_text("image_id,labels\n" + solution)
    sub.write_text("image_id,labels\n" + submission)
    return subprocess.run([sys.executable, "-m", "kzlib.metric", str(sub), str(sol)], capture_output=True, text=True)


def test_cli_prints_one_json_line(tmp_path):
    r = _score_cli(tmp_path, "a,U+3042 0 0 10 10 U+3044 20 0 10 10\nb,\n", "a,U+3042 5 5 U+3042 25 5\nb,U+3042 1 1\n")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out == {"f1": pytest.approx(0.4), "precision": pytest.approx(1 / 3), "recall": 0.5,
                   "tp": 1, "fp": 2, "fn": 1}


def test_cli_invalid_submission_is_one_line_error(tmp_path):
    r = _score_cli(tmp_path, "a,U+3042 0 0 10 10\nb,\n", "a,U+3042 5\n")
    assert r.returncode == 1 and r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1
    assert "missing image ids: b" in r.stderr and "row 2 (a)" in r.stderr
