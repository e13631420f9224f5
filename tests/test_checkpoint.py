"""Tests for minidni.data.checkpoint: atomic writes, exact round trips, loud failures, no pickle."""

import io
import json
import os
import zipfile

import numpy as np
import pytest

from minidni.data import checkpoint
from minidni.data.checkpoint import (
    FORMAT_VERSION,
    META_KEY,
    CheckpointError,
    atomic_write,
    load_checkpoint,
    restore_arrays,
    save_checkpoint,
)


def sample_arrays():
    rng = np.random.default_rng(0)
    return {
        "w32": rng.standard_normal((5, 3)).astype(np.float32),
        "w64": rng.standard_normal((4,)),
        "ints": rng.integers(-(10**12), 10**12, size=(2, 3), dtype=np.int64),
        "small_ints": np.arange(7, dtype=np.int32),
        "scalar": np.array(np.pi, dtype=np.float32),  # 0-d
        "special": np.array([np.inf, -np.inf, -0.0, np.finfo(np.float64).tiny, 1e308]),
        "empty": np.zeros((0, 3), np.float32),
    }


def write_npz(path, **arrays):
    with open(path, "wb") as f:
        np.savez(f, **arrays)


# ---- atomic_write ---------------------------------------------------------------------------------------------


def test_atomic_write_bytes_and_str(tmp_path):
    atomic_write(tmp_path / "a.bin", b"\x00\x01binary\xff")
    atomic_write(str(tmp_path / "b.txt"), "héllo\n")
    assert (tmp_path / "a.bin").read_bytes() == b"\x00\x01binary\xff"
    assert (tmp_path / "b.txt").read_bytes() == "héllo\n".encode("utf-8")
    assert sorted(os.listdir(tmp_path)) == ["a.bin", "b.txt"]  # no temporary files left behind


def test_atomic_write_replaces_and_creates_directories(tmp_path):
    target = tmp_path / "new" / "dir" / "f.json"
    atomic_write(target, "old")
    atomic_write(target, "new")
    assert target.read_text() == "new"
    assert os.listdir(target.parent) == ["f.json"]


def test_atomic_write_failure_keeps_old_file_and_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "metrics.jsonl"
    target.write_bytes(b"the old contents\n")

    def broken_replace(src, dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(checkpoint.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(target, b"the new contents that must not appear\n")
    assert target.read_bytes() == b"the old contents\n"
    assert os.listdir(tmp_path) == ["metrics.jsonl"]


def test_atomic_write_failure_while_writing_leaves_no_temp(tmp_path, monkeypatch):
    target = tmp_path / "c.npz"
    target.write_bytes(b"old")

    def broken_fsync(fd):
        raise KeyboardInterrupt  # BaseException too: Ctrl-C mid-write must not leave debris

    monkeypatch.setattr(checkpoint.os, "fsync", broken_fsync)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["c.npz"]


def test_atomic_write_respects_umask(tmp_path):
    umask = os.umask(0o022)
    try:
        atomic_write(tmp_path / "f.txt", "x")
        with open(tmp_path / "g.txt", "w") as f:  # what a plain write produces
            f.write("x")
    finally:
        os.umask(umask)
    mode = lambda name: os.stat(tmp_path / name).st_mode & 0o777  # noqa: E731
    assert mode("f.txt") == mode("g.txt") == 0o644


# ---- save / load ----------------------------------------------------------------------------------------------


def test_round_trip_is_exact(tmp_path):
    arrays = sample_arrays()
    meta = {
        "epoch": 3,
        "step": 126,
        "rng": {"state": 2**100 + 7, "inc": 5},
        "lr": 1e-3,
        "config": {"lr_milestones": [1, 2]},
    }
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, arrays, meta)
    loaded, loaded_meta = load_checkpoint(path)
    assert set(loaded) == set(arrays)
    for k, a in arrays.items():
        assert loaded[k].dtype == a.dtype, k
        assert loaded[k].shape == a.shape, k
        assert np.array_equal(loaded[k], a), k
        assert loaded[k].tobytes() == a.tobytes(), k  # bit for bit, -0.0 included
    assert loaded_meta == dict(meta, format_version=FORMAT_VERSION)
    assert loaded_meta["format_version"] == FORMAT_VERSION
    assert os.listdir(tmp_path) == ["checkpoint.npz"]


def test_save_does_not_modify_caller_meta(tmp_path):
    meta = {"epoch": 1}
    save_checkpoint(tmp_path / "c.npz", {"a": np.zeros(2)}, meta)
    assert meta == {"epoch": 1}


def test_save_rejects_reserved_name(tmp_path):
    with pytest.raises(ValueError, match=META_KEY):
        save_checkpoint(tmp_path / "c.npz", {META_KEY: np.zeros(1)}, {})
    assert not (tmp_path / "c.npz").exists()


def test_missing_file(tmp_path):
    path = tmp_path / "nope.npz"
    with pytest.raises(CheckpointError, match="no checkpoint") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, sample_arrays(), {"epoch": 1})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_bit_flipped_checkpoint(tmp_path):
    path = tmp_path / "checkpoint.npz"
    arrays = {"w": np.arange(1000, dtype=np.float64)}
    save_checkpoint(path, arrays, {"epoch": 1})
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the stored array data: the zip CRC catches it
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("content", [b"", b"garbage bytes, not a zip at all", bytes(range(256)) * 4, b"PK\x03\x04junk"])
def test_garbage_file(tmp_path, content):
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_npz_without_meta(tmp_path):
    path = tmp_path / "foreign.npz"
    write_npz(path, w=np.zeros(3))
    with pytest.raises(CheckpointError, match=META_KEY) as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


