"""Blocks that train at the same time: every block of a Network in a worker of its own.

minidni.dni.steps runs a DNI step block after block in one process, in the order a decoupled system could run it.
Here each block gets its own worker, and the only thing that couples two neighbouring workers is a message:

    up    block i -> block i+1    (t, h_i, y)   the activations of step t, and the labels (cDNI, the loss)
    down  block i+1 -> block i    (t, dx)       dx = dL/dh_i pulled back through block i+1: for locked
                                                backprop the true gradient, for DNI the bootstrapped target
                                                of block i's synthetic-gradient module M_{i+1}

The loop of hidden block i under DNI / cDNI, step t (block 0 reads its own batch instead of receiving one):

    receive (t, h_{i-1}, y) from below          # waits only for the block below
    h_i = f_i(h_{i-1});  send (t, h_i, y) up
    dh_syn = M_{i+1}(h_i, y);  dx = f_i.backward(dh_syn)                # no waiting for the blocks above
    send (t, dx) down;  f_i.update()            # dx: the target of the module below, sent before the update
    M_{i+1} regresses onto the targets that came down, each on the h_i and y it was made for (its staleness
    is how many steps late that is), predicting again first if its weights have changed since

The output block receives h, computes the loss and dx = dL/dh of the block below, sends dx down (the only true
gradient) and updates. Under locked backprop every hidden block instead waits for the gradient of step t before
its backward, so at any moment one block works: the same worker layout, as the baseline.

When does M_{i+1} learn from the target of step s? `delay` chooses:

    delay = d      after its update of step t, block i waits for the target of step t - d and regresses onto it:
                   deterministic, so threads, processes and MPI ranks give the same numbers bit for bit, and
                   delay = 0 is exactly minidni.dni.steps.dni_step, in one process (tests/test_workers.py checks both)
    delay = None   asynchronous: block i regresses onto whatever targets have arrived and waits only when more
                   than `max_inflight` are outstanding. The real point of DNI: nobody waits for anybody, and the
                   staleness (t - s) is whatever the speeds make it; it is logged and plotted.

Workers (TrainConfig.workers): "process" (one OS process per block: real parallelism, each with one BLAS thread),
"thread" (one thread per block; NumPy releases the GIL inside its matrix products, so they overlap there) and
"mpi" (one MPI rank per block through mpi4py: `mpiexec -n N python -m minidni train --distributed ...`). The
transports are the standard library's queues and MPI; this module only decides what to send when. Every wait is
bounded (wait_timeout): a worker that dies stops the run with an error that names it, and no worker hangs.

What this module deliberately is not: resumable (a run writes its metrics, checkpoint and plots when all blocks
have finished; it keeps each block's state at every epoch end and evaluates those afterwards) nor a pipelined
backprop (the schedule simulator, minidni.parallel.simulate, predicts that one). Stochastic updates and complete unlock
run only in one process.
"""

import contextlib
import dataclasses
import json
import os
import queue
import shutil
import sys
import threading
import time
import traceback

import numpy as np

from minidni.data.checkpoint import atomic_write, restore_arrays, save_checkpoint
from minidni.core.optim import StepSchedule
from minidni.dni.steps import output_loss
from minidni.parallel.faults import crash_plan, fail_here, refuse_in_threads
from minidni.runs.threads import use_blas_threads
from minidni.runs.timeline import Event

BLAS_ENV = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


class WorkerError(RuntimeError):
    """A worker failed, died or waited longer than wait_timeout; the message names the block and what happened."""


class WaitTimeout(WorkerError):
    """Block `block` waited wait_timeout seconds for a message from block `waited_for` and gave up."""

    def __init__(self, message, block, waited_for):
        super().__init__(message)
        self.block, self.waited_for = block, waited_for


class Stopped(WorkerError):
    """This worker stopped because another one had failed: a consequence, not a cause."""


# -------------------------------------------------------------------------------------------------------------
# links: how a worker talks to its neighbours


