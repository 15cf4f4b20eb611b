"""Errors that the command line reports as one clear line (no traceback)."""


class AttractorlabError(Exception):
    """Base class for expected failures that are not plain bad input (e.g. a diverged training run)."""


USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError, AttractorlabError)
