"""Model bundles: what reading pages needs from a finished run, in one folder to copy around.

    kzlib export WORK_DIR --out MODEL_DIR [--folds all|best] [--no-level2] [--force]

``WORK_DIR`` is a runner's work folder (``kzlib run --work``). The bundle holds no pickle, only
data formats (no file in it can run code when it is read)::

    manifest.json                what is in it and how to use it (the runner's test-box rule, TTA
                                 scales, kinds), its file formats, kit and library versions, and
                                 every file's SHA-256
    detect/foldK/model.safetensors, run.json
                                 each detector the test-box rule reads: its weights (safetensors) and
                                 its config, validation scores and epoch (JSON)
    classify/KIND/foldK/model.safetensors, run.json
                                 each classifier: weights; config, class list, scores (JSON)
    level2/                      the level-2 models in their libraries' own formats (LightGBM's text
                                 model, XGBoost's JSON, CatBoost's binary model) and stack.json
                                 (when the run has them and every fold is kept)
    unicode_translation.csv      code point -> character

``--folds all`` (default) keeps exactly what the runner's submission used, so ``kzlib read`` on the
test pages writes the same submission; a work folder whose stages are not all done and current (an
unfinished run, or one whose preset or data changed since) is refused, unless ``--force`` (the
manifest then says so). ``--folds best`` keeps the best detector fold and the best fold of each
kind, and the plain blend instead of level 2: a smaller, faster bundle for reading books on a CPU.
The weights in a bundle are the run's checkpoints' tensors, bit for bit; the checkpoints themselves
are loaded with ``torch.load(weights_only=True)`` (a work folder's file that needs more is refused).

Loading a bundle checks its manifest: its keys, a format this kit knows (an older bundle, whose
weights were pickled torch files, is refused with the export command that makes a new one), and
every file it names: listed with its SHA-256, inside the bundle, not a link, and the same bytes. A
mismatch is one line naming the file. ``--trust`` in ``kzlib read`` skips only the version checks (a
kit or torch newer than this one); it never loads a file the manifest does not vouch for, and
nothing is ever unpickled. ``kzlib read --model`` takes a bundle, or a work folder directly (the
same as ``--folds all``; its checkpoints loaded with ``weights_only=True``). A bundle is checked
without torch: a damaged or altered one is refused in a second. ``kzlib kaggle publish`` makes a
bundle a version of a Kaggle Model.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Sequence

from kzlib import __version__
from kzlib.cli import one_line_errors, parser
from kzlib.config import config_from_dict, read_json
from kzlib.detect.config import TEST_MATCHES, TestBoxRule
from kzlib.errors import DataError, EnvironmentProblem, UsageError
from kzlib.io import file_sha256, io_message, write_json_atomic
from kzlib.preset import PipelineConfig
from kzlib.runs import RUN_FILE, WEIGHTS_FILE, RunDir, load_checkpoint, save_bundle_run
from kzlib.stack.models import read_models
from kzlib.stages import classifier_kinds
from kzlib.work import WorkDir

MANIFEST = "manifest.json"
# 1: the test-box rule under "test_boxes"; 2: "test_box_rule", forced exports said (both: pickled best.pth);
# 3: weights as safetensors, configs, class lists and scores as JSON: no pickle (and, added within 3,
# "test_match": how the vote matches the folds' boxes; a manifest without it voted by IoU)
FORMAT = 3
OLD_FORMATS = (1, 2)
FORMATS_OF_FILES = {"weights": "safetensors", "run": "json",
                    "level2": "lightgbm text model, xgboost json, catboost cbm; stack.json"}


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
    from kzlib.pipeline import Pipeline  # the runner's statuses (and with it torch): a work folder's only

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


def find_bundle(root: Path, max_depth: int = 7) -> Path | None:
    """A bundle in a folder that holds one, at most ``max_depth`` levels down (on Kaggle a Model's
    version folder: /kaggle/input/models/OWNER/MODEL/FRAMEWORK/VARIATION/VERSION): a
    ``manifest.json`` that names detectors and classifiers. The newest version when several versions
    of one model are there; ``ValueError`` when bundles of different models are. Links to folders
    are followed (a local emulation mounts with links)."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs.sort()
        if len(Path(folder).relative_to(root).parts) >= max_depth:
            dirs.clear()
        if MANIFEST in files:
            try:
                manifest = json.loads((Path(folder) / MANIFEST).read_text())
            except (OSError, ValueError):
                continue
            if isinstance(manifest, dict) and "detectors" in manifest and "classifiers" in manifest:
                found.append(Path(folder))
    if not found:
        return None
    models = sorted({str(f.parent if f.name.isdigit() else f) for f in found})  # versions of one model
    if len(models) > 1:
        raise ValueError(f"several model bundles under {root}: {', '.join(models)}; give one of them")
    return max(found, key=lambda f: (int(f.name) if f.name.isdigit() else -1, str(f)))


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


