"""HDF5 run files (schema ``attractorlab.run`` version 1): the only module that imports h5py.

A run file holds N puzzles x B restarts x T outer steps of one rollout (layout: ``trajectories/README.md``).
:class:`RunWriter` appends batches to resizable datasets and commits each one by bumping ``n_done`` (root
attribute and ``/n_done`` dataset) after a full flush, so a killed run leaves a readable file holding every
committed batch, which ``RunWriter(..., resume=True)`` continues. Files use the HDF5 1.10 format (SWMR
capable, readable by the 1.10 command-line tools); no pickles, strings are UTF-8.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import shutil
import socket
import struct
import weakref
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from attractorlab import __version__

SCHEMA = "attractorlab.run"
SCHEMA_VERSION = 1
LIBVER = ("v110", "v110")  # SWMR needs >= 1.10; "latest" (the 2.0 format) is unreadable by 1.10 tools
STATE_MODES = ("none", "final", "all")
STATE_DTYPES = ("float16", "float32")
RESERVED_ATTRS = ("schema", "schema_version", "n_done", "breadth", "depth", "writer", "merged")
PUZZLE_FIELDS = {"tokens": ("u1", (81,)), "solution": ("u1", (81,)), "source": ("str", ()),
                 "rating": ("i4", ())}
OPTIONAL_ROLLOUT = {"selected_majority": ("i4", ())}
DESCRIPTIONS = {  # dataset -> (axes, description), written as attributes for readers of the raw file
    "puzzles/tokens": ("N,81", "token encoding: 0 pad, 1 blank, 2..10 digits 1..9"),
    "puzzles/solution": ("N,81", "solution digits 1..9, 0 = unknown"),
    "puzzles/source": ("N", "puzzle source (UTF-8)"),
    "puzzles/rating": ("N", "difficulty rating"),
    "rollout/residual": ("N,B,T", "||z_t - z_{t-1}|| / ||z_t|| of the full state after outer step t"),
    "rollout/halt_logit": ("N,B,T", "halting logit q after outer step t"),
    "rollout/logit_change": ("N,B,T", "norm of the change of the output logits at outer step t"),
    "rollout/pred": ("N,B,T,81", "decoded digits 1..9 after outer step t"),
    "rollout/valid": ("N,B,T", "pred satisfies all Sudoku constraints and the givens"),
    "rollout/correct": ("N,B,T", "pred equals the known solution"),
    "rollout/steps": ("N,B", "outer steps run before halting; later entries repeat the last"),
    "rollout/selected": ("N", "restart chosen by the selection rule"),
    "rollout/selected_majority": ("N", "restart chosen by majority vote"),
    "states/data": ("N,B,S,...", "latent state snapshots after the outer steps in /states/steps"),
    "states/steps": ("S", "outer step of each snapshot (0 = initial state)"),
    "states/projection": ("D,k", "basis applied to each stored vector (e.g. each cell's [z_H, z_L]) before storing"),
    "n_done": ("", "puzzles fully written (commit point; rows beyond it are unfinished)"),
}


class RunFileError(ValueError):
    """A run file that cannot be used: missing, not HDF5, not a run, too new, truncated or corrupt."""


class RunFileNotFoundError(RunFileError, FileNotFoundError):
    """The run file does not exist."""


@dataclass
class StateSpec:
    """Which latent states a run stores under ``/states``.

    mode: ``none`` | ``final`` (state after step T, frozen at halting) | ``all`` (initial state, every
    ``stride``-th outer step and step T). ``shape`` is one snapshot's shape, e.g. ``(2, 81, 512)`` for
    stacked (z_H, z_L) or ``(k,)`` for projected states; ``projection`` an optional ``[D_full, k]`` basis
    that the caller already applied, stored for reference.
    """

    mode: str = "none"
    stride: int = 1
    dtype: str = "float16"
    shape: tuple = ()
    projection: np.ndarray | None = None
    description: str = ""

    def __post_init__(self) -> None:
        if self.mode not in STATE_MODES:
            raise ValueError(f"unknown state mode {self.mode!r}; choose one of {', '.join(STATE_MODES)}")
        if isinstance(self.stride, bool) or not isinstance(self.stride, (int, np.integer)) or self.stride < 1:
            raise ValueError(f"state stride must be a positive integer, got {self.stride!r}")
        if self.dtype not in STATE_DTYPES:
            raise ValueError(f"state dtype must be one of {', '.join(STATE_DTYPES)}, got {self.dtype!r}")
        self.shape = tuple(int(s) for s in self.shape)
        if self.mode != "none" and (not self.shape or min(self.shape) < 1):
            raise ValueError(f"state mode {self.mode!r} needs a non-empty positive shape, got {self.shape}")
        if self.projection is not None:
            self.projection = np.asarray(self.projection)
            if self.projection.ndim != 2 or not self.shape or self.shape[-1] != self.projection.shape[1]:
                raise ValueError(f"projection must be [D_in, k] with shape (..., k); got projection "
                                 f"{self.projection.shape} and shape {self.shape}")

    def steps(self, depth: int) -> np.ndarray:
        """Outer step of each stored snapshot, ``[S]`` int32 (0 = initial state, t = after step t)."""
        if self.mode == "none":
            return np.zeros(0, np.int32)
        if self.mode == "final":
            return np.array([depth], np.int32)
        kept = [0, *range(self.stride, depth + 1, self.stride)]
        return np.array(kept + ([depth] if depth % self.stride else []), np.int32)

    def key(self) -> tuple:
        """Everything that must match for two runs to share a ``/states`` layout."""
        proj = None if self.projection is None else (self.projection.shape, self.projection.tobytes())
        return self.mode, self.stride, self.dtype, self.shape, proj


def _rollout_fields(breadth: int, depth: int) -> dict[str, tuple[str, tuple]]:
    """Required ``/rollout`` datasets: name -> (dtype, per-puzzle shape)."""
    bt = (breadth, depth)
    return {"residual": ("f4", bt), "halt_logit": ("f4", bt), "logit_change": ("f4", bt),
            "pred": ("u1", (*bt, 81)), "valid": ("bool", bt), "correct": ("bool", bt),
            "steps": ("i4", (breadth,)), "selected": ("i4", ())}


def _h5_dtype(kind: str) -> Any:
    return h5py.string_dtype("utf-8") if kind == "str" else np.dtype(bool if kind == "bool" else kind)


def _chunks(rows: int, tail: tuple, itemsize: int) -> tuple:
    """Chunk shape of at most ~1 MiB: fewer rows first, then halve the largest trailing dimension."""
    shape = [max(1, rows), *tail]
    while math.prod(shape) * itemsize > (1 << 20) and max(shape) > 1:
        i = 0 if shape[0] > 1 else int(np.argmax(shape))
        shape[i] = (shape[i] + 1) // 2
    return tuple(shape)


def _attr_value(key: str, value: Any) -> Any:
    """Python value -> HDF5 attribute value (dicts as JSON text, sequences as arrays, strings UTF-8)."""
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (list, tuple)):
        value = np.asarray(value)
    if isinstance(value, np.ndarray) and value.dtype.kind in "OUS":
        return np.array([str(v) for v in value.ravel()], dtype=h5py.string_dtype()).reshape(value.shape)
    if isinstance(value, (str, bool, int, float, np.generic, np.ndarray)):
        return value
    raise ValueError(f"attribute {key!r}: cannot store a {type(value).__name__} (str, numbers, arrays, dict)")


def _write_attrs(obj: Any, attrs: dict) -> None:
    for key, value in attrs.items():
        if value is not None:
            obj.attrs[key] = _attr_value(key, value)


def _decode(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return np.array([_decode(v) for v in value.ravel()]).reshape(value.shape)
    return value


def _same_json(a: Any, b: Any) -> bool:
    try:
        return json.loads(a or "{}") == json.loads(b or "{}")
    except (TypeError, json.JSONDecodeError):
        return a == b


def _detail(err: BaseException) -> str:
    """The informative part of an h5py error message (the last parenthesis)."""
    m = re.search(r"\(([^()]*)\)\s*$", str(err))
    return m.group(1) if m else str(err)


# ---------------------------------------------------------------- crash recovery (what h5clear does)

_MASK = 0xFFFFFFFF
_MIX = ((0, 2, 1, 4), (1, 0, 2, 6), (2, 1, 0, 8), (0, 2, 1, 16), (1, 0, 2, 19), (2, 1, 0, 4))
_FINAL = ((2, 1, 14), (0, 2, 11), (1, 0, 25), (2, 1, 16), (0, 2, 4), (1, 0, 14), (2, 1, 24))


def _lookup3(data: bytes) -> int:
    """Bob Jenkins' lookup3 ``hashlittle`` (initval 0): the checksum of HDF5 metadata."""
    def rot(x: int, k: int) -> int:
        return ((x << k) | (x >> (32 - k))) & _MASK

    n = len(data)
    v = [(0xDEADBEEF + n) & _MASK] * 3
    blocks = [data[i:i + 12] for i in range(0, n, 12)] or [b""]
    for i, block in enumerate(blocks):
        for j, word in enumerate(struct.unpack("<III", block.ljust(12, b"\0"))):
            v[j] = (v[j] + word) & _MASK
        if i < len(blocks) - 1:
            for p, q, r, k in _MIX:
                v[p] = ((v[p] - v[q]) & _MASK) ^ rot(v[q], k)
                v[q] = (v[q] + v[r]) & _MASK
        elif n:
            for p, q, k in _FINAL:
                v[p] = ((v[p] ^ v[q]) - rot(v[q], k)) & _MASK
    return v[2]


