"""Blocks in workers (minidni.parallel.workers): the same numbers as one process where the schedule says they must be,
the staleness the schedule allows and no more, and failures that stop the run with a clear error instead of a hang.

Exactness is the invariant: with delay=d every worker's sequence of operations is fixed, so threads, processes
and MPI ranks must give the run of a plain one-process loop in which each SG module learns from the target of
step t-d at step t - bit for bit, checkpoint arrays included. delay=0 is minidni.dni.network's own step."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest

from minidni.data.checkpoint import load_checkpoint
from minidni.dni.network import build_network, check_split, fcn_blocks
from minidni.dni.steps import output_loss
from minidni.core.optim import StepSchedule
from minidni.runs.train import TrainConfig, build_from_config, load_data, lr_milestones, train
from minidni.parallel.workers import WorkerError, connect, mpiexec_path, train_in_workers

TINY = dict(data="spirals", model="fcn4", hidden=16, epochs=2, batch=32, train_subset=320, progress=False)


def run(tmp_path, name, **kw):
    cfg = TrainConfig(out=str(tmp_path / name), **{**TINY, **kw})
    metrics = (train if cfg.workers is None else train_in_workers)(cfg, log=lambda *_: None)
    arrays, meta = load_checkpoint(os.path.join(cfg.out, "checkpoint.npz"))
    return metrics, arrays, meta


def assert_same_arrays(a, b):
    assert sorted(a) == sorted(b)
    different = [k for k in a if not np.array_equal(a[k], b[k])]
    assert not different, f"arrays differ: {different[:5]}"


# -- exactness ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["cdni", "dni", "bprop"])
def test_threads_with_delay_0_are_the_one_process_run_bit_for_bit(tmp_path, mode):
    m0, a0, meta0 = run(tmp_path, "one", mode=mode)
    m1, a1, meta1 = run(tmp_path, "workers", mode=mode, workers="thread", delay=0)
    assert_same_arrays(a0, a1)  # parameters, batch-norm statistics, optimiser moments
    assert meta0["optimizers"] == meta1["optimizers"]  # step counts and learning rates (after the decay)
    assert [m["test_error_pct"] for m in m0] == [m["test_error_pct"] for m in m1]
    assert [m["train_loss"] for m in m0] == pytest.approx([m["train_loss"] for m in m1], rel=1e-12)


def test_processes_with_delay_0_are_the_one_process_run_bit_for_bit(tmp_path):
    _, a0, _ = run(tmp_path, "one", mode="cdni", model="fcn6", split="2,4")
    _, a1, meta = run(tmp_path, "workers", mode="cdni", model="fcn6", split="2,4", workers="process", delay=0)
    assert_same_arrays(a0, a1)
    assert meta["workers"]["blocks"] == 2


def delayed_reference(cfg, delay):
    """The definition of delay, as a plain loop in one process: every block steps on every batch, and each SG
    module then regresses onto the target of step t - delay (the remaining ones at the end), predicting again on
    that step's h and y first if its weights have changed since it predicted for it."""
    x, y = load_data(cfg, log=lambda *_: None)[:2]
    net = build_from_config(cfg, x.shape[1:], 3)
    n_batches = x.shape[0] // cfg.batch
    schedule = StepSchedule(lr_milestones(cfg, n_batches), cfg.lr_gamma)
    shuffle = np.random.default_rng([cfg.seed, 1])
    pending = [{} for _ in net.hidden]  # per module: step -> (h, y, dh_syn, sg_cache, version, target)
    version = [0] * len(net.hidden)  # regression steps taken by each module

    def regress(i, s):
        h, labels, dh_syn, sg_cache, made_at, target = pending[i].pop(s)
        if made_at != version[i]:
            dh_syn, sg_cache = net.hidden[i].sg.predict(h, labels)
        net.hidden[i].sg_update(dh_syn, sg_cache, target)
        version[i] += 1

    t = 0
    for _ in range(cfg.epochs):
        perm = shuffle.permutation(x.shape[0])
        for b in range(n_batches):
            net.set_lr_factor(schedule.factor(t))
            idx = perm[b * cfg.batch : (b + 1) * cfg.batch]
            h, labels = x[idx], y[idx]
            made = []
            for i, block in enumerate(net.hidden):
                h, cache = block.forward(h)
                dx, dh_syn, sg_cache = block.synthetic_step(h, cache, labels, need_dx=i > 0)
                made.append((h, labels, dh_syn, sg_cache, version[i]))
                if i > 0:
                    pending[i - 1][t] = (*made[i - 1], dx)
            _, dlogits, cache = output_loss(net, h, labels)
            pending[-1][t] = (*made[-1], net.output.backward(dlogits, cache))
            net.output.update()
            for i in range(len(net.hidden)):
                if t - delay in pending[i]:
                    regress(i, t - delay)
            t += 1
    for i in range(len(net.hidden)):
        for s in sorted(pending[i]):
            regress(i, s)
    return net.state_arrays()


