"""Shared behaviour of the command-line entry points."""

from __future__ import annotations

import functools
import sys
from typing import Callable


def one_line_errors(*errors: type[BaseException], code: int = 1) -> Callable:
    """Decorate a CLI ``main``: an error of these types is printed as one ``error: ...`` line on
    stderr and the exit code is ``code``, instead of a traceback."""
    def wrap(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            try:
                return main(*args, **kwargs)
            except errors as e:
                print(f"error: {e}", file=sys.stderr)
                return code
        return run
    return wrap