def _clear_write_flags(path: str) -> None:
    """Clear the 'open for (SWMR) write' flags that a killed writer leaves in the superblock.

    Superblock v2/v3 (HDF5 file format spec): signature, version, sizes of offsets and lengths, flags, then
    the base, extension, end-of-file and root addresses and a lookup3 checksum. As ``h5clear -s --increment``
    does, the end-of-file address is raised to the file size so nothing written past it gets reused.
    """
    with open(path, "r+b") as fh:
        head = fh.read(64)
        size = fh.seek(0, os.SEEK_END)
        if head[:8] != b"\x89HDF\r\n\x1a\n" or head[8] not in (2, 3) or head[11] == 0:
            return
        _refuse_live_writer(path)
        o = head[9]
        end = 12 + 4 * o
        if struct.unpack_from("<I", head, end)[0] != _lookup3(head[:end]):
            raise RunFileError(f"{path}: corrupt HDF5 superblock (checksum mismatch)")
        base, eoa = (int.from_bytes(head[12 + i * o:12 + (i + 1) * o], "little") for i in (0, 2))
        new = bytearray(head[:end])
        new[11] = 0
        new[12 + 2 * o:12 + 3 * o] = max(eoa, size - base).to_bytes(o, "little")
        fh.seek(0)
        fh.write(bytes(new) + struct.pack("<I", _lookup3(bytes(new))))


