"""Training runs for recurrent networks (minidni.runs.rnn_train): configuration checks, the copy curriculum, exact
resume, the character-level language model with early stopping, and its loss and metric.

Every run here is tiny (LSTM of 8 units, batches of 4, tens of episodes or updates): a fraction of a second each.
"""

import dataclasses
import json
import math
import os
import random
import re

import numpy as np
import pytest

from minidni.runs import rnn_train
from minidni.data.checkpoint import CheckpointError, load_checkpoint, restore_arrays
from minidni.core.gradcheck import check_function
from minidni.recurrent.cells import LSTMCell, RecurrentNet
from minidni.runs.rnn_train import (
    RNNConfig,
    build,
    evaluate_bpc,
    load_corpus,
    read_metrics,
    softmax_xent_sum,
    train_rnn,
)
from minidni.data.text import CharVocab

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: temporary data cache, numpy backend

COPY_KEYS = {"episode", "level", "solved", "bits_per_bit", "bit_error_rate", "sg_loss", "seconds"}
EVAL_KEYS = {"update", "train_bpc", "valid_bpc", "best_valid_bpc", "sg_loss", "seconds"}
FINAL_KEYS = {"update", "final", "best_valid_bpc", "test_bpc", "final_test_bpc", "stopped_early", "seconds"}
WORDS = "the a cat dog bird sat ran flew on over to and with mat tree house".split()


def quiet(_msg):
    pass


def copy_cfg(out, **kw):
    fields = dict(task="copy", mode="dni", T=3, hidden=8, batch=4, episodes=40, window=3, log_every=10, out=str(out))
    fields.update(kw)
    return RNNConfig(**fields)


