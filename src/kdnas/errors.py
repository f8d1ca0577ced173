"""The one-line form of an error, as kdnas shows every error to a user."""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first non-empty line of ``err``'s message, or its type's name when the message is empty."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__
