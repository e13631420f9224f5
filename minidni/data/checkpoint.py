"""Atomic files and checkpoints: nothing a run has written is lost or left half-written.

Every file a run writes goes through `atomic_write`: the bytes go to a temporary file in the same directory,
are flushed to disk, and the temporary file is renamed over the target (an atomic operation on POSIX). A crash
leaves either the old file or the new one, never a torn one.

A checkpoint is a single .npz file holding named arrays plus one JSON document (under the key "__meta__")
with a format version. It is loaded with allow_pickle=False: a checkpoint can never execute code.

What this module deliberately is not: a model registry. It saves and restores named arrays and metadata; the
trainer decides what they mean.
"""

import io
import json
import os
import tempfile

import numpy as np

from minidni.core.backend import array_module, to_numpy

FORMAT_VERSION = 1
META_KEY = "__meta__"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, of another format version, or does not match the model."""


def atomic_write(path, data):
    """Write bytes (or str, as UTF-8) to `path` atomically."""
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp creates files 0600; give the run's files the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_jsonl(path, records):
    """A list of JSON-serialisable dicts as one line each (a run's metrics.jsonl), written atomically."""
    atomic_write(path, "".join(json.dumps(r) + "\n" for r in records))


def read_jsonl(path):
    """The records of a file written by write_jsonl; [] if there is none yet."""
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def save_checkpoint(path, arrays, meta):
    """Save {name: array} and a JSON-serialisable `meta` dict to `path` (.npz) atomically."""
    if META_KEY in arrays:
        raise ValueError(f"{META_KEY!r} is reserved for the metadata")
    meta = dict(meta, format_version=FORMAT_VERSION)
    buf = io.BytesIO()
    payload = {k: to_numpy(v) for k, v in arrays.items()}
    payload[META_KEY] = np.array(json.dumps(meta))  # a unicode scalar array: loads without pickle
    np.savez(buf, **payload)
    atomic_write(path, buf.getvalue())


def load_checkpoint(path):
    """Load (arrays, meta) from a checkpoint written by save_checkpoint, checking its format."""
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except Exception as e:  # zip errors, truncated files, pickled objects
        raise CheckpointError(f"checkpoint {path} is unreadable or corrupt: {e}") from e
    if META_KEY not in arrays:
        raise CheckpointError(f"checkpoint {path} has no {META_KEY!r} entry: not written by minidni")
    try:
        meta = json.loads(str(arrays.pop(META_KEY)))
    except ValueError as e:
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: {e}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"checkpoint {path} has unreadable metadata: expected a JSON object")
    version = meta.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}; this minidni reads version {FORMAT_VERSION}"
        )
    return arrays, meta


def restore_arrays(targets, saved, where="checkpoint"):
    """Copy saved arrays into the live arrays `targets` ({name: array}) in place, checking names and shapes."""
    missing = sorted(set(targets) - set(saved))
    extra = sorted(set(saved) - set(targets))
    if missing or extra:
        raise CheckpointError(
            f"{where} does not match the model: missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}"
        )
    for name, live in targets.items():
        value = saved[name]
        if value.shape != live.shape:
            raise CheckpointError(f"{where}: {name} has shape {value.shape}, the model expects {live.shape}")
        live[...] = array_module(live).asarray(value)  # uploaded first: CuPy refuses to assign a host array
