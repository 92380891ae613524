"""Atomic file writes: a stage's outputs appear whole or not at all.

A write goes to ``.NAME.PID.RANDOM.tmp`` beside ``NAME`` and is renamed over it once complete. The
finished file gets the mode the umask gives new files (not the temporary file's 0600). Leftover
temporaries of a killed process (its pid no longer running) are removed the next time the same
file is written.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pandas as pd

from kzlib.errors import EnvironmentProblem


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_leftovers(path: Path) -> list[Path]:
    """Remove temporaries of ``path`` left by processes that are gone; returns them."""
    removed = []
    for tmp in path.parent.glob(f".{path.name}.*.tmp*"):
        parts = tmp.name[len(path.name) + 2:].split(".")
        if parts and parts[0].isdigit() and int(parts[0]) != os.getpid() and not _alive(int(parts[0])):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp" + "".join(path.suffixes),
                               dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except OSError as e:  # name the file being written, not the temporary
        if e.filename is None or str(e.filename).startswith(str(path.parent / ".")):
            e.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_csv_atomic(df: pd.DataFrame, path: str | Path, **kwargs) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, **kwargs)


def write_json_atomic(obj, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def io_message(e: OSError, what: str = "") -> str:
    """One line for an I/O failure: the path, what errno means, and what to do about it."""
    head = f"{what}: " if what else ""
    if not e.filename:
        return head + (str(e) or type(e).__name__)
    meaning = os.strerror(e.errno) if e.errno else str(e)
    hint = {errno.ENOSPC: "free some disk space, then rerun (finished work is kept)",
            errno.EROFS: "the folder is on a read-only file system; choose another output folder",
            errno.EACCES: "no permission to write there; choose another output folder",
            errno.EDQUOT: "disk quota exceeded; free some space, then rerun"}.get(e.errno, "")
    return f"{head}{e.filename}: {meaning}" + (f" ({hint})" if hint else "")


def ensure_writable(folder: str | Path, what: str = "output folder") -> Path:
    """Create ``folder`` if needed and check that files can be written in it, before any compute
    starts; a failure is one ``EnvironmentProblem`` line naming the folder and the errno."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        if e.filename is None:
            e.filename = str(folder)
        raise EnvironmentProblem(io_message(e, what)) from None
    return folder


@dataclass
class Held:
    """What ``exclusive_lock`` yields: truthy when this process holds the lock, else the holder."""
    held: bool
    owner: str

    def __bool__(self) -> bool:
        return self.held


@contextmanager
def exclusive_lock(path: str | Path) -> Iterator[Held]:
    """An exclusive, non-blocking ``flock`` on ``path`` for the ``with`` block: yields a truthy
    ``Held`` when this process got it (the file then names this process), a falsy one naming the
    holder when another process has it. The kernel releases it if the process dies."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fh = open(path, "a+")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            fh.seek(0)
            yield Held(False, fh.read().strip() or "another process")
            return
        fh.seek(0)
        fh.truncate()
        fh.write(f"pid {os.getpid()} since {time.strftime('%H:%M:%S')}")
        fh.flush()
        yield Held(True, "")
    finally:
        fh.close()
