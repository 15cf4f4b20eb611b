"""Run files: schema round trip, states, crash recovery, errors, analysis, shards, SWMR, HDF5 tools."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest

from attractorlab import recording as rec
from attractorlab.errors import InputError

B, T = 2, 5
TESTS = os.path.dirname(os.path.abspath(__file__))
ATTRS = {"config_json": {"model": {"hidden_size": 8}, "rollout": {"depth": T}}, "checkpoint_sha256": "ab12",
         "checkpoint_path": "ckpt.pt"}


def make_batch(n: int, seed: int, breadth: int = B, depth: int = T) -> tuple[SimpleNamespace, dict]:
    """One seeded batch: a PuzzleSet-like object and the rollout arrays for n puzzles."""
    r = np.random.default_rng(seed)
    puzzles = SimpleNamespace(tokens=r.integers(0, 11, (n, 81), dtype=np.uint8),
                              solution=r.integers(0, 10, (n, 81), dtype=np.uint8),
                              source=np.array([f"src-{seed}-{i}-é" for i in range(n)]),
                              rating=r.integers(0, 1000, n).astype(np.int32))
    shape = (n, breadth, depth)
    rollout = {"residual": r.random(shape, dtype=np.float32),
               "halt_logit": r.normal(size=shape).astype(np.float32),
               "logit_change": r.random(shape, dtype=np.float32),
               "pred": r.integers(1, 10, (*shape, 81), dtype=np.uint8),
               "valid": r.random(shape) > 0.5, "correct": r.random(shape) > 0.5,
               "steps": r.integers(1, depth + 1, (n, breadth)).astype(np.int32),
               "selected": r.integers(0, breadth, n).astype(np.int32),
               "selected_majority": r.integers(0, breadth, n).astype(np.int32)}
    return puzzles, rollout


def make_states(n: int, seed: int, spec: rec.StateSpec, depth: int = T) -> np.ndarray | None:
    if spec.mode == "none":
        return None
    s = len(spec.steps(depth))
    return np.random.default_rng(seed + 100).normal(size=(n, B, s, *spec.shape)).astype(np.float32)


def write_run(path: str, sizes: list[int], spec: rec.StateSpec | None = None, seed: int = 0, **kw) -> list:
    """Write batches of the given sizes; returns the list of (puzzles, rollout, states)."""
    spec = spec or rec.StateSpec()
    batches = [(*make_batch(n, seed + i), make_states(n, seed + i, spec)) for i, n in enumerate(sizes)]
    with rec.RunWriter(path, breadth=B, depth=T, attrs=ATTRS, states=spec, **kw) as w:
        for p, r, s in batches:
            w.append(p, r, s)
    return batches


def concat(batches: list, group: str, key: str) -> np.ndarray:
    i = {"puzzles": 0, "rollout": 1}[group]
    return np.concatenate([getattr(b[0], key) if i == 0 else b[1][key] for b in batches])


def check_equal(run: rec.Run, batches: list) -> None:
    for key in ("tokens", "solution", "source", "rating"):
        np.testing.assert_array_equal(run.puzzles[key], concat(batches, "puzzles", key))
    for key in batches[0][1]:
        np.testing.assert_array_equal(run.rollout[key], concat(batches, "rollout", key))


def test_schema_round_trip(tmp_path):
    path = str(tmp_path / "run.h5")
    batches = write_run(path, [3, 4])
    with rec.open_run(path) as run:
        assert (run.n, run.breadth, run.depth, run.schema_version, run.task) == (7, B, T, 2, "sudoku")
        assert run.attrs["schema"] == "attractorlab.run" and run.attrs["checkpoint_sha256"] == "ab12"
        assert run.config == ATTRS["config_json"] and run.attrs["checkpoint_path"] == "ckpt.pt"
        assert run.attrs["created"].endswith("Z") and run.attrs["attractorlab_version"]
        assert not run.has_states and run.states is None
        check_equal(run, batches)
        expected = {"residual": (np.float32, (7, B, T)), "halt_logit": (np.float32, (7, B, T)),
                    "logit_change": (np.float32, (7, B, T)), "pred": (np.uint8, (7, B, T, 81)),
                    "valid": (np.bool_, (7, B, T)), "correct": (np.bool_, (7, B, T)),
                    "steps": (np.int32, (7, B)), "selected": (np.int32, (7,)),
                    "selected_majority": (np.int32, (7,))}
        for key, (dtype, shape) in expected.items():
            assert run.rollout[key].dtype == dtype and run.rollout[key].shape == shape, key
        assert run.puzzles.tokens.dtype == np.uint8 and run.puzzles.rating.dtype == np.int32
        assert run.puzzles.source.dtype.kind == "U"
        assert run.rollout.tensor("valid").dtype.is_floating_point is False
        pred = concat(batches, "rollout", "pred")
        lazy = run.rollout.lazy("pred")
        assert lazy.shape == pred.shape and len(lazy) == 7
        for key in [2, -1, slice(1, 6, 2), slice(None, None, -2), [5, 0, 5, 2], np.arange(7) % 2 == 0,
                    (Ellipsis, 3), (slice(2, 4), 1, Ellipsis, 0), ([6, 1], slice(None), -1), (3, [0, 1])]:
            np.testing.assert_array_equal(lazy[key], pred[key])
            np.testing.assert_array_equal(run.rollout["pred", key] if not isinstance(key, tuple)
                                          else run.rollout[("pred", *key)], pred[key])
        with pytest.raises(IndexError):
            lazy[7]
    with h5py.File(path, "r") as f:
        assert h5py.check_string_dtype(f["puzzles/source"].dtype).encoding == "utf-8"
        assert f["rollout/valid"].id.get_type().get_class() == h5py.h5t.ENUM
        assert f["rollout/pred"].compression == "gzip" and f["rollout/pred"].maxshape[0] is None
        assert f.attrs["n_done"] == 7 and f["n_done"][()] == 7


def test_append_validation(tmp_path):
    path = str(tmp_path / "run.h5")
    p, r = make_batch(2, 0)
    with rec.RunWriter(path, breadth=B, depth=T, attrs={}) as w:
        with pytest.raises(ValueError, match="residual"):
            w.append(p, {**r, "residual": r["residual"][:, :, :2]})
        with pytest.raises(ValueError, match="missing"):
            w.append(p, {k: v for k, v in r.items() if k != "pred"})
        with pytest.raises(ValueError, match="states"):
            w.append(p, r, np.zeros((2, B, 1, 3)))
        with pytest.raises(ValueError, match="PuzzleSet"):
            w.append(SimpleNamespace(tokens=p.tokens), r)
        w.append(p, r)
        with pytest.raises(ValueError, match="batch keys"):
            w.append(p, {k: v for k, v in r.items() if k != "selected_majority"})
    with pytest.raises(ValueError, match="exists"):
        rec.RunWriter(path, breadth=B, depth=T, attrs={})
    with pytest.raises(ValueError, match="reserved"):
        rec.RunWriter(tmp_path / "x.h5", breadth=B, depth=T, attrs={"n_done": 3})
    with pytest.raises(ValueError, match="state mode"):
        rec.StateSpec(mode="some")
    with pytest.raises(ValueError, match="shape"):
        rec.StateSpec(mode="all")


@pytest.mark.parametrize("spec", [
    rec.StateSpec(),
    rec.StateSpec(mode="final", shape=(2, 81, 4)),
    rec.StateSpec(mode="all", stride=2, dtype="float16", shape=(2, 81, 4)),
    rec.StateSpec(mode="all", stride=1, dtype="float32", shape=(3,),
                  projection=np.random.default_rng(1).normal(size=(10, 3)).astype(np.float32),
                  description="pca"),
], ids=["none", "final", "all-stride2-f16", "all-projected-f32"])
def test_state_modes(tmp_path, spec):
    path = str(tmp_path / "run.h5")
    batches = write_run(path, [2, 3], spec=spec)
    all_steps = [0, 2, 4, 5] if spec.stride == 2 else list(range(T + 1))
    expected_steps = {"none": [], "final": [T], "all": all_steps}
    np.testing.assert_array_equal(spec.steps(T), expected_steps[spec.mode])
    with rec.open_run(path) as run:
        assert run.has_states == (spec.mode != "none")
        if spec.mode == "none":
            return
        data = np.concatenate([b[2] for b in batches]).astype(spec.dtype)
        assert run.states.data.shape == data.shape and run.states.data.dtype == np.dtype(spec.dtype)
        np.testing.assert_array_equal(run.states.data[:], data)
        np.testing.assert_array_equal(run.states.data[[4, 1], 0, -1], data[[4, 1], 0, -1])
        np.testing.assert_array_equal(np.asarray(run.states.data), data)
        np.testing.assert_array_equal(run.states.steps, spec.steps(T))
        assert run.states.mode == spec.mode and run.states.spec.shape == spec.shape
        assert run.states.spec.description == spec.description
        if spec.projection is None:
            assert run.states.projection is None
        else:
            np.testing.assert_array_equal(run.states.projection, spec.projection)


KILL_SCRIPT = """
import os, sys
sys.path.insert(0, {tests!r})
import numpy as np
from attractorlab import recording as rec
from attractorlab.errors import InputError
from test_recording import ATTRS, make_batch
w = rec.RunWriter({path!r}, breadth=2, depth=5, attrs=ATTRS, states=rec.StateSpec(mode="final", shape=(3,)))
for i in range(2):
    p, r = make_batch(3, i)
    w.append(p, r, np.full((3, 2, 1, 3), i, np.float32))
