"""Analysis results stored in a run file under ``/analysis/<name>``: :func:`write_analysis` and
:func:`has_analysis` (read them with :meth:`Run.read_analysis <attractorlab.recording.Run.read_analysis>`)."""

from __future__ import annotations

import os
from typing import Any

import h5py
import numpy as np

from attractorlab.errors import InputError

from .files import check_schema, open_h5, write_attrs
from .reader import OPEN_RUNS, open_run
from .schema import RunFileNotFoundError, check_name


def _dataset_value(key: str, value: Any) -> tuple[np.ndarray, bool]:
    """Python/numpy/torch value -> (HDF5-storable array, is_complex)."""
    if hasattr(value, "detach"):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.dtype.kind in "US" or (arr.dtype.kind == "O" and all(isinstance(v, str) for v in arr.ravel())):
        return np.array([str(v) for v in arr.ravel()], dtype=h5py.string_dtype()).reshape(arr.shape), False
    if arr.dtype.kind == "c":
        return np.stack([arr.real, arr.imag], axis=-1), True
    if arr.dtype.kind not in "biuf":
        raise InputError(f"analysis array {key!r}: cannot store dtype {arr.dtype} (numbers, bools, strings)")
    return arr, False


def write_analysis(path: str | os.PathLike, name: str, arrays: dict[str, Any], attrs: dict | None = None,
                   *, overwrite: bool = False) -> None:
    """Store ``arrays`` under ``/analysis/<name>/<key>`` (``name`` and keys may contain ``/``).

    Values: numeric/bool arrays and scalars, strings and string arrays (UTF-8), complex arrays (stored as
    float ``[..., 2]`` = (real, imag) with the attribute ``complex=TRUE``). Runs of this file that are open
    in this process are closed and reopened around the write.
    """
    path, name = os.fspath(path), check_name(name)
    if not os.path.exists(path):
        raise RunFileNotFoundError(f"{path}: no such run file")
    converted = {str(k).strip("/"): _dataset_value(str(k), v) for k, v in arrays.items()}
    real = os.path.realpath(path)
    paused = [r for r in list(OPEN_RUNS) if r._file is not None and os.path.realpath(r.path) == real]
    for run in paused:
        run._file.close()
    try:
        with open_h5(path, "r+") as f:
            check_schema(f, path)
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = f.get("analysis/" + "/".join(parts[:i]))
                if parent is not None and "analysis_name" in parent.attrs:
                    raise InputError(f"cannot store {name!r} inside the analysis {'/'.join(parts[:i])!r}")
            if f"analysis/{name}" in f:
                if not overwrite:
                    raise InputError(f"{path}: analysis {name!r} exists; pass overwrite=True to replace it")
                del f[f"analysis/{name}"]
            g = f.require_group(f"analysis/{name}")
            write_attrs(g, {**(attrs or {}), "analysis_name": name})
            for key, (arr, is_complex) in converted.items():
                big = arr.nbytes > (1 << 16) and arr.dtype.kind != "O" and arr.ndim > 0
                opts = {"compression": "gzip", "shuffle": True} if big else {}
                ds = g.create_dataset(key, data=arr, **opts)
                if is_complex:
                    ds.attrs["complex"] = True
    finally:
        for run in paused:
            run._file = open_h5(path, "r", swmr=run._swmr)


def has_analysis(path: str | os.PathLike, name: str) -> bool:
    """Whether the run file holds the analysis ``name``."""
    with open_run(path) as run:
        return check_name(name) in run.analysis_keys()
