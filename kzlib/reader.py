"""The models of a bundle reading pages, one at a time, as the runner combines them (``Reader``);
``kzlib read`` (``kzlib.read``) brings the pages in and writes what it reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kzlib.classify.predict import TrainedClassifier, detailed_frame, load_run as load_classifier, page_logits, tta_sizes
from kzlib.data import SEG_FP
from kzlib.detailed import blend
from kzlib.detect.predict import TrainedDetector, combine_test_boxes, detect_page, load_run as load_detector, round_boxes
from kzlib.devices import describe_choice
from kzlib.export import Bundle
from kzlib.pages import Page, scaled_height
from kzlib.stack.features import build
from kzlib.stack.models import pick_best, predict_rows, read_models


class Reader:
    """The models of a bundle, and the runner's way of combining them, one page at a time: the
    detectors the test-box rule reads (``combine_test_boxes``), each classifier's TTA logits, the
    blend of each kind's folds, level 2's candidate rows and models (or the plain blend)."""

    def __init__(self, bundle: Bundle, device: str | None = "auto"):
        self.bundle = b = bundle
        self.detectors: list[TrainedDetector] = [load_detector(d, device) for d in b.detectors]
        self.classifiers: dict[str, list[TrainedClassifier]] = {
            kind: [load_classifier(r, device) for r in runs] for kind, runs in b.classifiers.items()}
        self.sizes = {kind: [tta_sizes(c.cfg.test_size, c.cfg.scale_aug, b.n_tta) for c in runs]
                      for kind, runs in self.classifiers.items()}
        self.overlap = read_models(b.level2)[1].overlap if b.level2 is not None else None
        self.chars = {}
        if b.unicode_csv is not None:
            t = pd.read_csv(b.unicode_csv, dtype=str, keep_default_na=False)
            self.chars = dict(zip(t["Unicode"], t["char"]))

    @property
    def device(self):
        return self.detectors[0].device

    def describe(self, asked: str | None) -> str:
        """The device the models run on, and why (what was asked)."""
        return describe_choice(asked, self.device)

    def heights(self, path: Path) -> list[int]:
        """Every height the models read this page at (what the decoding thread prepares)."""
        out = [scaled_height(path, d.cfg.page_size, d.cfg.page_side) for d in self.detectors]
        for kind, runs in self.classifiers.items():
            for c, sizes in zip(runs, self.sizes[kind]):
                out += [scaled_height(path, s, c.cfg.page_side) for s in sizes]
        return list(dict.fromkeys(out))

    def boxes(self, path: Path) -> np.ndarray:
        """The page's test boxes by the bundle's test-box rule, as the runner's files hold them."""
        found = [round_boxes(*detect_page(d.model, path, d.cfg, d.device)) for d in self.detectors]
        return combine_test_boxes(found, self.bundle.rule)[0]

    def read(self, image_id: str, path: Path) -> pd.DataFrame:
        """One row per kept character: image_id, x, y, w, h, cls, score (seg_fp boxes dropped)."""
        page = Page(image_id, path, self.boxes(path))
        if len(page.boxes) == 0:
            return pd.DataFrame(columns=["image_id", "x", "y", "w", "h", "cls", "score"])
        groups = []
        for kind, runs in self.classifiers.items():
            frames = [detailed_frame([page], [page_logits(c.model, page, sizes, c.device, c.cfg)], c.classes,
                                     c.cfg.top_k, with_true=False) for c, sizes in zip(runs, self.sizes[kind])]
            groups.append(blend(frames))
        if self.bundle.level2 is not None:
            rows = build(groups, self.overlap)
            best = pick_best(rows, predict_rows(self.bundle.level2, rows)).rename(columns={"prob": "score"})
        else:  # the plain blend of every kind, as the runner's submission without level 2
            every = blend(groups)
            best = every.rename(columns={"pred": "cls"}).assign(
                score=every["top_k_logits"].str.split(" ").str[0].astype(float))
        best = best[best["cls"] != SEG_FP]
        return best[["image_id", "x", "y", "w", "h", "cls", "score"]].reset_index(drop=True)
