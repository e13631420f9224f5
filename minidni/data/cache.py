"""The data cache, and the checks that decide whether bytes are the published file.

Every file minidni downloads is described by a `FileSpec` (its official name, size and md5) and is trusted only
once its bytes match it: `check_bytes` for bytes in memory, `check_file` for a file on disk (read in chunks, the
size first), `write_verified` for a stream (a download or a copy) that may only become a file in the cache if it
is complete and correct. `default_cache_dir` and `cache_root` say where the cache is.

What this module deliberately is not: a downloader. It knows nothing of mirrors, pip or apt-get (that is
`minidni.data.sources` and `minidni.data.packages`), and md5 here is a checksum against the published sums, not
a defence against an attacker.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import NamedTuple

__all__ = [
    "FileSpec",
    "default_cache_dir",
    "cache_root",
    "check_bytes",
    "CHUNK_BYTES",
    "check_file",
    "ChecksumMismatch",
    "write_verified",
]


class FileSpec(NamedTuple):
    """One published file: its official name and the size and md5 of its bytes.

    For the idx data sets these are the *uncompressed* bytes (gzip files differ between re-compressions, the data
    inside does not); for CIFAR-10, whose loader reads the archive itself, the .tar.gz as published.
    """

    filename: str
    md5: str
    size: int


def default_cache_dir() -> Path:
    """Where downloaded data lives: $MINIDNI_DATA if set, else ~/.cache/minidni."""
    env = os.environ.get("MINIDNI_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "minidni"


def cache_root(cache_dir) -> Path:
    """The cache directory to use: `cache_dir` if given (a `~` is expanded), else `default_cache_dir()`."""
    return Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()


def _md5(data: bytes) -> str:
    # md5 is used to compare with the sums the data sets are published with, not for security.
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def check_bytes(spec: FileSpec, data: bytes) -> str | None:
    """None if `data` is exactly the file `spec` describes, else a sentence saying what is wrong."""
    if len(data) != spec.size:
        return f"{spec.filename} is {len(data)} bytes, expected {spec.size} (truncated or not this file)"
    digest = _md5(data)
    if digest != spec.md5:
        return f"{spec.filename} has md5 {digest}, expected {spec.md5} (corrupt)"
    return None


CHUNK_BYTES = 1 << 20  # bytes per read while hashing, copying or downloading a large file (CIFAR-10's 163 MiB)


def check_file(spec: FileSpec, path: Path) -> str | None:
    """`check_bytes` for a file on disk, read in chunks: None if it is exactly `spec`, else what is wrong."""
    size = path.stat().st_size  # a wrong size is found without reading 163 MiB
    if size != spec.size:
        return f"{path} is {size} bytes, expected {spec.size} (truncated or not {spec.filename})"
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    if digest.hexdigest() != spec.md5:
        return f"{path} has md5 {digest.hexdigest()}, expected {spec.md5} (corrupt, or not {spec.filename})"
    return None


class ChecksumMismatch(ValueError):
    """Streamed bytes were not the file they should be; nothing was kept."""


def write_verified(chunks, path: Path, spec: FileSpec) -> None:
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
                    raise ChecksumMismatch(f"more than the {spec.size} bytes {spec.filename} has")
                digest.update(chunk)
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        if size != spec.size:
            raise ChecksumMismatch(f"{size} bytes, expected {spec.size} (truncated)")
        if digest.hexdigest() != spec.md5:
            raise ChecksumMismatch(f"md5 {digest.hexdigest()}, expected {spec.md5} (corrupt)")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates files 0600; give the cache the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise

