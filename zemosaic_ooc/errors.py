"""Errors that reach the user with a clear message and exit code 2."""
from __future__ import annotations

from pathlib import Path


class ZeMosaicOocError(Exception):
    """Base class of the errors the CLI reports as one line with exit code 2."""

    exit_code = 2


class InputError(ZeMosaicOocError):
    """A bad input file: the message names the file and the problem."""

    def __init__(self, path: str | Path | None, problem: str):
        self.path = None if path is None else str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class OptionError(ZeMosaicOocError):
    """An unknown, refused or malformed option."""


class StoreError(ZeMosaicOocError):
    """An output store that cannot be created, reused or resumed."""