class QueueLink:
    """Messages through queues, one per (sender, receiver): queue.Queue between threads, multiprocessing.Queue
    between processes. A send copies the arrays (the sender goes on using its own); a receive waits at most
    `timeout` seconds and gives up at once when another worker has failed (`abort` is set) or, in a worker
    process, when the coordinator that started it is gone (`alive`), so that no worker outlives its run."""

    def __init__(self, block, queues, abort, timeout, alive=None):
        self.block, self.queues, self.abort, self.timeout = block, queues, abort, timeout
        self.alive = alive or (lambda: True)

    def send(self, to, msg):
        self._check_coordinator()
        self.queues[(self.block, to)].put(tuple(np.array(m) if isinstance(m, np.ndarray) else m for m in msg))

    def try_recv(self, frm):
        """The next message from block `frm`, or None if none has arrived."""
        try:
            return self.queues[(frm, self.block)].get_nowait()
        except queue.Empty:
            return None

    def recv(self, frm, what):
        q, deadline = self.queues[(frm, self.block)], time.monotonic() + self.timeout
        while not self.abort.is_set():
            self._check_coordinator()
            try:
                return q.get(timeout=min(0.1, max(deadline - time.monotonic(), 1e-3)))
            except queue.Empty:
                if time.monotonic() > deadline:
                    raise WaitTimeout(_timeout_message(self.block, frm, what, self.timeout), self.block, frm) from None
        raise Stopped(f"block {self.block} stopped: another worker failed")

    def _check_coordinator(self):
        if not self.alive():
            raise Stopped(f"block {self.block} stopped: the process that started the workers is gone")

    def close(self):
        pass


class MPILink:
    """Messages between MPI ranks (rank i runs block i) through mpi4py: non-blocking sends, so a sender never
    waits for its receiver, and receives that poll (Iprobe) until `timeout` seconds have passed."""

    def __init__(self, comm, timeout):
        self.comm, self.block, self.timeout = comm, comm.Get_rank(), timeout
        self.requests = []  # sends not yet complete: their buffers must stay alive

    def send(self, to, msg):
        self.requests = [r for r in self.requests if not r.Test()]
        self.requests.append(self.comm.isend(msg, dest=to))  # pickles msg now: the caller may reuse its arrays

    def try_recv(self, frm):
        return self.comm.recv(source=frm) if self.comm.Iprobe(source=frm) else None

    def recv(self, frm, what):
        deadline, pause = time.monotonic() + self.timeout, 1e-5
        while not self.comm.Iprobe(source=frm):
            if time.monotonic() > deadline:
                raise WaitTimeout(_timeout_message(self.block, frm, what, self.timeout), self.block, frm)
            time.sleep(pause)
            pause = min(2 * pause, 1e-3)  # poll fast while a message is due, without spinning a core for long
        return self.comm.recv(source=frm)

    def close(self):
        deadline = time.monotonic() + self.timeout
        while self.requests:
            self.requests = [r for r in self.requests if not r.Test()]
            if time.monotonic() > deadline:
                raise WorkerError(f"block {self.block}: {len(self.requests)} messages were never received")
            time.sleep(1e-3)


def _timeout_message(block, frm, what, timeout):
    return (
        f"block {block} waited {timeout:g} s for {what} from block {frm} and gave up: that worker died or is stuck "
        f"(raise --wait-timeout if one step really takes that long)"
    )


# -------------------------------------------------------------------------------------------------------------
# one block's worker


class _Recorder:
    """Stands in for a minidni.runs.timeline.Timeline on one block: the block's methods record their events here
    (for the first `steps` steps). `step` is the step being worked on; for a module's regression it is the step
    whose target it uses. Times are wall-clock seconds (time.time() at the start, then the precise perf_counter),
    so that the workers' events line up: exactly on one machine, to the clock sync (NTP) across machines."""

    def __init__(self, steps):
        self.steps, self.step, self.events = steps, None, []
        self.origin, self.wall = time.perf_counter(), time.time()

    def now(self):
        return self.wall + (time.perf_counter() - self.origin)

    @contextlib.contextmanager
    def event(self, block, kind):
        if self.step is None or self.step >= self.steps:
            yield
            return
        start = self.now()
        yield
        self.events.append(Event(0, self.step, block, kind, start, self.now()))


def _block_parts(net, i):
    """(prefix, part) of block i's state: its layers and its SG module (the names of Network.state_arrays)."""
    return [(prefix, part) for prefix, part in net.parts() if prefix in (f"block{i}.", f"sg{i}.")]