def _refuse_live_writer(path: str) -> None:
    """RunFileError if ``path`` is open elsewhere (HDF5's flock) or its recorded writer still lives here."""
    try:
        import fcntl
    except ImportError:  # not POSIX: only the writer-pid check below
        fcntl = None
    with open(path, "rb") as fh:
        try:
            if fcntl is not None:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise RunFileError(f"{path}: open in another process or handle; close readers and stop writers "
                               f"first") from None
    try:
        with h5py.File(path, "r", swmr=True) as f:
            host, _, pid = str(_decode(f.attrs.get("writer", ""))).rpartition(":")
    except OSError:
        return
    if host != socket.gethostname() or not pid.isdigit():
        return  # another machine's writer cannot be checked from here
    if int(pid) == os.getpid():
        raise RunFileError(f"{path}: a RunWriter in this process still has it open; close it first")
    with contextlib.suppress(PermissionError):
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return
    raise RunFileError(f"{path}: process {pid} is still writing it; stop it first")


def _trim(f: h5py.File, n: int) -> None:
    """Cut every row dataset to n rows. String datasets are rebuilt (as ``name~``, then renamed): after a
    crash their chunks may refer to heap objects never written, which HDF5 would try to free on overwrite."""
    for g in (f[k] for k in ("puzzles", "rollout") if k in f):
        for tmp in [k for k in g if k.endswith("~")]:
            if tmp[:-1] in g:
                del g[tmp]
            else:
                g.move(tmp, tmp[:-1])
    for ds in _row_datasets(f):
        if h5py.check_string_dtype(ds.dtype) is None:
            ds.resize(n, axis=0)
            continue
        name, tail = ds.name, ds.shape[1:]
        new = f.create_dataset(name + "~", shape=(n, *tail), maxshape=(None, *tail), dtype=ds.dtype,
                               chunks=ds.chunks)
        if n:
            new[...] = ds.asstr()[:n]
        new.attrs.update(ds.attrs)
        f.flush()
        del f[name]
        f.move(name + "~", name)
    f.flush()


def repair_run(path: str | os.PathLike) -> int:
    """Turn the file of a killed writer into a clean file and return its ``n_done``.

    Clears the write flags (so ``h5dump`` and plain readers open it) and trims every row dataset to the
    committed rows. Refuses while the file is open elsewhere or its writer on this host still lives.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise RunFileNotFoundError(f"{path}: no such run file")
    _clear_write_flags(path)
    with _open_h5(path, "r+") as f:
        _check_schema(f, path)
        n = _n_done(f)
        _trim(f, n)
    return n


# ---------------------------------------------------------------- shared file helpers

def _open_h5(path: str, mode: str, swmr: bool = False) -> h5py.File:
    """h5py.File with the run-file settings; h5py's OSError becomes a one-line RunFileError."""
    try:
        kw = {"libver": LIBVER} if mode != "r" else {"swmr": swmr}
        return h5py.File(path, mode, rdcc_nbytes=16 << 20, **kw)
    except FileNotFoundError:
        raise RunFileNotFoundError(f"{path}: no such run file") from None
    except OSError as err:
        msg = str(err)
        if "already open for" in msg:
            problem = "open for writing by another process, or its writer was killed (repair_run/resume it)"
        elif "unable to lock" in msg:
            problem = "locked by another process that is writing it"
        elif "signature" in msg:
            problem = "not an HDF5 file"
        else:
            kind = "truncated" if "truncated" in msg else "corrupt or unreadable"
            problem = f"{kind} HDF5 file ({_detail(err)})"
        raise RunFileError(f"{path}: {problem}") from None


