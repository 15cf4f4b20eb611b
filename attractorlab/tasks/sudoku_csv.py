"""Sudoku files in the Sudoku-Extreme CSV layout (``source,question,answer,rating``, plain or gzip) and plain
one-puzzle-per-line lists: :func:`load_csv` parses whole blocks of rows with numpy and validates every row;
:func:`save_csv` writes the layout back."""

from __future__ import annotations

import gzip
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from attractorlab.errors import InputError, MissingFileError
from attractorlab.tasks.sudoku import (
    A_LUT,
    CSV_HEADER,
    Q_LUT,
    PuzzleSet,
    decode,
    givens_conflict,
    is_valid_solution,
    solve,
)

_BLOCK_BYTES = 1 << 23  # ~45k Sudoku-Extreme rows per block
_REASONS = {
    1: "expected 4 comma-separated fields (source,question,answer,rating)",
    2: "question must have 81 characters",
    3: "question has an invalid character (use 1-9, '.' or '0')",
    4: "answer must have 81 characters (or be empty when unknown)",
    5: "answer has an invalid character (use digits 1-9)",
    6: "answer disagrees with a given digit of the question",
    7: "answer is not a valid Sudoku solution (a row, column or box repeats a digit)",
    8: "rating is not a non-negative integer (or empty when unknown)",
    9: "line must hold an 81-character puzzle (1-9, '.' or '0')",
    10: "question repeats a given digit in a row, column or box (it has no solution)",
}


def _read_blocks(path: Path) -> Iterator[tuple[np.ndarray, int]]:
    """Yield ``(bytes [M] uint8, first line number)`` blocks of whole lines; gzip detected by magic bytes."""
    with open(path, "rb") as raw:
        gzipped = raw.read(2) == b"\x1f\x8b"
    opener: Callable[..., Any] = gzip.open if gzipped else open
    line_no = 1
    rest = b""
    with opener(path, "rb") as f:
        while True:
            chunk = f.read(_BLOCK_BYTES)
            data = rest + chunk
            cut = data.rfind(b"\n") + 1 if chunk else len(data)
            block, rest = data[:cut], data[cut:]
            if block:
                yield np.frombuffer(block, dtype=np.uint8), line_no
                line_no += block.count(b"\n")
            if not chunk:
                return