def _snapshot(net, i):
    return {k: np.array(v) for prefix, part in _block_parts(net, i) for k, v in part.state_arrays(prefix).items()}


def run_block(i, cfg, link, plan, data=None, barrier=None):
    """Train block i of the network of cfg in this worker; returns what the coordinator assembles.

    plan: {"in_shape", "n_classes", "n_batches", "milestones"}, the same for every worker. Block 0 reads the
    training batches (data: x_train, y_train, as train.load_data gives them) in the order train.train uses.
    """
    from minidni.runs.train import build_from_config

    net = build_from_config(cfg, plan["in_shape"], plan["n_classes"])  # same seed: the same initial weights
    n, block = len(net.blocks), net.blocks[i]
    top, decoupled = i == n - 1, cfg.mode in ("dni", "cdni")
    if i == 0:
        x_tr, y_tr = np.asarray(data[0]), np.asarray(data[1])
        shuffle_rng = np.random.default_rng([cfg.seed, 1])  # as train.train: the same batches in the same order
    optimizers = {k: o for prefix, part in _block_parts(net, i) for k, o in part.optimizers(prefix).items()}
    schedule, factor = StepSchedule(plan["milestones"], cfg.lr_gamma), None
    crash = crash_plan(i)  # fault injection for the tests (minidni.parallel.faults): None in a real run

    pending = {}  # step s -> (h_i, y, dh_syn, sg_cache, version): M_{i+1}'s predictions waiting for targets
    version = 0  # how many regression steps M_{i+1} has taken: its weights changed if this moved
    staleness, sg_losses, losses = [], [], []  # (t, s) per target used; per target; the output block's loss
    snapshots, epoch_ends = [], []
    t = -1  # the last step this block has finished

    def learn_from(msg):
        """M_{i+1}'s regression onto the target of step s, made by block i+1 from its copy of h_i(s).

        If M_{i+1} has changed since it predicted for step s, it predicts again on the stored (h_i(s), y) with
        its current weights, so that the gradient of its regression loss is exact where it now is and only the
        target is late. Regressing the old prediction instead feeds a late error back into weights that have
        moved on; measured on MNIST FCN 3 (the table in docs/workers.md), one step of that delay was enough to
        stop the modules learning (cosine to the true gradient 0.02 / 0.08, against 0.46 / 0.69 when predicting
        again and 0.44 / 0.67 without delay)."""
        nonlocal version
        s, dx = msg
        recorder.step = s
        h, labels, dh_syn, sg_cache, made_at = pending.pop(s)
        if made_at != version:
            dh_syn, sg_cache, _ = block.synthetic_gradient(h, labels)
        sg_losses.append(block.sg_update(dh_syn, sg_cache, dh_target=dx))
        version += 1
        staleness.append((t, s))

    if barrier is not None:
        barrier()  # every worker has built its network: the clocks start together
    start = time.perf_counter()
    recorder = _Recorder(cfg.timeline)
    block.timeline = recorder
    for epoch in range(1, cfg.epochs + 1):
        if i == 0:
            perm = shuffle_rng.permutation(x_tr.shape[0])
        for b in range(plan["n_batches"]):
            t += 1
            recorder.step = t
            fail_here(crash, t, cfg.wait_timeout)
            if schedule.factor(t) != factor:  # learning rates change only at the schedule's milestones
                factor = schedule.factor(t)
                for opt in optimizers.values():
                    opt.lr = opt.base_lr * factor
            if i == 0:
                idx = perm[b * cfg.batch : (b + 1) * cfg.batch]
                x, y = x_tr[idx], y_tr[idx]  # (B, D_in), (B,)
            else:
                s, x, y = link.recv(i - 1, f"the activations of step {t}")
                _check_step(i, s, t, "activations")
            # every block sends its dx down as soon as it has it, before its own update
            if top:
                loss, dlogits, cache = output_loss(net, x, y)  # the output block's forward and the loss
                losses.append(loss)
                link.send(i - 1, (t, block.backward(dlogits, cache)))  # the true dL/dh_{N-2}
                block.update()
            else:
                h, cache = block.forward(x)  # (B, D_i)
                link.send(i + 1, (t, h, y))
                if decoupled:  # block.synthetic_step, with the send between its backward and its update
                    dh_syn, sg_cache, norm = block.synthetic_gradient(h, y)
                    dx = block.backward(block.clipped(dh_syn, norm), cache, need_dx=i > 0)
                    if i > 0:
                        link.send(i - 1, (t, dx))
                    block.update()
                    pending[t] = (h, y, dh_syn, sg_cache, version)
                    if cfg.delay is not None:
                        if t - cfg.delay >= 0:
                            learn_from(link.recv(i + 1, f"the target of step {t - cfg.delay}"))
                    else:
                        while (msg := link.try_recv(i + 1)) is not None:
                            learn_from(msg)
                        while len(pending) > cfg.max_inflight:
                            learn_from(link.recv(i + 1, f"the target of step {min(pending)}"))
                else:  # locked backprop: wait for the true gradient of this step
                    s, dh = link.recv(i + 1, f"the gradient of step {t}")
                    _check_step(i, s, t, "gradient")
                    dx = block.backward(dh, cache, need_dx=i > 0)
                    if i > 0:
                        link.send(i - 1, (t, dx))
                    block.update()
        if decoupled and not top and epoch == cfg.epochs:
            while pending:  # the last targets, so that every module has learnt from every step
                learn_from(link.recv(i + 1, f"the target of step {min(pending)}"))
        snapshots.append(_snapshot(net, i))
        epoch_ends.append(time.perf_counter() - start)
    seconds = time.perf_counter() - start
    link.close()
    return {
        "block": i,
        "seconds": seconds,
        "epoch_ends": epoch_ends,
        "snapshots": snapshots,
        "optimizers": {k: {"t": o.t, "lr": o.lr} for k, o in optimizers.items()},
        "losses": losses,
        "sg_losses": sg_losses,
        "staleness": staleness,
        "events": recorder.events,
        "rng": shuffle_rng.bit_generator.state if i == 0 else None,
    }