def test_delay_d_is_exactly_a_target_d_steps_late_in_threads_and_processes(tmp_path):
    cfg = TrainConfig(mode="cdni", out="-", **TINY)
    expected = delayed_reference(cfg, delay=2)
    _, threads, _ = run(tmp_path, "threads", mode="cdni", workers="thread", delay=2)
    _, procs, _ = run(tmp_path, "procs", mode="cdni", workers="process", delay=2)
    assert_same_arrays(expected, threads)
    assert_same_arrays(expected, procs)
    _, delay0, _ = run(tmp_path, "delay0", mode="cdni", workers="thread", delay=0)
    assert not np.array_equal(delay0["sg0.0.W"], threads["sg0.0.W"])  # the delay does change the run


def test_asynchronous_staleness_stays_within_max_inflight_and_every_target_is_used_once(tmp_path):
    k = 2
    metrics, _, _ = run(tmp_path, "async", mode="cdni", workers="process", max_inflight=k)
    staleness = json.loads((tmp_path / "async" / "staleness.json").read_text())
    n_steps = metrics[-1]["step"]
    assert sorted(staleness) == ["0", "1", "2"]  # one SG module per hidden block
    for pairs in staleness.values():
        assert sorted(s for _, s in pairs) == list(range(n_steps))  # every step's target, exactly once
        assert all(0 <= t - s <= k for t, s in pairs)
        assert [t for t, _ in pairs] == sorted(t for t, _ in pairs)  # used in the order the block stepped
    assert all(0 <= v <= k for m in metrics for v in m["staleness_max"])
    assert (tmp_path / "async" / "staleness.png").stat().st_size > 0


def test_delay_staleness_is_exactly_the_delay(tmp_path):
    run(tmp_path, "d3", mode="dni", workers="thread", delay=3)
    staleness = json.loads((tmp_path / "d3" / "staleness.json").read_text())
    for pairs in staleness.values():
        body = pairs[:-3]  # the last three targets arrive after the last step
        assert all(t - s == 3 for t, s in body)


def test_recorded_timeline_shows_the_workers_and_their_messages(tmp_path):
    run(tmp_path, "tl", mode="cdni", workers="thread", delay=0, timeline=5)
    events = json.loads((tmp_path / "tl" / "timeline.json").read_text())
    assert {e["block"] for e in events} == {0, 1, 2, 3}
    assert {e["step"] for e in events} == set(range(5))
    by_id = {e["id"]: e for e in events}
    for e in events:
        for n in e["needs"]:  # what it read was made before it started, by another block
            assert by_id[n]["end"] <= e["start"] and by_id[n]["block"] != e["block"]
        if e["kind"] == "forward" and e["block"] > 0:
            (n,) = e["needs"]
            assert (by_id[n]["kind"], by_id[n]["block"], by_id[n]["step"]) == ("forward", e["block"] - 1, e["step"])
        if e["kind"] == "sg_update":
            (n,) = e["needs"]
            assert (by_id[n]["kind"], by_id[n]["block"], by_id[n]["step"]) == ("backward", e["block"] + 1, e["step"])
    assert (tmp_path / "tl" / "timeline.png").stat().st_size > 0


