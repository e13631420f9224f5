"""BLAS threads are chosen, not inherited: the trainers apply their config's `threads` for the run, record it in
config.json, restore the previous limit afterwards, and resume checkpoints written before the field existed."""

import json
import os

import numpy as np
import pytest

from minidni.data.checkpoint import load_checkpoint, save_checkpoint
from minidni.runs.rnn_train import RNNConfig
from minidni.runs.threads import DEFAULT_THREADS, blas_threads, check_threads, use_blas_threads
from minidni.runs.train import CHECKPOINT, CONFIG, TrainConfig, read_metrics, train

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: temporary data cache, numpy backend

needs_blas = pytest.mark.skipif(blas_threads() is None, reason="threadpoolctl finds no BLAS library to limit")


def tiny(out, **fields):
    base = dict(data="spirals", model="fcn3", hidden=16, sg_hidden=16, batch=64, epochs=2, progress=False, out=out)
    return TrainConfig(**{**base, **fields})


@pytest.mark.parametrize("bad", [0, -1, 1.5, "2", True, None])
def test_a_thread_count_is_a_whole_number_of_at_least_one(bad):
    with pytest.raises(ValueError, match="threads must be a whole number >= 1"):
        check_threads(bad)
    with pytest.raises(ValueError, match="threads must be"):
        tiny("unused", threads=bad).validate()
    with pytest.raises(ValueError, match="threads must be"):
        RNNConfig(threads=bad).validate()


def test_the_default_is_one_thread():
    assert DEFAULT_THREADS == 1 and TrainConfig().threads == 1 and RNNConfig().threads == 1


@needs_blas
def test_use_blas_threads_limits_and_restores():
    before = blas_threads()
    with use_blas_threads(1):
        assert blas_threads() == 1
    assert blas_threads() == before


@needs_blas
def test_a_run_trains_with_its_threads_and_records_them(tmp_path, monkeypatch):
    import minidni.runs.train as T

    seen, real = [], T._train_epoch

    def spy(*args, **kwargs):  # the BLAS limit while the epoch trains
        seen.append(blas_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(T, "_train_epoch", spy)
    before = blas_threads()
    with use_blas_threads(2):
        train(tiny(str(tmp_path / "one")), log=lambda _m: None)
        assert blas_threads() == 2  # restored after the run
    assert seen == [1, 1]
    with open(tmp_path / "one" / CONFIG) as f:
        info = json.load(f)
    assert info["config"]["threads"] == 1
    assert {lib["num_threads"] for lib in info["environment"]["blas"]} == {1}
    assert blas_threads() == before


@needs_blas
def test_a_recurrent_run_trains_with_its_threads(tmp_path, monkeypatch):
    import minidni.runs.rnn_train as R

    seen, real = [], R.train_copy

    def spy(cfg, **kwargs):  # the BLAS limit while the copy task trains
        seen.append(blas_threads())
        return real(cfg, **kwargs)

    monkeypatch.setattr(R, "train_copy", spy)
    with use_blas_threads(2):
        R.train_rnn(RNNConfig(task="copy", mode="bptt", hidden=8, batch=4, episodes=3, log_every=1, max_level=2,
                              out=str(tmp_path / "rnn")), log=lambda _m: None)  # fmt: skip
        assert blas_threads() == 2
    assert seen == [1]
    with open(tmp_path / "rnn" / "config.json") as f:
        assert json.load(f)["threads"] == 1


def test_a_checkpoint_from_before_the_threads_field_resumes(tmp_path):
    """config.json and the checkpoint of a run written before `threads` existed have no such key: the run resumes
    (the thread count may change on resume) and finishes with the same metrics as one never interrupted."""
    whole, part = str(tmp_path / "whole"), str(tmp_path / "part")
    no_decay = {"lr_gamma": 1.0}  # the same schedule for a 2- and a 3-epoch run
    train(tiny(whole, epochs=3, **no_decay), log=lambda _m: None)
    train(tiny(part, epochs=2, **no_decay), log=lambda _m: None)
    arrays, meta = load_checkpoint(os.path.join(part, CHECKPOINT))
    del meta["config"]["threads"]  # as written by minidni 0.2.0
    save_checkpoint(os.path.join(part, CHECKPOINT), arrays, meta)
    config_path = os.path.join(part, CONFIG)
    with open(config_path) as f:
        info = json.load(f)
    del info["config"]["threads"]
    with open(config_path, "w") as f:
        json.dump(info, f)
    train(tiny(part, epochs=3, threads=2, **no_decay), resume=True, log=lambda _m: None)
    got, want = read_metrics(part), read_metrics(whole)
    assert [m["epoch"] for m in got] == [1, 2, 3]
    np.testing.assert_allclose([m["train_loss"] for m in got], [m["train_loss"] for m in want], rtol=1e-6)


@pytest.mark.parametrize("jobs, threads, want", [(1, 2, 2), (1, 1, 1), (2, 2, 1)])
def test_an_experiment_gives_each_run_its_threads(tmp_path, monkeypatch, jobs, threads, want):
    """One run at a time: the experiment's thread count; several at once: one BLAS thread each."""
    import minidni.experiments.feedforward as E

    runs = E.table1_runs("smoke", data="spirals", models=("fcn3",))
    monkeypatch.setattr(E, "_finished", lambda run, run_dir: [{"epoch": 1, "test_error_pct": 0.0}])  # train none
    E.run_all(runs, str(tmp_path), log=lambda _m: None, jobs=jobs, threads=threads)
    assert {run.cfg.threads for run in runs} == {want}