def _check_step(i, got, expected, what):
    """Messages between two workers arrive in the order they were sent; anything else is a bug, said plainly."""
    if got != expected:
        raise WorkerError(f"block {i} expected the {what} of step {expected}, got step {got}: messages out of order")


# -------------------------------------------------------------------------------------------------------------
# running the workers


def run_threads(cfg, plan, n_blocks, data):
    """One thread per block in this process; returns the workers' results, block 0 first."""
    refuse_in_threads()
    abort = threading.Event()
    queues = _queues(n_blocks, queue.Queue)
    start = threading.Barrier(n_blocks)
    results, failures = [None] * n_blocks, Failures(abort)

    def work(i):
        try:
            link = QueueLink(i, queues, abort, cfg.wait_timeout)
            results[i] = run_block(i, cfg, link, plan, data if i == 0 else None, lambda: start.wait(cfg.wait_timeout))
        except threading.BrokenBarrierError:
            failures.add(i, Stopped(f"block {i} stopped: another worker failed before the start"))
        except BaseException as err:  # noqa: BLE001  (reported below, with the block's name)
            failures.add(i, err)
            start.abort()

    threads = [threading.Thread(target=work, args=(i,), name=f"minidni-block{i}", daemon=True) for i in range(n_blocks)]
    for th in threads:
        th.start()
    while any(th.is_alive() for th in threads) and not failures.settled():
        time.sleep(0.05)
    abort.set()
    for th in threads:
        th.join(timeout=cfg.wait_timeout)  # a stuck thread cannot be killed: it is a daemon, left behind
    failures.raise_if_any()
    return results


