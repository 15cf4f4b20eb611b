"""The error type of the reference formats and two small helpers the reference modules share."""

from __future__ import annotations

from attractorlab.errors import AttractorlabError


class ReferenceFormatError(AttractorlabError, ValueError):
    """A reference checkpoint or dataset file is missing, foreign, truncated or inconsistent."""


def first_line(err: BaseException) -> str:
    """``"Type: first line of the message"`` (at most 160 characters) for one-line error messages."""
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def is_int(value: object) -> bool:
    """A Python ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)
