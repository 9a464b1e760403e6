"""The library's own error types: a message for the user, one line naming the file or field.

The command-line tools print these as one line and exit 2; any other exception is a bug and
keeps its traceback. Each also derives from the builtin type callers caught before (e.g.
`ValueError`), so code that catches those keeps working.
"""

from __future__ import annotations


class VLM4VLAError(Exception):
    """Base of every error the library raises for bad input or a bad environment."""


class ConfigError(VLM4VLAError, ValueError):
    """A setting, option or argument with a value that cannot be used."""


class MissingFileError(VLM4VLAError, FileNotFoundError):
    """A file or directory the user pointed at does not exist."""


def one_line(err: BaseException) -> str:
    """An error's message on one line (its type name if it has none)."""
    return " ".join(str(err).split()) or type(err).__name__


__all__ = ["ConfigError", "MissingFileError", "VLM4VLAError", "one_line"]
