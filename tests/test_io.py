"""Atomic writes: whole files with the umask's mode, temporaries of dead processes cleaned, I/O
failures named."""

import errno
import os
import subprocess
import sys

import pytest

from kzlib.io import io_message
from kzlib.errors import EnvironmentProblem
from kzlib.io import atomic_path, ensure_writable, write_json_atomic


def test_written_files_get_the_umasks_mode(tmp_path):
    old = os.umask(0o022)
    try:
        write_json_atomic({"a": 1}, tmp_path / "x.json")
    finally:
        os.umask(old)
    assert (tmp_path / "x.json").stat().st_mode & 0o777 == 0o644


def test_leftover_temporaries_of_dead_processes_are_cleaned(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    stale = tmp_path / f".x.json.{pid}.abc123.tmp.json"
    live = tmp_path / f".x.json.{os.getppid()}.def456.tmp.json"
    other = tmp_path / f".y.json.{pid}.abc123.tmp.json"
    for f in (stale, live, other):
        f.write_text("partial")
    write_json_atomic({"a": 1}, tmp_path / "x.json")
    assert not stale.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name, "x.json"])


def test_a_failed_write_names_the_file_not_the_temporary(tmp_path):
    with pytest.raises(OSError) as e:
        with atomic_path(tmp_path / "ckpt.pth"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert e.value.filename == str(tmp_path / "ckpt.pth") and not list(tmp_path.iterdir())
    message = io_message(e.value, "stage detect-f0")
    assert message == (f"stage detect-f0: {tmp_path / 'ckpt.pth'}: No space left on device "
                       "(free some disk space, then rerun (finished work is kept))")
    assert "read-only file system" in io_message(OSError(errno.EROFS, "x", "/mnt/ro"))
    assert "no permission" in io_message(OSError(errno.EACCES, "x", "/root/x"))


def test_an_unwritable_output_folder_is_found_before_any_work(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(EnvironmentProblem, match=r"output folder: .*file/out: (File exists|Not a directory)"):
        ensure_writable(tmp_path / "file" / "out")