def _check_schema(f: h5py.File, path: str) -> int:
    schema = _decode(f.attrs.get("schema"))
    if schema != SCHEMA:
        found = "no 'schema' attribute" if schema is None else f"schema {schema!r}"
        raise RunFileError(f"{path}: not an attractorlab run file ({found})")
    try:
        version = int(f.attrs["schema_version"])
    except (KeyError, TypeError, ValueError):
        raise RunFileError(f"{path}: run file without a valid schema_version") from None
    if version > SCHEMA_VERSION:
        raise RunFileError(f"{path}: schema_version {version} is newer than this attractorlab supports "
                           f"({SCHEMA_VERSION}); upgrade attractorlab")
    if version < 1:
        raise RunFileError(f"{path}: invalid schema_version {version}")
    return version


def _n_done(f: h5py.File) -> int:
    if "n_done" in f:
        if f.swmr_mode:
            f["n_done"].refresh()
        return int(f["n_done"][()])
    return int(f.attrs.get("n_done", f["puzzles/tokens"].shape[0] if "puzzles/tokens" in f else 0))


def _row_datasets(f: h5py.File) -> list:
    """Datasets whose first axis is the puzzle axis N."""
    out = [f[g][k] for g in ("puzzles", "rollout") if g in f for k in f[g]]
    return out + ([f["states/data"]] if "states/data" in f else [])


def _state_spec(f: h5py.File) -> StateSpec:
    if "states" not in f:
        return StateSpec()
    g = f["states"]
    return StateSpec(mode=str(_decode(g.attrs["mode"])), stride=int(g.attrs["stride"]),
                     dtype=str(_decode(g.attrs["dtype"])), shape=tuple(int(s) for s in g.attrs["shape"]),
                     projection=g["projection"][()] if "projection" in g else None,
                     description=str(_decode(g.attrs.get("description", ""))))


# ---------------------------------------------------------------- writing

