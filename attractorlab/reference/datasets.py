"""Reference dataset directories (``dataset/build_sudoku_dataset.py``, ``dataset/puzzle_dataset.py``, the HRM
layout): one folder per split with ``dataset.json`` and
``{set}__{inputs,labels,puzzle_identifiers,puzzle_indices,group_indices}.npy``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from attractorlab.errors import InputError, make_parent_dirs
from attractorlab.reference.errors import ReferenceFormatError, first_line, is_int

METADATA_FIELDS = ("pad_id", "ignore_label_id", "blank_identifier_id", "vocab_size", "seq_len",
                   "num_puzzle_identifiers", "total_groups", "mean_puzzle_examples", "sets")
"""Required ``dataset.json`` fields (``dataset/common.py: PuzzleDatasetMetadata``; ``total_samples`` optional)."""
ARRAY_FIELDS = ("inputs", "labels", "puzzle_identifiers", "puzzle_indices", "group_indices")


@dataclass
class ReferenceSplit:
    """One set of a reference split folder.

    ``inputs, labels: [N, L]`` memory-mapped token arrays; ``puzzle_identifiers: [P]``; ``puzzle_indices: [P + 1]``
    example offsets of each puzzle; ``group_indices: [G + 1]`` puzzle offsets of each group (the augmented copies
    of one puzzle form a group); ``metadata`` the parsed ``dataset.json``.
    """

    path: Path
    set_name: str
    inputs: np.ndarray
    labels: np.ndarray
    puzzle_identifiers: np.ndarray
    puzzle_indices: np.ndarray
    group_indices: np.ndarray
    metadata: dict = field(default_factory=dict)

    @property
    def num_examples(self) -> int:
        return int(self.inputs.shape[0])

    @property
    def num_groups(self) -> int:
        return len(self.group_indices) - 1

    def example_puzzles(self) -> np.ndarray:
        """``[N] int64``: the puzzle of every example."""
        return np.repeat(np.arange(len(self.puzzle_indices) - 1), np.diff(self.puzzle_indices))

    def example_groups(self) -> np.ndarray:
        """``[N] int64``: the group of every example."""
        puzzle_group = np.repeat(np.arange(self.num_groups), np.diff(self.group_indices))
        return puzzle_group[self.example_puzzles()]


def read_split(path: str | os.PathLike, set_name: str = "all") -> ReferenceSplit:
    """Read and validate one set of a split folder such as ``data/sudoku-extreme-1k-aug-1000/test``."""
    path = Path(path)
    if not path.exists():
        raise ReferenceFormatError(f"{path}: not found")
    if not path.is_dir():
        raise ReferenceFormatError(f"{path} is not a folder (a reference split is a folder with dataset.json)")
    meta_path = path / "dataset.json"
    if not meta_path.is_file():
        splits = sorted(p.name for p in path.iterdir() if (p / "dataset.json").is_file())
        hint = f" (it holds splits {', '.join(splits)}: pass one of them)" if splits else ""
        raise ReferenceFormatError(f"{meta_path}: not found{hint}")
    metadata = _read_metadata(meta_path)
    if set_name not in metadata["sets"]:
        raise ReferenceFormatError(f"{meta_path} lists sets {metadata['sets']}; no set {set_name!r}")
    arrays = {name: _load_npy(path / f"{set_name}__{name}.npy", mmap=name in ("inputs", "labels"))
              for name in ARRAY_FIELDS}
    _check_split(arrays, metadata, path, set_name)
    return ReferenceSplit(path=path, set_name=set_name, metadata=metadata, **arrays)


def _read_metadata(meta_path: Path) -> dict:
    try:
        metadata = json.loads(meta_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ReferenceFormatError(f"{meta_path} is not valid JSON ({first_line(err)})") from err
    if not isinstance(metadata, dict):
        raise ReferenceFormatError(f"{meta_path} must hold a JSON object, found {type(metadata).__name__}")
    missing = [k for k in METADATA_FIELDS if k not in metadata]
    if missing:
        raise ReferenceFormatError(f"{meta_path} lacks {', '.join(missing)}")
    for key in ("pad_id", "blank_identifier_id", "vocab_size", "seq_len", "num_puzzle_identifiers", "total_groups"):
        if not is_int(metadata[key]) or metadata[key] < 0:
            raise ReferenceFormatError(f"{meta_path}: {key} must be a non-negative integer, got {metadata[key]!r}")
    if metadata["ignore_label_id"] is not None and not is_int(metadata["ignore_label_id"]):
        raise ReferenceFormatError(f"{meta_path}: ignore_label_id must be an integer or null")
    sets = metadata["sets"]
    if not isinstance(sets, list) or not sets or not all(isinstance(s, str) for s in sets):
        raise ReferenceFormatError(f"{meta_path}: sets must be a non-empty list of names, got {sets!r}")
    return metadata


def _load_npy(path: Path, mmap: bool) -> np.ndarray:
    if not path.is_file():
        raise ReferenceFormatError(f"{path}: not found")
    try:
        array = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (ValueError, OSError, EOFError) as err:
        raise ReferenceFormatError(f"{path} is not a readable .npy file ({first_line(err)})") from err
    if not np.issubdtype(array.dtype, np.integer):
        raise ReferenceFormatError(f"{path} holds {array.dtype} values; expected integers")
    return array


def _check_split(arrays: dict, metadata: dict, path: Path, set_name: str) -> None:
    file = {name: path / f"{set_name}__{name}.npy" for name in ARRAY_FIELDS}
    inputs, labels, seq_len = arrays["inputs"], arrays["labels"], metadata["seq_len"]
    if inputs.ndim != 2 or inputs.shape[1] != seq_len:
        raise ReferenceFormatError(f"{file['inputs']}: expected shape [N, {seq_len}] (seq_len of dataset.json), "
                                   f"got {list(inputs.shape)}")
    if labels.shape != inputs.shape:
        raise ReferenceFormatError(f"{file['labels']}: shape {list(labels.shape)} does not match the inputs "
                                   f"{list(inputs.shape)}")
    for name in ("puzzle_identifiers", "puzzle_indices", "group_indices"):
        if arrays[name].ndim != 1:
            raise ReferenceFormatError(f"{file[name]}: expected a 1-D array, got shape {list(arrays[name].shape)}")
    num_puzzles = len(arrays["puzzle_identifiers"])
    if len(arrays["puzzle_indices"]) != num_puzzles + 1:
        raise ReferenceFormatError(f"{file['puzzle_indices']}: {len(arrays['puzzle_indices'])} offsets for "
                                   f"{num_puzzles} puzzles (expected {num_puzzles + 1})")
    _check_offsets(arrays["puzzle_indices"], len(inputs), file["puzzle_indices"], "examples")
    _check_offsets(arrays["group_indices"], num_puzzles, file["group_indices"], "puzzles")
    if metadata["sets"] == [set_name]:
        groups, total = len(arrays["group_indices"]) - 1, metadata.get("total_samples")
        if metadata["total_groups"] != groups:
            raise ReferenceFormatError(f"{path / 'dataset.json'}: total_groups {metadata['total_groups']} but "
                                       f"{file['group_indices'].name} holds {groups} groups")
        if total is not None and total != len(inputs):
            raise ReferenceFormatError(f"{path / 'dataset.json'}: total_samples {total} but "
                                       f"{file['inputs'].name} holds {len(inputs)} rows")
    for name in ("inputs", "labels"):
        _check_range(arrays[name], metadata["vocab_size"], file[name], "token", "vocab_size")
    _check_range(arrays["puzzle_identifiers"], metadata["num_puzzle_identifiers"], file["puzzle_identifiers"],
                 "identifier", "num_puzzle_identifiers")


def _check_offsets(offsets: np.ndarray, total: int, file: Path, what: str) -> None:
    if len(offsets) == 0 or offsets[0] != 0 or offsets[-1] != total:
        ends = f"{offsets[0]}..{offsets[-1]}" if len(offsets) else "nothing"
        raise ReferenceFormatError(f"{file}: offsets must run from 0 to {total} ({what}), got {ends}")
    drops = np.flatnonzero(np.diff(offsets) < 0)
    if drops.size:
        i = int(drops[0]) + 1
        raise ReferenceFormatError(f"{file}: offsets decrease at entry {i} ({offsets[i - 1]} -> {offsets[i]})")


def _check_range(values: np.ndarray, bound: int, file: Path, what: str, bound_name: str) -> None:
    if values.size == 0 or (values.min() >= 0 and values.max() < bound):
        return
    bad = (values < 0) | (values >= bound)
    row = int(np.argmax(bad.reshape(len(values), -1).any(axis=1)))
    value = np.asarray(values[row]).reshape(-1)[np.asarray(bad[row]).reshape(-1)][0]
    raise ReferenceFormatError(f"{file}: row {row} holds {what} {value}, outside {bound_name} {bound} of dataset.json")


def write_split(path: str | os.PathLike, inputs: np.ndarray, labels: np.ndarray, *, groups: np.ndarray | None = None,
                metadata: Mapping | None = None, set_name: str = "all", overwrite: bool = False) -> Path:
    """Write ``inputs, labels: [N, L]`` as a reference split folder, each example its own puzzle.

    ``groups: [N]`` group id per example (a group's examples must be consecutive; default: one group each).
    ``metadata`` may set ``vocab_size`` (default: largest token + 1), ``pad_id``, ``ignore_label_id``,
    ``blank_identifier_id`` (0 each, as the reference builders), ``num_puzzle_identifiers`` (1) and extra keys
    (the reference loader ignores them). The folder is written atomically; a non-empty one is replaced only
    with ``overwrite=True``.
    """
    inputs, labels = np.asarray(inputs), np.asarray(labels)
    if inputs.ndim != 2 or not inputs.size or labels.shape != inputs.shape:
        raise InputError(f"inputs and labels must be non-empty [N, L] arrays of one shape, got "
                         f"{list(inputs.shape)} and {list(labels.shape)}")
    if not (np.issubdtype(inputs.dtype, np.integer) and np.issubdtype(labels.dtype, np.integer)):
        raise InputError(f"inputs and labels must hold integers, got {inputs.dtype} and {labels.dtype}")
    if not set_name or "/" in set_name or os.sep in set_name:
        raise InputError(f"set_name must be a plain name, got {set_name!r}")
    group_indices = _group_offsets(inputs.shape[0], groups)
    meta = _split_metadata(inputs, labels, len(group_indices) - 1, set_name, metadata or {})
    for name, values in (("inputs", inputs), ("labels", labels)):
        if values.min() < 0 or values.max() >= meta["vocab_size"]:
            raise InputError(f"{name} holds tokens outside [0, vocab_size={meta['vocab_size']})")
    dtype = np.uint8 if meta["vocab_size"] <= 256 else np.int32
    n = inputs.shape[0]
    arrays = {"inputs": inputs.astype(dtype), "labels": labels.astype(dtype),
              "puzzle_identifiers": np.zeros(n, np.int32), "puzzle_indices": np.arange(n + 1, dtype=np.int32),
              "group_indices": group_indices}
    return _write_folder(Path(path), meta, {f"{set_name}__{k}.npy": v for k, v in arrays.items()}, overwrite)


def _group_offsets(n: int, groups: np.ndarray | None) -> np.ndarray:
    if groups is None:
        return np.arange(n + 1, dtype=np.int32)
    groups = np.asarray(groups)
    if groups.shape != (n,) or not np.issubdtype(groups.dtype, np.integer):
        raise InputError(f"groups must be [N] = [{n}] integers, got {groups.dtype} {list(groups.shape)}")
    starts = np.concatenate([[0], np.flatnonzero(np.diff(groups)) + 1])
    ids, counts = np.unique(groups[starts], return_counts=True)
    if (counts > 1).any():
        raise InputError(f"the examples of group {ids[np.argmax(counts > 1)]} are not consecutive")
    return np.append(starts, n).astype(np.int32)


def _split_metadata(inputs: np.ndarray, labels: np.ndarray, num_groups: int, set_name: str,
                    metadata: Mapping) -> dict:
    derived = {"seq_len": int(inputs.shape[1]), "total_groups": num_groups, "mean_puzzle_examples": 1.0,
               "total_samples": int(inputs.shape[0]), "sets": [set_name]}
    for key, value in derived.items():
        if key in metadata and metadata[key] != value:
            raise InputError(f"metadata[{key!r}] = {metadata[key]!r} contradicts the arrays ({value!r})")
    meta = {"pad_id": 0, "ignore_label_id": 0, "blank_identifier_id": 0, "num_puzzle_identifiers": 1,
            "vocab_size": int(max(inputs.max(), labels.max())) + 1, **metadata, **derived}
    for key, least in (("pad_id", 0), ("blank_identifier_id", 0), ("vocab_size", 1), ("num_puzzle_identifiers", 1)):
        if not is_int(meta[key]) or meta[key] < least:
            raise InputError(f"metadata[{key!r}] must be an integer >= {least}, got {meta[key]!r}")
    if meta["ignore_label_id"] is not None and not is_int(meta["ignore_label_id"]):
        raise InputError(f"metadata['ignore_label_id'] must be an integer or None, got {meta['ignore_label_id']!r}")
    try:
        json.dumps(meta)
    except TypeError as err:
        raise InputError(f"metadata must be JSON-serialisable ({err})") from err
    return meta


def _write_folder(target: Path, metadata: dict, arrays: dict[str, np.ndarray], overwrite: bool) -> Path:
    if target.exists() and not target.is_dir():
        raise InputError(f"{target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not overwrite:
        raise InputError(f"{target} is not empty (pass --overwrite, or overwrite=True in Python, to replace it)")
    make_parent_dirs(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp creates 0700
        (tmp / "dataset.json").write_text(json.dumps(metadata, indent=2) + "\n", encoding="utf-8")
        for name, array in arrays.items():
            np.save(tmp / name, array)
        if target.exists():
            old = tmp.with_suffix(".old")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old)
        else:
            os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