@pytest.mark.parametrize("version", [None, 0, FORMAT_VERSION + 1, "1"])
def test_wrong_format_version(tmp_path, version):
    path = tmp_path / "c.npz"
    meta = {"epoch": 1} if version is None else {"epoch": 1, "format_version": version}
    write_npz(path, w=np.zeros(3), **{META_KEY: np.array(json.dumps(meta))})
    with pytest.raises(CheckpointError, match="format version") as e:
        load_checkpoint(path)
    assert str(path) in str(e.value)


def test_object_array_is_never_unpickled(tmp_path):
    path = tmp_path / "evil.npz"
    meta = np.array(json.dumps({"format_version": FORMAT_VERSION}))
    write_npz(path, w=np.array([{"a": 1}, None], dtype=object), **{META_KEY: meta})
    with np.load(path, allow_pickle=True) as f:  # the file really holds a pickle...
        assert f["w"].dtype == object
    with pytest.raises(CheckpointError) as e:  # ...which load_checkpoint refuses to run
        load_checkpoint(path)
    assert "pickle" in str(e.value).lower()


def test_plain_npy_is_rejected(tmp_path):
    path = tmp_path / "c.npz"
    with open(path, "wb") as f:
        np.save(f, np.zeros(3))
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


@pytest.mark.parametrize("meta", ["{not json", "[1, 2, 3]"])
def test_malformed_meta(tmp_path, meta):
    path = tmp_path / "c.npz"
    write_npz(path, w=np.zeros(3), **{META_KEY: np.array(meta)})
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


def test_loaded_arrays_do_not_keep_file_open(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.ones(3)}, {})
    arrays, _ = load_checkpoint(path)
    os.unlink(path)  # fully read: the arrays outlive the file
    np.testing.assert_array_equal(arrays["w"], np.ones(3))


def test_checkpoint_is_a_plain_zip(tmp_path):
    path = tmp_path / "c.npz"
    save_checkpoint(path, {"w": np.ones(3)}, {"epoch": 2})
    with zipfile.ZipFile(path) as z:
        assert sorted(z.namelist()) == sorted(["w.npy", f"{META_KEY}.npy"])
    meta = np.load(io.BytesIO(path.read_bytes()), allow_pickle=False)[META_KEY]
    assert json.loads(str(meta))["epoch"] == 2


# ---- restore_arrays -------------------------------------------------------------------------------------------


def test_restore_copies_in_place():
    targets = {"a": np.zeros((2, 3), np.float32), "b": np.zeros(4, np.int64)}
    ids = {k: id(v) for k, v in targets.items()}
    before = dict(targets)
    saved = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.array([1, 2, 3, 4])}
    restore_arrays(targets, saved)
    for k in targets:
        assert id(targets[k]) == ids[k] and targets[k] is before[k]
        assert np.array_equal(targets[k], saved[k])
    assert targets["a"].dtype == np.float32
    saved["a"][0, 0] = 99  # a copy, not a view of the saved array
    assert targets["a"][0, 0] == 0


def test_restore_through_a_view_reaches_the_owner():
    owner = np.zeros(6)
    targets = {"v": owner[2:5]}
    restore_arrays(targets, {"v": np.array([7.0, 8.0, 9.0])})
    np.testing.assert_array_equal(owner, [0, 0, 7, 8, 9, 0])


def test_restore_missing_and_unexpected_names():
    targets = {"a": np.zeros(2), "b": np.zeros(2)}
    with pytest.raises(CheckpointError) as e:
        restore_arrays(targets, {"a": np.ones(2), "c": np.ones(2)}, where="ckpt.npz")
    msg = str(e.value)
    assert "'b'" in msg and "'c'" in msg and "missing" in msg and "unexpected" in msg and "ckpt.npz" in msg
    assert not targets["a"].any()  # nothing restored when the names do not match


def test_restore_only_missing():
    with pytest.raises(CheckpointError, match="'b'"):
        restore_arrays({"a": np.zeros(2), "b": np.zeros(2)}, {"a": np.ones(2)})


def test_restore_only_unexpected():
    with pytest.raises(CheckpointError, match="'extra'"):
        restore_arrays({"a": np.zeros(2)}, {"a": np.ones(2), "extra": np.ones(2)})


def test_restore_many_missing_names_are_abbreviated():
    targets = {f"p{i}": np.zeros(1) for i in range(8)}
    with pytest.raises(CheckpointError, match=r"\.\.\.") as e:
        restore_arrays(targets, {})
    assert "'p0'" in str(e.value)


def test_restore_shape_mismatch_names_the_array():
    targets = {"layer.W": np.zeros((3, 4))}
    with pytest.raises(CheckpointError) as e:
        restore_arrays(targets, {"layer.W": np.zeros((4, 3))}, where="run/checkpoint.npz")
    msg = str(e.value)
    assert "layer.W" in msg and "(4, 3)" in msg and "(3, 4)" in msg and "run/checkpoint.npz" in msg


def test_save_load_restore_round_trip(tmp_path):
    live = sample_arrays()
    path = tmp_path / "c.npz"
    save_checkpoint(path, live, {"epoch": 1})
    fresh = {k: np.zeros_like(v) for k, v in live.items()}
    arrays, _ = load_checkpoint(path)
    restore_arrays(fresh, arrays)
    for k in live:
        assert fresh[k].tobytes() == live[k].tobytes(), k