def write_text(path, sentences=120, seed=0):
    """A few thousand characters of simple random sentences (not periodic: valid and test differ)."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(sentences)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def charlm_cfg(out, text, **kw):
    fields = dict(task="charlm", mode="dni", T=5, hidden=8, batch=4, updates=30, eval_every=10, eval_chars=200,
                  text=text, out=str(out))  # fmt: skip
    fields.update(kw)
    return RNNConfig(**fields)


def without_seconds(records):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def assert_same_checkpoint(path_a, path_b):
    arrays_a, meta_a = load_checkpoint(path_a)
    arrays_b, meta_b = load_checkpoint(path_b)
    assert sorted(arrays_a) == sorted(arrays_b)
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    return meta_a, meta_b


def snapshot(out):
    return {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}


# ------------------------------------------------------------------------------------------------------------
# RNNConfig.validate


BAD_FIELDS = [
    ("task", "sort"),
    ("mode", "rtrl"),
    ("cell", "gru"),
    ("sg", "conv"),
    ("T", 0),
    ("T", 2.5),
    ("hidden", 0),
    ("batch", -1),
    ("sg_hidden", 0),
    ("episodes", 0),
    ("bits", 0),
    ("window", 0),
    ("log_every", 0),
    ("updates", 0),
    ("eval_every", 0),
    ("eval_chars", 0),
    ("patience", 0),
    ("lr", 0.0),
    ("lr", -1e-3),
    ("lr", float("nan")),
    ("lr", float("inf")),
    ("sg_use_scale", 0.0),
    ("threshold", 0.0),
    ("checkpoint_every", 0.0),
    ("aux_weight", -1.0),
    ("sg_lr", 0.0),
    ("sg_lr", float("nan")),
    ("clip", -1.0),
    ("sg_discount", -0.1),
    ("sg_discount", 1.5),
    ("max_level", 0),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS)
def test_validate_names_the_bad_field(field, value):
    cfg = dataclasses.replace(RNNConfig(), **{field: value})
    with pytest.raises(ValueError, match=rf"^{re.escape(field)}\b"):
        cfg.validate()


def test_context_is_for_charlm_only():
    for task in ("copy", "repeat_copy"):
        with pytest.raises(ValueError, match=r"^context\b.*charlm"):
            RNNConfig(task=task, context=True).validate()
    assert RNNConfig(task="charlm", context=True).validate().context is True


def test_good_configs_pass():
    cfg = RNNConfig()
    assert cfg.validate() is cfg
    for fields in (dict(sg_discount=0.0), dict(sg_discount=1.0), dict(max_level=1), dict(sg_lr=1e-4, clip=None),
                   dict(task="repeat_copy", mode="dni_aux", cell="rnn", sg="mlp"), dict(task="charlm")):  # fmt: skip
        RNNConfig(**fields).validate()


def test_a_bad_config_writes_nothing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match="^lr"):
        train_rnn(copy_cfg(out, lr=0.0), log=quiet)
    assert not out.exists()


# ------------------------------------------------------------------------------------------------------------
# building


@pytest.mark.parametrize("task,d_in,expected", [("copy", 9, 1.0), ("repeat_copy", 10, 1.0), ("charlm", 7, 0.1)])
def test_sg_discount_default_depends_on_the_task(task, d_in, expected):
    cfg = RNNConfig(task=task, hidden=4, batch=2)
    assert build(cfg, d_in, d_in).sg_discount == expected
    for explicit in (0.0, 0.5, 1.0):  # 0.0 is a value, not "unset"
        assert build(dataclasses.replace(cfg, sg_discount=explicit), d_in, d_in).sg_discount == explicit


def test_build_wires_sizes_and_learning_rates():
    cfg = RNNConfig(task="charlm", mode="dni_aux", hidden=4, batch=2, lr=1e-3, sg_lr=2e-4, context=True)
    trainer = build(cfg, 7, 7, n_context=7)
    shapes = {k: v.shape for k, v in trainer.state_arrays().items()}
    assert shapes["cell.W"] == (7 + 4, 4 * 4)  # LSTM: [x, h] -> 4 gates
    assert shapes["sg.0.W"] == (2 * 4 + 7, 2 * 4)  # cDNI: [h, c, onehot(next char)] -> dL/d[h, c]
    assert shapes["aux.W"] == (4, 2 * 4)
    assert trainer.sg.scale == 2  # the batch: per-example targets
    assert [o.lr for o in trainer.sg.optimizers().values()] == [2e-4]
    assert trainer.net.cell.optimizer.lr == 1e-3 and trainer.aux.optimizer.lr == 1e-3
    assert build(dataclasses.replace(cfg, sg_lr=None), 7, 7, n_context=7).sg.net.optimizer.lr == 1e-3
    assert build(dataclasses.replace(cfg, mode="bptt", context=False), 7, 7).sg is None


# ------------------------------------------------------------------------------------------------------------
# copy and repeat copy


def test_copy_run_writes_its_files_and_records(tmp_path):
    cfg = copy_cfg(tmp_path / "run")
    metrics = train_rnn(cfg, log=quiet)
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["checkpoint.npz", "config.json", "metrics.jsonl"]
    assert json.loads((out / "config.json").read_text()) == dataclasses.asdict(cfg)
    assert read_metrics(str(out)) == metrics
    assert [m["episode"] for m in metrics] == [10, 20, 30, 40]
    for m in metrics:
        assert set(m) == COPY_KEYS
        assert m["solved"] == m["level"] - 1  # no max_level: the level is always one above the longest solved
        assert 0 < m["bits_per_bit"] < 5 and 0 <= m["bit_error_rate"] <= 1
    solved = [m["solved"] for m in metrics]
    assert solved == sorted(solved)
    _, meta = load_checkpoint(out / "checkpoint.npz")
    assert meta["episode"] == 40 and meta["task"] == "copy"
    assert meta["curriculum"]["level"] == metrics[-1]["level"] and meta["curriculum"]["batches"] == 40


@pytest.mark.parametrize("mode", ["bptt", "dni"])
def test_copy_curriculum_advances_every_window_when_every_batch_passes(tmp_path, mode):
    """With a threshold no batch can miss, each level is solved after exactly `window` batches: the records'
    levels are known in advance, and the longer episodes (more than one chunk) make the SG module train."""
    metrics = train_rnn(copy_cfg(tmp_path / "run", mode=mode, threshold=1e9), log=quiet)
    assert [(m["episode"], m["solved"], m["level"]) for m in metrics] == [
        (e, e // 3, e // 3 + 1) for e in (10, 20, 30, 40)
    ]
    if mode == "bptt":
        assert all(m["sg_loss"] is None for m in metrics)
    else:
        assert all(isinstance(m["sg_loss"], float) and m["sg_loss"] >= 0 for m in metrics)


def test_copy_stops_when_max_level_is_solved(tmp_path):
    metrics = train_rnn(copy_cfg(tmp_path / "run", threshold=1e9, max_level=2), log=quiet)
    assert [(m["episode"], m["level"], m["solved"]) for m in metrics] == [(6, 2, 2)]  # solved == level once done
    assert load_checkpoint(tmp_path / "run" / "checkpoint.npz")[1]["episode"] == 6


@pytest.mark.parametrize("task,mode", [("copy", "dni"), ("repeat_copy", "dni_aux")])
def test_resume_with_a_larger_budget_is_exact(tmp_path, task, mode):
    """A: 40 episodes straight. B: 20 episodes, then resumed with a budget of 40. Same arrays, same records."""
    kw = dict(task=task, mode=mode, threshold=1e9)  # levels advance: long episodes, SG and curriculum in play
    train_rnn(copy_cfg(tmp_path / "a", **kw), log=quiet)
    train_rnn(copy_cfg(tmp_path / "b", episodes=20, **kw), log=quiet)
    assert [m["episode"] for m in read_metrics(str(tmp_path / "b"))] == [10, 20]
    metrics_b = train_rnn(copy_cfg(tmp_path / "b", **kw), resume=True, log=quiet)
    meta_a, meta_b = assert_same_checkpoint(tmp_path / "a" / "checkpoint.npz", tmp_path / "b" / "checkpoint.npz")
    for key in ("episode", "rng", "curriculum", "optimizers"):
        assert meta_a[key] == meta_b[key], key
    assert without_seconds(metrics_b) == without_seconds(read_metrics(str(tmp_path / "a")))
    assert metrics_b == read_metrics(str(tmp_path / "b"))
    assert json.loads((tmp_path / "b" / "config.json").read_text())["episodes"] == 40


class InterruptAt:
    """Stands in for make_episode and raises KeyboardInterrupt at its n-th call (counting from 1)."""

    def __init__(self, n, real):
        self.n, self.real, self.calls = n, real, 0

    def __call__(self, *args, **kw):
        self.calls += 1
        if self.calls == self.n:
            raise KeyboardInterrupt
        return self.real(*args, **kw)


def test_resume_after_an_interrupt_continues_exactly(tmp_path, monkeypatch):
    """Checkpoints after every episode; killed while drawing episode 25; resumed: the same weights, optimiser state,
    data stream and curriculum as a run that was never stopped, and the same curriculum records.

    (The window means bits_per_bit / bit_error_rate / sg_loss of the record that spans the interrupt average only
    the episodes after it: the partial window is not checkpointed, so those three are not compared for it.)"""
    kw = dict(threshold=1e9, T=2)
    train_rnn(copy_cfg(tmp_path / "a", **kw), log=quiet)
    cfg = copy_cfg(tmp_path / "b", checkpoint_every=1e-9, **kw)
    with monkeypatch.context() as m:
        m.setattr(rnn_train, "make_episode", InterruptAt(25, rnn_train.make_episode))
        with pytest.raises(KeyboardInterrupt):
            train_rnn(cfg, log=quiet)
    assert load_checkpoint(tmp_path / "b" / "checkpoint.npz")[1]["episode"] == 24
    assert [m["episode"] for m in read_metrics(str(tmp_path / "b"))] == [10, 20]
    logged = []
    train_rnn(cfg, resume=True, log=logged.append)
    assert logged[0] == "resumed at episode 24 (level 9)"
    meta_a, meta_b = assert_same_checkpoint(tmp_path / "a" / "checkpoint.npz", tmp_path / "b" / "checkpoint.npz")
    assert (meta_a["rng"], meta_a["curriculum"]) == (meta_b["rng"], meta_b["curriculum"])
    a, b = read_metrics(str(tmp_path / "a")), read_metrics(str(tmp_path / "b"))
    assert without_seconds(a[:2]) == without_seconds(b[:2]) and without_seconds(a[3:]) == without_seconds(b[3:])
    assert [(r["episode"], r["level"], r["solved"]) for r in a] == [(r["episode"], r["level"], r["solved"]) for r in b]


def test_resume_after_a_crash_before_the_first_checkpoint_starts_over_cleanly(tmp_path, monkeypatch):
    """Records were written (episodes 10 and 20) but no checkpoint: the run restarts from episode 0, and the records
    written before the crash must not stay in front of the new ones."""
    train_rnn(copy_cfg(tmp_path / "a"), log=quiet)
    cfg = copy_cfg(tmp_path / "b")  # checkpoint_every = 60 s: only the final checkpoint
    with monkeypatch.context() as m:
        m.setattr(rnn_train, "make_episode", InterruptAt(25, rnn_train.make_episode))
        with pytest.raises(KeyboardInterrupt):
            train_rnn(cfg, log=quiet)
    assert sorted(os.listdir(tmp_path / "b")) == ["config.json", "metrics.jsonl"]
    metrics = train_rnn(cfg, resume=True, log=quiet)
    assert [m["episode"] for m in metrics] == [10, 20, 30, 40]
    assert without_seconds(metrics) == without_seconds(read_metrics(str(tmp_path / "a")))
    assert_same_checkpoint(tmp_path / "a" / "checkpoint.npz", tmp_path / "b" / "checkpoint.npz")


def test_an_existing_run_is_not_overwritten(tmp_path):
    out = tmp_path / "run"
    train_rnn(copy_cfg(out, episodes=10), log=quiet)
    before = snapshot(out)
    with pytest.raises(CheckpointError, match="already holds a run"):
        train_rnn(copy_cfg(out, episodes=10), log=quiet)
    assert snapshot(out) == before


@pytest.mark.parametrize("field,value,shown", [("lr", 0.01, "lr: 0.003 -> 0.01"), ("mode", "bptt", "mode: 'dni' -> 'bptt'"),
                                               ("T", 4, "T: 3 -> 4")])  # fmt: skip
def test_resume_refuses_a_changed_setting(tmp_path, field, value, shown):
    out = tmp_path / "run"
    train_rnn(copy_cfg(out, episodes=10), log=quiet)
    before = snapshot(out)
    with pytest.raises(CheckpointError, match="cannot resume") as err:
        train_rnn(copy_cfg(out, episodes=20, **{field: value}), resume=True, log=quiet)
    assert shown in str(err.value)
    assert snapshot(out) == before  # config.json is not rewritten


# ------------------------------------------------------------------------------------------------------------
# character-level language model


def test_charlm_run_writes_best_model_and_reports_its_bpc(tmp_path):
    text = write_text(tmp_path / "corpus.txt")
    cfg = charlm_cfg(tmp_path / "run", text)
    metrics = train_rnn(cfg, log=quiet)
    out = tmp_path / "run"
    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "config.json", "metrics.jsonl"]
    assert read_metrics(str(out)) == metrics
    evals, final = metrics[:-1], metrics[-1]
    assert [m["update"] for m in evals] == [10, 20, 30]
    for m in evals:
        assert set(m) == EVAL_KEYS
        assert math.isfinite(m["valid_bpc"]) and math.isfinite(m["train_bpc"]) and m["sg_loss"] is not None
    running_min = list(np.minimum.accumulate([m["valid_bpc"] for m in evals]))
    assert [m["best_valid_bpc"] for m in evals] == running_min
    assert set(final) == FINAL_KEYS
    assert final["final"] is True and final["stopped_early"] is False and final["update"] == 30
    assert final["best_valid_bpc"] == min(m["valid_bpc"] for m in evals)
    assert math.isfinite(final["test_bpc"]) and 0 < final["test_bpc"] < 10

    # best.npz holds the best-validation model: evaluated again, it gives the logged numbers exactly
    vocab, _, valid, test = load_corpus(cfg, log=quiet)
    trainer = build(cfg, vocab.size, vocab.size)
    arrays, meta = load_checkpoint(out / "best.npz")
    restore_arrays(trainer.state_arrays(), arrays)
    assert meta["update"] == min(evals, key=lambda m: m["valid_bpc"])["update"]
    assert CharVocab.from_json(meta["vocab"]) == vocab
    for ids, logged in ((valid, final["best_valid_bpc"]), (test, final["test_bpc"])):
        ids = ids[: cfg.eval_chars + 1]
        assert evaluate_bpc(trainer.net, ids, batch=min(32, max(1, (len(ids) - 1) // 100))) == logged
    # and checkpoint.npz the model as training left it: the other rule, the final model's test BPC
    restore_arrays(trainer.state_arrays(), load_checkpoint(out / "checkpoint.npz")[0])
    ids = test[: cfg.eval_chars + 1]
    assert evaluate_bpc(trainer.net, ids, batch=min(32, max(1, (len(ids) - 1) // 100))) == final["final_test_bpc"]


def test_charlm_stops_early_when_validation_does_not_improve(tmp_path):
    """A learning rate of 1e-30 leaves every float32 weight as it was: the second evaluation repeats the first,
    which with patience 1 ends the run at update 2 x eval_every, far before the budget."""
    text = write_text(tmp_path / "corpus.txt")
    cfg = charlm_cfg(tmp_path / "run", text, mode="bptt", lr=1e-30, patience=1, eval_every=5, updates=200)
    metrics = train_rnn(cfg, log=quiet)
    assert [m["update"] for m in metrics] == [5, 10, 10]
    assert metrics[0]["valid_bpc"] == metrics[1]["valid_bpc"]
    assert metrics[-1]["stopped_early"] is True and metrics[-1]["best_valid_bpc"] == metrics[0]["valid_bpc"]
    assert load_checkpoint(tmp_path / "run" / "best.npz")[1]["update"] == 5


def test_charlm_patience_counts_evaluations_since_the_last_improvement(tmp_path, monkeypatch):
    scores = iter([3.0, 2.5, 2.6, 2.4, 2.7, 2.4, 8.8, 9.9])  # six evaluations, then test: final, best model
    monkeypatch.setattr(rnn_train, "evaluate_bpc", lambda *a, **k: next(scores))
    text = write_text(tmp_path / "corpus.txt")
    cfg = charlm_cfg(tmp_path / "run", text, mode="bptt", patience=2, eval_every=2, updates=100)
    metrics = train_rnn(cfg, log=quiet)
    evals = metrics[:-1]
    assert [m["update"] for m in evals] == [2, 4, 6, 8, 10, 12]
    assert [m["best_valid_bpc"] for m in evals] == [3.0, 2.5, 2.5, 2.4, 2.4, 2.4]  # 2.4 again is no improvement
    assert metrics[-1] | {"seconds": 0} == {"update": 12, "final": True, "best_valid_bpc": 2.4, "test_bpc": 9.9,
                                            "final_test_bpc": 8.8, "stopped_early": True, "seconds": 0}  # fmt: skip
    assert load_checkpoint(tmp_path / "run" / "best.npz")[1]["update"] == 8


def test_running_out_of_patience_at_the_last_update_is_not_stopping_early(tmp_path, monkeypatch):
    scores = iter([3.0, 3.1, 3.2, 9.9, 9.9])  # no improvement at the last two evaluations, the last at the end
    monkeypatch.setattr(rnn_train, "evaluate_bpc", lambda *a, **k: next(scores))
    cfg = charlm_cfg(tmp_path / "run", write_text(tmp_path / "corpus.txt"), mode="bptt", patience=2, eval_every=2,
                     updates=6)  # fmt: skip
    final = train_rnn(cfg, log=quiet)[-1]
    assert (final["update"], final["stopped_early"]) == (6, False)


def test_charlm_resume_with_a_larger_budget_is_exact_and_keeps_one_final_record(tmp_path):
    """Truncated BPTT carries only the state across chunks, which the checkpoint holds: 20 + 20 updates give the
    run of 40. The first run's final record (test BPC) is replaced, not kept in the middle of the curve."""
    text = write_text(tmp_path / "corpus.txt")
    train_rnn(charlm_cfg(tmp_path / "a", text, mode="bptt", updates=40), log=quiet)
    train_rnn(charlm_cfg(tmp_path / "b", text, mode="bptt", updates=20), log=quiet)
    metrics = train_rnn(charlm_cfg(tmp_path / "b", text, mode="bptt", updates=40), resume=True, log=quiet)
    assert [m.get("final", False) for m in metrics] == [False] * 4 + [True]
    assert without_seconds(metrics) == without_seconds(read_metrics(str(tmp_path / "a")))
    for name in ("checkpoint.npz", "best.npz"):
        assert_same_checkpoint(tmp_path / "a" / name, tmp_path / "b" / name)


