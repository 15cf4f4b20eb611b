"""HDF5 run files (schema ``attractorlab.run`` version 1): the only package that imports h5py.

A run file holds N puzzles x B restarts x T outer steps of one rollout (layout: ``trajectories/README.md``).
:class:`RunWriter` appends batches to resizable datasets and commits each one by bumping ``n_done`` (root
attribute and ``/n_done`` dataset) after a full flush, so a killed run leaves a readable file holding every
committed batch, which ``RunWriter(..., resume=True)`` continues. Files use the HDF5 1.10 format (SWMR
capable, readable by the 1.10 command-line tools); no pickles, strings are UTF-8.

Modules: ``schema`` (constants, :class:`StateSpec`, dataset tables, errors), ``files`` (shared HDF5
helpers), ``writer`` (:class:`RunWriter`, size checks, shard paths, crash repair), ``reader``
(:func:`open_run`, :class:`Run`, :class:`LazyArray`), ``analysis`` (:func:`write_analysis`,
:func:`has_analysis`) and ``shards`` (:func:`merge_shards`). Everything public is re-exported here.
"""

from .analysis import has_analysis, write_analysis
from .reader import LazyArray, Run, StatesView, open_run
from .schema import (
    DESCRIPTIONS,
    LIBVER,
    OPTIONAL_ROLLOUT,
    PUZZLE_FIELDS,
    RESERVED_ATTRS,
    SCHEMA,
    SCHEMA_VERSION,
    STATE_DTYPES,
    STATE_MODES,
    AnalysisResult,
    RunFileError,
    RunFileNotFoundError,
    StateSpec,
)
from .shards import merge_shards
from .writer import RunWriter, check_disk_space, estimate_size, repair_run, shard_path

__all__ = [
    "DESCRIPTIONS",
    "LIBVER",
    "OPTIONAL_ROLLOUT",
    "PUZZLE_FIELDS",
    "RESERVED_ATTRS",
    "SCHEMA",
    "SCHEMA_VERSION",
    "STATE_DTYPES",
    "STATE_MODES",
    "AnalysisResult",
    "LazyArray",
    "Run",
    "RunFileError",
    "RunFileNotFoundError",
    "RunWriter",
    "StateSpec",
    "StatesView",
    "check_disk_space",
    "estimate_size",
    "has_analysis",
    "merge_shards",
    "open_run",
    "repair_run",
    "shard_path",
    "write_analysis",
]
