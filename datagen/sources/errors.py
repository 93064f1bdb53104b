"""The error for an input file that cannot be read as its source kind says.

A bad input file stops the run (rows cannot be counted from a file that
cannot be read), so the message must let the user fix it without a traceback:
the file, the row or line when known, what was expected, and what to do. The
CLI turns it into ``error: ...`` and exit code 2. It is a ``ValueError`` so
code that guards against bad values catches it too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional


class InputFileError(ValueError):
    def __init__(self, path: Path | str, problem: str, fix: str, where: Optional[str] = None):
        self.path, self.problem, self.fix, self.where = str(path), problem, fix, where
        super().__init__(f"{path}{':' + where if where else ''}: {problem}. {fix}")

    def __reduce__(self):  # keeps the message when it crosses a process boundary
        return (InputFileError, (self.path, self.problem, self.fix, self.where))


def brief(e: BaseException) -> str:
    """The first line of a library's error message (ijson's carry an ASCII-art pointer below it)."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
