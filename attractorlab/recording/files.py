"""Low-level HDF5 helpers shared by the writer, reader, analysis and shard modules: attribute conversion,
opening files with the run-file settings, schema checks and the committed-row count."""

from __future__ import annotations

import json
import os
import re
from typing import Any

import h5py
import numpy as np

from attractorlab.errors import InputError

from .schema import LIBVER, SCHEMA, SCHEMA_VERSION, RunFileError, RunFileNotFoundError, StateSpec


def attr_value(key: str, value: Any) -> Any:
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
    raise InputError(f"attribute {key!r}: cannot store a {type(value).__name__} (str, numbers, arrays, dict)")


def write_attrs(obj: Any, attrs: dict) -> None:
    for key, value in attrs.items():
        if value is not None:
            obj.attrs[key] = attr_value(key, value)


def decode_attr(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray) and value.dtype.kind == "O":
        return np.array([decode_attr(v) for v in value.ravel()]).reshape(value.shape)
    return value


def same_json(a: Any, b: Any) -> bool:
    try:
        return json.loads(a or "{}") == json.loads(b or "{}")
    except (TypeError, json.JSONDecodeError):
        return a == b


def error_detail(err: BaseException) -> str:
    """The informative part of an h5py error message: the system's reason where HDF5 quotes one, else the last
    parenthesis."""
    m = re.search(r"error message = '([^']*)'", str(err)) or re.search(r"\(([^()]*)\)\s*$", str(err))
    return m.group(1) if m else str(err)


def open_h5(path: str, mode: str, swmr: bool = False) -> h5py.File:
    """h5py.File with the run-file settings; h5py's OSError becomes a one-line RunFileError."""
    try:
        kw = {"libver": LIBVER} if mode != "r" else {"swmr": swmr}
        return h5py.File(path, mode, rdcc_nbytes=16 << 20, **kw)
    except FileNotFoundError:
        raise RunFileNotFoundError(f"{path}: no such run file") from None
    except OSError as err:
        msg = str(err)
        if "already open for" in msg:
            problem = ("open for writing by another process, or its writer was killed (continue it with "
                       "`attractorlab solve --resume`, or repair it with attractorlab.recording.repair_run)")
        elif "unable to lock" in msg:
            problem = "locked by another process that is writing it"
        elif "signature" in msg:
            problem = "not an HDF5 file"
        elif mode == "w":
            problem = f"cannot create the run file ({error_detail(err)})"
        else:
            kind = "truncated" if "truncated" in msg else "corrupt or unreadable"
            problem = f"{kind} HDF5 file ({error_detail(err)})"
        raise RunFileError(f"{path}: {problem}") from None


def check_schema(f: h5py.File, path: str) -> int:
    schema = decode_attr(f.attrs.get("schema"))
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


def rows_done(f: h5py.File) -> int:
    if "n_done" in f:
        if f.swmr_mode:
            f["n_done"].refresh()
        return int(f["n_done"][()])
    return int(f.attrs.get("n_done", f["puzzles/tokens"].shape[0] if "puzzles/tokens" in f else 0))


def row_datasets(f: h5py.File) -> list:
    """Datasets whose first axis is the puzzle axis N."""
    out = [f[g][k] for g in ("puzzles", "rollout") if g in f for k in f[g]]
    return out + ([f["states/data"]] if "states/data" in f else [])


def state_spec(f: h5py.File) -> StateSpec:
    if "states" not in f:
        return StateSpec()
    g = f["states"]
    return StateSpec(mode=str(decode_attr(g.attrs["mode"])), stride=int(g.attrs["stride"]),
                     dtype=str(decode_attr(g.attrs["dtype"])), shape=tuple(int(s) for s in g.attrs["shape"]),
                     projection=g["projection"][()] if "projection" in g else None,
                     description=str(decode_attr(g.attrs.get("description", ""))),
                     updates=tuple(decode_attr(u) for u in g["update_names"][()]) if "update_names" in g else ())
