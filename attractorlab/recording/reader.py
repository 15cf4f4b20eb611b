"""Reading run files: :func:`open_run` returns a :class:`Run` whose tables hand out numpy arrays and
:class:`LazyArray` views of the committed rows."""

from __future__ import annotations

import json
import os
import weakref
from dataclasses import dataclass
from typing import Any

import h5py
import numpy as np

from attractorlab.errors import InputError

from .files import check_schema, decode_attr, error_detail, open_h5, row_datasets, rows_done, state_spec
from .schema import DEFAULT_TASK, AnalysisResult, RunFileError, RunFileNotFoundError, StateSpec, check_name


class LazyArray:
    """Read-only view of a row dataset, limited to the committed rows; indexing returns numpy arrays.

    The first axis takes ints, slices, integer arrays in any order and boolean masks; other axes take ints
    and positive-step slices straight from the file (anything else is applied in numpy after reading).
    """

    def __init__(self, run: Run, name: str) -> None:
        self._run, self.name = run, name

    shape = property(lambda self: (self._run.n, *self._run._file[self.name].shape[1:]))
    dtype = property(lambda self: self._run._file[self.name].dtype)
    ndim = property(lambda self: len(self.shape))

    def __len__(self) -> int:
        return self._run.n

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        return self[:] if dtype is None else self[:].astype(dtype)

    def __repr__(self) -> str:
        return f"LazyArray(/{self.name}, shape={self.shape}, dtype={self.dtype})"

    def __getitem__(self, key: Any) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        if any(k is None for k in key):
            raise IndexError("np.newaxis is not supported; index the returned array instead")
        if any(k is Ellipsis for k in key):
            i = next(j for j, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (self.ndim - len(key) + 1) + key[i + 1:]
        k0, rest, n, inverse = (key or (slice(None),))[0], key[1:], self._run.n, None
        simple = all(isinstance(k, (int, np.integer)) or (isinstance(k, slice) and (k.step or 1) > 0)
                     for k in rest)
        if isinstance(k0, (int, np.integer)):
            if not -n <= k0 < n:
                raise IndexError(f"index {int(k0)} is out of range for {n} puzzles")
            sel: Any = int(k0) % n
        elif isinstance(k0, slice) and (k0.step or 1) > 0:
            sel = slice(*k0.indices(n))
        else:
            idx = np.arange(n)[k0] if isinstance(k0, slice) else np.asarray(k0)
            if idx.dtype == bool:
                if idx.shape != (n,):
                    raise IndexError(f"boolean index must have shape ({n},), got {idx.shape}")
                idx = np.flatnonzero(idx)
            if idx.dtype.kind not in "iu" or (idx.size and not (-n <= idx.min() and idx.max() < n)):
                raise IndexError(f"puzzle index must be integers in [-{n}, {n})")
            uniq, inverse = np.unique(idx % max(n, 1), return_inverse=True)
            inverse = inverse.reshape(idx.shape)
            sel = uniq
            if uniq.size and uniq[-1] - uniq[0] < 4 * uniq.size:  # dense enough: read one block
                sel, inverse = slice(int(uniq[0]), int(uniq[-1]) + 1), (uniq - uniq[0])[inverse]
        out = self._run._read(self.name, (sel, *rest) if simple else sel)
        if inverse is not None:
            out = out[inverse]
        if simple:
            return out
        return out[rest] if isinstance(sel, int) else out[(slice(None), *rest)]


class _Table:
    """Datasets of one group as attributes (whole committed arrays, cached) or ``table["name", index]``."""

    def __init__(self, run: Run, group: str) -> None:
        self._run, self._group, self._cache = run, group, {}

    def keys(self) -> list[str]:
        g = self._run._file.get(self._group)
        return sorted(g.keys()) if g is not None else []

    def __contains__(self, name: str) -> bool:
        return name in self.keys()

    def __dir__(self) -> list[str]:
        return [*super().__dir__(), *self.keys()]

    def __getattr__(self, name: str) -> np.ndarray:
        if name.startswith("_"):
            raise AttributeError(name)
        if name not in self._cache:
            self._cache[name] = self.lazy(name)[:]
        return self._cache[name]

    def __getitem__(self, key: str | tuple) -> np.ndarray:
        if isinstance(key, str):
            return getattr(self, key)
        if not (isinstance(key, tuple) and len(key) >= 2 and isinstance(key[0], str)):
            raise KeyError("index as table['name'] or table['name', index]")
        return self.lazy(key[0])[key[1:] if len(key) > 2 else key[1]]

    def lazy(self, name: str) -> LazyArray:
        """Unread view of one dataset (index it to read part of it)."""
        if name not in self.keys():
            raise AttributeError(f"this run has no /{self._group}/{name} (it has {', '.join(self.keys())})")
        return LazyArray(self._run, f"{self._group}/{name}")

    def tensor(self, name: str) -> Any:
        """``torch.from_numpy`` of the whole committed array."""
        import torch

        return torch.from_numpy(np.ascontiguousarray(getattr(self, name)))

    def __repr__(self) -> str:
        return f"<{self._group}: {', '.join(self.keys())}>"


@dataclass
class StatesView:
    """Stored latent states: ``data [N, B, S, *shape]`` (lazy), ``steps [S]``, optional ``projection``; with mode
    ``cycles`` also ``updates [S]`` (index into ``update_names``, -1 = initial state) and ``update_names [U]``."""

    data: LazyArray
    steps: np.ndarray
    spec: StateSpec

    mode = property(lambda self: self.spec.mode)
    projection = property(lambda self: self.spec.projection)
    update_names = property(lambda self: list(self.spec.updates))

    @property
    def updates(self) -> np.ndarray:
        return self.spec.update_index(int(self.steps[-1])) if self.spec.mode == "cycles" else np.zeros(0, np.int32)


class Run:
    """A run file opened read-only (see :func:`open_run`); arrays hold the ``n`` committed puzzles."""

    def __init__(self, path: str, file: h5py.File, swmr: bool) -> None:
        self.path, self._file, self._swmr = path, file, swmr
        f = file
        self.schema_version = check_schema(f, path)
        self.attrs = {k: decode_attr(v) for k, v in f.attrs.items()}
        try:
            self.config = json.loads(self.attrs.get("config_json") or "{}")
        except json.JSONDecodeError:
            raise RunFileError(f"{path}: config_json attribute is not valid JSON") from None
        for name in ("puzzles/tokens", "rollout/residual"):
            if name not in f:
                raise RunFileError(f"{path}: incomplete run file (no /{name})")
        shape = f["rollout/residual"].shape
        self.breadth = int(self.attrs.get("breadth", shape[1]))
        self.depth = int(self.attrs.get("depth", shape[2]))
        self.task = str(self.attrs.get("task", DEFAULT_TASK))  # schema 1 files hold Sudoku puzzles
        self.seq_len = int(f["puzzles/tokens"].shape[1])
        self.n = self._rows()
        self.puzzles, self.rollout = _Table(self, "puzzles"), _Table(self, "rollout")
        self.states: StatesView | None = None
        if "states/data" in f:
            self.states = StatesView(LazyArray(self, "states/data"), f["states/steps"][()], state_spec(f))
        OPEN_RUNS.add(self)

    def _rows(self) -> int:
        return min([rows_done(self._file)] + [ds.shape[0] for ds in row_datasets(self._file)])

    @property
    def has_states(self) -> bool:
        return self.states is not None

    def _read(self, name: str, key: Any) -> np.ndarray:
        ds = self._handle()[name]
        try:
            if h5py.check_string_dtype(ds.dtype) is None:
                return ds[key]
            out = ds.asstr()[key]
            return np.asarray(out).astype(str) if isinstance(out, np.ndarray) else out
        except OSError as err:
            raise RunFileError(f"{self.path}: cannot read /{name} ({error_detail(err)})") from None

    def refresh(self) -> int:
        """Follow a live writer (``swmr=True``): pick up newly committed puzzles; returns the new ``n``."""
        if self._swmr:
            for ds in row_datasets(self._file):
                ds.refresh()
        self.n = self._rows()
        self.puzzles._cache.clear()
        self.rollout._cache.clear()
        return self.n

    def _handle(self) -> h5py.File:
        if self._file is None:
            raise InputError(f"{self.path}: run is closed")
        return self._file

    def analysis_keys(self) -> list[str]:
        """Names of the analyses stored under ``/analysis``."""
        names: list[str] = []
        if "analysis" in self._handle():
            self._file["analysis"].visititems(lambda k, obj: names.append(k) if "analysis_name" in obj.attrs
                                              else None)
        return sorted(names)

    def read_analysis(self, name: str) -> AnalysisResult:
        """Arrays of ``/analysis/<name>`` (relative keys, complex restored); its attributes in ``.attrs``."""
        name = check_name(name)
        g = self._handle().get(f"analysis/{name}")
        if g is None or "analysis_name" not in g.attrs:
            have = ", ".join(self.analysis_keys()) or "none"
            raise KeyError(f"{self.path}: no analysis {name!r} (has {have})")
        out = AnalysisResult()
        out.attrs = {k: decode_attr(v) for k, v in g.attrs.items() if k != "analysis_name"}

        def visit(key: str, ds: Any) -> None:
            if isinstance(ds, h5py.Dataset):
                value = self._read(ds.name, ())
                out[key] = value[..., 0] + 1j * value[..., 1] if ds.attrs.get("complex", False) else value

        g.visititems(visit)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        OPEN_RUNS.discard(self)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Run({self.path!r}, n={self.n}, breadth={self.breadth}, depth={self.depth}, "
                f"states={self.states.mode if self.states else 'none'})")


OPEN_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()


def open_run(path: str | os.PathLike, *, swmr: bool = False) -> Run:
    """Open a run file read-only. ``swmr=True`` follows a live writer (call ``run.refresh()``).

    The file of a killed writer is opened in SWMR mode automatically. Raises :class:`RunFileError` (one
    line) for a missing, non-HDF5, foreign, too new, truncated or corrupt file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise RunFileNotFoundError(f"{path}: no such run file")
    if not os.path.isfile(path):
        raise RunFileError(f"{path}: not a file")
    if not h5py.is_hdf5(path):
        raise RunFileError(f"{path}: not an HDF5 file")
    try:
        f = open_h5(path, "r", swmr=swmr)
    except RunFileError as err:
        if swmr or "open for writing" not in str(err):
            raise
        try:
            f, swmr = open_h5(path, "r", swmr=True), True
        except RunFileError:
            raise err from None
    try:
        return Run(path, f, swmr)
    except BaseException:
        f.close()
        raise