class RunWriter:
    """Append rollout batches to a run file; each :meth:`append` is flushed and then committed.

    SWMR writing starts at the first append, so ``open_run(path, swmr=True)`` can follow a live run.
    ``resume=True`` continues an existing run (or starts one if the file is missing) after checking that
    breadth, depth, state spec, ``config_json`` and ``checkpoint_sha256`` match; rows past its ``n_done``
    are dropped. An existing file is only replaced with ``overwrite=True``. ``attrs`` become root
    attributes (``config_json`` may be a dict; ``None`` values are left out).
    """

    def __init__(self, path: str | os.PathLike, *, breadth: int, depth: int, attrs: dict,
                 states: StateSpec | None = None, resume: bool = False, chunk_puzzles: int = 64,
                 overwrite: bool = False) -> None:
        self.path = os.fspath(path)
        self.breadth, self.depth, self.states = int(breadth), int(depth), states or StateSpec()
        if min(self.breadth, self.depth, chunk_puzzles) < 1:
            raise ValueError(f"breadth, depth and chunk_puzzles must be >= 1, got {breadth}, {depth}, "
                             f"{chunk_puzzles}")
        bad = sorted(set(attrs) & set(RESERVED_ATTRS))
        if bad:
            raise ValueError(f"attrs may not set the reserved run attributes {', '.join(bad)}")
        self.attrs = {k: _attr_value(k, v) if k == "config_json" else v for k, v in attrs.items()}
        self.attrs.setdefault("config_json", "{}")
        self._chunk_rows = int(chunk_puzzles)
        self._fields = {f"rollout/{k}": v for k, v in _rollout_fields(self.breadth, self.depth).items()}
        self._fields.update({f"puzzles/{k}": v for k, v in PUZZLE_FIELDS.items()})
        if self.states.mode != "none":
            tail = (self.breadth, len(self.states.steps(self.depth)), *self.states.shape)
            self._fields["states/data"] = (self.states.dtype, tail)
        self._f: h5py.File | None = None
        if resume and os.path.exists(self.path):
            self._f = self._reopen()
        elif os.path.exists(self.path) and not overwrite:
            raise ValueError(f"{self.path} exists; pass resume=True to continue it or overwrite=True")
        else:
            self._f = self._create()
        self.n_done = _n_done(self._f)

    def _create(self) -> h5py.File:
        f = _open_h5(self.path, "w")
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        _write_attrs(f, {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": created,
                         "attractorlab_version": __version__, "breadth": self.breadth, "depth": self.depth,
                         "n_done": 0, "writer": f"{socket.gethostname()}:{os.getpid()}", **self.attrs})
        f.create_dataset("n_done", data=np.int64(0))
        for name, (kind, tail) in self._fields.items():
            self._create_rows(f, name, kind, tail)
        if self.states.mode != "none":
            spec, g = self.states, f["states"]
            _write_attrs(g, {"mode": spec.mode, "stride": spec.stride, "dtype": spec.dtype,
                             "shape": np.asarray(spec.shape, np.int64), "description": spec.description})
            g.create_dataset("steps", data=spec.steps(self.depth))
            if spec.projection is not None:
                g.create_dataset("projection", data=spec.projection)
        for name, (axes, text) in DESCRIPTIONS.items():
            if name in f:
                _write_attrs(f[name], {"axes": axes, "description": text})
        f.flush()
        return f

    def _create_rows(self, f: h5py.File, name: str, kind: str, tail: tuple) -> None:
        dtype = _h5_dtype(kind)
        size = 16 if kind == "str" else dtype.itemsize
        opts = {} if kind == "str" else {"compression": "gzip", "shuffle": size > 1,
                                         "compression_opts": 1 if name == "states/data" else 4}
        f.create_dataset(name, shape=(0, *tail), maxshape=(None, *tail), dtype=dtype,
                         chunks=_chunks(self._chunk_rows, tail, size), **opts)

    def _reopen(self) -> h5py.File:
        if not h5py.is_hdf5(self.path):
            raise RunFileError(f"{self.path}: not an HDF5 file; cannot resume it")
        _clear_write_flags(self.path)
        f = _open_h5(self.path, "r+")
        try:
            _check_schema(f, self.path)
            if "merged" in f.attrs:
                raise ValueError(f"{self.path}: a merged run cannot be resumed")
            old = {k: _decode(f.attrs.get(k)) for k in ("breadth", "depth", "config_json",
                                                         "checkpoint_sha256")}
            new = {"breadth": self.breadth, "depth": self.depth, **self.attrs}
            for key in ("breadth", "depth"):
                if old[key] != new[key]:
                    raise ValueError(f"cannot resume {self.path}: it has {key}={old[key]}, not {new[key]}")
            if not _same_json(old["config_json"], new["config_json"]):
                raise ValueError(f"cannot resume {self.path}: its config_json differs from this run's config")
            if None not in (old["checkpoint_sha256"], new.get("checkpoint_sha256")) and (
                    old["checkpoint_sha256"] != new["checkpoint_sha256"]):
                raise ValueError(f"cannot resume {self.path}: it was written with another checkpoint")
            spec = _state_spec(f)
            if spec.key() != self.states.key():
                raise ValueError(f"cannot resume {self.path}: its state spec ({spec.mode}, stride "
                                 f"{spec.stride}, {spec.dtype}, {spec.shape}) differs from the requested one")
            missing = [name for name in self._fields if name not in f]
            if missing:
                raise RunFileError(f"{self.path}: incomplete run file (missing {', '.join(missing)})")
            n = _n_done(f)
            _trim(f, n)
            f.attrs["writer"] = f"{socket.gethostname()}:{os.getpid()}"
            f.flush()
            if n:
                f.swmr_mode = True
        except BaseException:
            f.close()
            raise
        return f

    @staticmethod
    def _check(name: str, value: Any, n: int, tail: tuple, kind: str) -> np.ndarray:
        if kind == "str":
            arr = np.asarray(value)
            arr = np.array([str(v) for v in arr.ravel()], dtype=object).reshape(arr.shape)
        else:
            arr = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
            if arr.dtype.kind not in "biuf":
                raise ValueError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
            if kind == "bool" and arr.dtype != bool and not np.isin(arr, (0, 1)).all():
                raise ValueError(f"{name}: expected booleans")
        if arr.shape != (n, *tail):
            raise ValueError(f"{name}: expected shape {(n, *tail)}, got {arr.shape}")
        return arr if kind == "str" else arr.astype(_h5_dtype(kind), copy=False)

    def append(self, puzzles: Any, rollout: dict, states: np.ndarray | None = None) -> None:
        """Write one batch of n puzzles and commit it.

        puzzles: has ``tokens [n, 81]``, ``solution [n, 81]``, ``source [n]``, ``rating [n]`` (a PuzzleSet);
        rollout: the ``/rollout`` arrays for these n puzzles (``residual [n, B, T]`` ... ``selected [n]``),
        optionally ``selected_majority [n]`` and further ``[n, ...]`` numeric arrays (the first batch fixes
        the set of keys); states: ``[n, B, S, *shape]`` (S = ``len(spec.steps(T))``) unless mode ``none``.
        """
        if self._f is None:
            raise ValueError(f"{self.path}: writer is closed")
        if not all(hasattr(puzzles, k) for k in PUZZLE_FIELDS):
            raise ValueError(f"puzzles must have the attributes {', '.join(PUZZLE_FIELDS)} (a PuzzleSet)")
        n = len(np.asarray(puzzles.tokens))
        data = {f"puzzles/{k}": self._check(f"puzzles.{k}", getattr(puzzles, k), n, tail, kind)
                for k, (kind, tail) in PUZZLE_FIELDS.items()}
        known = {**OPTIONAL_ROLLOUT, **_rollout_fields(self.breadth, self.depth)}
        missing = sorted(set(_rollout_fields(1, 1)) - set(rollout))
        if missing:
            raise ValueError(f"rollout is missing {', '.join(missing)}")
        for key, value in rollout.items():
            if key not in known:
                arr = np.asarray(value)
                known[key] = ("bool" if arr.dtype == bool else arr.dtype.str, arr.shape[1:])
            kind, tail = known[key]
            data[f"rollout/{key}"] = self._check(f"rollout[{key!r}]", value, n, tail, kind)
        if (states is None) != (self.states.mode == "none"):
            raise ValueError(f"states must be {'None' if states is not None else 'given'} "
                             f"for state mode {self.states.mode!r}")
        if states is not None:
            data["states/data"] = self._check("states", states, n, *self._fields["states/data"][::-1])
        f = self._f
        if not f.swmr_mode:  # optional datasets can still be created; SWMR forbids new objects
            for name, arr in data.items():
                if name not in f and not self.n_done:
                    self._create_rows(f, name, "bool" if arr.dtype == bool else arr.dtype.str, arr.shape[1:])
            f.swmr_mode = True
        expected = {ds.name.lstrip("/") for ds in _row_datasets(f)}
        if set(data) != expected:
            raise ValueError(f"batch keys differ from the run's: missing {sorted(expected - set(data))}, "
                             f"unexpected {sorted(set(data) - expected)}")
        start = self.n_done
        for name, arr in data.items():
            f[name].resize(start + n, axis=0)
            f[name][start:start + n] = arr
        self._commit(start + n)

    def _commit(self, n_done: int) -> None:
        """Flush the batch, then publish it: HDF5 orders no writes across objects, so ``n_done`` may
        change only after a complete flush of the data."""
        self._f.flush()
        self._f["n_done"][()] = n_done
        self._f.attrs.modify("n_done", n_done)
        self._f.flush()
        self.n_done = n_done

    def close(self) -> None:
        """Flush and close the file (idempotent)."""
        if self._f is not None:
            self._f.close()
            self._f = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def estimate_size(n_puzzles: int, breadth: int, depth: int, states: StateSpec | None = None) -> int:
    """Upper bound (bytes, uncompressed) of a run file of this size, for :func:`check_disk_space`."""
    states = states or StateSpec()
    per_puzzle = 81 * 2 + 4 + 256 + 8 + 4 * breadth + breadth * depth * (3 * 4 + 81 + 2)
    snapshot = math.prod(states.shape) * np.dtype(states.dtype).itemsize
    per_puzzle += breadth * len(states.steps(depth)) * snapshot
    proj = 0 if states.projection is None else states.projection.nbytes
    return int(n_puzzles * per_puzzle * 1.05) + proj + (16 << 20)