def run_processes(cfg, plan, n_blocks, data):
    """One OS process per block (spawned, each with one BLAS thread); returns their results, block 0 first.
    This process waits, and stops every worker as soon as one fails or dies."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    abort, done = ctx.Event(), ctx.Queue()
    queues = _queues(n_blocks, ctx.Queue)
    start = ctx.Barrier(n_blocks)
    saved = {k: os.environ.get(k) for k in BLAS_ENV}
    os.environ.update({k: "1" for k in BLAS_ENV})  # read by the children's BLAS when they import NumPy
    try:
        procs = [
            ctx.Process(
                target=_process_main,
                args=(i, cfg, queues, abort, done, start, plan, data[:2] if i == 0 else None),  # block 0: the batches
                name=f"minidni-block{i}",
            )
            for i in range(n_blocks)
        ]
        with main_left_alone():
            for p in procs:
                p.start()
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    results, failures = [None] * n_blocks, Failures(abort)
    try:
        while any(r is None for r in results) and not failures.settled():
            try:
                kind, i, payload = done.get(timeout=0.1)
            except queue.Empty:
                for i, p in enumerate(procs):
                    if p.exitcode not in (None, 0) and results[i] is None and i not in failures.by_block:
                        failures.add(i, WorkerError(f"its process died (exit code {p.exitcode}) before it finished"))
                continue
            if kind == "error":
                failures.add(i, payload)
            else:
                results[i] = payload
    finally:
        abort.set()
        for p in procs:
            p.join(timeout=5 if not failures.by_block else 1)
            if p.is_alive():
                p.terminate()
                p.join()
    failures.raise_if_any()
    return results


class Failures:
    """What went wrong in which worker, and which of it to report.

    A worker that raises or dies is the cause: everybody stops at once (`abort`). A worker that only timed out
    waiting may be a bystander - when block 1 hangs, blocks 0 and 2 time out waiting for it and block 3 times out
    waiting for block 2 - so after a timeout the others get GRACE seconds to time out too, and the block that was
    waited for and said nothing itself is reported as the one that stopped answering."""

    GRACE = 1.0

    def __init__(self, abort):
        self.abort, self.by_block, self.deadline = abort, {}, None
        self.lock = threading.Lock()

    def add(self, block, err):
        """err: the exception, or (from a worker process) the dict `describe` made of it."""
        failure = err if isinstance(err, dict) else describe(err)
        with self.lock:
            self.by_block.setdefault(block, failure)
            if failure["waited_for"] is None and not failure["stopped"]:
                self.abort.set()  # a real failure: stop everybody now
            elif self.deadline is None:
                self.deadline = time.monotonic() + self.GRACE

    def settled(self):
        """True once the run must stop: a real failure, or the grace after the first timeout is over."""
        return self.abort.is_set() or (self.deadline is not None and time.monotonic() > self.deadline)

    def raise_if_any(self):
        if not self.by_block:
            return
        causes = {i: f for i, f in self.by_block.items() if not f["stopped"]} or self.by_block
        real = {i: f for i, f in causes.items() if f["waited_for"] is None}
        if real:
            i = min(real)
            raise WorkerError(f"the worker of block {i} failed: {real[i]['message']}")
        silent = sorted({f["waited_for"] for f in causes.values()} - set(self.by_block))
        if silent:
            waiters = sorted(i for i, f in causes.items() if f["waited_for"] == silent[0])
            raise WorkerError(
                f"block {silent[0]} stopped answering (it is stuck or died): {causes[waiters[0]]['message']}"
            )
        i = min(causes)
        raise WorkerError(f"the worker of block {i} failed: {causes[i]['message']}")


def describe(err):
    """A worker's exception as plain data (it crosses a process boundary): the message, with the traceback for
    anything unexpected, the block it timed out waiting for, and whether it only stopped because of another."""
    from minidni.dni.blocks import DivergenceError

    expected = isinstance(err, (WorkerError, DivergenceError))  # their messages say all; anything else: traceback
    return {
        "message": f"{type(err).__name__}: {err}" if expected else traceback.format_exc(),
        "waited_for": err.waited_for if isinstance(err, WaitTimeout) else None,
        "stopped": isinstance(err, Stopped),
    }


@contextlib.contextmanager
def main_left_alone():
    """While the workers start, hide where the caller's __main__ came from. A spawned process re-imports the
    parent's main module (to find functions defined there); ours run only minidni code, and re-running the
    caller's script (a tutorial, `python -m minidni`'s command line) in every worker would start it again."""
    main = sys.modules["__main__"]
    saved = {k: main.__dict__[k] for k in ("__spec__", "__file__") if k in main.__dict__}
    main.__spec__ = None
    main.__dict__.pop("__file__", None)
    try:
        yield
    finally:
        main.__dict__.update(saved)
        if "__spec__" not in saved:
            del main.__spec__


def _process_main(i, cfg, queues, abort, done, barrier, plan, data):
    coordinator = os.getppid()
    try:
        link = QueueLink(i, queues, abort, cfg.wait_timeout, alive=lambda: os.getppid() == coordinator)
        with use_blas_threads(cfg.threads):  # the child started with one thread (BLAS_ENV): now the run's count
            result = run_block(i, cfg, link, plan, data, lambda: barrier.wait(cfg.wait_timeout))
        done.put(("result", i, result))
    except BaseException as err:  # noqa: BLE001  (sent to the coordinator, which names the block)
        if isinstance(err, threading.BrokenBarrierError):
            err = Stopped(f"block {i} stopped: another worker failed before the start")
        for q in queues.values():  # messages nobody will read must not keep this process from exiting
            q.cancel_join_thread()
        done.put(("error", i, describe(err)))


def _queues(n_blocks, make):
    """One queue per direction between neighbours: (i, i+1) carries activations up, (i+1, i) targets down."""
    return {pair: make() for i in range(n_blocks - 1) for pair in ((i, i + 1), (i + 1, i))}


def run_mpi(cfg, plan, n_blocks, comm, data):
    """This rank's block (rank i runs block i); every rank returns the list of all results on rank 0, None on
    the others. A failing rank reports its error and aborts the whole MPI job, so that no rank waits forever."""
    rank = comm.Get_rank()
    try:
        link = MPILink(comm, cfg.wait_timeout)
        result = run_block(rank, cfg, link, plan, data if rank == 0 else None, comm.Barrier)
        return comm.gather(result, root=0)
    except Exception as err:
        message = f"error: MPI rank {rank} (block {rank}) failed: {type(err).__name__}: {err}"
        print(message, file=sys.stderr, flush=True)
        # mpiexec forwards each rank's stderr through a pipe; an abort at once can kill the job before the message
        # is forwarded (seen under load in CI), and the user would see a failed job with no reason
        time.sleep(0.5)
        comm.Abort(1)
        raise


# -------------------------------------------------------------------------------------------------------------
# the coordinator: start the workers, then assemble their blocks into one network and write the run


def train_in_workers(cfg, log=print, data=None):
    """train.train for cfg.workers set: returns the per-epoch metrics (an empty list on MPI ranks other than 0).
    Every worker's matrix products use cfg.threads BLAS threads (thread workers share that one pool)."""
    with use_blas_threads(cfg.threads):
        return _train_in_workers(cfg, log, data)


