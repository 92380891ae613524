"""A runner's work folder: one owner for its layout, the twin of ``kzlib.runs.RunDir``.

    preset.json                      the preset the chain runs with (what a bundle is made from)
    detect/foldK/                    a detector run (``RunDir``) per fold
    detect/oof_boxes.csv             every train page's held-out boxes, the folds merged
    detect/test_boxes.csv            the test boxes every classifier reads (the test-box rule)
    classify/KIND/foldK/             a classifier run per kind and fold (pseudolabel kinds too)
    pseudo/pseudo_labels.csv (.json) the confident test boxes, and the report of their selection
    stack/                           level 2: features, stack_config.json, models/
    submission.csv, page.png         the chain's result and a picture of one test page
    summary.csv, stage_times.csv     the runner's report
    state/STAGE.json                 a finished stage: its fingerprint, time and result
    logs/STAGE.log, locks/STAGE.lock a stage's log, and the lock a runner holds while it runs it
    replaced/                        run folders of stages redone with --rerun-changed
"""

from __future__ import annotations

from pathlib import Path

from kzlib.runs import RunDir


class WorkDir:
    """The paths of a work folder."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    preset = property(lambda self: self.root / "preset.json")
    oof_boxes = property(lambda self: self.root / "detect" / "oof_boxes.csv")
    test_boxes = property(lambda self: self.root / "detect" / "test_boxes.csv")
    pseudo_labels = property(lambda self: self.root / "pseudo" / "pseudo_labels.csv")
    pseudo_report = property(lambda self: self.root / "pseudo" / "pseudo_labels.json")
    stack = property(lambda self: self.root / "stack")
    level2 = property(lambda self: self.root / "stack" / "models")
    submission = property(lambda self: self.root / "submission.csv")
    picture = property(lambda self: self.root / "page.png")
    summary = property(lambda self: self.root / "summary.csv")
    stage_times = property(lambda self: self.root / "stage_times.csv")

    def detector(self, fold: int) -> RunDir:
        return RunDir(self.root / "detect" / f"fold{fold}")

    def classifier(self, kind: str, fold: int) -> RunDir:
        return RunDir(self.root / "classify" / kind / f"fold{fold}")

    def features(self, fold: int | None) -> Path:
        """Level 2's candidate rows of a fold's held-out pages, or of the test pages (None)."""
        return self.stack / ("features_test.csv.gz" if fold is None else f"features_fold{fold}.csv.gz")

    def state(self, stage: str) -> Path:
        return self.root / "state" / f"{stage}.json"

    def log(self, stage: str) -> Path:
        return self.root / "logs" / f"{stage}.log"

    def lock(self, stage: str) -> Path:
        return self.root / "locks" / f"{stage}.lock"

    def replaced(self, stage: str, when: str) -> Path:
        return self.root / "replaced" / f"{stage}-{when}"

    def __str__(self) -> str:
        return str(self.root)
