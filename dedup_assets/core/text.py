"""Words shown to people: counts with the right plural, docstrings as plain help text."""

from __future__ import annotations

import re

_ROLE = re.compile(r":[a-z]+:`~?\.?([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.DOTALL)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``"1 group"``, ``"4 groups"``, ``"0 groups"``; ``nouns`` for an irregular plural."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


def help_text(doc: str) -> str:
    """A docstring as a person reads it in ``--help``: Sphinx roles (``:mod:`x```) and
    double-backtick literals become single-backtick `x`, as in Markdown."""
    return _LITERAL.sub(r"`\1`", _ROLE.sub(r"`\1`", doc))
