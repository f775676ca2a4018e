"""User-facing errors: every bad input names where it came from and how to fix it."""

from __future__ import annotations

import sys
import warnings


class AamInputError(ValueError):
    """A problem with the user's input (file, metadata field, spec key, launch setup).

    The message always has three parts: the file or field at fault, what is wrong with it,
    and what to do about it, so that a user can act without reading our source.
    """

    def __init__(self, source: str, problem: str, fix: str):
        self.source = str(source)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.source}: {problem}. Fix: {fix}")


class AamNotice(UserWarning):
    """Something done to the user's data that is not an error but must not pass unseen (samples or
    ASVs dropped, ...). The command-line entry points print it as one line (:func:`show_notices_as_lines`)."""


def notice(message: str) -> None:
    """Issue an :class:`AamNotice` (a warning, so library users can filter or catch it)."""
    warnings.warn(message, AamNotice, stacklevel=2)


def show_notices_as_lines(show: bool = True) -> None:
    """Print each :class:`AamNotice` as one ``aam-ds: notice: ...`` line on stderr, without the
    source line of a raw warning; ``show=False`` (ranks other than 0) silences notices. Other
    warnings keep Python's format."""
    if not show:
        warnings.simplefilter("ignore", AamNotice)
        return
    original = warnings.showwarning

    def show_warning(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, AamNotice):
            print(f"aam-ds: notice: {message}", file=file or sys.stderr)
        else:
            original(message, category, filename, lineno, file, line)

    if getattr(original, "__name__", "") != "show_warning":  # once per process
        warnings.showwarning = show_warning