def check_disk_space(path: str | os.PathLike, nbytes: int) -> None:
    """Raise ValueError (one line) if the file system that will hold ``path`` has < ``nbytes`` free."""
    where = os.path.dirname(os.path.abspath(os.fspath(path)))
    while not os.path.isdir(where):
        where = os.path.dirname(where)
    free = shutil.disk_usage(where).free
    if nbytes > free:
        raise ValueError(f"not enough disk space for {os.fspath(path)}: needs about "
                         f"{nbytes / 2**30:.2f} GiB, {where} has {free / 2**30:.2f} GiB free")


def shard_path(out_path: str | os.PathLike, rank: int, world_size: int) -> str:
    """Per-rank file of a sharded run: ``run.h5`` -> ``run.rank0-of-2.h5``."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, {world_size}), got {rank}")
    stem, ext = os.path.splitext(os.fspath(out_path))
    return f"{stem}.rank{rank}-of-{world_size}{ext}"


# ---------------------------------------------------------------- reading

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
    """Stored latent states: ``data [N, B, S, *shape]`` (lazy), ``steps [S]``, optional ``projection``."""

    data: LazyArray
    steps: np.ndarray
    spec: StateSpec

    mode = property(lambda self: self.spec.mode)
    projection = property(lambda self: self.spec.projection)


class Run:
    """A run file opened read-only (see :func:`open_run`); arrays hold the ``n`` committed puzzles."""

    def __init__(self, path: str, file: h5py.File, swmr: bool) -> None:
        self.path, self._file, self._swmr = path, file, swmr
        f = file
        self.schema_version = _check_schema(f, path)
        self.attrs = {k: _decode(v) for k, v in f.attrs.items()}
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
        self.n = self._rows()
        self.puzzles, self.rollout = _Table(self, "puzzles"), _Table(self, "rollout")
        self.states: StatesView | None = None
        if "states/data" in f:
            self.states = StatesView(LazyArray(self, "states/data"), f["states/steps"][()], _state_spec(f))
        _OPEN_RUNS.add(self)

    def _rows(self) -> int:
        return min([_n_done(self._file)] + [ds.shape[0] for ds in _row_datasets(self._file)])

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
            raise RunFileError(f"{self.path}: cannot read /{name} ({_detail(err)})") from None

    def refresh(self) -> int:
        """Follow a live writer (``swmr=True``): pick up newly committed puzzles; returns the new ``n``."""
        if self._swmr:
            for ds in _row_datasets(self._file):
                ds.refresh()
        self.n = self._rows()
        self.puzzles._cache.clear()
        self.rollout._cache.clear()
        return self.n

    def _handle(self) -> h5py.File:
        if self._file is None:
            raise ValueError(f"{self.path}: run is closed")
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
        name = _check_name(name)
        g = self._handle().get(f"analysis/{name}")
        if g is None or "analysis_name" not in g.attrs:
            have = ", ".join(self.analysis_keys()) or "none"
            raise KeyError(f"{self.path}: no analysis {name!r} (has {have})")
        out = AnalysisResult()
        out.attrs = {k: _decode(v) for k, v in g.attrs.items() if k != "analysis_name"}

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
        _OPEN_RUNS.discard(self)

    def __enter__(self) -> Run:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"Run({self.path!r}, n={self.n}, breadth={self.breadth}, depth={self.depth}, "
                f"states={self.states.mode if self.states else 'none'})")


_OPEN_RUNS: weakref.WeakSet[Run] = weakref.WeakSet()


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
        f = _open_h5(path, "r", swmr=swmr)
    except RunFileError as err:
        if swmr or "open for writing" not in str(err):
            raise
        try:
            f, swmr = _open_h5(path, "r", swmr=True), True
        except RunFileError:
            raise err from None
    try:
        return Run(path, f, swmr)
    except BaseException:
        f.close()
        raise


# ---------------------------------------------------------------- analysis results

class AnalysisResult(dict):
    """``dict`` of arrays/scalars from ``/analysis/<name>``; the group's attributes in ``.attrs``."""

    attrs: dict


