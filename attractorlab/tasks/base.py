"""What a task is: :class:`PuzzleSet` (instances as arrays) and :class:`Task` (the interface every task implements).

A task fixes the token encoding of its inputs (``tokens [N, L]``, ``L = seq_len``, values below ``vocab_size``)
and an *answer encoding* for read-outs and labels (``solution [N, L]``, ``0`` = unknown): Sudoku answers are
digits 1..9, maze answers are board tokens. Everything outside a task's own module talks to it through this
interface, so the model, rollouts, recording, analyses and reports work for any task unchanged.
"""

from __future__ import annotations

import abc
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from attractorlab.errors import AttractorlabError


class TaskError(AttractorlabError, ValueError):
    """Bad task input: an unknown task, instances that do not fit a task's encoding, an unreadable data file."""


@dataclass(eq=False, repr=False)
class PuzzleSet:
    """Instances of a task as arrays (no Python object per instance except the shared ``source`` strings).

    Attributes:
        tokens: ``[N, L] uint8`` inputs in the task's token encoding.
        solution: ``[N, L] uint8`` labels in the task's answer encoding, a row of zeros when unknown.
        source: ``[N]`` object array of ``str`` (rows from one source share one string).
        rating: ``[N] int32`` difficulty rating, ``-1`` when unknown.
        skipped: rows dropped by a loader with ``skip_invalid=True``; 0 otherwise.
        group: ``[N] int64`` group of each row where the data says which rows are copies of one puzzle (a
            reference split's augmented copies share a group), or ``None``: every row its own puzzle.
    """

    tokens: np.ndarray
    solution: np.ndarray
    source: np.ndarray
    rating: np.ndarray
    skipped: int = 0
    group: np.ndarray | None = None

    def __post_init__(self) -> None:
        tokens = np.asarray(self.tokens)
        if tokens.ndim != 2 or tokens.dtype.kind not in "iub":
            raise TaskError(f"tokens must be an [N, L] integer array, got shape {tokens.shape} dtype {tokens.dtype}")
        self.tokens = tokens.astype(np.uint8, copy=False)
        n = len(tokens)
        solution = np.asarray(self.solution)
        if solution.shape != tokens.shape or solution.dtype.kind not in "iub":
            raise TaskError(f"solution must be integers of shape {tokens.shape} like tokens, got {solution.shape}")
        self.solution = solution.astype(np.uint8, copy=False)
        if isinstance(self.source, str):
            self.source = np.full(n, self.source, dtype=object)
        self.source = np.asarray(self.source, dtype=object)
        if self.source.shape != (n,):
            raise TaskError(f"source must be [{n}], got shape {self.source.shape}")
        rating = np.asarray(self.rating)
        if rating.shape != (n,) or rating.dtype.kind not in "iu":
            raise TaskError(f"rating must be [{n}] integers, got shape {rating.shape} dtype {rating.dtype}")
        self.rating = rating.astype(np.int32, copy=False)
        if not isinstance(self.skipped, int | np.integer) or self.skipped < 0:
            raise TaskError(f"skipped must be a non-negative integer, got {self.skipped!r}")
        if self.group is not None:
            group = np.asarray(self.group)
            if group.shape != (n,) or group.dtype.kind not in "iu":
                raise TaskError(f"group must be [{n}] integers or None, got shape {group.shape} dtype {group.dtype}")
            self.group = group.astype(np.int64, copy=False)

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def known(self) -> np.ndarray:
        """``[N] bool``: rows whose label is known."""
        return self.solution.any(axis=1)

    def _rows(self, key: Any) -> Any:
        if isinstance(key, int | np.integer):
            if not -len(self) <= key < len(self):
                raise IndexError(f"index {key} out of range for {len(self)} puzzles")
            return slice(int(key) % len(self), int(key) % len(self) + 1)
        if not isinstance(key, slice):
            key = np.asarray(key)
            if key.dtype == bool and key.shape != (len(self),):
                raise IndexError(f"boolean mask must have shape ({len(self)},), got {key.shape}")
        return key

    def __getitem__(self, key: int | slice | np.ndarray | Sequence[int]) -> PuzzleSet:
        """Rows selected by an int, a slice, an index array or a boolean mask, as a set of the same type."""
        key = self._rows(key)
        group = None if self.group is None else self.group[key]
        return type(self)(self.tokens[key], self.solution[key], self.source[key], self.rating[key], group=group)

    def groups(self) -> np.ndarray:
        """``[N] int64``: the group of each row numbered ``0 .. G-1`` in order of :attr:`group`, or every row its
        own group (``0 .. N-1``) when there is none."""
        return np.arange(len(self), dtype=np.int64) if self.group is None else number_groups(self.group)

    def __repr__(self) -> str:
        names, counts = np.unique(self.source.astype(str), return_counts=True) if len(self) else ([], [])
        sources = ", ".join(f"{s}: {c}" for s, c in zip(names, counts, strict=True))
        return f"{type(self).__name__}(n={len(self)}, sources={{{sources}}}, skipped={self.skipped})"

    @classmethod
    def concat(cls, sets: Sequence[PuzzleSet]) -> PuzzleSet:
        """Concatenate puzzle sets in order (``skipped`` counts add up)."""
        if len(sets) == 0:
            raise TaskError(f"{cls.__name__}.concat needs at least one set")
        return type(sets[0])(
            np.concatenate([s.tokens for s in sets]),
            np.concatenate([s.solution for s in sets]),
            np.concatenate([s.source for s in sets]),
            np.concatenate([s.rating for s in sets]),
            skipped=int(sum(s.skipped for s in sets)),
            group=None if all(s.group is None for s in sets) else _concat_groups(sets),
        )


