"""Tests for the Fashion-MNIST and CIFAR-10 loaders in minidni.data, and the image layout option.

No network and no apt-get: every test runs with downloads, pip and apt-get replaced by fakes (the `offline`
fixture below), serving tiny files made here in the official formats. One test reads the real Fashion-MNIST
cache when it exists and skips otherwise.
"""

import gzip
import hashlib
import io
import os
import pickle
import socket
import struct
import subprocess
import tarfile
import urllib.error

import numpy as np
import pytest

from minidni.cli import main
from minidni.data import datasets as data
from minidni.data import formats, packages, sources
from minidni.data.cache import FileSpec, default_cache_dir
from minidni.data.datasets import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    FASHION_MNIST_MEAN,
    FASHION_MNIST_STD,
    MNIST_MEAN,
    MNIST_STD,
    DataError,
    load_cifar10,
    load_dataset,
    load_fashion_mnist,
    to_features,
    to_images,
)
from minidni.data.formats import write_idx
from minidni.data.sources import fetch_cifar10, fetch_fashion_mnist


def quiet(line):
    pass


REAL_RUN_APT_DOWNLOAD = packages._run_apt_download  # kept before the fixture below replaces it


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Every way out of the machine fails unless a test installs its own fake."""

    def no_http(url, timeout):
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known (network disabled in tests)"))

    def no_tool(*args):
        raise OSError("external tools disabled in tests")

    monkeypatch.setattr(sources, "_http_open", no_http)
    monkeypatch.setattr(sources, "_http_get", no_http)
    monkeypatch.setattr(packages, "_run_pip_download", no_tool)
    monkeypatch.setattr(packages, "_run_apt_download", no_tool)


def files_in(directory):
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# ---- Fashion-MNIST: tiny fake files and a fake Debian package --------------------------------------------------


@pytest.fixture
def tiny():
    """Five training and four test images with the official file names, and their own md5 table."""
    rng = np.random.default_rng(1)
    arrays = {
        "train_images": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "train_labels": rng.integers(0, 10, 5).astype(np.uint8),
        "test_images": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "test_labels": rng.integers(0, 10, 4).astype(np.uint8),
    }
    raw = {role: write_idx(a) for role, a in arrays.items()}
    files = {
        role: FileSpec(sources.FASHION_MNIST_FILES[role].filename, hashlib.md5(b).hexdigest(), len(b))
        for role, b in raw.items()
    }
    return arrays, raw, files


def ar_archive(members):
    """An ar archive (the container of a .deb) of {name: bytes}, in order."""
    out = b"!<arch>\n"
    for name, body in members.items():
        header = f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(body):<10}".encode() + b"`\n"
        out += header + body + (b"\n" if len(body) % 2 else b"")
    return out


def tar_bytes(files, compression=""):
    """A tar (compressed with "xz", "gz" or "") of {path: bytes}, with dpkg's "./" prefixes and directories."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compression}") as tar:
        for directory in ("./usr/", "./usr/share/", "./usr/share/datasets/", "./" + packages.FASHION_MNIST_DEBIAN_DIR):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for path, body in files.items():
            info = tarfile.TarInfo(path)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def make_deb(path, raw, files, compression="xz", drop=(), mtime=1591347949):
    """A .deb like Debian's: the official .gz files with rewritten gzip headers (no name, Debian's mtime)."""
    payload = {
        "./" + packages.FASHION_MNIST_DEBIAN_DIR + files[role].filename + ".gz": gzip.compress(b, mtime=mtime)
        for role, b in raw.items()
        if role not in drop
    }
    payload["./usr/share/doc/dataset-fashion-mnist/copyright"] = b"MIT"
    # A decoy with an official name outside the data directory: only usr/share/datasets/fashion-mnist/ counts.
    payload["./usr/share/doc/dataset-fashion-mnist/t10k-labels-idx1-ubyte.gz"] = gzip.compress(b"decoy")
    suffix = {"xz": ".xz", "gz": ".gz", "": ""}[compression]
    path.write_bytes(
        ar_archive(
            {
                "debian-binary": b"2.0\n",
                "control.tar.xz": tar_bytes({"./control": b"Package: dataset-fashion-mnist\n"}, "xz"),
                "data.tar" + suffix: tar_bytes(payload, compression),
            }
        )
    )
    return path


@pytest.fixture
def fake_apt(monkeypatch):
    """Replace `apt-get download` with one that drops a given .deb into the target directory."""
    calls = []

    def install(deb):
        def run(package, dest_dir):
            calls.append(package)
            target = dest_dir / f"{package}_0.0~git20200523.55506a9-1_all.deb"
            target.write_bytes(deb.read_bytes())
            return target

        monkeypatch.setattr(packages, "_run_apt_download", run)
        return calls

    return install