def _train_in_workers(cfg, log, data):
    from minidni.runs import train as T

    comm = None
    if cfg.workers == "mpi":
        comm = _mpi_comm()
        n_blocks = len(T.parse_split(cfg.split)) if cfg.split else T.depth(cfg.model)
        if comm.Get_size() != n_blocks:
            if comm.Get_rank() != 0:
                raise SystemExit(1)  # rank 0 says why
            raise ValueError(
                f"--distributed runs one MPI rank per block: {cfg.model}"
                f"{' split ' + cfg.split if cfg.split else ''} has {n_blocks} blocks, but {comm.Get_size()} ranks "
                f"were started; use mpiexec -n {n_blocks}"
            )
        if comm.Get_rank() != 0:
            log = lambda _msg: None  # noqa: E731  (rank 0 speaks for the run)
    root = comm is None or comm.Get_rank() == 0
    plan = error = None
    if root:
        try:
            plan, data = _plan(cfg, data, log)
        except Exception as err:
            error = err
    if comm is not None:  # every rank learns the plan, or that rank 0 could not make one (then all stop)
        plan, failed = comm.bcast((plan, error is not None) if root else None, root=0)
        if failed and not root:
            raise SystemExit(1)  # rank 0 says why
    if error is not None:
        raise error
    net = T.build_from_config(cfg, plan["in_shape"], plan["n_classes"])
    n_blocks = len(net.blocks)
    if root:
        T.atomic_write(
            os.path.join(cfg.out, T.CONFIG),
            json.dumps({"config": T.config_dict(cfg), "environment": T.environment()}, indent=2),
        )
        log(
            f"training {cfg.model}{' split ' + cfg.split if cfg.split else ''} ({cfg.mode}) on {cfg.data} in "
            f"{n_blocks} {cfg.workers} workers, one per block ({_schedule_name(cfg)}): {plan['n_batches']} steps "
            f"per epoch"
        )
    if cfg.workers == "thread":
        results = run_threads(cfg, plan, n_blocks, data)
    elif cfg.workers == "process":
        results = run_processes(cfg, plan, n_blocks, data)
    else:
        results = run_mpi(cfg, plan, n_blocks, comm, data)
    if not root:
        return []
    return assemble(cfg, net, plan, results, data, log)


