"""Finding a kernel's inputs under ``/kaggle/input`` by what they hold, not where they are mounted.

Kaggle mounts inputs either flat (``/kaggle/input/<slug>/``, older sessions) or by kind
(``/kaggle/input/competitions/<slug>/``, ``/kaggle/input/datasets/<owner>/<slug>/``,
``/kaggle/input/notebooks/<owner>/<slug>/``). Markers decide:

- the kit: a folder holding ``kzlib/__init__.py`` (the kit's dataset);
- the competition: ``sample_submission.csv`` + ``unicode_translation.csv`` + ``train.csv``;
- a kernel's output: its ``kzlib_status.json`` (``"kernel": "<slug>"``), written by every kernel.

A model bundle is found by its ``manifest.json`` (``kzlib.export.find_bundle``).

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
