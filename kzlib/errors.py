"""The kit's errors, by whose fault they are. Every CLI prints one of these as a single
``error: ...`` line (``kzlib.cli.one_line_errors``) and exits with its code:

- ``DataError`` (1): bad input data — a file, row or value the user supplied;
- ``UsageError`` (2): a wrong flag, config value or combination of them;
- ``EnvironmentProblem`` (3): the machine — no GPU, missing weights or packages, a folder that is
  not writable, a full disk.
"""

from __future__ import annotations


class KzError(Exception):
    exit_code = 1


class DataError(KzError, ValueError):
    """Bad input data. The message is one line that names the file (and row) at fault."""
    exit_code = 1


class UsageError(KzError, ValueError):
    """A flag, config value or combination that cannot work."""
    exit_code = 2


class EnvironmentProblem(KzError, RuntimeError):
    """Something about the machine, not the data or the flags."""
    exit_code = 3


class StageProcessFailed(KzError):
    """A stage run in a process of its own (``kzlib run`` with jobs) failed: its exit code passed on
    (its own error line is already on the console)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code
