"""Model bundles: what reading pages needs from a finished run, in one folder to copy around.

    kzlib export WORK_DIR --out MODEL_DIR [--folds all|best]

``WORK_DIR`` is a runner's work folder (``run_local.py --work``). The bundle holds::

    manifest.json                what is in it and how to use it (the runner's test-box rule, TTA
                                 scales, kinds), kit and library versions, every file's SHA-256
    detect/foldK/                config.json + best.pth of each detector used for the test boxes
    classify/KIND/foldK/         best.pth (config and class list inside) of each classifier
    level2/                      the level-2 models (when the run has them and every fold is kept)
    unicode_translation.csv      code point -> character

``--folds all`` (default) keeps exactly what the runner's submission used, so ``kzlib read`` on the
test pages writes the same submission. ``--folds best`` keeps the best detector fold and the best
fold of each kind, and the plain blend instead of level 2: a smaller, faster bundle for reading
books on a CPU (with a small preset's networks, e.g. ``--preset fast``).

``kzlib read --model`` takes a bundle, or a work folder directly (the same as ``--folds all``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from kzlib.cli import one_line_errors, parser
from kzlib.errors import DataError, UsageError

MANIFEST = "manifest.json"


@dataclass
class Bundle:
    """Where a bundle's (or a work folder's) parts are, and how the runner combined them."""
    root: Path
    detectors: list[Path]
    classifiers: dict[str, list[Path]]
    test_boxes: str = "fold0"
    test_votes: int = 0
    n_tta: int = 1
    level2: Path | None = None
    unicode_csv: Path | None = None
    info: dict = field(default_factory=dict)


def from_work(work: Path) -> Bundle:
    """The bundle a work folder amounts to (every fold, as the runner's submission)."""
    from kzlib.config import config_from_dict, read_json
    from kzlib.pipeline import classifier_kinds
    from kzlib.preset import PipelineConfig

    work = Path(work)
    if not (work / "preset.json").is_file():
        raise DataError(f"{work}: not a runner work folder (no preset.json); give a work folder of "
                        "`kzlib run`, or a bundle made by `kzlib export`")
    cfg = config_from_dict(PipelineConfig, read_json(work / "preset.json"), str(work / "preset.json"))
    folds = range(cfg.n_folds)
    test_folds = folds if cfg.test_boxes == "vote" else [0]
    detectors = [work / "detect" / f"fold{k}" for k in test_folds]
    classifiers = {kind: [work / "classify" / kind / f"fold{k}" for k in folds] for kind in classifier_kinds(cfg)}
    missing = [str(p) for p in detectors + [p for ps in classifiers.values() for p in ps] if not (p / "best.pth").is_file()]
    if missing:
        raise DataError(f"{work}: the run is not finished ({missing[0]}/best.pth is missing, and {len(missing) - 1} more)")
    level2 = work / "stack" / "models"
    data_dir = Path(read_json(detectors[0] / "split.json")["data_dir"])
    unicode_csv = data_dir / "unicode_translation.csv"
    return Bundle(work, detectors, classifiers, cfg.test_boxes, cfg.test_votes, cfg.n_tta,
                  level2 if (level2 / "stack.json").is_file() else None,
                  unicode_csv if unicode_csv.is_file() else None, {"source": str(work)})


def load(path: Path) -> Bundle:
    """A bundle folder or a work folder."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        return from_work(path)
    from kzlib.config import read_json

    m = read_json(path / MANIFEST)
    return Bundle(path, [path / d for d in m["detectors"]], {k: [path / p for p in v] for k, v in m["classifiers"].items()},
                  m["test_boxes"], m["test_votes"], m["n_tta"], path / m["level2"] if m.get("level2") else None,
                  path / "unicode_translation.csv" if (path / "unicode_translation.csv").is_file() else None, m)


def _best(runs: Sequence[Path]) -> Path:
    """The run of the best validation score (``best.pth``'s scores)."""
    from kzlib.training import load_checkpoint

    def f1(run: Path) -> float:
        return float(load_checkpoint(run / "best.pth").get("scores", {}).get("f1", -1.0))
    return max(runs, key=f1)


def export(work: Path, out: Path, folds: str = "all", level2: bool = True, log=print) -> Bundle:
    """Copy what reading needs into ``out`` (replaced whole) with a manifest. Without ``level2``
    the bundle's characters are the plain blend of the classifiers (the runner's submission when
    level 2 is skipped)."""
    from kzlib import __version__
    from kzlib.io import write_json_atomic
    from kzlib.io import file_sha256

    if folds not in ("all", "best"):
        raise UsageError(f"--folds {folds!r}: all or best")
    b = from_work(work)
    if folds == "best":
        from kzlib.config import read_json

        every = [Path(work) / "detect" / f"fold{k}" for k in range(read_json(Path(work) / "preset.json")["n_folds"])]
        b.detectors = [_best([d for d in every if (d / "best.pth").is_file()])]
        b.test_boxes = "fold0"
        b.classifiers = {k: [_best(v)] for k, v in b.classifiers.items()}
        b.level2 = None
    if not level2:
        b.level2 = None
    out = Path(out)
    stage = out.parent / f".{out.name}.building"
    if stage.exists():
        shutil.rmtree(stage)
    files: list[tuple[Path, str]] = []
    rel_det = []
    for d in b.detectors:
        rel = f"detect/{d.name}"
        rel_det.append(rel)
        files += [(d / "config.json", f"{rel}/config.json"), (d / "best.pth", f"{rel}/best.pth")]
    rel_cls = {}
    for kind, runs in b.classifiers.items():
        rel_cls[kind] = []
        for r in runs:
            rel = f"classify/{kind}/{r.name}"
            rel_cls[kind].append(rel)
            files.append((r / "best.pth", f"{rel}/best.pth"))
    if b.level2 is not None:
        files += [(p, f"level2/{p.name}") for p in sorted(b.level2.iterdir())
                  if p.name == "stack.json" or p.suffix == ".model"]
    if b.unicode_csv is not None:
        files.append((b.unicode_csv, "unicode_translation.csv"))
    for src, rel in files:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, stage / rel)
    import torch

    manifest = {"format": 1, "kit_version": __version__, "torch": torch.__version__,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "source": str(Path(work).resolve()), "folds": folds,
                "detectors": rel_det, "test_boxes": b.test_boxes, "test_votes": b.test_votes, "n_tta": b.n_tta,
                "classifiers": rel_cls, "level2": "level2" if b.level2 is not None else None,
                "files": {rel: file_sha256(stage / rel) for _, rel in files}}
    write_json_atomic(manifest, stage / MANIFEST)
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"{out}: {len(rel_det)} detector(s), {sum(len(v) for v in rel_cls.values())} classifier(s) of "
        f"{len(rel_cls)} kind(s), level 2 {'yes' if b.level2 is not None else 'no'}, {size / 2**20:.1f} MiB")
    return load(out)


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("kzlib export", __doc__)
    p.add_argument("work", type=Path, help="a runner work folder (kzlib run --work)")
    p.add_argument("--out", type=Path, required=True, help="the bundle folder (replaced)")
    p.add_argument("--folds", choices=("all", "best"), default="all",
                   help="every fold as the runner, or the best fold's detector and classifiers (no level 2)")
    p.add_argument("--no-level2", action="store_true", help="leave level 2 out: the plain blend of the classifiers")
    a = p.parse_args(argv)
    b = export(a.work, a.out, a.folds, level2=not a.no_level2)
    print(json.dumps({"bundle": str(b.root), "detectors": len(b.detectors),
                      "classifiers": {k: len(v) for k, v in b.classifiers.items()}, "level2": b.level2 is not None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