def _plan(cfg, data, log):
    """What every worker must agree on (shapes, steps per epoch, learning-rate milestones), and the data."""
    from minidni.runs import train as T

    if os.path.exists(os.path.join(cfg.out, T.CHECKPOINT)) or os.path.exists(os.path.join(cfg.out, T.METRICS)):
        raise FileExistsError(f"{cfg.out} already holds a run (checkpoint or metrics); choose another --out")
    data = data if data is not None else T.load_data(cfg, log)
    x_tr = data[0]
    n_batches = x_tr.shape[0] // cfg.batch
    plan = {
        "in_shape": tuple(int(d) for d in x_tr.shape[1:]),
        "n_classes": T.N_CLASSES[cfg.data],
        "n_batches": n_batches,
        "milestones": T.lr_milestones(cfg, n_batches),
    }
    return plan, data


def _mpi_comm():
    try:
        from mpi4py import MPI
    except ImportError as err:
        raise ValueError(
            "--distributed needs mpi4py and an MPI (pip install -e '.[mpi]' brings both: mpi4py and mpich)"
        ) from err
    return MPI.COMM_WORLD


def mpiexec_path():
    """The mpiexec to start MPI ranks with: the one beside this Python (a virtual environment with the mpich
    wheel, whose bin/ need not be on PATH), else the one on PATH; None if there is none."""
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return here if os.access(here, os.X_OK) else shutil.which("mpiexec")


def _schedule_name(cfg):
    if cfg.mode == "bprop":
        return "locked backprop"
    if cfg.delay is not None:
        return f"targets used {cfg.delay} steps late"
    return f"asynchronous, at most {cfg.max_inflight} targets outstanding"