def test_connect_links_bprop_backwards_to_the_block_above():
    from minidni.runs.timeline import Event

    events = [
        Event(0, 0, 0, "forward", 0.0, 1.0),
        Event(0, 0, 1, "forward", 1.5, 2.0),
        Event(0, 0, 1, "backward", 2.0, 3.0),
        Event(0, 0, 0, "backward", 3.5, 4.0),
    ]
    out = connect(events, "bprop")
    assert [e.needs for e in out] == [(), (0,), (), (2,)]


# -- the split network ------------------------------------------------------------------------------------------


def test_split_groups_the_same_layers_and_weights():
    plain = fcn_blocks(6, d_in=5, hidden=7, n_classes=3, rng=np.random.default_rng(0))
    split = fcn_blocks(6, d_in=5, hidden=7, n_classes=3, rng=np.random.default_rng(0), split=(2, 4))
    assert [len(s.layers) for s in split] == [6, 10]  # 2 x (Linear, BN, ReLU); 3 x (...) + the output Linear
    flat = [layer for s in plain for layer in s.layers]
    grouped = [layer for s in split for layer in s.layers]
    for a, b in zip(flat, grouped, strict=True):
        for k in a.params:
            assert np.array_equal(a.params[k], b.params[k])
    x = np.random.default_rng(1).standard_normal((4, 5)).astype(np.float32)
    h1, h2 = x, x
    for s in plain:
        h1, _ = s.forward(h1)
    for s in split:
        h2, _ = s.forward(h2)
    assert np.array_equal(h1, h2)


@pytest.mark.parametrize("bad", [(3,), (2, 3), (0, 6), (2.0, 4), "2,4", (True, 5)])
def test_check_split_names_what_it_expected(bad):
    with pytest.raises(ValueError, match="split must give the layers of each block"):
        check_split(bad, 6)


def test_split_network_has_no_fused_form_and_no_unlock():
    with pytest.raises(ValueError, match="complete unlock"):
        build_network(depth=4, split=(2, 2), unlock=True, d_in=5, hidden=7, n_classes=3)
    with pytest.raises(ValueError, match="FCNs only"):
        build_network(depth=3, arch="cnn", in_shape=(1, 8, 8), split=(1, 2))


# -- bad settings and failures -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(workers="gpu"), "workers must be one of"),
        (dict(workers="thread", mode="nobprop"), "bprop, dni or cdni"),
        (dict(workers="thread", p_update=0.5), "in one process"),
        (dict(workers="thread", delay=-1), "delay must be an integer >= 0"),
        (dict(workers="thread", max_inflight=0), "max_inflight must be an integer >= 1"),
        (dict(workers="thread", wait_timeout=0), "wait_timeout must be a positive"),
        (dict(workers="thread", diagnostics=True), "staleness instead"),
        (dict(workers="thread", sg_target="true"), "bootstrapped targets"),
        (dict(split="2,2", model="fcn5"), "summing to the depth 5"),
        (dict(split="two,three"), "comma-separated integers"),
    ],
)
def test_bad_settings_get_clear_errors(fields, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**{**TINY, **fields}).validate()


def test_the_one_process_trainer_refuses_a_run_in_workers_and_names_the_one_that_runs_it(tmp_path):
    cfg = TrainConfig(out=str(tmp_path / "r"), workers="thread", **TINY)
    with pytest.raises(ValueError, match=r"minidni\.parallel\.workers\.train_in_workers"):
        train(cfg, log=lambda *_: None)


