"""How an exception is told to a user: one line, never a traceback (those go to logs); and the error types that
pages and CLIs catch without importing torch."""
from __future__ import annotations


def first_line(exc: BaseException, limit: int = 300) -> str:
    """The first line of the exception's message, capped; its type name when the message is empty
    (an empty file makes torch raise with no message at all)."""
    lines = str(exc).strip().splitlines()
    text = lines[0].strip() if lines else ""
    if not text:
        return type(exc).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


class CheckpointError(ValueError):
    """A file that cannot be used as a model; the message says why."""