def test_charlm_with_context_conditions_the_sg_module_on_the_next_character(tmp_path):
    text = write_text(tmp_path / "corpus.txt")
    V = len(set((tmp_path / "corpus.txt").read_text()))
    metrics = train_rnn(charlm_cfg(tmp_path / "run", text, context=True, updates=20), log=quiet)
    arrays, _ = load_checkpoint(tmp_path / "run" / "checkpoint.npz")
    assert arrays["sg.0.W"].shape == (2 * 8 + V, 2 * 8)
    assert np.abs(arrays["sg.0.W"][2 * 8 :]).max() > 0  # the context rows were trained
    assert all(math.isfinite(m["valid_bpc"]) for m in metrics[:-1]) and math.isfinite(metrics[-1]["test_bpc"])


def _ptb_line(sentence):
    """Mikolov's character-level format: every character a token, '_' for a space."""
    return " " + " ".join("_" if c == " " else c for c in sentence) + " "


def test_charlm_reads_penn_treebank_characters(tmp_path):
    rng = random.Random(1)
    ptb = tmp_path / "ptb"
    ptb.mkdir()
    splits = {"train": 80, "valid": 12, "test": 12}
    for split, n in splits.items():
        sentences = [" ".join(rng.choice(WORDS) for _ in range(6)) for _ in range(n)]
        (ptb / f"ptb.char.{split}.txt").write_text("".join(_ptb_line(s) + "\n" for s in sentences))
    cfg = charlm_cfg(tmp_path / "run", f"ptb:{ptb}", updates=20)
    metrics = train_rnn(cfg, log=quiet)
    assert all(math.isfinite(m["valid_bpc"]) for m in metrics[:-1]) and math.isfinite(metrics[-1]["test_bpc"])
    vocab = CharVocab.from_json(load_checkpoint(tmp_path / "run" / "checkpoint.npz")[1]["vocab"])
    assert vocab.chars == "".join(sorted(set("".join(WORDS)) | {" ", "\n"}))  # '_' became a space
    _, _, valid, test = load_corpus(cfg, log=quiet)
    for ids, split in ((valid, "valid"), (test, "test")):  # "a _ c a t \n" -> "a cat\n": half the characters
        assert len(ids) == len((ptb / f"ptb.char.{split}.txt").read_text()) // 2


