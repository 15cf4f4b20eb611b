"""Named random streams: every random draw of a run comes from ``stream(seed, name, index)``, one seed per run.

The offsets are the ones this project's shipped models and measured tables were made with, so every documented
command still reproduces its numbers; new streams get new names here, never a magic number at the call site.
"""

from __future__ import annotations

from attractorlab.errors import InputError

MAX_SEED = 2**32 - 1
"""The largest run seed: every stream seed derived from it (and the per-batch offsets) stays inside the 64-bit
range that torch's and numpy's generators take."""

STREAMS: dict[str, tuple[int, int]] = {
    # name: (multiplier, offset): the stream's seed is seed * multiplier + offset + index
    "train.init": (1, 0),  # model initialisation; generated training pool
    "train.noise": (7919, 1),  # in-module path noise (index: DDP rank)
    "train.data": (1, 17),  # which pool rows are drawn, their augmentation
    "train.carry": (1, 31),  # initial states of refilled rows, halting exploration (shared by all ranks)
    "train.held_out": (1, 1_000_003),  # the generated held-out set
    "train.augmentations": (1, 2_000_003),  # the fixed augmented copies of --augmentations K
    "train.epoch": (1, 3_000_017),  # the order of epoch `index` over those copies
    "analyze.fixed_points": (1, 0),  # rollout ends of puzzle `index` for fixed points
    "analyze.basins": (1, 1000),  # initial states of puzzle `index` for basin stability and maps
    "analyze.lyapunov": (1, 2000),  # initial tangent frame for the end states of puzzle `index`
    "demo.puzzles": (1, 777),  # the demo's generated puzzles
}


def stream(seed: int, name: str, index: int = 0) -> int:
    """The seed of the named stream ``name`` (a key of :data:`STREAMS`) for run seed ``seed`` and item ``index``."""
    if name not in STREAMS:
        raise KeyError(f"unknown random stream {name!r}; add it to attractorlab.seeds.STREAMS")
    multiplier, offset = STREAMS[name]
    return int(seed) * multiplier + offset + int(index)


def check_seed(seed: object, name: str = "seed", limit: int = MAX_SEED) -> int:
    """``seed`` as an int if it is an integer in ``[0, limit]``; else :class:`InputError` (one line)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= limit:
        raise InputError(f"{name} must be an integer in [0, {limit}], got {seed!r}")
    return seed