def _key(path: Path, m: dict, key: str, kind: type | tuple, what: str, optional: bool = False):
    """``m[key]``, of ``kind``: missing or of another type is one ``BundleError`` line."""
    if key not in m:
        if optional:
            return None
        raise BundleError(f"{path / MANIFEST}: no {key!r} ({what}); export the bundle again")
    value = m[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise BundleError(f"{path / MANIFEST}: {key!r} is {json.dumps(value)[:80]}, not {what}; export the bundle again")
    return value


def _inside(path: Path, rel: str, key: str) -> Path:
    """``path / rel`` when ``rel`` is a plain relative path that stays inside the bundle and passes
    through no link; else one ``BundleError`` line."""
    parts = Path(rel).parts
    if not rel or Path(rel).is_absolute() or ".." in parts or rel != Path(*parts).as_posix():
        raise BundleError(f"{path / MANIFEST}: {key} names {rel!r}, not a path inside the bundle; a bundle is read "
                          "only from its own folder")
    for i in range(1, len(parts) + 1):
        if (path / Path(*parts[:i])).is_symlink():
            raise BundleError(f"{path / Path(*parts[:i])}: a link ({key} {rel!r}); a bundle's files must lie in it, "
                              "not be links; copy the bundle with its files")
    return path / rel


def check_manifest(path: Path, m) -> dict:
    """The manifest's structure: every key the reader uses, of its type (one line naming the key)."""
    if not isinstance(m, dict):
        raise BundleError(f"{path / MANIFEST}: a JSON {type(m).__name__}, not an object; not a bundle manifest")
    fmt = m.get("format")
    if fmt in OLD_FORMATS:
        source = m.get("source") if isinstance(m.get("source"), str) else "WORK_DIR"
        raise BundleError(f"{path / MANIFEST}: bundle format {fmt} keeps its weights in pickled torch files, which "
                          f"this kit does not load from a bundle; make a new bundle from its work folder: "
                          f"kzlib export {source} --out NEW_BUNDLE")
    if fmt != FORMAT:
        raise BundleError(f"{path / MANIFEST}: bundle format {fmt!r} is not one this kit reads ({FORMAT}); made by "
                          "a newer kit? update kzlib, or export the bundle again with this one")
    detectors = _key(path, m, "detectors", list, "a list of detector folders")
    classifiers = _key(path, m, "classifiers", dict, "an object: kind -> classifier folders")
    if not detectors or not all(isinstance(d, str) for d in detectors):
        raise BundleError(f"{path / MANIFEST}: 'detectors' must name at least one detector folder; export the bundle again")
    if not classifiers or not all(isinstance(v, list) and v and all(isinstance(r, str) for r in v)
                                  for v in classifiers.values()):
        raise BundleError(f"{path / MANIFEST}: 'classifiers' must name at least one classifier folder per kind; "
                          "export the bundle again")
    n_tta = _key(path, m, "n_tta", int, "a whole number of TTA scales")
    if n_tta < 1:
        raise BundleError(f"{path / MANIFEST}: 'n_tta' is {n_tta}, not at least 1; export the bundle again")
    _key(path, m, "test_box_rule", str, "the test-box rule")
    _key(path, m, "test_votes", int, "a number of votes")
    if _key(path, m, "test_match", str, "how the vote matches boxes", optional=True) not in (None, *TEST_MATCHES):
        raise BundleError(f"{path / MANIFEST}: 'test_match' is {m['test_match']!r}, not centre or iou; "
                          "export the bundle again")
    _key(path, m, "n_folds", int, "a number of folds")
    _key(path, m, "level2", (str, type(None)), "a folder or null", optional=True)
    files = _key(path, m, "files", dict, "an object: file -> SHA-256")
    if not all(isinstance(v, str) for v in files.values()):
        raise BundleError(f"{path / MANIFEST}: 'files' must map each file to its SHA-256; export the bundle again")
    return m


def needed_files(path: Path, m: dict) -> dict[str, str]:
    """Every file the reader opens, relative, by the manifest key that names it; level 2's models
    are read from its stack.json (hashed before it is read)."""
    need = {}
    for d in m["detectors"]:
        need.update({f"{d}/{WEIGHTS_FILE}": "detectors", f"{d}/{RUN_FILE}": "detectors"})
    for kind, runs in m["classifiers"].items():
        for r in runs:
            need.update({f"{r}/{WEIGHTS_FILE}": f"classifiers.{kind}", f"{r}/{RUN_FILE}": f"classifiers.{kind}"})
    if m.get("level2"):
        need[f"{m['level2']}/stack.json"] = "level2"
    return need


def verify(path: Path, m: dict, trust: bool = False) -> None:
    """A bundle's manifest is one this kit reads, and every file the reader opens is listed with its
    SHA-256, lies inside the bundle, is no link and is the file export wrote. ``trust`` skips only
    the versions (a kit or torch newer than this one)."""
    check_manifest(path, m)
    if not trust:
        try:
            kit, made_with = _version(__version__), _version(str(m.get("kit_version")))
            made_torch, have_torch = _version(str(m.get("torch"))), _version(metadata.version("torch"))
        except ValueError:
            raise BundleError(f"{path / MANIFEST}: unreadable kit or torch version ({m.get('kit_version')!r}, "
                              f"{m.get('torch')!r}); pass --trust to read it anyway") from None
        if made_with > kit:
            raise BundleError(f"{path / MANIFEST}: made by kzlib {m['kit_version']}, newer than this kit "
                              f"({__version__}); update the kit, or pass --trust")
        if made_torch > have_torch:
            raise BundleError(f"{path / MANIFEST}: made with torch {m['torch']}, newer than this one "
                              f"({metadata.version('torch')}); update torch, or pass --trust")
    files = m["files"]
    for rel, sha in files.items():
        f = _inside(path, rel, "files")
        if not f.is_file():
            raise BundleError(f"{f}: missing from the bundle (manifest.json lists it); copy the whole bundle again")
        if file_sha256(f) != sha:
            raise BundleError(f"{f}: its SHA-256 differs from manifest.json (altered or damaged); copy it again")
    need = needed_files(path, m)
    level2 = m.get("level2")
    if level2 and f"{level2}/stack.json" in files:  # hashed above: what it names is read next
        meta, cfg = read_models(path / level2)
        if not isinstance(meta.get("folds"), int):
            raise BundleError(f"{path / level2 / 'stack.json'}: 'folds' is not a number; export the bundle again")
        need.update({f"{level2}/fold{k}_{lib}.model": "level2" for k in range(meta["folds"]) for lib in cfg.libraries})
    for rel, key in need.items():
        _inside(path, rel, key)
        if rel not in files:
            raise BundleError(f"{path / MANIFEST}: {key} names {rel}, which 'files' does not list with its SHA-256; "
                              "export the bundle again")


def load(path: Path, trust: bool = False) -> Bundle:
    """A bundle folder (``verify``: ``trust`` skips its version checks only), a folder holding one (a
    Kaggle Model mounted under /kaggle/input/models/OWNER/MODEL/FRAMEWORK/VARIATION: its newest
    version), or a work folder (its stages must be current unless ``trust``)."""
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
    verify(path, m, trust)
    rule = TestBoxRule(m["test_box_rule"], m["test_votes"], m["n_folds"] or len(m["detectors"]),
                       m.get("test_match", "iou"))  # bundles made before the key voted by IoU
    unicode_csv = "unicode_translation.csv" in m["files"]
    return Bundle(path, [path / d for d in m["detectors"]], {k: [path / p for p in v] for k, v in m["classifiers"].items()},
                  rule, m["n_tta"], path / m["level2"] if m.get("level2") else None,
                  path / "unicode_translation.csv" if unicode_csv else None, m)


def _best(runs: Sequence[Path]) -> Path:
    """The run of the best validation score (``best.pth``'s scores)."""
    def f1(run: Path) -> float:
        path = RunDir(run).best
        try:
            return float(load_checkpoint(path).get("scores", {}).get("f1", -1.0))
        except Exception as e:
            raise BundleError(f"{path}: does not load ({str(e).splitlines()[0][:200]}); retrain that run, or "
                              "restore the file") from None
    return max(runs, key=f1)


def export(work: Path, out: Path, folds: str = "all", level2: bool = True, force: bool = False, log=print) -> Bundle:
    """Copy what reading needs into ``out`` (replaced whole) with a manifest. Without ``level2``
    the bundle's characters are the plain blend of the classifiers (the runner's submission when
    level 2 is skipped)."""
    if folds not in ("all", "best"):
        raise UsageError(f"--folds {folds!r}: all or best")
    b = from_work(work, force)
    import torch  # the manifest names the build that saved the weights (a folder that is no work folder is refused without it)

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
    rel_det = [f"detect/{d.name}" for d in b.detectors]
    rel_cls = {kind: [f"classify/{kind}/{r.name}" for r in runs] for kind, runs in b.classifiers.items()}
    runs = list(zip(b.detectors, rel_det)) + [(r, rel) for kind, rs in b.classifiers.items()
                                               for r, rel in zip(rs, rel_cls[kind])]
    copies: list[tuple[Path, str]] = []
    if b.level2 is not None:
        copies += [(p, f"level2/{p.name}") for p in sorted(b.level2.iterdir())
                   if p.name == "stack.json" or p.suffix == ".model"]
    if b.unicode_csv is not None:
        copies.append((b.unicode_csv, "unicode_translation.csv"))
    states = {}
    for run, rel in runs:  # every checkpoint loads (weights_only) before anything is written
        path = RunDir(run).best
        try:
            states[rel] = load_checkpoint(path)
        except Exception as e:
            raise BundleError(f"{path}: does not load ({str(e).splitlines()[0][:200]}); retrain that run, or restore "
                              "the file") from None
    try:
        if stage.exists():
            shutil.rmtree(stage)
        written = []
        for rel, state in states.items():
            extra = {k: state[k] for k in ("config", "classes", "scores", "epoch") if k in state}
            written += save_bundle_run(state["model"], stage / rel, extra)
        for src, rel in copies:
            (stage / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, stage / rel)
            written.append(stage / rel)
        manifest = {"format": FORMAT, "formats": FORMATS_OF_FILES, "kit_version": __version__,
                    "torch": torch.__version__, "safetensors": metadata.version("safetensors"),
                    "created": time.strftime("%Y-%m-%d %H:%M:%S"), "source": b.info["source"], "folds": folds,
                    "detectors": rel_det, "test_box_rule": b.rule.rule, "test_votes": b.rule.votes,
                    "test_match": b.rule.match, "n_folds": b.rule.n_folds, "n_tta": b.n_tta, "classifiers": rel_cls,
                    "level2": "level2" if b.level2 is not None else None,
                    **({"forced": b.info["forced"]} if force else {}),
                    "files": {f.relative_to(stage).as_posix(): file_sha256(f) for f in written}}
        write_json_atomic(manifest, stage / MANIFEST)
        if out.exists():
            shutil.rmtree(out)
        stage.rename(out)
    except OSError as e:  # a full disk, a read-only folder: the destination named, nothing left half-made
        shutil.rmtree(stage, ignore_errors=True)
        e.filename = str(out)
        raise EnvironmentProblem(io_message(e, "export")) from None
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
    a = p.parse_args(argv)
    b = export(a.work, a.out, a.folds, level2=not a.no_level2, force=a.force)
    print(json.dumps({"bundle": str(b.root), "detectors": len(b.detectors),
                      "classifiers": {k: len(v) for k, v in b.classifiers.items()}, "level2": b.level2 is not None}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
