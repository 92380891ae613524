"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import argparse
import functools
import re
import sys
import unicodedata
from pathlib import Path
from typing import Callable

from kzlib.errors import EnvironmentProblem, KzError
from kzlib.io import io_message


def parser(prog: str, doc: str, epilog: bool = True) -> argparse.ArgumentParser:
    """An entry point's parser: its docstring's first line as description and, with ``epilog``, the
    whole docstring after the options as it is written."""
    return argparse.ArgumentParser(prog=prog, description=doc.split("\n")[0], epilog=doc if epilog else None,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)


_BIDI = {"\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069"}


def printable(text: str, keep: str = "") -> str:
    """``text`` safe to print: control characters (a terminal's escape sequences, carriage returns,
    bidirectional overrides) written as ``\\x1b``-style escapes, so a file name cannot move the
    cursor, hide or recolour the line it is printed in; the characters in ``keep`` stay."""
    def esc(c: str) -> str:
        if c in keep or (unicodedata.category(c) != "Cc" and c not in _BIDI):
            return c
        return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"
    return "".join(esc(c) for c in text) if _UNSAFE.search(text) else text


_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


DEVICES = "cpu, cuda (or cuda:N), auto"


def device_arg(text: str) -> str:
    """``--device``: cpu, cuda, cuda:N or auto; anything else is argparse's one line."""
    if text in ("cpu", "cuda", "auto") or re.fullmatch(r"cuda:\d+", text):
        return text
    raise argparse.ArgumentTypeError(f"{printable(text)!s} is not a device: one of {DEVICES}")


def folds_arg(text: str) -> list[int]:
    """``--folds 0,1,3``: comma-separated fold numbers; anything else is argparse's one line."""
    parts = [t.strip() for t in text.split(",") if t.strip()]
    if not parts or not all(t.isdigit() for t in parts):
        raise argparse.ArgumentTypeError(f"{printable(text)!r}: comma-separated fold numbers, e.g. 0,1,3")
    return [int(t) for t in parts]


def one_line_errors(*errors: type[BaseException], code: int = 1) -> Callable:
    """Decorate a CLI ``main``: the kit's errors (``kzlib.errors``; their own exit codes), I/O
    failures (exit 3) and any of ``errors`` (exit ``code``) are printed as one ``error: ...``
    line on stderr instead of a traceback."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except KzError as e:
                print(f"error: {printable(str(e), keep=chr(10))}", file=sys.stderr)
                return e.exit_code
            except errors as e:
                print(f"error: {printable(str(e), keep=chr(10))}", file=sys.stderr)
                return code
            except OSError as e:
                print(f"error: {printable(io_message(e), keep=chr(10))}", file=sys.stderr)
                return EnvironmentProblem.exit_code
        return run
    return wrap


def add_training_flags(t) -> None:
    """The flags every ``train`` subcommand has: fold or held-out pages, run folder, config file,
    resume, and the runner's own (hidden) --auto/--deadline/--result."""
    t.add_argument("--fold", type=int, help="fold to hold out (default 0)")
    t.add_argument("--out", type=Path, required=True, help="run folder")
    t.add_argument("--config", type=Path, help="JSON config (flags override it)")
    t.add_argument("--val-images", help="comma-separated image ids to hold out instead of the fold's books")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out (its config is kept; a flag that differs from it is an error)")
    t.add_argument("--auto", action="store_true", help=argparse.SUPPRESS)  # the runner's: resume when there is a run
    t.add_argument("--deadline", type=float, help=argparse.SUPPRESS)  # the runner's time budget (time.time() value)
    t.add_argument("--result", type=Path, help=argparse.SUPPRESS)  # the runner reads the result here
