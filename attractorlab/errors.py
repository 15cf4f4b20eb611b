"""The project's error types: expected failures that the command line reports as one clear line (no traceback).

Every user-facing failure is an :class:`AttractorlabError`; the CLI turns only those into one-line errors, so a
bug (any other exception) keeps its traceback. Bad input raises :class:`InputError`, which is also a
``ValueError`` (so ``except ValueError`` and scikit-learn-style callers keep working).
"""

from __future__ import annotations

import os


class AttractorlabError(Exception):
    """Base class of every expected failure (bad input, unreadable files, a diverged training run)."""


class InputError(AttractorlabError, ValueError):
    """Bad input: an argument, option or value that the library cannot use, with a message saying why."""


class MissingFileError(InputError, FileNotFoundError):
    """A file or directory the caller named does not exist."""


class OutputError(AttractorlabError, OSError):
    """An output file that could not be written (no space, no permission); nothing partial is left in its place."""


def make_dirs(directory: str | os.PathLike) -> None:
    """``os.makedirs(directory, exist_ok=True)``, with :class:`InputError` (one line) where that is impossible (a
    file stands where a directory should, no permission)."""
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as err:
        raise InputError(f"cannot create the directory {os.fspath(directory)} ({err.strerror})") from None


def make_parent_dirs(path: str | os.PathLike) -> None:
    """:func:`make_dirs` for the directory an output file ``path`` will sit in."""
    make_dirs(os.path.dirname(os.path.abspath(os.fspath(path))))


def check_output_file(path: str | os.PathLike, what: str = "output file") -> None:
    """Make sure ``path`` can be written as a file before any work: not a directory, its folder created and
    writable; else :class:`InputError` (one line). The file itself is not created."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path} is a directory; name the {what} to write")
    make_parent_dirs(path)
    folder = os.path.dirname(os.path.abspath(path))
    if not os.access(folder, os.W_OK | os.X_OK):
        raise InputError(f"cannot write the {what} {path}: no permission to write in {folder}")


USER_ERRORS: tuple[type[BaseException], ...] = (AttractorlabError,)
"""What the command line reports as one line; everything else is a bug and shows its traceback."""
