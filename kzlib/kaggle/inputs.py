"""Finding a kernel's inputs under ``/kaggle/input`` by what they hold, not where they are mounted.

Kaggle mounts inputs either flat (``/kaggle/input/<slug>/``, older sessions) or by kind
(``/kaggle/input/competitions/<slug>/``, ``/kaggle/input/datasets/<owner>/<slug>/``,
``/kaggle/input/notebooks/<owner>/<slug>/``). Markers decide:

- the kit: a folder holding ``kzlib/__init__.py`` (the kit's dataset);
- the competition: ``sample_submission.csv`` + ``unicode_translation.csv`` + ``train.csv``;
- a kernel's output: its ``kzlib_status.json`` (``"kernel": "<slug>"``), written by every kernel;
- a model bundle (a Kaggle Model of ``kzlib export``): its ``manifest.json``.

Stdlib only: the kernel scripts use the same search to find the kit before they can import it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

STATUS_FILE = "kzlib_status.json"
MAX_DEPTH = 5  # /kaggle/input/notebooks/<owner>/<slug>/ and a folder or two below


def walk(root: Path, max_depth: int = MAX_DEPTH):
    """(folder, file names) under ``root``, breadth first, at most ``max_depth`` levels down;
    symbolic links to folders are followed (local emulation mounts with links)."""
    root = Path(root)
    queue = [(root, 0)]
    while queue:
        folder, depth = queue.pop(0)
        try:
            entries = list(os.scandir(folder))
        except OSError:
            continue
        files = {e.name for e in entries if e.is_file()}
        yield folder, files
        if depth < max_depth:
            queue += [(Path(e.path), depth + 1) for e in sorted(entries, key=lambda e: e.name) if e.is_dir()]




def find_competition(root: Path) -> Path | None:
    for folder, files in walk(root):
        if {"sample_submission.csv", "unicode_translation.csv", "train.csv"} <= files:
            return folder
    return None


def find_bundle(root: Path) -> Path | None:
    """A model bundle (``kzlib export``; on Kaggle a Model's version folder): its ``manifest.json``
    names detectors and classifiers. The newest version when several versions of one model are
    mounted; ``ValueError`` when bundles of different models are."""
    found = []
    for folder, files in walk(root, MAX_DEPTH + 2):
        if "manifest.json" in files:
            try:
                manifest = json.loads((folder / "manifest.json").read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(manifest, dict) and "detectors" in manifest and "classifiers" in manifest:
                found.append(folder)
    if not found:
        return None
    models = sorted({str(f.parent if f.name.isdigit() else f) for f in found})  # versions of one model
    if len(models) > 1:
        raise ValueError(f"several model bundles under {root}: {', '.join(models)}; give one of them")
    return max(found, key=lambda f: (int(f.name) if f.name.isdigit() else -1, str(f)))


def kernel_outputs(root: Path) -> dict[str, tuple[Path, dict]]:
    """Every attached kernel output: slug -> (folder, its status)."""
    out = {}
    for folder, files in walk(root):
        if STATUS_FILE in files:
            try:
                status = json.loads((folder / STATUS_FILE).read_text())
            except (OSError, json.JSONDecodeError):
                continue
            if isinstance(status, dict) and status.get("kernel"):
                out.setdefault(status["kernel"], (folder, status))
    return out


def describe(root: Path, max_depth: int = 3, limit: int = 40) -> str:
    """What is mounted under ``root``, a few levels down, for error messages."""
    lines = []
    for folder, files in walk(root, max_depth):
        if folder == Path(root):
            continue
        depth = len(folder.relative_to(root).parts)
        markers = sorted(files & {"train.csv", "sample_submission.csv", STATUS_FILE, "MANIFEST.tsv"})
        lines.append("  " * depth + f"{folder.name}/" + (f"  ({', '.join(markers)})" if markers else ""))
        if len(lines) >= limit:
            lines.append("  ...")
            break
    return "\n".join(lines) if lines else "  (nothing)"