w._commit = lambda n: os._exit(0)
p, r = make_batch(3, 2)
w.append(p, r, np.full((3, 2, 1, 3), 2, np.float32))
"""


def kill_writer(path: str) -> None:
    """A writer that commits two batches of 3 and dies inside the third append (before its commit)."""
    code = KILL_SCRIPT.format(tests=TESTS, path=path)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_killed_writer_readable_and_resumable(tmp_path):
    path = str(tmp_path / "run.h5")
    kill_writer(path)
    spec = rec.StateSpec(mode="final", shape=(3,))
    with rec.open_run(path) as run:
        assert run.n == 6 and run.rollout.pred.shape == (6, B, T, 81)
        check_equal(run, [(*make_batch(3, i), None) for i in range(2)])
        np.testing.assert_array_equal(run.states.data[:, 0, 0, 0], [0, 0, 0, 1, 1, 1])
    with rec.RunWriter(path, breadth=B, depth=T, attrs=ATTRS, states=spec, resume=True) as w:
        assert w.n_done == 6
        p, r = make_batch(3, 7)
        w.append(p, r, np.full((3, B, 1, 3), 7, np.float32))
    with rec.open_run(path) as run:
        assert run.n == 9
        check_equal(run, [(*make_batch(3, i), None) for i in (0, 1, 7)])
        np.testing.assert_array_equal(run.states.data[:, 1, 0, 2], [0, 0, 0, 1, 1, 1, 7, 7, 7])
    with h5py.File(path, "r") as f:
        assert f["puzzles/tokens"].shape == (9, 81)


def test_repair_killed_file(tmp_path):
    path = str(tmp_path / "run.h5")
    kill_writer(path)
    with pytest.raises(OSError):
        h5py.File(path, "r").close()
    assert rec.repair_run(path) == 6
    with h5py.File(path, "r") as f:
        assert {ds.shape[0] for ds in (f["puzzles/source"], f["rollout/pred"], f["states/data"])} == {6}
    if shutil.which("h5dump"):
        assert subprocess.run(["h5dump", "-H", path], capture_output=True).returncode == 0


def test_resume_mismatch(tmp_path):
    path = str(tmp_path / "run.h5")
    spec = rec.StateSpec(mode="final", shape=(3,))
    write_run(path, [2], spec=spec)
    cases = [({"breadth": 3}, "breadth"), ({"depth": 9}, "depth"),
             ({"attrs": {**ATTRS, "config_json": {"model": {}}}}, "config_json"),
             ({"attrs": {**ATTRS, "checkpoint_sha256": "ff"}}, "checkpoint"),
             ({"states": rec.StateSpec(mode="final", shape=(4,))}, "state spec"),
             ({"states": rec.StateSpec()}, "state spec")]
    for change, match in cases:
        kw = {"breadth": B, "depth": T, "attrs": ATTRS, "states": spec, **change}
        with pytest.raises(ValueError, match=match):
            rec.RunWriter(path, resume=True, **kw)
    same_config = {**ATTRS, "config_json": '{"rollout": {"depth": 5}, "model": {"hidden_size": 8}}'}
    with rec.RunWriter(path, breadth=B, depth=T, attrs=same_config, states=spec, resume=True) as w:
        assert w.n_done == 2
    with rec.RunWriter(tmp_path / "new.h5", breadth=B, depth=T, attrs={}, resume=True) as w:
        assert w.n_done == 0


def _error_files(tmp_path) -> dict:
    good = str(tmp_path / "good.h5")
    write_run(good, [2])
    files = {"missing": str(tmp_path / "nope.h5"), "directory": str(tmp_path)}
    files["text"] = str(tmp_path / "notes.h5")
    with open(files["text"], "w") as fh:
        fh.write("not hdf5\n")
    files["no schema"] = str(tmp_path / "plain.h5")
    with h5py.File(files["no schema"], "w") as f:
        f["x"] = np.arange(3)
    files["schema 99"] = str(tmp_path / "future.h5")
    shutil.copy(good, files["schema 99"])
    with h5py.File(files["schema 99"], "r+") as f:
        f.attrs["schema_version"] = 99
    files["truncated"] = str(tmp_path / "cut.h5")
    with open(good, "rb") as src, open(files["truncated"], "wb") as dst:
        dst.write(src.read()[: os.path.getsize(good) // 2])
    return files


def test_writer_creates_missing_directories(tmp_path):
    path = str(tmp_path / "runs" / "today" / "run.h5")
    batches = write_run(path, [2])
    check_equal(rec.open_run(path), batches)


def test_overwrite_keeps_the_old_run_until_the_new_one_commits_a_batch(tmp_path):
    path = str(tmp_path / "run.h5")
    old = write_run(path, [3])
    before = Path(path).read_bytes()
    w = rec.RunWriter(path, breadth=B, depth=T, attrs=ATTRS, overwrite=True)  # a failed start: nothing committed
    w.close()
    assert Path(path).read_bytes() == before and os.listdir(tmp_path) == ["run.h5"]
    check_equal(rec.open_run(path), old)
    new = [(*make_batch(2, 7), None), (*make_batch(1, 8), None)]
    with rec.RunWriter(path, breadth=B, depth=T, attrs=ATTRS, overwrite=True) as w:
        w.append(*new[0])
        check_equal(rec.open_run(path, swmr=True), new[:1])  # replaced at the first commit, readable live
        w.append(*new[1])
    check_equal(rec.open_run(path), new)
    assert os.listdir(tmp_path) == ["run.h5"]


@pytest.mark.parametrize("case, match", [
    ("missing", "no such run file"), ("directory", "not a file"), ("text", "not an HDF5 file"),
    ("no schema", "not an attractorlab run"), ("schema 99", "newer"), ("truncated", "truncated")])
def test_open_errors(tmp_path, case, match):
    path = _error_files(tmp_path)[case]
    with pytest.raises(rec.RunFileError, match=match) as info:
        rec.open_run(path)
    assert "\n" not in str(info.value) and path in str(info.value)
    assert isinstance(info.value, ValueError)
    if case == "missing":
        assert isinstance(info.value, FileNotFoundError)


def test_analysis(tmp_path):
    path = str(tmp_path / "run.h5")
    write_run(path, [2])
    rng = np.random.default_rng(0)
    arrays = {"eigvals": (rng.normal(size=(4, 3)) + 1j * rng.normal(size=(4, 3))).astype(np.complex64),
              "z": rng.normal(size=(4, 8)), "stable": np.array([True, False, True, True]), "note": "newton",
              "labels": ["a", "bé"], "count": 3, "tol": 1e-6, "big/deep": np.arange(20000, dtype=np.float64),
              "spectrum": rng.normal(size=5) + 1j * rng.normal(size=5)}
    run = rec.open_run(path)
    rec.write_analysis(path, "fixed_points/all", arrays, {"method": "newton", "params": {"k": 6}})
    assert rec.has_analysis(path, "fixed_points/all") and not rec.has_analysis(path, "fixed_points")
    assert run.analysis_keys() == ["fixed_points/all"]
    out = run.read_analysis("fixed_points/all")
    assert set(out) == set(arrays)
    for key, value in arrays.items():
        np.testing.assert_array_equal(out[key], value)
    assert out["eigvals"].dtype == np.complex64 and out["spectrum"].dtype == np.complex128
    assert out["note"] == "newton" and out["count"] == 3 and out["labels"].dtype.kind == "U"
    assert out.attrs["method"] == "newton" and out.attrs["params"] == '{"k": 6}'
    with pytest.raises(ValueError, match="overwrite"):
        rec.write_analysis(path, "fixed_points/all", {"x": 1})
    with pytest.raises(ValueError, match="inside"):
        rec.write_analysis(path, "fixed_points/all/sub", {"x": 1})
    with pytest.raises(ValueError, match="invalid"):
        rec.write_analysis(path, "a//b", {"x": 1})
    with pytest.raises(ValueError, match="dtype"):
        rec.write_analysis(path, "bad", {"x": np.array([{}], dtype=object)})
    rec.write_analysis(path, "fixed_points/all", {"x": np.arange(2)}, overwrite=True)
    assert dict(run.read_analysis("fixed_points/all")).keys() == {"x"}
    with pytest.raises(KeyError, match="no analysis"):
        run.read_analysis("nothing")
    assert run.n == 2 and run.puzzles.tokens.shape == (2, 81)
    run.close()


def test_cycles_states_round_trip_and_merge(tmp_path):
    spec = rec.StateSpec(mode="cycles", stride=2, shape=(3,), updates=("H1.L1", "H1.H"))
    assert spec.steps(T).tolist() == [0, 2, 2, 4, 4, 5, 5] and spec.update_index(T).tolist() == [-1, 0, 1, 0, 1, 0, 1]
    shards = [str(tmp_path / f"run.rank{r}-of-2.h5") for r in range(2)]
    parts = [write_run(shards[0], [2], spec=spec, seed=0), write_run(shards[1], [1], spec=spec, seed=5)]
    rec.merge_shards(shards, str(tmp_path / "run.h5"), virtual=False)
    with rec.open_run(tmp_path / "run.h5") as run:
        assert run.states.mode == "cycles" and run.states.update_names == ["H1.L1", "H1.H"]
        assert run.states.steps.tolist() == spec.steps(T).tolist()
        assert run.states.updates.tolist() == spec.update_index(T).tolist()
        expect = np.concatenate([b[2] for b in parts[0] + parts[1]]).astype("f2")
        np.testing.assert_array_equal(run.states.data[:], expect)
    for bad in (dict(mode="cycles", shape=(3,)), dict(mode="all", shape=(3,), updates=("H1.H",))):
        with pytest.raises(InputError, match="cycles"):
            rec.StateSpec(**bad)


@pytest.mark.parametrize("virtual", [True, False])
def test_merge_shards(tmp_path, virtual):
    spec = rec.StateSpec(mode="final", shape=(4,))
    shards = [str(tmp_path / "shards" / f"run.rank{r}-of-2.h5") for r in range(2)]
    os.makedirs(tmp_path / "shards")
    parts = [write_run(shards[0], [2, 3], spec=spec, seed=0), write_run(shards[1], [1], spec=spec, seed=10)]
    out = str(tmp_path / "shards" / "run.h5")
    rec.merge_shards(shards, out, virtual=virtual)
    moved = str(tmp_path / "moved")
    shutil.copytree(tmp_path / "shards", moved)
    shutil.rmtree(tmp_path / "shards")
    with rec.open_run(os.path.join(moved, "run.h5")) as run:
        assert run.n == 6 and run.attrs["merged"] == ("virtual" if virtual else "copy")
        batches = parts[0] + parts[1]
        check_equal(run, batches)
        states = np.concatenate([b[2] for b in batches]).astype("f2")
        np.testing.assert_array_equal(run.states.data[:], states)
        np.testing.assert_array_equal(run.states.steps, [T])
    other = str(tmp_path / "other.h5")
    with rec.RunWriter(other, breadth=B + 1, depth=T, attrs=ATTRS, states=spec):
        pass
    with pytest.raises(ValueError, match="breadth"):
        rec.merge_shards([os.path.join(moved, "run.rank0-of-2.h5"), other], str(tmp_path / "bad.h5"))
    with pytest.raises(ValueError, match="not a merged run"):
        rec.merge_shards([os.path.join(moved, "run.rank0-of-2.h5")], other)
    killed = str(tmp_path / "killed.h5")
    kill_writer(killed)
    with pytest.raises(rec.RunFileError, match="not closed cleanly"):
        rec.merge_shards([killed], str(tmp_path / "m.h5"))


def _write_shard(out: str, rank: int, world: int) -> None:
    p, r = make_batch(2 + rank, 20 + rank)
    with rec.RunWriter(rec.shard_path(out, rank, world), breadth=B, depth=T, attrs=ATTRS) as w:
        w.append(p, r)


def test_sharded_writing_two_processes(tmp_path):
    out = str(tmp_path / "run.h5")
    assert rec.shard_path(out, 1, 2) == str(tmp_path / "run.rank1-of-2.h5")
    with pytest.raises(ValueError):
        rec.shard_path(out, 2, 2)
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_write_shard, args=(out, rank, 2)) for rank in range(2)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(60)
        assert proc.exitcode == 0
    rec.merge_shards([rec.shard_path(out, r, 2) for r in range(2)], out)
    with rec.open_run(out) as run:
        assert run.n == 5
        check_equal(run, [(*make_batch(2 + rank, 20 + rank), None) for rank in range(2)])


SWMR_WRITER = """
import sys
sys.path.insert(0, {tests!r})
from attractorlab import recording as rec
from attractorlab.errors import InputError
from test_recording import ATTRS, make_batch
with rec.RunWriter({path!r}, breadth=2, depth=5, attrs=ATTRS) as w:
    for i in range(3):
        w.append(*make_batch(2, i))
        print(w.n_done, flush=True)
        sys.stdin.readline()