def _check_name(name: str) -> str:
    parts = str(name).strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        raise ValueError(f"invalid analysis name {name!r}")
    return "/".join(parts)


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
        raise ValueError(f"analysis array {key!r}: cannot store dtype {arr.dtype} (numbers, bools, strings)")
    return arr, False


def write_analysis(path: str | os.PathLike, name: str, arrays: dict[str, Any], attrs: dict | None = None,
                   *, overwrite: bool = False) -> None:
    """Store ``arrays`` under ``/analysis/<name>/<key>`` (``name`` and keys may contain ``/``).

    Values: numeric/bool arrays and scalars, strings and string arrays (UTF-8), complex arrays (stored as
    float ``[..., 2]`` = (real, imag) with the attribute ``complex=TRUE``). Runs of this file that are open
    in this process are closed and reopened around the write.
    """
    path, name = os.fspath(path), _check_name(name)
    if not os.path.exists(path):
        raise RunFileNotFoundError(f"{path}: no such run file")
    converted = {str(k).strip("/"): _dataset_value(str(k), v) for k, v in arrays.items()}
    real = os.path.realpath(path)
    paused = [r for r in list(_OPEN_RUNS) if r._file is not None and os.path.realpath(r.path) == real]
    for run in paused:
        run._file.close()
    try:
        with _open_h5(path, "r+") as f:
            _check_schema(f, path)
            parts = name.split("/")
            for i in range(1, len(parts)):
                parent = f.get("analysis/" + "/".join(parts[:i]))
                if parent is not None and "analysis_name" in parent.attrs:
                    raise ValueError(f"cannot store {name!r} inside the analysis {'/'.join(parts[:i])!r}")
            if f"analysis/{name}" in f:
                if not overwrite:
                    raise ValueError(f"{path}: analysis {name!r} exists; pass overwrite=True to replace it")
                del f[f"analysis/{name}"]
            g = f.require_group(f"analysis/{name}")
            _write_attrs(g, {**(attrs or {}), "analysis_name": name})
            for key, (arr, is_complex) in converted.items():
                big = arr.nbytes > (1 << 16) and arr.dtype.kind != "O" and arr.ndim > 0
                opts = {"compression": "gzip", "shuffle": True} if big else {}
                ds = g.create_dataset(key, data=arr, **opts)
                if is_complex:
                    ds.attrs["complex"] = True
    finally:
        for run in paused:
            run._file = _open_h5(path, "r", swmr=run._swmr)


