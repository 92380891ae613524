"""The runner's report: the F1 of every model kind, the blends and level 2 — on the folds' held-out
pages (valid) and, when the data folder has ``test_labels.csv`` (synthetic data), on the test pages
— each row marked when a stage behind it is not current; the wall time per stage; and a picture of
the test page with the most characters."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from kzlib.data import DataDir, read_labels_csv
from kzlib.detailed import blend_files, read_detailed, submission_from_detailed
from kzlib.images import write_png
from kzlib.io import write_csv_atomic
from kzlib.metric import score_on_pages
from kzlib.pipeline import Pipeline
from kzlib.stages import classifier_kinds
from kzlib.viz import render


def summary(p: Pipeline) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(F1 table, wall time per stage). A row whose stages are not all ``done`` (changed, stale, or
    not run since an edit) says so in ``status``: its figures are from an earlier preset or data."""
    work, cfg = p.work, p.cfg
    d = DataDir(p.data)
    truth = read_labels_csv(d.train_csv)
    test_truth = read_labels_csv(d.root / "test_labels.csv") if (d.root / "test_labels.csv").exists() else None
    ids_test = read_labels_csv(d.sample_submission_csv)["image_id"].tolist()
    status = p.statuses()
    folds = range(cfg.n_folds)

    def current(*stages: str) -> str:
        bad = sorted({status.get(s, "to do") for s in stages} - {"done"})
        return "current" if not bad else "/".join(bad)

    def f1(sub: pd.DataFrame, sol: pd.DataFrame, ids) -> float:
        return score_on_pages(sub, sol, ids)["f1"]

    def kinds_row(name: str, kinds: list[str]) -> dict:
        valid_files = [[work.classifier(k, f).detailed("valid") for k in kinds] for f in folds]
        test_files = [work.classifier(k, f).detailed("test") for k in kinds for f in folds]
        row = {"model": name, "valid_f1": None, "test_f1": None,
               "status": current(*(f"classify-{k}-predict-f{f}" for k in kinds for f in folds))}
        if not all(x.exists() for fs in valid_files for x in fs) or not all(x.exists() for x in test_files):
            return row
        valid = pd.concat([blend_files(fs) if len(fs) > 1 else read_detailed(fs[0]) for fs in valid_files])
        row["valid_f1"] = f1(submission_from_detailed(valid), truth, p.train_ids)
        if test_truth is not None:
            row["test_f1"] = f1(submission_from_detailed(blend_files(test_files)), test_truth, ids_test)
        return row

    def agnostic(boxes: Path, sol: pd.DataFrame | None, ids) -> float | None:
        """The detector's class-agnostic F1: every box and every character made one class."""
        if sol is None or not boxes.exists():
            return None
        b = pd.read_csv(boxes, dtype={"image_id": str})
        sub = submission_from_detailed(b.assign(pred="U+0000"))
        one = sol.assign(labels=sol["labels"].fillna("").str.replace(r"U\+[0-9A-F]+", "U+0000", regex=True))
        return f1(sub, one, ids)

    rows = [{"model": "detector (class-agnostic)", "valid_f1": agnostic(work.oof_boxes, truth, p.train_ids),
             "test_f1": agnostic(work.test_boxes, test_truth, ids_test), "status": current("detect-merge")}]
    rows += [kinds_row(kind, [kind]) for kind in classifier_kinds(cfg)]
    if len(cfg.kinds) > 1:
        rows.append(kinds_row("blend", list(cfg.kinds)))
    if cfg.pseudo_kind:
        rows.append(kinds_row("blend + pseudolabel models", classifier_kinds(cfg)))
    report = work.level2 / "report.json"
    if report.exists():
        level2 = next(r for r in json.loads(report.read_text())["report"] if r["method"] == "level 2")
        t = f1(pd.read_csv(work.submission, dtype=str, keep_default_na=False), test_truth, ids_test) \
            if test_truth is not None and work.submission.exists() else None
        rows.append({"model": "level 2", "valid_f1": level2["all"], "test_f1": t, "status": current("stack")})
    times = [{"stage": s.name, "seconds": rec["seconds"]} for s in p.stages if (rec := p.record(s.name)) is not None]
    return pd.DataFrame(rows), pd.DataFrame(times)


def save_picture(data: Path, submission: Path, out: Path) -> str | None:
    """Draw the test page with the most recognised characters (boxes and characters)."""
    sub = pd.read_csv(submission, dtype=str, keep_default_na=False)
    if not len(sub):
        return None
    counts = sub["labels"].str.split().str.len().fillna(0)
    image_id = sub["image_id"].iloc[int(counts.to_numpy().argmax())]
    write_png(out, render(data, image_id, "test", submission, 1400))
    return image_id


def report(p: Pipeline, log=print) -> None:
    """Print the F1 table and the time per stage, and write them (``summary.csv``,
    ``stage_times.csv``) with the picture of a test page."""
    table, times = summary(p)
    if len(table):
        log("\nF1 (valid: the folds' held-out pages; test: test_labels.csv when the data has it)")
        log(table.round(4).to_string(index=False))
        stale = table[table["status"] != "current"]
        if len(stale):
            log(f"note: {len(stale)} row(s) come from stages that are not current (status); rerun the chain "
                "to bring them up to date")
        write_csv_atomic(table, p.work.summary)
    if len(times):
        write_csv_atomic(times, p.work.stage_times)
        log(f"\nwall time per stage: {p.work.stage_times} (summed {times['seconds'].sum():.0f} s; with jobs > 1 "
            "the folds' stages overlap)")
    if p.work.submission.exists():
        log(f"submission: {p.work.submission}")
        picture = save_picture(p.data, p.work.submission, p.work.picture)
        if picture:
            log(f"picture of test page {picture} with the recognised characters: {p.work.picture}")
