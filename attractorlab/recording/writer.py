"""Writing run files: :class:`RunWriter`, size and disk-space checks, shard paths, and repair of the file of
a killed writer (:func:`repair_run`)."""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import socket
import struct
from datetime import datetime, timezone
from typing import Any

import h5py
import numpy as np

from attractorlab import __version__
from attractorlab.errors import InputError, make_parent_dirs

from .files import (
    attr_value,
    check_schema,
    decode_attr,
    open_h5,
    row_datasets,
    rows_done,
    same_json,
    state_spec,
    write_attrs,
)
from .schema import (
    DEFAULT_TASK,
    DESCRIPTIONS,
    OPTIONAL_ROLLOUT,
    PUZZLE_FIELDS,
    RESERVED_ATTRS,
    SCHEMA,
    SCHEMA_VERSION,
    RunFileError,
    RunFileNotFoundError,
    StateSpec,
    puzzle_fields,
    rollout_fields,
)


def _h5_dtype(kind: str) -> Any:
    return h5py.string_dtype("utf-8") if kind == "str" else np.dtype(bool if kind == "bool" else kind)


def _chunks(rows: int, tail: tuple, itemsize: int) -> tuple:
    """Chunk shape of at most ~1 MiB: fewer rows first, then halve the largest trailing dimension."""
    shape = [max(1, rows), *tail]
    while math.prod(shape) * itemsize > (1 << 20) and max(shape) > 1:
        i = 0 if shape[0] > 1 else int(np.argmax(shape))
        shape[i] = (shape[i] + 1) // 2
    return tuple(shape)


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
            host, _, pid = str(decode_attr(f.attrs.get("writer", ""))).rpartition(":")
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
    for ds in row_datasets(f):
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
    with open_h5(path, "r+") as f:
        check_schema(f, path)
        n = rows_done(f)
        _trim(f, n)
    return n


# ---------------------------------------------------------------- writing