"""


def test_swmr_live_reader(tmp_path):
    path = str(tmp_path / "live.h5")
    with subprocess.Popen([sys.executable, "-c", SWMR_WRITER.format(tests=TESTS, path=path)],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) as proc:
        assert proc.stdout.readline().strip() == "2"
        with pytest.raises(rec.RunFileError, match="still writing"):
            rec.RunWriter(path, breadth=B, depth=T, attrs=ATTRS, resume=True)
        with rec.open_run(path, swmr=True) as run:
            assert run.n == 2
            np.testing.assert_array_equal(run.rollout.pred, make_batch(2, 0)[1]["pred"])
            with pytest.raises(rec.RunFileError, match="open in another process"):
                rec.repair_run(path)
            for expected in (4, 6):
                proc.stdin.write("\n")
                proc.stdin.flush()
                assert proc.stdout.readline().strip() == str(expected)
                assert run.refresh() == expected
                check_equal(run, [(*make_batch(2, i), None) for i in range(expected // 2)])
        proc.stdin.write("\n")
        proc.stdin.flush()
        assert proc.wait(30) == 0


def test_estimate_size_and_disk_space(tmp_path):
    spec = rec.StateSpec(mode="all", stride=2, shape=(2, 81, 16))
    base = rec.estimate_size(10, 2, 8)
    assert base < rec.estimate_size(20, 2, 8) and base < rec.estimate_size(10, 4, 8)
    assert base < rec.estimate_size(10, 2, 16) < rec.estimate_size(10, 2, 16, spec)
    small = rec.StateSpec(mode="all", stride=4, shape=(2, 81, 16))
    assert rec.estimate_size(10, 2, 16, small) < rec.estimate_size(10, 2, 16, spec)
    path = str(tmp_path / "run.h5")
    write_run(path, [4])
    assert os.path.getsize(path) <= rec.estimate_size(4, B, T)
    rec.check_disk_space(tmp_path / "sub" / "run.h5", 1000)
    with pytest.raises(ValueError, match="not enough disk space") as info:
        rec.check_disk_space(path, 10**19)
    assert "\n" not in str(info.value)


@pytest.mark.skipif(shutil.which("h5dump") is None, reason="h5dump (Debian hdf5-tools) is not installed")
def test_hdf5_tools_read_everything(tmp_path):
    spec = rec.StateSpec(mode="all", stride=2, shape=(3,), projection=np.eye(4, 3, dtype=np.float32))
    path = str(tmp_path / "run.rank0-of-1.h5")
    write_run(path, [2, 1], spec=spec)
    rec.write_analysis(path, "spectra", {"eig": np.array([1 + 1j, 0.5j]), "name": "x"})
    merged = str(tmp_path / "run.h5")
    rec.merge_shards([path], merged)
    for file in (path, merged):
        dump = subprocess.run(["h5dump", file], capture_output=True, text=True, cwd=str(tmp_path))
        assert dump.returncode == 0, dump.stderr
        assert "H5T_ENUM" in dump.stdout and "H5T_CSET_UTF8" in dump.stdout and "src-0-1-" in dump.stdout
        listing = subprocess.run(["h5ls", "-r", file], capture_output=True, text=True).stdout
        for name in ("/puzzles/source", "/rollout/pred", "/rollout/valid", "/states/data", "/states/steps"):
            assert name in listing
    listing = subprocess.run(["h5ls", "-r", path], capture_output=True, text=True).stdout
    assert "/analysis/spectra/eig" in listing
