"""Model bundles: what reading pages needs from a finished run, in one folder to copy around.

    kzlib export WORK_DIR --out MODEL_DIR [--folds all|best] [--no-level2] [--force]
                 [--kaggle-model OWNER/MODEL/pytorch/VARIATION]

``WORK_DIR`` is a runner's work folder (``kzlib run --work``). The bundle holds::

    manifest.json                what is in it and how to use it (the runner's test-box rule, TTA
                                 scales, kinds), kit and library versions, every file's SHA-256
    detect/foldK/best.pth        each detector the test-box rule reads (config inside)
    classify/KIND/foldK/best.pth each classifier (config and class list inside)
    level2/                      the level-2 models (when the run has them and every fold is kept)
    unicode_translation.csv      code point -> character

``--folds all`` (default) keeps exactly what the runner's submission used, so ``kzlib read`` on the
test pages writes the same submission; a work folder whose stages are not all done and current (an
unfinished run, or one whose preset or data changed since) is refused, unless ``--force`` (the
manifest then says so). ``--folds best`` keeps the best detector fold and the best fold of each
kind, and the plain blend instead of level 2: a smaller, faster bundle for reading books on a CPU.

Loading a bundle checks its manifest — a format and a kit version this kit knows, a torch version
not newer than the one installed — and the SHA-256 of every file; a mismatch is one line naming the
file (``--trust`` in ``kzlib read`` skips the checks). ``kzlib read --model`` takes a bundle, or a
work folder directly (the same as ``--folds all``).
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from kzlib import __version__
from kzlib.cli import one_line_errors, parser
from kzlib.config import config_from_dict, read_json
from kzlib.detect.config import TestBoxRule
from kzlib.errors import DataError, UsageError
from kzlib.io import file_sha256, write_json_atomic
from kzlib.kaggle.inputs import find_bundle
from kzlib.kaggle.models import parse_handle, publish
from kzlib.pipeline import Pipeline
from kzlib.preset import PipelineConfig
from kzlib.runs import RunDir, load_checkpoint
from kzlib.stages import classifier_kinds
from kzlib.work import WorkDir

MANIFEST = "manifest.json"
FORMATS = (1, 2)  # 1: the test-box rule under "test_boxes"; 2: "test_box_rule", forced exports said


class BundleError(DataError):
    """A bundle that is damaged, altered, or made by a kit or torch this one cannot trust."""


@dataclass
class Bundle:
    """Where a bundle's (or a work folder's) parts are, and how the runner combined them."""
    root: Path
    detectors: list[Path]                 # run folders, in the test-box rule's fold order
    classifiers: dict[str, list[Path]]
    rule: TestBoxRule = field(default_factory=TestBoxRule)
    n_tta: int = 1
    level2: Path | None = None
    unicode_csv: Path | None = None
    info: dict = field(default_factory=dict)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in text.split("+")[0].split(".")[:2])


def stale_stages(work: Path, cfg: PipelineConfig) -> list[str]:
    """The stages of the work folder that are not done and current (changed, stale, unfinished)."""
    w = WorkDir(work)
    try:
        data = Path(w.detector(0).read_split().data_dir)
    except DataError:
        return ["detect-f0 (not trained)"]
    if not data.is_dir():
        raise UsageError(f"{work}: cannot check that its stages are current: its data folder {data} is not there; "
                         "mount it there, or pass --force to export as it is")
    status = Pipeline(data, w.root, cfg).statuses()
    return [f"{name} ({state})" for name, state in status.items() if state != "done"]


def from_work(work: Path, force: bool = False) -> Bundle:
    """The bundle a work folder amounts to (every fold, as the runner's submission): refused when a
    stage is not done and current, unless ``force``."""
    w = WorkDir(work)
    if not w.preset.is_file():
        raise DataError(f"{work}: not a runner work folder (no preset.json); give a work folder of "
                        "`kzlib run`, or a bundle made by `kzlib export`")
    cfg = config_from_dict(PipelineConfig, read_json(w.preset), str(w.preset))
    rule = cfg.test_rule()
    detectors = [w.detector(k).root for k in rule.folds]
    classifiers = {kind: [w.classifier(kind, k).root for k in range(cfg.n_folds)] for kind in classifier_kinds(cfg)}
    missing = [str(p) for p in detectors + [p for ps in classifiers.values() for p in ps] if not RunDir(p).best.is_file()]
    if missing:
        raise DataError(f"{work}: the run is not finished ({missing[0]}/best.pth is missing, and {len(missing) - 1} more)")
    info = {"source": str(Path(work).resolve())}
    if force:
        info["forced"] = "exported with --force: its stages were not checked to be done and current"
    else:
        stale = stale_stages(w.root, cfg)
        if stale:
            raise UsageError(f"{work}: {len(stale)} stage(s) are not done and current ({', '.join(stale[:4])}"
                             f"{' ...' if len(stale) > 4 else ''}): a bundle would not be what the runner's "
                             "submission used; finish the run (kzlib run, --rerun-changed), or pass --force")
    data_dir = Path(RunDir(detectors[0]).read_split().data_dir)
    unicode_csv = data_dir / "unicode_translation.csv"
    return Bundle(Path(work), detectors, classifiers, rule, cfg.n_tta,
                  w.level2 if (w.level2 / "stack.json").is_file() else None,
                  unicode_csv if unicode_csv.is_file() else None, info)


def verify(path: Path, m: dict) -> None:
    """A bundle's manifest is one this kit knows, and every file is the one export wrote."""
    if m.get("format") not in FORMATS:
        raise BundleError(f"{path / MANIFEST}: bundle format {m.get('format')!r} is not one this kit reads "
                          f"({', '.join(map(str, FORMATS))}); export it again with this kit, or pass --trust")
    try:
        kit, made_with = _version(__version__), _version(str(m.get("kit_version")))
        made_torch, have_torch = _version(str(m.get("torch"))), _version(torch.__version__)
    except ValueError:
        raise BundleError(f"{path / MANIFEST}: unreadable kit or torch version ({m.get('kit_version')!r}, "
                          f"{m.get('torch')!r}); pass --trust to read it anyway") from None
    if made_with > kit:
        raise BundleError(f"{path / MANIFEST}: made by kzlib {m['kit_version']}, newer than this kit ({__version__}); "
                          "update the kit, or pass --trust")
    if made_torch > have_torch:
        raise BundleError(f"{path / MANIFEST}: made with torch {m['torch']}, newer than this one ({torch.__version__}); "
                          "update torch, or pass --trust")
    for rel, sha in m.get("files", {}).items():
        f = path / rel
        if not f.is_file():
            raise BundleError(f"{f}: missing from the bundle (manifest.json lists it); copy the whole bundle again")
        if file_sha256(f) != sha:
            raise BundleError(f"{f}: its SHA-256 differs from manifest.json (altered or damaged); copy it again, "
                              "or pass --trust")


def load(path: Path, trust: bool = False) -> Bundle:
    """A bundle folder (checked unless ``trust``), a folder holding one (a Kaggle Model mounted under
    /kaggle/input/models/OWNER/MODEL/FRAMEWORK/VARIATION: its newest version), or a work folder (its
    stages must be current unless ``trust``)."""
    path = Path(path)
    if not (path / MANIFEST).is_file():
        if (path / "preset.json").is_file():
            return from_work(path, force=trust)
        try:
            inner = find_bundle(path)  # a folder holding a bundle: a Kaggle Model as it is mounted
        except ValueError as e:
            raise DataError(str(e)) from None
        if inner is None:
            return from_work(path, force=trust)
        path = inner
    m = read_json(path / MANIFEST)
    if not trust:
        verify(path, m)
    rule = TestBoxRule(m.get("test_box_rule", m.get("test_boxes", "fold0")), m.get("test_votes", 0), m.get("n_folds", 0)
                       or len(m["detectors"]))
    return Bundle(path, [path / d for d in m["detectors"]], {k: [path / p for p in v] for k, v in m["classifiers"].items()},
                  rule, m["n_tta"], path / m["level2"] if m.get("level2") else None,
                  path / "unicode_translation.csv" if (path / "unicode_translation.csv").is_file() else None, m)


def _best(runs: Sequence[Path]) -> Path:
    """The run of the best validation score (``best.pth``'s scores)."""
    def f1(run: Path) -> float:
        return float(load_checkpoint(RunDir(run).best).get("scores", {}).get("f1", -1.0))
    return max(runs, key=f1)


def export(work: Path, out: Path, folds: str = "all", level2: bool = True, force: bool = False, log=print) -> Bundle:
    """Copy what reading needs into ``out`` (replaced whole) with a manifest. Without ``level2``
    the bundle's characters are the plain blend of the classifiers (the runner's submission when
    level 2 is skipped)."""
    if folds not in ("all", "best"):
        raise UsageError(f"--folds {folds!r}: all or best")
    b = from_work(work, force)
    if folds == "best":
        w = WorkDir(work)
        n = read_json(w.preset)["n_folds"]
        b.detectors = [_best([d for d in (w.detector(k).root for k in range(n)) if RunDir(d).best.is_file()])]
        b.rule = TestBoxRule("fold0")
        b.classifiers = {k: [_best(v)] for k, v in b.classifiers.items()}
        b.level2 = None
    if not level2:
        b.level2 = None
    out = Path(out)
    stage = out.parent / f".{out.name}.building"
    if stage.exists():
        shutil.rmtree(stage)
    files: list[tuple[Path, str]] = []
    rel_det = [f"detect/{d.name}" for d in b.detectors]
    files += [(RunDir(d).best, f"{rel}/best.pth") for d, rel in zip(b.detectors, rel_det)]
    rel_cls = {kind: [f"classify/{kind}/{r.name}" for r in runs] for kind, runs in b.classifiers.items()}
    files += [(RunDir(r).best, f"{rel}/best.pth") for kind, runs in b.classifiers.items()
              for r, rel in zip(runs, rel_cls[kind])]
    if b.level2 is not None:
        files += [(p, f"level2/{p.name}") for p in sorted(b.level2.iterdir())
                  if p.name == "stack.json" or p.suffix == ".model"]
    if b.unicode_csv is not None:
        files.append((b.unicode_csv, "unicode_translation.csv"))
    for src, rel in files:
        (stage / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, stage / rel)
    manifest = {"format": 2, "kit_version": __version__, "torch": torch.__version__,
                "created": time.strftime("%Y-%m-%d %H:%M:%S"), "source": b.info["source"], "folds": folds,
                "detectors": rel_det, "test_box_rule": b.rule.rule, "test_votes": b.rule.votes,
                "n_folds": b.rule.n_folds, "n_tta": b.n_tta, "classifiers": rel_cls,
                "level2": "level2" if b.level2 is not None else None, **({"forced": b.info["forced"]} if force else {}),
                "files": {rel: file_sha256(stage / rel) for _, rel in files}}
    write_json_atomic(manifest, stage / MANIFEST)
    if out.exists():
        shutil.rmtree(out)
    stage.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    log(f"{out}: {len(rel_det)} detector(s), {sum(len(v) for v in rel_cls.values())} classifier(s) of "
        f"{len(rel_cls)} kind(s), level 2 {'yes' if b.level2 is not None else 'no'}, {size / 2**20:.1f} MiB"
        + (" (forced: stages not checked)" if force else ""))
    return load(out)


@one_line_errors()
def main(argv: Sequence[str] | None = None) -> int:
    p = parser("kzlib export", __doc__)
    p.add_argument("work", type=Path, help="a runner work folder (kzlib run --work)")
    p.add_argument("--out", type=Path, required=True, help="the bundle folder (replaced)")
    p.add_argument("--folds", choices=("all", "best"), default="all",
                   help="every fold as the runner, or the best fold's detector and classifiers (no level 2)")
    p.add_argument("--no-level2", action="store_true", help="leave level 2 out: the plain blend of the classifiers")
    p.add_argument("--force", action="store_true",
                   help="export even when stages are not done and current (the manifest says so)")
    p.add_argument("--kaggle-model", metavar="OWNER/MODEL/pytorch/VARIATION",
                   help="also publish the bundle as a new version of this Kaggle Model variation")
    a = p.parse_args(argv)
    if a.kaggle_model:
        parse_handle(a.kaggle_model)  # a bad handle is one line before the export
    b = export(a.work, a.out, a.folds, level2=not a.no_level2, force=a.force)
    out = {"bundle": str(b.root), "detectors": len(b.detectors),
           "classifiers": {k: len(v) for k, v in b.classifiers.items()}, "level2": b.level2 is not None}
    if a.kaggle_model:
        out["kaggle_model"] = publish(b.root, a.kaggle_model)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
