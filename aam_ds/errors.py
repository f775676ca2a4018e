"""User-facing errors: every bad input names where it came from and how to fix it."""

from __future__ import annotations


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