def has_analysis(path: str | os.PathLike, name: str) -> bool:
    """Whether the run file holds the analysis ``name``."""
    with open_run(path) as run:
        return _check_name(name) in run.analysis_keys()


# ---------------------------------------------------------------- sharded runs

def merge_shards(shard_paths: list, out_path: str | os.PathLike, *, virtual: bool = True) -> None:
    """Join per-rank run files (in rank order) into one run along N.

    ``virtual=True`` writes HDF5 virtual datasets that refer to the shards by paths relative to the merged
    file (keep them beside it); ``virtual=False`` copies the data. Shards must share breadth, depth, config,
    checkpoint, state spec and datasets and be closed cleanly. Replaces ``out_path`` only if it is itself
    a merged run.
    """
    out_path, paths = os.fspath(out_path), [os.fspath(p) for p in shard_paths]
    if not paths:
        raise ValueError("merge_shards needs at least one shard")
    if any(os.path.abspath(p) == os.path.abspath(out_path) for p in paths):
        raise ValueError(f"{out_path} is one of the shards")
    if os.path.exists(out_path):
        with open_run(out_path) as old:
            if "merged" not in old.attrs:
                raise ValueError(f"{out_path} exists and is not a merged run; remove it first")
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(open_run(p)) for p in paths]
        first = runs[0]
        layout = {ds.name: (ds.dtype, ds.shape[1:]) for ds in _row_datasets(first._file)}
        for run in runs:
            if run._swmr:
                raise RunFileError(f"{run.path}: shard was not closed cleanly; finish it or run repair_run")
            problems = [k for k in ("breadth", "depth") if getattr(run, k) != getattr(first, k)]
            problems += [k for k in ("config_json", "checkpoint_sha256")
                         if not _same_json(run.attrs.get(k), first.attrs.get(k))]
            if {ds.name: (ds.dtype, ds.shape[1:]) for ds in _row_datasets(run._file)} != layout:
                problems.append("datasets")
            if _state_spec(run._file).key() != _state_spec(first._file).key():
                problems.append("state spec")
            if problems:
                raise ValueError(f"cannot merge {run.path} with {first.path}: {', '.join(problems)} differ")
        counts = [run.n for run in runs]
        offsets = np.cumsum([0, *counts])
        out_dir = os.path.dirname(os.path.abspath(out_path))
        refs = [os.path.relpath(os.path.abspath(p), out_dir) for p in paths]
        with _open_h5(out_path, "w") as out:
            root = {k: v for k, v in first.attrs.items() if k not in ("n_done", "writer")}
            _write_attrs(out, {**root, "n_done": int(offsets[-1]), "merged": "virtual" if virtual else "copy",
                               "shards": json.dumps(refs), "shard_n": np.asarray(counts, np.int64)})
            out.create_dataset("n_done", data=np.int64(offsets[-1]))
            for name, (dtype, tail) in layout.items():
                src = first._file[name]
                if virtual:
                    lay = h5py.VirtualLayout(shape=(int(offsets[-1]), *tail), dtype=dtype)
                    for ref, run, start, n in zip(refs, runs, offsets[:-1], counts, strict=True):
                        if n:
                            source = h5py.VirtualSource(ref, name, shape=run._file[name].shape)
                            lay[start:start + n] = source[:n]
                    ds = out.create_virtual_dataset(name, lay)
                else:
                    ds = out.create_dataset(name, shape=(int(offsets[-1]), *tail), maxshape=(None, *tail),
                                            dtype=dtype, chunks=src.chunks, compression=src.compression,
                                            compression_opts=src.compression_opts, shuffle=src.shuffle)
                    block = max(1, (64 << 20) // max(1, math.prod(tail) * dtype.itemsize))
                    for run, start, n in zip(runs, offsets[:-1], counts, strict=True):
                        for i in range(0, n, block):
                            ds[start + i:start + min(n, i + block)] = run._file[name][i:min(n, i + block)]
                ds.attrs.update(src.attrs)
            if "states" in first._file:
                out["states"].attrs.update(first._file["states"].attrs)
                for name in ("steps", "projection"):
                    if name in first._file["states"]:
                        first._file.copy(first._file[f"states/{name}"], out["states"], name=name)