def assemble(cfg, net, plan, results, data, log=print):
    """Put the workers' blocks back into `net` epoch by epoch, evaluate them, and write the run directory:
    metrics.jsonl, checkpoint.npz (loadable by `minidni evaluate`), curves.png, staleness.png and, with
    cfg.timeline, timeline.json / timeline.png with the events as they really happened in the workers."""
    from minidni.runs import train as T
    from minidni.runs.plots import plot_learning_curves

    _, _, x_val, y_val, x_te, y_te = data
    n_batches, epochs = plan["n_batches"], cfg.epochs
    wall = max(r["seconds"] for r in results)  # the workers started together (a barrier)
    samples = epochs * n_batches * cfg.batch
    arrays = net.state_arrays()
    metrics = []
    for e in range(epochs):
        for r in results:
            restore_arrays({k: arrays[k] for k in r["snapshots"][e]}, r["snapshots"][e], where="a worker's snapshot")
        steps = slice(e * n_batches, (e + 1) * n_batches)
        top = results[-1]
        record = {"epoch": e + 1, "step": (e + 1) * n_batches, "train_loss": float(np.mean(top["losses"][steps]))}
        if cfg.mode != "bprop":
            record["sg_loss"], record["staleness_mean"], record["staleness_max"] = [], [], []
            for r in results[:-1]:
                used = [k for k, (_, s) in enumerate(r["staleness"]) if e * n_batches <= s < (e + 1) * n_batches]
                record["sg_loss"].append(float(np.mean([r["sg_losses"][k] for k in used])))
                lags = [r["staleness"][k][0] - r["staleness"][k][1] for k in used]
                record["staleness_mean"].append(float(np.mean(lags)))
                record["staleness_max"].append(int(np.max(lags)))
        record["val_error_pct"] = net.error_pct(x_val, y_val) if x_val.shape[0] else None
        record["test_error_pct"] = net.error_pct(x_te, y_te)
        ends = [r["epoch_ends"][e] for r in results]
        record["seconds"] = max(ends) - (max(r["epoch_ends"][e - 1] for r in results) if e else 0.0)
        record["samples_per_s"] = n_batches * cfg.batch / record["seconds"]
        metrics.append(record)
        log(T.epoch_summary(record))
    out = cfg.out
    T.write_metrics(out, metrics)
    # the checkpoint of a one-process run, from the workers' last state: their optimisers' step counts and
    # learning rates, block 0's shuffling RNG; plus how fast the workers went
    saved = {k: v for r in results for k, v in r["optimizers"].items()}
    for name, opt in net.optimizers().items():
        opt.t, opt.lr = saved[name]["t"], saved[name]["lr"]
    shuffle_rng = np.random.default_rng()
    shuffle_rng.bit_generator.state = results[0]["rng"]
    arrays, meta = T.network_state(net, shuffle_rng, epochs, epochs * n_batches, plan["milestones"], cfg)
    meta["workers"] = {"seconds": wall, "samples_per_s": samples / wall, "blocks": len(results)}
    save_checkpoint(os.path.join(out, T.CHECKPOINT), arrays, meta)
    plot_learning_curves(metrics, os.path.join(out, T.CURVES), title=f"{cfg.model} {cfg.mode} in {cfg.workers} workers")
    if cfg.mode != "bprop":
        staleness = {r["block"]: r["staleness"] for r in results[:-1]}
        atomic_write(os.path.join(out, "staleness.json"), json.dumps(staleness))
        plot_staleness(
            staleness, os.path.join(out, "staleness.png"), title=f"{cfg.model} {cfg.mode}: {_schedule_name(cfg)}"
        )
    if cfg.timeline:
        from minidni.runs.timeline import plot_timeline, write_chrome_trace

        events = connect([e for r in results for e in r["events"]], cfg.mode)
        runs = {f"{cfg.model} {cfg.mode} in {cfg.workers} workers": events}
        atomic_write(os.path.join(out, T.TIMELINE + ".json"), json.dumps([dataclasses.asdict(e) for e in events]))
        write_chrome_trace(runs, os.path.join(out, T.TIMELINE + ".trace.json"))  # real concurrency, zoomable
        plot_timeline(runs, os.path.join(out, T.TIMELINE + ".png"),
                      recorded=f"recorded in {len(results)} {cfg.workers} workers (real wall clock)")  # fmt: skip
    log(f"{samples} samples in {wall:.2f} s: {samples / wall:.0f} samples/s in {len(results)} {cfg.workers} workers")
    return metrics


def connect(events, mode):
    """The workers' events as one timeline: sorted by start, timed from the first, numbered, and each given the
    other blocks' events it read (forward: the block below's forward of the same step; locked backward and a
    module's regression: the block above's backward of the step it used)."""
    origin = min((e.start for e in events), default=0.0)
    events = sorted(events, key=lambda e: (e.start, e.block))
    index = {}
    for k, e in enumerate(events):
        e.id, e.start, e.end = k, e.start - origin, e.end - origin
        index.setdefault((e.kind, e.block, e.step), k)
    for e in events:
        if e.kind == "forward":
            wanted = [("forward", e.block - 1, e.step)]
        elif (e.kind == "backward" and mode == "bprop") or e.kind == "sg_update":  # the dx of block i+1, step t
            wanted = [("backward", e.block + 1, e.step)]
        else:
            wanted = []
        e.needs = tuple(index[w] for w in wanted if w in index and index[w] < e.id)
    return events


def plot_staleness(staleness, path, title=None):
    """Per hidden block: how many steps late each SG target was used (t - s), against the step t it was used."""
    from minidni.runs.plots import pyplot, save_figure, sg_module_name

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3))
    for block, pairs in staleness.items():
        t = np.array([p[0] for p in pairs])
        lag = np.array([p[0] - p[1] for p in pairs])
        ax.plot(t, lag, ".", ms=2, label=f"{sg_module_name(int(block))}, mean {lag.mean():.2f}")
    ax.set(xlabel="step t at which the target is used", ylabel="staleness t - s (steps)", title=title or "staleness")
    ax.legend(fontsize=7)
    save_figure(fig, path)
