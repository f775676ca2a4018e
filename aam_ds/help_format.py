"""Help-text formatting shared by ``aam-ds`` and ``launch/*.py`` (imports nothing heavy)."""

from __future__ import annotations

import argparse


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the line breaks of descriptions and epilogs (the examples) and appends each option's
    default, unless the option has none (None, False, an empty list) or its help already names it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default is None or default is False or default == [] or default == argparse.SUPPRESS or "default" in text:
            return text
        return f"{text} (default: %(default)s)".lstrip()
