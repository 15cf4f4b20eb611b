"""Sharded runs: :func:`merge_shards` joins per-rank run files into one run (virtual or copied datasets)."""

from __future__ import annotations

import contextlib
import json
import math
import os

import h5py
import numpy as np

from attractorlab.errors import InputError

from .files import open_h5, row_datasets, same_json, state_spec, write_attrs
from .reader import open_run
from .schema import RunFileError


def merge_shards(shard_paths: list, out_path: str | os.PathLike, *, virtual: bool = True) -> None:
    """Join per-rank run files (in rank order) into one run along N.

    ``virtual=True`` writes HDF5 virtual datasets that refer to the shards by paths relative to the merged
    file (keep them beside it); ``virtual=False`` copies the data. Shards must share breadth, depth, config,
    checkpoint, state spec and datasets and be closed cleanly. Replaces ``out_path`` only if it is itself
    a merged run.
    """
    out_path, paths = os.fspath(out_path), [os.fspath(p) for p in shard_paths]
    if not paths:
        raise InputError("merge_shards needs at least one shard")
    if any(os.path.abspath(p) == os.path.abspath(out_path) for p in paths):
        raise InputError(f"{out_path} is one of the shards")
    if os.path.exists(out_path):
        with open_run(out_path) as old:
            if "merged" not in old.attrs:
                raise InputError(f"{out_path} exists and is not a merged run; remove it first")
    with contextlib.ExitStack() as stack:
        runs = [stack.enter_context(open_run(p)) for p in paths]
        first = runs[0]
        layout = {ds.name: (ds.dtype, ds.shape[1:]) for ds in row_datasets(first._file)}
        for run in runs:
            if run._swmr:
                raise RunFileError(f"{run.path}: shard was not closed cleanly; finish it or run repair_run")
            problems = [k for k in ("breadth", "depth") if getattr(run, k) != getattr(first, k)]
            problems += [k for k in ("config_json", "checkpoint_sha256")
                         if not same_json(run.attrs.get(k), first.attrs.get(k))]
            if {ds.name: (ds.dtype, ds.shape[1:]) for ds in row_datasets(run._file)} != layout:
                problems.append("datasets")
            if state_spec(run._file).key() != state_spec(first._file).key():
                problems.append("state spec")
            if problems:
                raise InputError(f"cannot merge {run.path} with {first.path}: {', '.join(problems)} differ")
        counts = [run.n for run in runs]
        offsets = np.cumsum([0, *counts])
        out_dir = os.path.dirname(os.path.abspath(out_path))
        refs = [os.path.relpath(os.path.abspath(p), out_dir) for p in paths]
        with open_h5(out_path, "w") as out:
            root = {k: v for k, v in first.attrs.items() if k not in ("n_done", "writer")}
            write_attrs(out, {**root, "n_done": int(offsets[-1]), "merged": "virtual" if virtual else "copy",
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
                for name in ("steps", "projection", "updates", "update_names"):
                    if name in first._file["states"]:
                        first._file.copy(first._file[f"states/{name}"], out["states"], name=name)