class RunWriter:
    """Append rollout batches to a run file; each :meth:`append` is flushed and then committed.

    SWMR writing starts at the first append, so ``open_run(path, swmr=True)`` can follow a live run.
    ``resume=True`` continues an existing run (or starts one if the file is missing) after checking that
    breadth, depth, state spec, ``config_json`` and ``checkpoint_sha256`` match; rows past its ``n_done``
    are dropped. An existing file is only replaced with ``overwrite=True``, and only once the new run has
    committed its first batch (until then it is written beside it, to ``PATH.new-PID``). ``attrs`` become root
    attributes (``config_json`` may be a dict; ``None`` values are left out); ``task`` and ``seq_len`` say
    which task the instances belong to and how many tokens each has.
    """

    def __init__(self, path: str | os.PathLike, *, breadth: int, depth: int, attrs: dict,
                 states: StateSpec | None = None, resume: bool = False, chunk_puzzles: int = 64,
                 overwrite: bool = False, task: str = DEFAULT_TASK, seq_len: int | None = None) -> None:
        self.path = os.fspath(path)
        self.breadth, self.depth, self.states = int(breadth), int(depth), states or StateSpec()
        self.seq_len = int(seq_len or _task_seq_len(task))
        if min(self.breadth, self.depth, chunk_puzzles) < 1:
            raise InputError(f"breadth, depth and chunk_puzzles must be >= 1, got {breadth}, {depth}, "
                             f"{chunk_puzzles}")
        bad = sorted(set(attrs) & set(RESERVED_ATTRS))
        if bad:
            raise InputError(f"attrs may not set the reserved run attributes {', '.join(bad)}")
        self.attrs = {k: attr_value(k, v) if k == "config_json" else v for k, v in attrs.items()}
        self.attrs.setdefault("config_json", "{}")
        self.attrs.setdefault("task", task)
        self._chunk_rows = int(chunk_puzzles)
        self._rollout = rollout_fields(self.breadth, self.depth, self.seq_len)
        self._puzzles = puzzle_fields(self.seq_len)
        self._fields = {f"rollout/{k}": v for k, v in self._rollout.items()}
        self._fields.update({f"puzzles/{k}": v for k, v in self._puzzles.items()})
        if self.states.mode != "none":
            tail = (self.breadth, len(self.states.steps(self.depth)), *self.states.shape)
            self._fields["states/data"] = (self.states.dtype, tail)
        self._f: h5py.File | None = None
        self._beside: str | None = None  # where a replacing run is written until its first batch is committed
        if resume and os.path.exists(self.path):
            self._f = self._reopen()
        elif os.path.exists(self.path) and not overwrite:
            raise InputError(f"{self.path} exists; pass resume=True to continue it or overwrite=True")
        else:
            if os.path.exists(self.path):
                self._beside = f"{self.path}.new-{os.getpid()}"
            self._f = self._create(self._beside or self.path)
        self.n_done = rows_done(self._f)

    def _create(self, path: str) -> h5py.File:
        make_parent_dirs(path)  # as checkpoints do
        f = open_h5(path, "w")
        created = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        write_attrs(f, {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "created": created,
                         "attractorlab_version": __version__, "breadth": self.breadth, "depth": self.depth,
                         "n_done": 0, "writer": f"{socket.gethostname()}:{os.getpid()}", **self.attrs})
        f.create_dataset("n_done", data=np.int64(0))
        for name, (kind, tail) in self._fields.items():
            self._create_rows(f, name, kind, tail)
        if self.states.mode != "none":
            spec, g = self.states, f["states"]
            write_attrs(g, {"mode": spec.mode, "stride": spec.stride, "dtype": spec.dtype,
                             "shape": np.asarray(spec.shape, np.int64), "description": spec.description})
            g.create_dataset("steps", data=spec.steps(self.depth))
            if spec.mode == "cycles":
                g.create_dataset("updates", data=spec.update_index(self.depth))
                g.create_dataset("update_names", data=np.array(spec.updates, dtype=h5py.string_dtype()))
            if spec.projection is not None:
                g.create_dataset("projection", data=spec.projection)
        for name, (axes, text) in DESCRIPTIONS.items():
            if name in f:
                write_attrs(f[name], {"axes": axes, "description": text})
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
        f = open_h5(self.path, "r+")
        try:
            check_schema(f, self.path)
            if "merged" in f.attrs:
                raise InputError(f"{self.path}: a merged run cannot be resumed")
            old = {k: decode_attr(f.attrs.get(k)) for k in ("breadth", "depth", "config_json",
                                                         "checkpoint_sha256")}
            new = {"breadth": self.breadth, "depth": self.depth, **self.attrs}
            for key in ("breadth", "depth"):
                if old[key] != new[key]:
                    raise InputError(f"cannot resume {self.path}: it has {key}={old[key]}, not {new[key]}")
            if not same_json(old["config_json"], new["config_json"]):
                raise InputError(f"cannot resume {self.path}: its config_json differs from this run's config")
            if None not in (old["checkpoint_sha256"], new.get("checkpoint_sha256")) and (
                    old["checkpoint_sha256"] != new["checkpoint_sha256"]):
                raise InputError(f"cannot resume {self.path}: it was written with another checkpoint")
            spec = state_spec(f)
            if spec.key() != self.states.key():
                raise InputError(f"cannot resume {self.path}: its state spec ({spec.mode}, stride "
                                 f"{spec.stride}, {spec.dtype}, {spec.shape}) differs from the requested one")
            missing = [name for name in self._fields if name not in f]
            if missing:
                raise RunFileError(f"{self.path}: incomplete run file (missing {', '.join(missing)})")
            n = rows_done(f)
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
                raise InputError(f"{name}: expected a numeric array, got dtype {arr.dtype}")
            if kind == "bool" and arr.dtype != bool and not np.isin(arr, (0, 1)).all():
                raise InputError(f"{name}: expected booleans")
        if arr.shape != (n, *tail):
            raise InputError(f"{name}: expected shape {(n, *tail)}, got {arr.shape}")
        return arr if kind == "str" else arr.astype(_h5_dtype(kind), copy=False)

    def append(self, puzzles: Any, rollout: dict, states: np.ndarray | None = None) -> None:
        """Write one batch of n puzzles and commit it.

        puzzles: has ``tokens [n, L]``, ``solution [n, L]``, ``source [n]``, ``rating [n]`` and optionally
        ``group [n]`` (a PuzzleSet);
        rollout: the ``/rollout`` arrays for these n puzzles (``residual [n, B, T]`` ... ``selected [n]``),
        optionally ``selected_majority [n]`` and further ``[n, ...]`` numeric arrays (the first batch fixes
        the set of keys); states: ``[n, B, S, *shape]`` (S = ``len(spec.steps(T))``) unless mode ``none``.
        """
        if self._f is None:
            raise InputError(f"{self.path}: writer is closed")
        if not all(hasattr(puzzles, k) for k in PUZZLE_FIELDS):
            raise InputError(f"puzzles must have the attributes {', '.join(PUZZLE_FIELDS)} (a PuzzleSet)")
        n = len(np.asarray(puzzles.tokens))
        data = {f"puzzles/{k}": self._check(f"puzzles.{k}", getattr(puzzles, k), n, tail, kind)
                for k, (kind, tail) in self._puzzles.items()}
        if getattr(puzzles, "group", None) is not None:  # optional: which rows are copies of one puzzle
            data["puzzles/group"] = self._check("puzzles.group", puzzles.group, n, (), "i8")
        known = {**OPTIONAL_ROLLOUT, **self._rollout}
        missing = sorted(set(self._rollout) - set(rollout))
        if missing:
            raise InputError(f"rollout is missing {', '.join(missing)}")
        for key, value in rollout.items():
            if key not in known:
                arr = np.asarray(value)
                known[key] = ("bool" if arr.dtype == bool else arr.dtype.str, arr.shape[1:])
            kind, tail = known[key]
            data[f"rollout/{key}"] = self._check(f"rollout[{key!r}]", value, n, tail, kind)
        if (states is None) != (self.states.mode == "none"):
            raise InputError(f"states must be {'None' if states is not None else 'given'} "
                             f"for state mode {self.states.mode!r}")
        if states is not None:
            data["states/data"] = self._check("states", states, n, *self._fields["states/data"][::-1])
        f = self._f
        if not f.swmr_mode:  # optional datasets can still be created; SWMR forbids new objects
            for name, arr in data.items():
                if name not in f and not self.n_done:
                    self._create_rows(f, name, "bool" if arr.dtype == bool else arr.dtype.str, arr.shape[1:])
            f.swmr_mode = True
        expected = {ds.name.lstrip("/") for ds in row_datasets(f)}
        if set(data) != expected:
            raise InputError(f"batch keys differ from the run's: missing {sorted(expected - set(data))}, "
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
        if self._beside is not None:  # the replacing run holds work now: it takes the old run's place
            self._f.close()
            os.replace(self._beside, self.path)
            self._beside = None
            self._f = open_h5(self.path, "r+")
            self._f.swmr_mode = True

    def close(self) -> None:
        """Flush and close the file (idempotent); a replacing run without a committed batch is discarded, so the
        run it was to replace stays as it was."""
        if self._f is not None:
            self._f.close()
            self._f = None
        if self._beside is not None:
            if os.path.exists(self._beside):
                os.remove(self._beside)
            self._beside = None

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _task_seq_len(task: str) -> int:
    """Tokens per instance of a registered task (imported here only: reading run files needs no tasks)."""
    from attractorlab.tasks import get_task

    return get_task(task).seq_len


def estimate_size(n_puzzles: int, breadth: int, depth: int, states: StateSpec | None = None,
                  seq_len: int | None = None) -> int:
    """Upper bound (bytes, uncompressed) of a run file of this size, for :func:`check_disk_space`
    (``seq_len``: tokens per instance; default the :data:`DEFAULT_TASK`'s)."""
    states = states or StateSpec()
    seq_len = seq_len or _task_seq_len(DEFAULT_TASK)
    per_puzzle = seq_len * 2 + 4 + 256 + 8 + 4 * breadth + breadth * depth * (5 * 4 + seq_len + 2)
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
        raise InputError(f"not enough disk space for {os.fspath(path)}: needs about "
                         f"{nbytes / 2**30:.2f} GiB, {where} has {free / 2**30:.2f} GiB free")


def shard_path(out_path: str | os.PathLike, rank: int, world_size: int) -> str:
    """Per-rank file of a sharded run: ``run.h5`` -> ``run.rank0-of-2.h5``."""
    if not 0 <= rank < world_size:
        raise InputError(f"rank must be in [0, {world_size}), got {rank}")
    stem, ext = os.path.splitext(os.fspath(out_path))
    return f"{stem}.rank{rank}-of-{world_size}{ext}"