def fill_cache(cache_dir, raw, files, subdir="fashion-mnist"):
    directory = cache_dir / subdir
    directory.mkdir(parents=True, exist_ok=True)
    for role, b in raw.items():
        (directory / files[role].filename).write_bytes(b)
    return directory


def assert_same(m, arrays):
    for role, expected in arrays.items():
        np.testing.assert_array_equal(getattr(m, role), expected)
    assert m.train_images.dtype == np.uint8 and m.train_labels.dtype == np.int64


# ---- Fashion-MNIST ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["xz", "gz", ""])
def test_fashion_debian_source_reads_the_deb_and_caches(tiny, tmp_path, fake_apt, compression):
    arrays, raw, files = tiny
    calls = fake_apt(make_deb(tmp_path / "fake.deb", raw, files, compression))
    cache = tmp_path / "cache"
    m = load_fashion_mnist(cache_dir=cache, sources=("debian",), files=files, log=quiet)
    assert_same(m, arrays)
    assert isinstance(m, data.FashionMNIST) and m.source == "debian" and repr(m).startswith("FashionMNIST(")
    assert calls == ["dataset-fashion-mnist"]
    for role, spec in files.items():  # the cache holds the uncompressed idx files, exactly
        assert (cache / "fashion-mnist" / spec.filename).read_bytes() == raw[role]
    assert not (cache / "mnist").exists()  # a separate folder from MNIST's
    again = load_fashion_mnist(cache_dir=cache, files=files, log=quiet)
    assert again.source == "cache" and len(calls) == 1  # apt-get is not asked again


def test_fashion_sources_are_tried_in_order_and_failures_logged(tiny, tmp_path, fake_apt, monkeypatch):
    arrays, raw, files = tiny
    order = []

    def refuse(url, timeout):
        order.append(url)
        raise urllib.error.URLError(ConnectionRefusedError(111, "Connection refused"))

    monkeypatch.setattr(sources, "_http_get", refuse)
    calls = fake_apt(make_deb(tmp_path / "fake.deb", raw, files))
    log = []
    m = load_fashion_mnist(cache_dir=tmp_path / "c", files=files, log=log.append)
    assert_same(m, arrays)
    assert m.source == "debian" and calls == ["dataset-fashion-mnist"]
    # Both official mirrors were tried once each (an unreachable mirror is not retried for the other files).
    assert order == [mirror + "train-images-idx3-ubyte.gz" for mirror in sources.FASHION_MNIST_MIRRORS]
    text = "\n".join(log)
    assert "Fashion-MNIST: cache could not supply 4 file(s): train-images-idx3-ubyte not in" in text
    assert "Fashion-MNIST: download could not supply 4 file(s):" in text and "Connection refused" in text
    assert text.index("download could not supply") < text.index("apt-get download")


def test_fashion_corrupt_cache_file_is_detected_and_refetched(tiny, tmp_path, fake_apt):
    arrays, raw, files = tiny
    directory = fill_cache(tmp_path, raw, files)
    bad_path = directory / files["train_labels"].filename
    bad = bytearray(raw["train_labels"])
    bad[-1] ^= 0x01  # same size, one label changed
    bad_path.write_bytes(bytes(bad))
    fake_apt(make_deb(tmp_path / "fake.deb", raw, files))
    log = []
    m = load_fashion_mnist(cache_dir=tmp_path, files=files, log=log.append)
    assert_same(m, arrays)
    assert m.source == "cache+debian"
    assert any("ignoring cached file" in line and "train-labels-idx1-ubyte has md5" in line for line in log)
    assert bad_path.read_bytes() == raw["train_labels"]  # repaired
    assert files_in(directory) == sorted(spec.filename for spec in files.values())  # no temporary files left


def test_fashion_missing_apt_get_says_what_to_do(tiny, tmp_path, monkeypatch):
    arrays, raw, files = tiny
    monkeypatch.setattr(packages, "_run_apt_download", REAL_RUN_APT_DOWNLOAD)  # the real one, without apt-get
    real_which = packages.shutil.which
    monkeypatch.setattr(packages.shutil, "which", lambda name: None if name == "apt-get" else real_which(name))
    with pytest.raises(DataError) as info:
        load_fashion_mnist(cache_dir=tmp_path, files=files, log=quiet)
    message = str(info.value)
    assert "could not obtain Fashion-MNIST" in message
    assert "debian:" in message and "apt-get not found" in message
    assert "gunzip them and put them in " + str(tmp_path / "fashion-mnist") in message
    assert sources.FASHION_MNIST_MIRRORS[0] in message and "download:" in message