# ------------------------------------------------------------------------------------------------------------
# the loss and the metric


def test_softmax_xent_sum_gradient_against_central_differences():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((3, 2, 5))
    targets = rng.integers(0, 5, size=(3, 2))
    loss, dlogits = softmax_xent_sum(logits, targets)
    by_hand = 0.0
    for t in range(3):  # the sum over steps of the batch-mean NLL, in nats
        z = logits[t] - logits[t].max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        by_hand += -logp[np.arange(2), targets[t]].mean()
    assert loss == pytest.approx(by_hand, rel=1e-12)
    check_function(lambda: softmax_xent_sum(logits, targets)[0], {"logits": logits}, {"logits": dlogits})


def _float64_net(V, hidden=6, seed=0):
    rng = np.random.default_rng(seed)
    return RecurrentNet(LSTMCell(V, hidden, rng=rng, dtype=np.float64), V, rng=rng, dtype=np.float64)


def test_evaluate_bpc_of_a_uniform_predictor_is_log2_of_the_vocabulary():
    V = 11
    net = _float64_net(V)
    net.readout.params["W"][...] = 0
    net.readout.params["b"][...] = 0
    ids = np.random.default_rng(1).integers(0, V, size=301)
    assert evaluate_bpc(net, ids, batch=3, T=7) == pytest.approx(math.log2(V), rel=1e-12)


def test_evaluate_bpc_carries_the_state_across_chunks():
    """Chunks of 7 with the state carried give the BPC of one unbroken pass over each stream."""
    V, B = 9, 3
    net = _float64_net(V, seed=2)
    ids = np.random.default_rng(3).integers(0, V, size=200)
    streams = ids[: (len(ids) // B) * B].reshape(B, -1)
    logits, _, _ = net.forward(streams[:, :-1].T.copy(), net.initial_state(B))  # (L-1, B, V), one unroll
    z = logits - logits.max(axis=2, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=2, keepdims=True))
    nll = -np.take_along_axis(logp, streams[:, 1:].T[:, :, None], axis=2).mean()
    bpc = evaluate_bpc(net, ids, batch=B, T=7)
    assert bpc == pytest.approx(nll / math.log(2), rel=1e-10)
    assert abs(bpc - math.log2(V)) > 0.01  # a real model, not the uniform one
    assert evaluate_bpc(net, ids, batch=B, T=1) == pytest.approx(bpc, rel=1e-10)  # the chunk length is immaterial