def _lines(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start and end offsets of the lines in ``buf`` (end excludes ``\\n``, ``\\r`` and trailing blanks)."""
    nl = np.flatnonzero(buf == 10)
    starts = np.concatenate([[0], nl + 1])
    ends = np.concatenate([nl, [len(buf)]])
    if len(buf) == 0 or buf[-1] == 10:
        starts, ends = starts[:-1], ends[:-1]
    while True:
        trailing = (ends > starts) & np.isin(buf[np.maximum(ends - 1, 0)], (9, 13, 32))
        if not trailing.any():
            return starts, ends
        ends = ends - trailing


def _gather(buf: np.ndarray, start: np.ndarray, width: int) -> np.ndarray:
    """``buf[start[i] + j]`` for ``j < width`` as ``[len(start), width]`` (indices clipped to the buffer)."""
    return buf[np.clip(start[:, None] + np.arange(width), 0, max(len(buf) - 1, 0))]


def _parse_csv_block(buf: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> dict[str, np.ndarray]:
    """Vectorised parse of Sudoku-Extreme rows; ``reason [n]`` is 0 for good rows, else a ``_REASONS`` key."""
    n = len(starts)
    reason = np.zeros(n, dtype=np.int8)
    commas = np.flatnonzero(buf == ord(","))
    line_of = np.searchsorted(starts, commas, side="right") - 1
    inside = line_of >= 0  # keep only commas of the lines passed in (not the header)
    inside[inside] = commas[inside] < ends[line_of[inside]]
    commas, line_of = commas[inside], line_of[inside]
    n_commas = np.bincount(line_of, minlength=n)
    first = np.minimum(np.searchsorted(line_of, np.arange(n)), max(len(commas) - 3, 0))
    reason[n_commas != 3] = 1
    c1, c2, c3 = (commas[first + k] if len(commas) >= 3 else np.zeros(n, np.int64) for k in range(3))

    def flag(code: int, bad: np.ndarray) -> None:
        reason[(reason == 0) & bad] = code

    flag(2, c2 - c1 != 82)
    tokens = Q_LUT[_gather(buf, c1 + 1, 81)]
    flag(3, (tokens == 255).any(axis=1))
    flag(10, givens_conflict(tokens))
    answer_len = c3 - c2 - 1
    flag(4, (answer_len != 81) & (answer_len != 0))
    solution = np.where((answer_len == 81)[:, None], A_LUT[_gather(buf, c2 + 1, 81)], 0).astype(np.uint8)
    flag(5, (solution == 255).any(axis=1))
    known = answer_len == 81
    flag(6, known & ((tokens >= 2) & (solution != tokens - 1)).any(axis=1))
    checkable = (reason == 0) & known
    valid = np.ones(n, dtype=bool)
    valid[checkable] = is_valid_solution(tokens[checkable], solution[checkable])
    flag(7, ~valid)
    r_len = ends - c3 - 1
    r_chars = _gather(buf, c3 + 1, 9)
    in_field = np.arange(9) < r_len[:, None]
    is_digit = (r_chars >= ord("0")) & (r_chars <= ord("9"))
    flag(8, (r_len > 9) | (in_field & ~is_digit).any(axis=1))
    power = np.where(in_field, 10 ** np.clip(r_len[:, None] - 1 - np.arange(9), 0, 8), 0)
    rating = np.where(r_len > 0, (power * (r_chars.astype(np.int64) - ord("0"))).sum(axis=1), -1)
    ok = reason == 0
    s_len = np.where(ok, c1 - starts, 0)
    width = max(int(s_len.max(initial=0)), 1)
    in_name = np.arange(width) < s_len[ok, None]
    s_bytes = np.where(in_name, _gather(buf, starts[ok], width), 0).astype(np.uint8)
    names, inverse = np.unique(np.ascontiguousarray(s_bytes).view(f"S{width}").ravel(), return_inverse=True)
    decoded = np.array([s.decode("utf-8", "replace") for s in names], dtype=object)
    return {
        "reason": reason,
        "tokens": tokens[ok],
        "solution": solution[ok],
        "rating": rating[ok],
        "source": decoded[inverse.ravel()] if len(names) else np.zeros(0, dtype=object),
    }


def _parse_plain_block(
    buf: np.ndarray, starts: np.ndarray, ends: np.ndarray, source: str
) -> dict[str, np.ndarray]:
    """Parse one-puzzle-per-line rows (comments and blank lines are filtered out before)."""
    reason = np.where(ends - starts != 81, 9, 0).astype(np.int8)
    tokens = Q_LUT[_gather(buf, starts, 81)]
    reason[(reason == 0) & (tokens == 255).any(axis=1)] = 9
    reason[(reason == 0) & givens_conflict(tokens)] = 10
    ok = reason == 0
    return {
        "reason": reason,
        "tokens": tokens[ok],
        "solution": np.zeros((int(ok.sum()), 81), dtype=np.uint8),
        "rating": np.full(int(ok.sum()), -1, dtype=np.int64),
        "source": np.full(int(ok.sum()), source, dtype=object),
    }


def _row_error(path: Path, line_no: int, code: int, buf: np.ndarray, start: int, end: int) -> InputError:
    text = buf[start:end].tobytes().decode("utf-8", "replace")
    shown = text if len(text) <= 200 else text[:200] + "..."
    return InputError(f"{path}:{line_no}: {_REASONS[code]}: {shown!r}")


def load_csv(
    path: str | os.PathLike[str],
    *,
    skip_invalid: bool = False,
    verify: bool = False,
    solve_missing: bool = False,
) -> PuzzleSet:
    """Load puzzles from a Sudoku-Extreme CSV (``source,question,answer,rating``) or a plain puzzle list.

    The file may be gzip-compressed (detected from its content, not its name). CSV rows hold 81-character
    ``question``/``answer`` strings (``.`` or ``0`` blanks in the question); an empty ``answer`` or
    ``rating`` means unknown. A file whose first line is not the CSV header and has no comma is read as
    one puzzle per line (tdoku/Norvig style; ``#`` comments and blank lines ignored; source = file stem).
    Rows are parsed in blocks with numpy, so multi-million-row files load in seconds.

    Args:
        path: the file.
        skip_invalid: drop malformed rows (counted in ``PuzzleSet.skipped``) instead of raising.
        verify: check with the solver that every puzzle has a unique solution equal to its answer, and fill
            unknown ratings from the solver.
        solve_missing: fill unknown solutions (and ratings) with the solver; puzzles without a unique
            solution are errors (or skipped).

    Raises:
        FileNotFoundError: no such file.
        InputError (a ValueError): ``"<path>:<line>: <reason>: <row>"`` for the first malformed row (unless
            ``skip_invalid``), or a bad header.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"puzzle file not found: {path}")
    parts: list[dict[str, np.ndarray]] = []
    fmt = None
    skipped = 0
    source = path.name.split(".")[0]
    for buf, first_line in _read_blocks(path):
        starts, ends = _lines(buf)
        line_no = first_line + np.arange(len(starts))
        if fmt is None:
            head = buf[starts[0] : ends[0]].tobytes().lstrip(b"\xef\xbb\xbf").decode("utf-8", "replace")
            if head.replace(" ", "") == CSV_HEADER:
                fmt = "csv"
                starts, ends, line_no = starts[1:], ends[1:], line_no[1:]
            elif "," in head:
                raise InputError(f"{path}:1: expected the header {CSV_HEADER!r}, got {head[:200]!r}")
            else:
                fmt = "plain"
        keep = ends > starts
        if fmt == "plain":
            keep &= buf[np.minimum(starts, len(buf) - 1)] != ord("#")
        starts, ends, line_no = starts[keep], ends[keep], line_no[keep]
        if fmt == "csv":
            part = _parse_csv_block(buf, starts, ends)
        else:
            part = _parse_plain_block(buf, starts, ends, source)
        reason = part.pop("reason")
        bad = np.flatnonzero(reason)
        if len(bad) and not skip_invalid:
            i = bad[0]
            raise _row_error(path, int(line_no[i]), int(reason[i]), buf, int(starts[i]), int(ends[i]))
        skipped += len(bad)
        part["line"] = line_no[reason == 0]
        parts.append(part)
    if fmt is None:
        raise InputError(f"{path}: empty file (expected the header {CSV_HEADER!r} or puzzle lines)")
    cat = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    if verify or solve_missing:
        cat, n_bad = _check_with_solver(path, cat, verify, solve_missing, skip_invalid)
        skipped += n_bad
    return PuzzleSet(cat["tokens"], cat["solution"], cat["source"], cat["rating"], skipped=skipped)


def _check_with_solver(
    path: Path, cat: dict[str, np.ndarray], verify: bool, solve_missing: bool, skip_invalid: bool
) -> tuple[dict[str, np.ndarray], int]:
    """Solve every puzzle; flag non-unique ones / answer mismatches; fill unknown solutions and ratings."""
    result = solve(cat["tokens"])
    known = cat["solution"].any(axis=1)
    unique = result.n_solutions == 1
    mismatch = known & unique & (result.solution != cat["solution"]).any(axis=1)
    bad = (~unique & (verify | ~known)) | (verify & mismatch)
    if bad.any() and not skip_invalid:
        i = np.flatnonzero(bad)[0]
        what = {0: "puzzle has no solution", 2: "puzzle has more than one solution"}.get(
            int(result.n_solutions[i]), "answer differs from the solver's unique solution"
        )
        raise InputError(f"{path}:{cat['line'][i]}: {what}")
    fill = ~known & unique
    cat["solution"][fill] = result.solution[fill]
    unrated = (cat["rating"] < 0) & unique
    cat["rating"][unrated] = result.backtracks[unrated]
    return {k: v[~bad] for k, v in cat.items()}, int(bad.sum())


def save_csv(puzzles: PuzzleSet, path: str | os.PathLike[str]) -> None:
    """Write ``puzzles`` in the Sudoku-Extreme layout (gzip if ``path`` ends in ``.gz``).

    Unknown solutions and ratings are written as empty fields, which :func:`load_csv` reads back.
    """
    path = Path(path)
    names = np.unique(puzzles.source.astype(str)) if len(puzzles) else []
    if any(("," in s) or ("\n" in s) for s in names):
        raise InputError("source names must not contain commas or newlines to be written as CSV")
    questions = decode(puzzles.tokens)
    answers = decode(puzzles.solution, digits=True)
    opener: Callable[..., Any] = gzip.open if path.suffix == ".gz" else open
    with opener(path, "wt", encoding="utf-8", newline="\n") as f:
        f.write(CSV_HEADER + "\n")
        for src, q, a, r, known in zip(
            puzzles.source, questions, answers, puzzles.rating, puzzles.solution.any(axis=1), strict=True
        ):
            f.write(f"{src},{q},{a if known else ''},{r if r >= 0 else ''}\n")