def test_a_run_in_workers_is_not_resumed(tmp_path, capsys):
    from minidni.cli import main

    code = main(["train", "--data", "spirals", "--model", "fcn3", "--workers", "thread", "--resume",
                 "--out", str(tmp_path / "r")])  # fmt: skip
    assert code != 0
    assert "cannot be resumed" in capsys.readouterr().err


def test_a_worker_process_that_dies_stops_the_run_with_its_name(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDNI_WORKER_CRASH", "1:4")
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"block 1 failed.*died \(exit code 3\)"):
        run(tmp_path, "dies", mode="cdni", workers="process", wait_timeout=30)
    assert time.monotonic() - start < 25  # noticed at once, not after the neighbours' timeouts
    assert not (tmp_path / "dies" / "metrics.jsonl").exists()


def test_a_stuck_worker_times_its_neighbours_out(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDNI_WORKER_CRASH", "1:4:hang")
    start = time.monotonic()
    with pytest.raises(WorkerError, match=r"block 1 stopped answering.*waited 1 s for .* from block 1"):
        run(tmp_path, "stuck", mode="bprop", workers="process", wait_timeout=1)
    assert time.monotonic() - start < 20


def test_a_worker_that_raises_is_reported_with_its_error(tmp_path):
    # a huge SG learning rate: an SG module diverges, and its worker's DivergenceError is what the run reports,
    # naming the block and the norm that crossed the limit. (Not a huge layer learning rate: the layers' numbers
    # would then overflow float32, with NumPy's RuntimeWarnings, before a synthetic gradient crossed the limit.)
    diverged = r"DivergenceError: synthetic gradient of block \d diverged: \|\|dh_syn\|\| = \S+ \(limit 1000\)"
    with pytest.raises(WorkerError, match=r"the worker of block \d failed: " + diverged):
        run(tmp_path, "diverges", mode="cdni", workers="thread", sg_lr=1e3, wait_timeout=5)


# -- MPI: the same program on localhost ranks -----------------------------------------------------------------------


def mpi_available():
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return False
    return mpiexec_path() is not None


needs_mpi = pytest.mark.skipif(not mpi_available(), reason="needs mpi4py and mpiexec: pip install -e '.[mpi]'")


def mpiexec(n, out, *extra, env=None, timeout=120):
    args = [mpiexec_path(), "-n", str(n), sys.executable, "-m", "minidni", "train", "--distributed", "--out", str(out)]
    args += ["--data", "spirals", "--model", "fcn3", "--hidden", "16", "--epochs", "2", "--batch", "32"]
    args += ["--train-subset", "320", "--no-progress", *extra]
    full_env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env=full_env, check=False)


@needs_mpi
def test_mpi_ranks_reproduce_the_one_process_run(tmp_path):
    done = mpiexec(3, tmp_path / "mpi", "--delay", "0")
    assert done.returncode == 0, done.stderr
    cfg = dict(TINY, model="fcn3")
    _, one, _ = run(tmp_path, "one", **{k: v for k, v in cfg.items()})
    mpi, meta = load_checkpoint(str(tmp_path / "mpi" / "checkpoint.npz"))
    assert_same_arrays(one, mpi)
    assert meta["workers"]["blocks"] == 3
    assert "final test error" in done.stdout and done.stdout.count("final test error") == 1  # rank 0 only


@needs_mpi
def test_asynchronous_mpi_ranks_reach_the_one_process_accuracy(tmp_path):
    done = mpiexec(3, tmp_path / "mpi", "--epochs", "4", "--train-subset", "0")
    assert done.returncode == 0, done.stderr
    metrics = [json.loads(line) for line in (tmp_path / "mpi" / "metrics.jsonl").read_text().splitlines()]
    cfg = dict(TINY, model="fcn3", epochs=4, train_subset=0)
    one, _, _ = run(tmp_path, "one", **cfg)
    # 3-class spirals, 900 test points: one point is 0.11; the runs differ only in when targets arrive
    assert abs(metrics[-1]["test_error_pct"] - one[-1]["test_error_pct"]) <= 5.0
    assert all(0 <= v <= 2 for m in metrics for v in m["staleness_max"])