def test_fashion_deb_with_wrong_or_missing_files_is_rejected(tiny, tmp_path, fake_apt):
    arrays, raw, files = tiny
    changed = dict(raw, test_labels=write_idx((arrays["test_labels"] + 1) % 10))
    fake_apt(make_deb(tmp_path / "wrong.deb", changed, files))
    with pytest.raises(DataError, match="debian:\\s+dataset-fashion-mnist: t10k-labels-idx1-ubyte has md5"):
        load_fashion_mnist(cache_dir=tmp_path / "c", sources=("debian",), files=files, log=quiet)
    assert not (tmp_path / "c" / "fashion-mnist" / files["test_labels"].filename).exists()

    fake_apt(make_deb(tmp_path / "short.deb", raw, files, drop=("test_images",)))
    with pytest.raises(DataError, match="has no usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"):
        load_fashion_mnist(cache_dir=tmp_path / "d", sources=("debian",), files=files, log=quiet)

    (tmp_path / "junk.deb").write_bytes(b"<html>proxy error</html>")
    fake_apt(tmp_path / "junk.deb")
    with pytest.raises(DataError, match="not a .deb"):
        load_fashion_mnist(cache_dir=tmp_path / "e", sources=("debian",), files=files, log=quiet)


def test_zstd_deb_is_read_through_dpkg_deb(tiny, tmp_path, fake_apt, monkeypatch):
    arrays, raw, files = tiny
    tree = {
        "./" + packages.FASHION_MNIST_DEBIAN_DIR + files[role].filename + ".gz": gzip.compress(b)
        for role, b in raw.items()
    }
    plain_tar = tar_bytes(tree)
    deb = tmp_path / "ubuntu.deb"
    deb.write_bytes(ar_archive({"debian-binary": b"2.0\n", "data.tar.zst": b"(zstd bytes Python cannot read)"}))
    fake_apt(deb)
    seen = []

    def fake_run(command, **kwargs):
        seen.append(command)
        return subprocess.CompletedProcess(command, 0, plain_tar, b"")

    monkeypatch.setattr(packages.shutil, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(packages.subprocess, "run", fake_run)
    m = load_fashion_mnist(cache_dir=tmp_path / "c", sources=("debian",), files=files, log=quiet)
    assert_same(m, arrays)
    assert seen[0][0] == "/usr/bin/dpkg-deb" and seen[0][1] == "--fsys-tarfile"

    monkeypatch.setattr(packages.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="dpkg-deb is not found; without it, download"):
        load_fashion_mnist(cache_dir=tmp_path / "d", sources=("debian",), files=files, log=quiet)


def test_apt_command_line(tmp_path, monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"], seen["cwd"] = command, kwargs.get("cwd")
        return subprocess.CompletedProcess(command, 100, "", "E: Unable to locate package dataset-fashion-mnist\n")

    monkeypatch.setattr(packages.shutil, "which", lambda name: "/usr/bin/apt-get")
    monkeypatch.setattr(packages.subprocess, "run", fake_run)
    with pytest.raises(OSError, match="exited with 100: E: Unable to locate package.*run `apt-get update`"):
        REAL_RUN_APT_DOWNLOAD("dataset-fashion-mnist", tmp_path)
    assert seen["command"][:2] == ["/usr/bin/apt-get", "download"]
    assert seen["command"][-1] == "dataset-fashion-mnist" and seen["cwd"] == tmp_path
    assert "install" not in seen["command"]


def test_fetch_fashion_mnist_and_licence(tiny, tmp_path, fake_apt, monkeypatch):
    arrays, raw, files = tiny
    fake_apt(make_deb(tmp_path / "fake.deb", raw, files))
    monkeypatch.setattr(sources, "_licence_credited", None)
    log = []
    directory = fetch_fashion_mnist(cache_dir=tmp_path / "c", files=files, log=log.append)
    assert directory == tmp_path / "c" / "fashion-mnist"
    assert files_in(directory) == sorted(spec.filename for spec in files.values())
    load_fashion_mnist(cache_dir=tmp_path / "c", files=files, log=log.append)
    credits = [line for line in log if "MIT" in line]
    assert len(credits) == 1 and "Zalando Research" in credits[0] and "Xiao" in credits[0]


def test_real_fashion_mnist_cache_if_present():
    directory = default_cache_dir() / "fashion-mnist"
    if not all((directory / spec.filename).exists() for spec in sources.FASHION_MNIST_FILES.values()):
        pytest.skip(f"no Fashion-MNIST in {directory} (python -m minidni data fashion-mnist)")
    m = load_fashion_mnist(sources=("cache",), log=quiet)  # verifies every file's md5; never writes
    assert m.train_images.shape == (60000, 28, 28) and m.test_images.shape == (10000, 28, 28)
    assert m.train_labels[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert m.test_labels[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    assert np.bincount(m.train_labels).tolist() == [6000] * 10
    counts = np.bincount(m.train_images.ravel(), minlength=256)  # (256,): a histogram is quicker than float copies
    values = np.arange(256) / 255
    mean = counts @ values / counts.sum()
    std = np.sqrt(counts @ (values - mean) ** 2 / counts.sum())
    assert abs(mean - FASHION_MNIST_MEAN) < 1e-5 and abs(std - FASHION_MNIST_STD) < 1e-5


# ---- the images option and to_images ----------------------------------------------------------------------------


def test_images_option_gives_nchw_with_each_data_sets_statistics(tiny, tmp_path):
    arrays, raw, files = tiny
    fill_cache(tmp_path, raw, files, "fashion-mnist")
    mnist_files = {role: FileSpec(sources.MNIST_FILES[role].filename, s.md5, s.size) for role, s in files.items()}
    fill_cache(tmp_path, raw, mnist_files, "mnist")
    common = dict(cache_dir=tmp_path, sources=("cache",), log=quiet)

    flat = load_dataset("fashion-mnist", files=files, **common)
    assert flat.x_train.shape == (5, 784) and flat.x_test.shape == (4, 784) and flat.n_classes == 10
    expected = (arrays["train_images"].reshape(5, 784) / 255 - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    np.testing.assert_allclose(flat.x_train, expected, rtol=1e-5, atol=1e-5)
    measured = (arrays["train_images"].reshape(5, 784) - 72.94) / 90.02  # the measured pixel mean/std (0..255)
    np.testing.assert_allclose(flat.x_train, measured, atol=1e-3)
    np.testing.assert_array_equal(flat.y_train, arrays["train_labels"])

    images = load_dataset("fashion-mnist", files=files, images=True, **common)
    assert images.x_train.shape == (5, 1, 28, 28) and images.x_test.shape == (4, 1, 28, 28)
    assert images.x_train.dtype == np.float32
    np.testing.assert_array_equal(images.x_train.reshape(5, 784), flat.x_train)  # same numbers, other shape

    mnist_flat = load_dataset("mnist", files=mnist_files, **common)
    mnist_images = load_dataset("mnist", files=mnist_files, images=True, **common)
    assert mnist_flat.x_train.shape == (5, 784) and mnist_images.x_train.shape == (5, 1, 28, 28)
    np.testing.assert_array_equal(mnist_images.x_test.reshape(4, 784), mnist_flat.x_test)
    np.testing.assert_array_equal(mnist_flat.x_train, to_features(arrays["train_images"]))  # MNIST's own stats
    assert not np.allclose(mnist_flat.x_train, flat.x_train)  # the two data sets are standardized differently


def test_to_images_per_channel():
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (2, 3, 4, 5), dtype=np.uint8)
    x = to_images(rgb, mean=(0.1, 0.5, 0.9), std=(1.0, 0.5, 0.25))
    assert x.shape == (2, 3, 4, 5) and x.dtype == np.float32
    for c, (mean, std) in enumerate([(0.1, 1.0), (0.5, 0.5), (0.9, 0.25)]):
        np.testing.assert_allclose(x[:, c], (rgb[:, c] / 255 - mean) / std, rtol=1e-6, atol=1e-6)
    grey = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    np.testing.assert_allclose(to_images(grey)[:, 0], (grey / 255 - MNIST_MEAN) / MNIST_STD, rtol=1e-5, atol=1e-5)
    assert to_images(grey, np.float64).dtype == np.float64
    with pytest.raises(ValueError, match="one per channel \\(3\\)"):
        to_images(rgb, mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="uint8"):
        to_images(rgb.astype(np.float32))
    with pytest.raises(ValueError, match="\\(N, H, W\\) or \\(N, C, H, W\\)"):
        to_images(np.zeros((2, 784), np.uint8))


# ---- CIFAR-10: tiny archives in the official format ------------------------------------------------------------


class _Py2StylePickler(pickle._Pickler):
    """Pickles bytes the way Python 2 wrote its str (SHORT_BINSTRING / BINSTRING), as in the official batches.

    Python 3 writes bytes in a protocol-2 pickle as a call to _codecs.encode; the CIFAR-10 files, written by
    Python 2's cPickle, store them as plain strings, which is why the loader reads them with encoding="bytes".
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def py2_pickle(obj):
    buf = io.BytesIO()
    _Py2StylePickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


def cifar_batch(data_rows, labels, name=b"batch"):
    """A batch dict as the official files hold it: bytes keys, (n, 3072) uint8 rows, labels a list of ints."""
    return {
        b"batch_label": name,
        b"labels": list(labels),
        b"data": data_rows,
        b"filenames": [b"img_%d.png" % i for i in range(len(data_rows))],
    }


ROWS = 6  # images per tiny batch


@pytest.fixture
def cifar(tmp_path):
    """Five training batches and a test batch of ROWS images each, pickled Python-2 style, in a .tar.gz."""
    rng = np.random.default_rng(2)
    batches = {}
    for member in formats.CIFAR10_TRAIN_MEMBERS + formats.CIFAR10_TEST_MEMBERS:
        batches[member] = (rng.integers(0, 256, (ROWS, 3072), dtype=np.uint8), rng.integers(0, 10, ROWS).tolist())
    return batches


def write_archive(path, batches, serialize=py2_pickle, order=None, extra=()):
    """A cifar-10-python.tar.gz of {member: (rows, labels) or raw pickle bytes}; returns its FileSpec."""
    with tarfile.open(path, "w:gz") as tar:
        info = tarfile.TarInfo("cifar-10-batches-py")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
        for member in order or batches:
            value = batches[member]
            payload = value if isinstance(value, bytes) else serialize(cifar_batch(*value))
            info = tarfile.TarInfo(member)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
        for name, payload in extra:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    content = path.read_bytes()
    return FileSpec(sources.CIFAR10_ARCHIVE.filename, hashlib.md5(content).hexdigest(), len(content))


def expected_arrays(batches):
    train = formats.CIFAR10_TRAIN_MEMBERS
    x = np.concatenate([batches[m][0] for m in train]).reshape(-1, 3, 32, 32)
    y = np.concatenate([batches[m][1] for m in train])
    return x, y


def test_cifar_pixel_layout_labels_and_batch_order(cifar, tmp_path):
    rows, labels = cifar["cifar-10-batches-py/data_batch_2"]
    # Image 3 of batch 2: a red pixel at row 5 col 7, a green one at (1, 30), a blue one at (31, 0).
    rows[3, 0 * 1024 + 5 * 32 + 7] = 201
    rows[3, 1 * 1024 + 1 * 32 + 30] = 17
    rows[3, 2 * 1024 + 31 * 32 + 0] = 99
    shuffled = ["cifar-10-batches-py/test_batch"] + [f"cifar-10-batches-py/data_batch_{i}" for i in (5, 3, 1, 2, 4)]
    spec = write_archive(
        tmp_path / "cifar.tar.gz", cifar, order=shuffled, extra=[("cifar-10-batches-py/readme.html", b"x")]
    )
    m = load_cifar10(archive=tmp_path / "cifar.tar.gz", expected=spec, log=quiet)
    assert isinstance(m, data.CIFAR10) and m.source == "archive"
    assert m.train_images.shape == (5 * ROWS, 3, 32, 32) and m.test_images.shape == (ROWS, 3, 32, 32)
    assert m.train_images.dtype == np.uint8 and m.train_labels.dtype == np.int64
    n = ROWS + 3  # batch 2 follows batch 1 in the training set, whatever the order inside the archive
    assert (m.train_images[n, 0, 5, 7], m.train_images[n, 1, 1, 30], m.train_images[n, 2, 31, 0]) == (201, 17, 99)
    x, y = expected_arrays(cifar)
    np.testing.assert_array_equal(m.train_images, x)
    np.testing.assert_array_equal(m.train_labels, y)
    assert m.train_labels[n] == labels[3]
    test_rows, test_labels = cifar["cifar-10-batches-py/test_batch"]
    np.testing.assert_array_equal(m.test_images.reshape(ROWS, 3072), test_rows)
    assert m.test_labels.tolist() == test_labels


def test_cifar_dataset_normalises_per_channel(cifar, tmp_path):
    spec = write_archive(tmp_path / "cifar.tar.gz", cifar)
    ds = load_dataset("cifar10", archive=tmp_path / "cifar.tar.gz", expected=spec, log=quiet)
    assert ds.name == "cifar10" and ds.n_classes == 10
    assert ds.x_train.shape == (5 * ROWS, 3, 32, 32) and ds.x_train.dtype == np.float32
    x, y = expected_arrays(cifar)
    for c in range(3):
        want = (x[:, c] / 255 - CIFAR10_MEAN[c]) / CIFAR10_STD[c]
        np.testing.assert_allclose(ds.x_train[:, c], want, rtol=1e-5, atol=1e-5)
        # The standard R, G, B statistics, in that order (written out, so that a changed constant is noticed).
        published = (x[:, c] / 255 - (0.4914, 0.4822, 0.4465)[c]) / (0.2470, 0.2435, 0.2616)[c]
        np.testing.assert_allclose(ds.x_train[:, c], published, atol=2e-3)
    np.testing.assert_array_equal(ds.y_train, y)
    flat = load_dataset("cifar10", archive=tmp_path / "cifar.tar.gz", expected=spec, log=quiet, images=False)
    assert flat.x_train.shape == (5 * ROWS, 3072)
    np.testing.assert_array_equal(flat.x_test, ds.x_test.reshape(ROWS, 3072))


def test_cifar_python3_pickles_read_too(cifar, tmp_path):
    # A copy re-pickled by Python 3 (protocol 2): bytes go through _codecs.encode, which the unpickler allows.
    spec = write_archive(tmp_path / "py3.tar.gz", cifar, serialize=lambda obj: pickle.dumps(obj, protocol=2))
    m = load_cifar10(archive=tmp_path / "py3.tar.gz", expected=spec, log=quiet)
    np.testing.assert_array_equal(m.train_images, expected_arrays(cifar)[0])


def test_cifar_archive_in_cache_dir_is_found_and_verified(cifar, tmp_path):
    cached = tmp_path / "cifar10" / "cifar-10-python.tar.gz"
    cached.parent.mkdir()
    spec = write_archive(cached, cifar)
    log = []
    m = load_cifar10(cache_dir=tmp_path, expected=spec, log=log.append)  # the network is off: cache only
    assert m.source == "cache"
    assert any("from cache" in line for line in log)


def serve(monkeypatch, payload, asked, cut_after=None):
    """Make the download function serve `payload` (optionally breaking the connection after some bytes)."""

    class Response(io.BytesIO):
        def read(self, n=-1):
            if cut_after is not None and self.tell() >= cut_after:
                raise ConnectionResetError(104, "Connection reset by peer")
            return super().read(min(n, cut_after - self.tell()) if cut_after is not None else n)

    def http_open(url, timeout):
        asked.append((url, timeout))
        return Response(payload)

    monkeypatch.setattr(sources, "_http_open", http_open)


def test_cifar_download_is_streamed_verified_and_cached(cifar, tmp_path, monkeypatch):
    spec = write_archive(tmp_path / "made.tar.gz", cifar)
    asked = []
    serve(monkeypatch, (tmp_path / "made.tar.gz").read_bytes(), asked)
    monkeypatch.setattr(sources, "CHUNK_BYTES", 4096)  # many chunks, as with the real 163 MiB
    log = []
    m = load_cifar10(cache_dir=tmp_path / "c", expected=spec, log=log.append)
    assert m.source == "download"
    assert asked == [(sources.CIFAR10_URL, sources.DOWNLOAD_TIMEOUT_S)]
    assert files_in(tmp_path / "c" / "cifar10") == ["cifar-10-python.tar.gz"]  # no .part file left
    assert (tmp_path / "c" / "cifar10" / "cifar-10-python.tar.gz").read_bytes() == (
        tmp_path / "made.tar.gz"
    ).read_bytes()
    assert sum("MiB" in line and " of " in line for line in log) >= 5  # progress reports
    serve(monkeypatch, b"", asked)  # a second load must not download
    assert load_cifar10(cache_dir=tmp_path / "c", expected=spec, log=quiet).source == "cache"
    assert len(asked) == 1


@pytest.mark.parametrize("damage", ["flip", "cut", "extra"])
def test_cifar_bad_download_never_becomes_the_cached_file(cifar, tmp_path, monkeypatch, damage):
    spec = write_archive(tmp_path / "made.tar.gz", cifar)
    payload = bytearray((tmp_path / "made.tar.gz").read_bytes())
    monkeypatch.setattr(sources, "CHUNK_BYTES", 1000)
    if damage == "flip":
        payload[len(payload) // 2] ^= 0xFF
        serve(monkeypatch, bytes(payload), [])
        expected = "checksum mismatch, the downloaded cifar-10-python.tar.gz has md5"
    elif damage == "cut":
        serve(monkeypatch, bytes(payload), [], cut_after=len(payload) // 2)
        expected = "the download was cut off by www.cs.toronto.edu"
    else:
        serve(monkeypatch, bytes(payload) + b"junk", [])
        expected = "checksum mismatch.*more than the"
    with pytest.raises(DataError, match=expected):
        load_cifar10(cache_dir=tmp_path / "c", expected=spec, log=quiet)
    assert files_in(tmp_path / "c" / "cifar10") == []  # neither the archive nor a partial file


def test_cifar_corrupt_cached_archive_is_replaced(cifar, tmp_path, monkeypatch):
    spec = write_archive(tmp_path / "made.tar.gz", cifar)
    good = (tmp_path / "made.tar.gz").read_bytes()
    cached = tmp_path / "c" / "cifar10" / "cifar-10-python.tar.gz"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    serve(monkeypatch, good, [])
    log = []
    assert load_cifar10(cache_dir=tmp_path / "c", expected=spec, log=log.append).source == "download"
    assert any("ignoring cached file" in line and "has md5" in line for line in log)
    assert cached.read_bytes() == good


def test_cifar_no_network_says_host_unreachable_and_how_to_place_it(tmp_path):
    with pytest.raises(DataError) as info:
        load_cifar10(cache_dir=tmp_path, log=quiet)
    message = str(info.value)
    assert "cache: cifar-10-python.tar.gz not in" in message
    assert "the data set host www.cs.toronto.edu is unreachable" in message and "Name or service" in message
    assert str(tmp_path / "cifar10" / "cifar-10-python.tar.gz") in message  # where to put it
    assert "--archive PATH" in message and "archive=PATH" in message
    assert "c58f30108f718f92721af3b95e74349a" in message and "170498071" in message
    assert files_in(tmp_path / "cifar10") == []


def test_cifar_http_error_is_reported(tmp_path, monkeypatch):
    def not_found(url, timeout):
        raise urllib.error.HTTPError(url, 404, "Not Found", {}, None)

    monkeypatch.setattr(sources, "_http_open", not_found)
    with pytest.raises(DataError, match="www.cs.toronto.edu answered 404 Not Found"):
        load_cifar10(cache_dir=tmp_path, sources=("download",), log=quiet)


def test_cifar_user_archive_checksum_mismatch(cifar, tmp_path):
    spec = write_archive(tmp_path / "cifar.tar.gz", cifar)
    with pytest.raises(DataError, match="checksum mismatch: .* is \\d+ bytes, expected 170498071"):
        load_cifar10(archive=tmp_path / "cifar.tar.gz", log=quiet)  # checked against the official archive
    same_size = FileSpec(spec.filename, "0" * 32, spec.size)
    with pytest.raises(DataError, match=f"checksum mismatch: .* has md5 {spec.md5}, expected 0{{32}}"):
        load_cifar10(archive=tmp_path / "cifar.tar.gz", expected=same_size, log=quiet)
    with pytest.raises(DataError, match="does not exist"):
        load_cifar10(archive=tmp_path / "missing.tar.gz", log=quiet)


def test_cifar_missing_member(cifar, tmp_path):
    del cifar["cifar-10-batches-py/test_batch"]
    spec = write_archive(tmp_path / "cifar.tar.gz", cifar)
    with pytest.raises(DataError, match="has no member cifar-10-batches-py/test_batch"):
        load_cifar10(archive=tmp_path / "cifar.tar.gz", expected=spec, log=quiet)


def test_cifar_not_a_tar_gz(tmp_path):
    path = tmp_path / "cifar.tar.gz"
    path.write_bytes(gzip.compress(b"not a tar file at all" * 100))
    spec = FileSpec(path.name, hashlib.md5(path.read_bytes()).hexdigest(), path.stat().st_size)
    with pytest.raises(DataError, match="not a readable .tar.gz"):
        load_cifar10(archive=path, expected=spec, log=quiet)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malformed(case, rows, labels, marker):
    if case == "float data":
        return py2_pickle(cifar_batch(rows.astype(np.float32), labels))
    if case == "short rows":
        return py2_pickle(cifar_batch(rows[:, :3071].copy(), labels))
    if case == "flat data":
        return py2_pickle(cifar_batch(rows.reshape(-1), labels))
    if case == "labels too few":
        return py2_pickle(cifar_batch(rows, labels[:-1]))
    if case == "label 10":
        return py2_pickle(cifar_batch(rows, labels[:-1] + [10]))
    if case == "label -1":
        return py2_pickle(cifar_batch(rows, [-1] + labels[1:]))
    if case == "float labels":
        return py2_pickle(cifar_batch(rows, [float(v) for v in labels]))
    if case == "no labels":
        return py2_pickle({b"data": rows})
    if case == "a list":
        return py2_pickle([rows, labels])
    if case == "truncated":
        return py2_pickle(cifar_batch(rows, labels))[:-100]
    if case == "forbidden global":
        return pickle.dumps({b"data": _Evil(marker), b"labels": labels}, protocol=2)
    raise AssertionError(case)


@pytest.mark.parametrize(
    "case, message",
    [
        ("float data", "data is a float32 array of shape \\(6, 3072\\), expected a uint8 array of shape \\(n, 3072\\)"),
        ("short rows", "data is a uint8 array of shape \\(6, 3071\\)"),
        ("flat data", "data is a uint8 array of shape \\(18432,\\)"),
        ("labels too few", "labels are int64 of shape \\(5,\\), expected 6 integers"),
        ("label 10", "labels must be in 0..9, found .*10"),
        ("label -1", "labels must be in 0..9, found -1"),
        ("float labels", "labels are float64"),
        ("no labels", "keys \\['data'\\], expected b'data' and b'labels'"),
        ("a list", "a list, expected a dict"),
        ("truncated", "pickle"),
        ("forbidden global", "refusing to load (posix|nt|os).system"),
    ],
)
def test_cifar_malformed_batch(cifar, tmp_path, case, message):
    member = "cifar-10-batches-py/data_batch_3"
    marker = tmp_path / "pwned"
    cifar[member] = _malformed(case, *cifar[member], marker)
    spec = write_archive(tmp_path / "cifar.tar.gz", cifar)
    with pytest.raises(DataError, match=f"data_batch_3: malformed .*{message}"):
        load_cifar10(archive=tmp_path / "cifar.tar.gz", expected=spec, log=quiet)
    assert not marker.exists()


def test_fetch_cifar10_copies_a_given_archive_into_the_cache(cifar, tmp_path):
    spec = write_archive(tmp_path / "dl.tar.gz", cifar)
    log = []
    path = fetch_cifar10(cache_dir=tmp_path / "c", archive=tmp_path / "dl.tar.gz", expected=spec, log=log.append)
    assert path == tmp_path / "c" / "cifar10" / "cifar-10-python.tar.gz"
    assert path.read_bytes() == (tmp_path / "dl.tar.gz").read_bytes()
    assert load_cifar10(cache_dir=tmp_path / "c", expected=spec, log=quiet).source == "cache"
    with pytest.raises(DataError, match="checksum mismatch"):  # a wrong file is never copied
        fetch_cifar10(cache_dir=tmp_path / "d", archive=tmp_path / "dl.tar.gz", log=quiet)
    assert files_in(tmp_path / "d" / "cifar10") == []


# ---- load_dataset and the command line --------------------------------------------------------------------------


def test_datasets_list_and_unknown_name():
    assert set(data.DATASETS) == {"mnist", "fashion-mnist", "cifar10", "spirals"}
    with pytest.raises(ValueError, match="known data sets: .*fashion-mnist.*cifar10"):
        load_dataset("cifar100")


def test_cli_data_command(cifar, tmp_path, monkeypatch, capsys):
    # cifar10 --archive: verified against the official checksum, so a tiny archive is refused with exit code 1.
    write_archive(tmp_path / "mine.tar.gz", cifar)
    assert main(["data", "cifar10", "--archive", str(tmp_path / "mine.tar.gz"), "--data-dir", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error: CIFAR-10 archive checksum mismatch" in err and "Traceback" not in err
    # Without network, the message says where to put the archive.
    assert main(["data", "cifar10", "--data-dir", str(tmp_path)]) == 1
    assert "www.cs.toronto.edu is unreachable" in capsys.readouterr().err
    # --archive belongs to cifar10 only.
    with pytest.raises(SystemExit) as e:
        main(["data", "mnist", "--archive", "x.tar.gz"])
    assert e.value.code == 2
    # fashion-mnist goes to fetch_fashion_mnist with the cache directory.
    seen = []
    monkeypatch.setattr(sources, "fetch_fashion_mnist", lambda cache_dir, log: seen.append(cache_dir))
    assert main(["data", "fashion-mnist", "--data-dir", str(tmp_path)]) == 0
    assert seen == [str(tmp_path)]


def test_offline_fixture_blocks_real_downloads():
    # The guard every other test relies on: no test here can reach the network or run apt-get.
    with pytest.raises(urllib.error.URLError):
        sources._http_open(sources.CIFAR10_URL, 1)
    with pytest.raises(OSError, match="disabled in tests"):
        packages._run_apt_download("dataset-fashion-mnist", None)
