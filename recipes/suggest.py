"""Did-you-mean hints for names a user types: recipes, environment families, tasks, settings."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def did_you_mean(word: str, choices: Iterable[str], n: int = 3) -> str:
    """``"; did you mean A or B?"`` for the choices closest to ``word`` (difflib's ratio ≥ 0.6), else ``""``.

    Args:
        word: what the user typed.
        choices: the known names.
        n: at most this many suggestions.
    """
    close = difflib.get_close_matches(word, list(choices), n=n)
    return f"; did you mean {' or '.join(close)}?" if close else ""