def number_groups(group: np.ndarray) -> np.ndarray:
    """``[N]`` group labels -> ``[N] int64`` the same grouping numbered densely ``0 .. G-1`` in label order."""
    return np.unique(np.asarray(group), return_inverse=True)[1].reshape(-1).astype(np.int64)


def _concat_groups(sets: Sequence[PuzzleSet]) -> np.ndarray:
    """Groups of concatenated sets, renumbered so that no two sets share a group."""
    out, offset = [], 0
    for s in sets:
        g = s.groups()
        out.append(g + offset)
        offset += int(g.max(initial=-1)) + 1
    return np.concatenate(out)


class Task(abc.ABC):
    """The interface of a task. Subclasses set the attributes and implement the abstract methods.

    Attributes:
        name: registry key (``"sudoku"``, ``"maze"``); stored in model configs and run files.
        seq_len: tokens per instance ``L``.
        vocab_size: input and output vocabulary ``V``.
        token_names: ``V`` names of the tokens (for figures and docs).
        board_shape: ``(height, width)`` with ``height * width = L`` (figures, 2-D position encodings).
        difficulties: names the generator accepts (the first is the default).
        bands: difficulty band names in display order (see :meth:`difficulty_band`).
        answer_names: what the answer encoding's values mean (docs and run-file descriptions).
    """

    name: str = ""
    seq_len: int = 0
    vocab_size: int = 0
    token_names: tuple[str, ...] = ()
    board_shape: tuple[int, int] = (0, 0)
    difficulties: tuple[str, ...] = ("mixed",)
    bands: tuple[str, ...] = ()
    answer_names: str = ""

    # --- read-out and grading (vectorised over a batch; torch tensors on any device) ------------------------

    @abc.abstractmethod
    def answer(self, logits: torch.Tensor, *, full_vocab: bool = False) -> torch.Tensor:
        """Read-out ``[..., L, V]`` logits -> ``[..., L] uint8`` answer encoding. ``full_vocab=True`` takes the
        argmax over every token as the reference evaluation does (a predicted pad or blank then reads as 0)."""

    @abc.abstractmethod
    def targets(self, solution: np.ndarray) -> np.ndarray:
        """Training targets ``[N, L]`` in the token encoding from labels in the answer encoding."""

    @abc.abstractmethod
    def is_valid(self, inputs: torch.Tensor, answer: torch.Tensor) -> torch.Tensor:
        """``[N] bool``: the answer satisfies the task's constraints for these inputs (not necessarily the label)."""

    def is_correct(self, answer: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
        """``[N] bool``: the answer equals a known label in every cell (unknown labels are never correct)."""
        solution = solution.to(answer.device)
        return (answer == solution.to(answer.dtype)).all(-1) & (solution > 0).any(-1)

    def token_accuracy(self, answer: torch.Tensor, solution: torch.Tensor) -> torch.Tensor:
        """``[N] float``: the fraction of cells whose answer equals the label."""
        return (answer == solution.to(answer.device, answer.dtype)).float().mean(-1)

    def probe_targets(self, tokens: np.ndarray, solution: np.ndarray) -> np.ndarray:
        """What a linear probe of each cell's latent vector should decode: ``[N, L]`` class ids, ``0`` = leave the
        cell out. Default: the label itself (Sudoku: the digit of every cell)."""
        return solution

    # --- data -------------------------------------------------------------------------------------------------

    @abc.abstractmethod
    def difficulty_band(self, rating: np.ndarray) -> np.ndarray:
        """Ratings ``[N]`` -> band names ``[N]`` (one of :attr:`bands`, or ``"unknown"`` for ``rating < 0``)."""

    def check(self, puzzles: PuzzleSet) -> PuzzleSet:
        """Raise :class:`TaskError` unless ``puzzles`` fit this task's encoding; returns them."""
        if puzzles.tokens.shape[1:] != (self.seq_len,):
            raise TaskError(f"{self.name} instances have {self.seq_len} tokens, got shape {puzzles.tokens.shape}")
        if puzzles.tokens.size and puzzles.tokens.max() >= self.vocab_size:
            raise TaskError(f"{self.name} tokens must lie below {self.vocab_size}, got {puzzles.tokens.max()}")
        return puzzles

    def augment(self, tokens: np.ndarray, solution: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """A random symmetry per row of ``tokens, solution [N, L]``; the identity for tasks without one."""
        return tokens, solution

    def load(self, path: str | os.PathLike, **options: Any) -> PuzzleSet:
        """Instances from a file or a reference dataset directory (tasks that read no files say so)."""
        raise TaskError(f"the {self.name} task reads no files; generate instances instead")

    def export(self, puzzles: PuzzleSet, path: str | os.PathLike, *, overwrite: bool = False) -> os.PathLike:
        """Write ``puzzles`` as a reference dataset split directory (``dataset.json`` + ``all__*.npy``)."""
        from attractorlab import reference

        return reference.write_split(path, puzzles.tokens, self.targets(puzzles.solution), groups=puzzles.group,
                                     metadata={"vocab_size": self.vocab_size}, overwrite=overwrite)

    @abc.abstractmethod
    def generate(self, n: int, seed: int = 0, *, difficulty: str | None = None, progress: bool = False) -> PuzzleSet:
        """``n`` instances with labels and ratings, deterministically from ``seed`` (the embedded default)."""

    @abc.abstractmethod
    def render(self, tokens: np.ndarray, answer: np.ndarray | None = None) -> str:
        """One instance (``tokens [L]``, optionally an answer ``[L]``) as a text grid for hovers and notebooks."""

    def image(self, tokens: np.ndarray, answer: np.ndarray | None = None, *, scale: int = 1) -> np.ndarray | None:
        """One instance as an RGB picture ``[H, W, 3] uint8`` (the answer drawn over the input), or ``None`` for a
        task drawn only as text (the report then shows no answer pictures)."""
        return None

    def answer_strings(self, answers: np.ndarray) -> np.ndarray:
        """``[M, L]`` answers -> ``[M]`` compact strings (one character per cell) for tables and hovers."""
        chars = np.frombuffer(b"0123456789abcdefghijklmnopqrstuvwxyz", dtype=np.uint8)
        answers = np.atleast_2d(np.asarray(answers))
        if answers.size == 0:
            return np.zeros(len(answers), dtype=str)
        rows = np.ascontiguousarray(chars[np.minimum(answers, 35)])
        return rows.view(f"S{answers.shape[1]}")[:, 0].astype(str)

    def render_string(self, answer: str) -> str:
        """An :meth:`answer_strings` string as lines of the board (hovers); other lengths come back unchanged."""
        h, w = self.board_shape
        if len(answer) != h * w:
            return answer
        return "\n".join(answer[r * w:(r + 1) * w] for r in range(h))

    def __repr__(self) -> str:
        return f"<task {self.name}: {self.seq_len} tokens, vocab {self.vocab_size}>"