@needs_mpi
def test_more_ranks_than_blocks_is_refused_before_anything_is_written(tmp_path):
    done = mpiexec(4, tmp_path / "bad")
    assert done.returncode != 0
    assert "one MPI rank per block: fcn3 has 3 blocks, but 4 ranks were started; use mpiexec -n 3" in done.stderr
    assert done.stderr.count("one MPI rank per block") == 1  # said once, by rank 0
    assert not (tmp_path / "bad").exists()


@needs_mpi
def test_a_stuck_rank_ends_the_mpi_job_within_the_timeout(tmp_path):
    start = time.monotonic()
    done = mpiexec(3, tmp_path / "stuck", "--wait-timeout", "2", env={"MINIDNI_WORKER_CRASH": "1:5:hang"}, timeout=60)
    assert done.returncode != 0
    assert "waited 2 s for" in done.stdout + done.stderr and "from block 1" in done.stdout + done.stderr
    assert time.monotonic() - start < 45


@needs_mpi
def test_a_dead_rank_ends_the_mpi_job(tmp_path):
    done = mpiexec(3, tmp_path / "dead", "--wait-timeout", "5", env={"MINIDNI_WORKER_CRASH": "2:5"}, timeout=60)
    assert done.returncode != 0
    assert not (tmp_path / "dead" / "metrics.jsonl").exists()


def test_worker_processes_do_not_outlive_a_killed_coordinator(tmp_path):
    """Kill the process that started the workers mid-run: its workers notice and exit (no orphans training on)."""
    script = (
        "from minidni.parallel.workers import train_in_workers\nfrom minidni.runs.train import TrainConfig\n"
        f"train_in_workers(TrainConfig(data='spirals', model='fcn3', hidden=16, epochs=200, batch=32, "
        f"workers='process', "
        f"progress=False, out={str(tmp_path / 'run')!r}), log=print)\n"
    )
    coordinator = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OPENBLAS_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 60
        while not workers_of(coordinator.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        children = workers_of(coordinator.pid)
        assert len(children) == 3, "the run should have started one worker per block"
        time.sleep(1.0)
        coordinator.kill()  # SIGKILL: no chance to clean up
        coordinator.wait()
        deadline = time.monotonic() + 20
        while any(os.path.exists(f"/proc/{pid}") and not zombie(pid) for pid in children):
            assert time.monotonic() < deadline, "the workers outlived their coordinator"
            time.sleep(0.2)
    finally:
        coordinator.kill()


def workers_of(pid):
    """The minidni worker processes whose parent is pid (Linux /proc)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    spawned = b"spawn_main" in f.read()
            except OSError:
                continue
            if ppid == pid and spawned:
                found.append(int(entry))
    return found


def zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@needs_mpi
def test_an_mpi_run_that_rank_0_cannot_start_stops_every_rank(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "metrics.jsonl").write_text("")  # a run is already there: rank 0 refuses, the others must not wait
    start = time.monotonic()
    done = mpiexec(3, out, "--wait-timeout", "30", timeout=60)
    assert done.returncode != 0
    assert done.stderr.count("already holds a run") == 1
    assert time.monotonic() - start < 25  # not the ranks' wait timeout: they were told


def test_a_split_network_runs_unfused_and_the_fused_step_refuses_it():
    from minidni.cuda.fused import FusedDNIStep
    from minidni.runs.train import attach_kernels

    net = build_network(depth=4, split=(2, 2), d_in=5, hidden=7, n_classes=3)
    assert attach_kernels(net, "auto") == ("unfused", None)
    with pytest.raises(ValueError, match="a split network runs unfused"):
        FusedDNIStep(net, kernels=None)
