"""How the command-line tools report the library's errors: one line, exit code 2."""

from __future__ import annotations

import os
import sys

from vlm4vla.errors import VLM4VLAError

DEBUG_ENV = "VLM4VLA_DEBUG"  # set it to see the traceback of a reported error


def report(prog: str, err: BaseException) -> int:
    """Print ``prog: error: <first line>`` to stderr and return the exit code (2)."""
    if os.environ.get(DEBUG_ENV):
        raise err
    return report_message(prog, str(err) or type(err).__name__)


def report_message(prog: str, message: str) -> int:
    """Print the first line of ``message`` (details such as a worker's traceback follow it)."""
    first = message.strip().splitlines()[0] if message.strip() else "unknown error"
    print(f"{prog}: error: {first}", file=sys.stderr)
    return 2


__all__ = ["DEBUG_ENV", "VLM4VLAError", "report", "report_message"]
