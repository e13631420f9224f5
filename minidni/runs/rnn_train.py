"""Training runs for recurrent networks: the copy tasks with their curriculum, and character-level language models.

    cfg = RNNConfig(task="copy", mode="dni", T=3, episodes=20_000, out="runs/copy-dni-T3")
    metrics = train_rnn(cfg)                         # resumable: train_rnn(cfg, resume=True)

One run = one RecurrentNet (minidni.recurrent.cells) trained by a TruncatedTrainer (minidni.recurrent.truncated) in
chunks of T steps, in mode bptt, dni or dni_aux.

    copy, repeat_copy  every batch is a fresh episode at the curriculum's level (minidni.recurrent.tasks); the
                       state starts at zero, the episode is cut into chunks of T, each chunk is one update, and the
                       last chunk ends the sequence. After each episode the curriculum records the episode's bits
                       per bit. The result: the longest length solved within the budget of episodes.
    charlm             the training text laid out as B parallel streams walked in chunks of T, the state carried
                       across chunks (and reset when the streams wrap around). Validation bits per character
                       every `eval_every` updates; the best model is kept (best.npz) and training stops early
                       after `patience` evaluations without improvement. Its test BPC is reported at the end.

Everything a run writes is atomic (minidni.data.checkpoint): config.json, metrics.jsonl, checkpoint.npz (every
`checkpoint_every` seconds and at the end, with the RNG, curriculum and optimiser state, so a resumed run continues
exactly where it stopped). One exception: a language model in mode dni or dni_aux checkpoints mid-stream, and the
one synthetic-gradient prediction then awaiting its target is not saved, so after a resume the module skips that
one regression step (copy runs checkpoint between episodes, where nothing awaits a target, and resume exactly).

What this module deliberately is not: an experiment harness (minidni.experiments.recurrent runs grids of these).
"""

import dataclasses
import json
import math
import os
import time

import numpy as np

from minidni.core.backend import DEFAULT_DTYPE, to_numpy, xp
from minidni.data.checkpoint import (
    CheckpointError,
    atomic_write,
    load_checkpoint,
    read_jsonl,
    restore_arrays,
    save_checkpoint,
    write_jsonl,
)
from minidni.core.functional import softmax_xent_sum
from minidni.core.optim import make_optimizer
from minidni.recurrent.cells import CELLS, RecurrentNet, make_cell
from minidni.recurrent.truncated import MODES, TruncatedTrainer
from minidni.dni.synthetic import make_synthetic_gradient
from minidni.runs.threads import DEFAULT_THREADS, check_threads, use_blas_threads
from minidni.recurrent.tasks import (
    TASKS,
    Curriculum,
    bit_error_rate,
    bits_per_bit,
    make_episode,
    sigmoid_xent,
    task_dims,
)

RNN_TASKS = TASKS + ("charlm",)
CHECKPOINT, BEST, METRICS, CONFIG = "checkpoint.npz", "best.npz", "metrics.jsonl", "config.json"
LN2 = math.log(2.0)


@dataclasses.dataclass
class RNNConfig:
    task: str = "copy"  # copy | repeat_copy | charlm
    mode: str = "dni"  # bptt | dni | dni_aux
    T: int = 3  # truncation: steps per chunk (one update per chunk)
    cell: str = "lstm"  # lstm | rnn
    hidden: int = 128  # units of the cell (the state is 2 x hidden for an LSTM)
    batch: int = 32
    lr: float = 3e-3  # Adam, the core
    sg_lr: float = None  # Adam, the SG module (None: lr)
    sg: str = "linear"  # linear | mlp: the SG module over the state
    sg_hidden: int = 256  # mlp SG: width of its hidden layers
    sg_use_scale: float = 0.1  # the synthetic gradient enters the core multiplied by this
    sg_discount: float = None  # lambda in the SG target (None: 1 for the copy tasks, 0.1 for charlm's endless stream)
    aux_weight: float = 1.0  # dni_aux: weight of the auxiliary loss
    context: bool = False  # charlm: condition the SG module on the next character (cDNI-style)
    clip: float = 1.0  # max L2 norm of the core's gradient per chunk (None: no clipping)
    seed: int = 0
    # copy tasks
    episodes: int = 20_000  # the budget: training episodes (batches of sequences)
    bits: int = 8
    threshold: float = 0.15  # a level is solved when the mean bits per bit over `window` batches is below this
    window: int = 50
    max_level: int = None
    log_every: int = 500  # episodes between metric records
    # charlm
    text: str = "shakespeare"  # shakespeare | a path to a UTF-8 text file | ptb:<directory with ptb.char.*.txt>
    updates: int = 20_000  # the budget: parameter updates (chunks)
    eval_every: int = 1000
    eval_chars: int = 100_000  # validation characters per evaluation (the first ones of the valid split)
    patience: int = 5  # evaluations without a better validation BPC before stopping (early stopping)
    checkpoint_every: float = 60.0  # seconds between checkpoints
    out: str = "runs/rnn"
    data_dir: str = None
    threads: int = DEFAULT_THREADS  # BLAS threads for the matrix products (minidni.runs.threads: why 1 by default)

    def validate(self):
        """Raise ValueError naming the first bad field and what was expected."""
        if self.task not in RNN_TASKS:
            raise ValueError(f"task must be one of {RNN_TASKS}, got {self.task!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.cell not in CELLS:
            raise ValueError(f"cell must be one of {tuple(CELLS)}, got {self.cell!r}")
        if self.sg not in ("linear", "mlp"):
            raise ValueError(f"sg must be 'linear' or 'mlp', got {self.sg!r}")
        for name in ("T", "hidden", "batch", "sg_hidden", "episodes", "bits", "window", "log_every", "updates",
                     "eval_every", "eval_chars", "patience"):  # fmt: skip
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        for name in ("lr", "sg_use_scale", "threshold", "checkpoint_every", "aux_weight"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number, got {value!r}")
        for name in ("sg_lr", "clip"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive finite number or None, got {value!r}")
        check_threads(self.threads)
        if self.context and self.task != "charlm":
            raise ValueError("context (a cDNI-style SG module) is defined for the charlm task only")
        if self.sg_discount is not None and not 0 <= self.sg_discount <= 1:
            raise ValueError(f"sg_discount must be in [0, 1] or None, got {self.sg_discount!r}")
        if self.max_level is not None and not (isinstance(self.max_level, int) and self.max_level >= 1):
            raise ValueError(f"max_level must be >= 1 or None, got {self.max_level}")
        return self


# -------------------------------------------------------------------------------------------------------------
# building


def build(cfg, d_in, d_out, n_context=None):
    """The RecurrentNet, its TruncatedTrainer (with SG module and optimisers) from a config."""
    rng = np.random.default_rng(cfg.seed)
    net = RecurrentNet(make_cell(cfg.cell, d_in, cfg.hidden, rng=rng), d_out, rng=rng)
    net.set_optimizer(lambda p: make_optimizer("adam", p, cfg.lr))
    sg = None
    if cfg.mode != "bptt":
        # scale = batch: the module's own targets are per-example gradients, O(1) (see SyntheticGradient.update)
        sg = make_synthetic_gradient(cfg.sg, net.state_size, n_classes=n_context, hidden_width=cfg.sg_hidden,
                                     scale=cfg.batch, rng=rng)  # fmt: skip
        sg.set_optimizer(lambda p: make_optimizer("adam", p, cfg.sg_lr or cfg.lr))
    discount = cfg.sg_discount if cfg.sg_discount is not None else (0.1 if cfg.task == "charlm" else 1.0)
    trainer = TruncatedTrainer(net, cfg.mode, sg=sg, sg_use_scale=cfg.sg_use_scale, aux_weight=cfg.aux_weight,
                               clip=cfg.clip, rng=rng, sg_discount=discount)  # fmt: skip
    trainer.set_aux_optimizer(lambda p: make_optimizer("adam", p, cfg.lr))
    return trainer


def _optimizers(trainer):
    out = {}
    for name, layer in trainer.layers().items():
        out.update(layer.optimizers(f"{name}."))
    return out


def _save(path, trainer, meta):
    meta = dict(meta, optimizers={k: {"t": o.t, "lr": o.lr} for k, o in _optimizers(trainer).items()})
    save_checkpoint(path, trainer.state_arrays(), meta)


def _restore(path, trainer):
    arrays, meta = load_checkpoint(path)
    restore_arrays(trainer.state_arrays(), arrays, where=path)
    for name, opt in _optimizers(trainer).items():
        opt.t, opt.lr = int(meta["optimizers"][name]["t"]), float(meta["optimizers"][name]["lr"])
    return meta


def read_metrics(out):
    return read_jsonl(os.path.join(out, METRICS))


def _write_metrics(out, metrics):
    write_jsonl(os.path.join(out, METRICS), metrics)


def _start(cfg, resume, log):
    """Check the output directory against `resume`; write config.json. Returns the checkpoint path."""
    cfg.validate()
    os.makedirs(cfg.out, exist_ok=True)
    ckpt = os.path.join(cfg.out, CHECKPOINT)
    config_path = os.path.join(cfg.out, CONFIG)
    if resume:
        if os.path.exists(config_path):
            with open(config_path) as f:
                saved = json.load(f)
            budget = ("episodes", "updates", "log_every", "eval_every", "checkpoint_every", "patience", "out",
                      "data_dir", "threads")  # fmt: skip
            diffs = [k for k, v in dataclasses.asdict(cfg).items() if k not in budget and saved.get(k) != v]
            if diffs:
                detail = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(cfg, k)!r}" for k in diffs)
                raise CheckpointError(f"cannot resume {cfg.out}: the configuration differs ({detail})")
    elif os.path.exists(ckpt) or os.path.exists(os.path.join(cfg.out, METRICS)):
        raise CheckpointError(f"{cfg.out} already holds a run; resume it, or choose another output directory")
    atomic_write(config_path, json.dumps(dataclasses.asdict(cfg), indent=2))
    return ckpt


# -------------------------------------------------------------------------------------------------------------
# copy and repeat copy


def train_copy(cfg, resume=False, log=print):
    """Train on copy / repeat_copy with the curriculum; returns the metric records (the last is the result)."""
    ckpt = _start(cfg, resume, log)
    d_in, d_out = task_dims(cfg.task, cfg.bits)
    trainer = build(cfg, d_in, d_out)
    data_rng = np.random.default_rng([cfg.seed, 1])  # the episodes: their own stream, independent of the weights
    curriculum = Curriculum(threshold=cfg.threshold, window=cfg.window, max_level=cfg.max_level)
    episode, seconds, metrics = 0, 0.0, read_metrics(cfg.out) if resume else []
    if resume and os.path.exists(ckpt):
        meta = _restore(ckpt, trainer)
        data_rng.bit_generator.state = meta["rng"]
        curriculum.load_state_dict(meta["curriculum"])
        episode, seconds = meta["episode"], meta["seconds"]
        log(f"resumed at episode {episode} (level {curriculum.level})")
    metrics = [m for m in metrics if m["episode"] <= episode]  # records after the checkpoint are redone

    def checkpoint():
        meta = {"episode": episode, "seconds": seconds, "rng": data_rng.bit_generator.state,
                "curriculum": curriculum.state_dict(), "task": cfg.task}  # fmt: skip
        _save(ckpt, trainer, meta)
        _write_metrics(cfg.out, metrics)

    window_bpb, window_ber, sg_losses = [], [], []
    last_save = time.perf_counter()
    while episode < cfg.episodes and not curriculum.done:
        t0 = time.perf_counter()
        ep = make_episode(cfg.task, data_rng, cfg.batch, curriculum.level, bits=cfg.bits)
        logits = _train_episode(trainer, ep, cfg.T, sg_losses)
        bpb = bits_per_bit(logits, ep.y, ep.mask)
        window_bpb.append(bpb)
        window_ber.append(bit_error_rate(logits, ep.y, ep.mask))
        if curriculum.update(bpb):
            log(f"episode {episode + 1}: length {curriculum.solved} solved")
        episode += 1
        seconds += time.perf_counter() - t0
        if episode % cfg.log_every == 0 or episode == cfg.episodes or curriculum.done:
            metrics.append({
                "episode": episode, "level": curriculum.level, "solved": curriculum.solved,
                "bits_per_bit": float(np.mean(window_bpb)), "bit_error_rate": float(np.mean(window_ber)),
                "sg_loss": float(np.mean(sg_losses)) if sg_losses else None, "seconds": round(seconds, 2),
            })  # fmt: skip
            window_bpb, window_ber, sg_losses = [], [], []
            _write_metrics(cfg.out, metrics)
        if time.perf_counter() - last_save > cfg.checkpoint_every:
            checkpoint()
            last_save = time.perf_counter()
    checkpoint()
    log(f"{cfg.task} {cfg.mode} T={cfg.T}: longest length solved {curriculum.solved} after {episode} episodes "
        f"({seconds:.0f} s)")  # fmt: skip
    return metrics


def _train_episode(trainer, ep, T, sg_losses):
    """One episode, chunk by chunk from a zero state; returns the logits of every step (L, B, O)."""
    L, B = ep.x.shape[:2]
    backend = xp()
    x, y, mask = (backend.asarray(a, dtype=DEFAULT_DTYPE) for a in (ep.x, ep.y, ep.mask))
    trainer.begin_sequence(B)
    outs = []
    for a in range(0, L, T):
        b = min(a + T, L)
        loss_fn = lambda z, a=a, b=b: sigmoid_xent(z, y[a:b], mask[a:b])
        m, logits = trainer.train_chunk(x[a:b], loss_fn, ends_sequence=b == L)
        outs.append(logits)
        if m["sg_loss"] is not None:
            sg_losses.append(m["sg_loss"])
    return backend.concatenate(outs)


# -------------------------------------------------------------------------------------------------------------
# character-level language modelling


def load_corpus(cfg, log=print):
    """(vocab, train ids, valid ids, test ids) for cfg.text: 'shakespeare', 'ptb:<dir>' or a text file."""
    from minidni.data import text as textdata

    if cfg.text.startswith("ptb:"):
        parts = textdata.load_ptb_chars(cfg.text[4:])
        vocab = textdata.CharVocab.from_text(parts["train"] + parts["valid"] + parts["test"])
        return vocab, *(vocab.encode(parts[k]) for k in ("train", "valid", "test"))
    if cfg.text == "shakespeare":
        corpus = textdata.load_shakespeare(cache_dir=cfg.data_dir, log=log)
    else:
        corpus = textdata.load_text_file(cfg.text)
    vocab = textdata.CharVocab.from_text(corpus)
    return vocab, *textdata.split_ids(vocab.encode(corpus))


def evaluate_bpc(net, ids, batch, T=100):
    """Bits per character of `net` on the id sequence, read as `batch` parallel streams with the state carried."""
    from minidni.data.text import chunks, stream_batches

    streams = stream_batches(ids, batch)
    s = net.initial_state(streams.shape[0])
    total, count = 0.0, 0
    for x, y in chunks(streams, T):
        logits, ss, _ = net.forward(xp().asarray(x), s)
        s = ss[-1]
        nll, _ = softmax_xent_sum(logits, xp().asarray(y))
        total += nll * y.shape[1]
        count += y.size
    return total / count / LN2


def train_charlm(cfg, resume=False, log=print, corpus=None):
    """Character-level LM with early stopping on validation BPC; returns the metric records. The last record holds
    the best validation BPC and the test BPC of that best model. corpus: (vocab, train, valid, test) skips loading."""
    from minidni.data.text import chunks, stream_batches

    ckpt = _start(cfg, resume, log)
    vocab, train_ids, valid_ids, test_ids = corpus if corpus is not None else load_corpus(cfg, log)
    V = vocab.size
    trainer = build(cfg, V, V, n_context=V if cfg.context else None)
    streams = stream_batches(train_ids, cfg.batch)  # (B, L)
    steps_per_pass = (streams.shape[1] - 1 + cfg.T - 1) // cfg.T  # chunks in one pass over the streams
    valid = valid_ids[: cfg.eval_chars + 1]
    update, seconds, best, bad_evals = 0, 0.0, math.inf, 0
    metrics = read_metrics(cfg.out) if resume else []
    if resume and os.path.exists(ckpt):
        meta = _restore(ckpt, trainer)
        update, seconds, best, bad_evals = meta["update"], meta["seconds"], meta["best"], meta["bad_evals"]
        state = meta["state"]  # nested lists from the checkpoint's JSON metadata: on the host
        trainer.s = None if state is None else xp().asarray(np.array(state, dtype=DEFAULT_DTYPE))  # cupy: host list
        log(f"resumed at update {update} (best validation BPC {best:.3f})")
    metrics = [m for m in metrics if m["update"] <= update and not m.get("final")]  # the final record is redone too

    def checkpoint(path=ckpt):
        state = None if trainer.s is None else to_numpy(trainer.s).tolist()
        _save(path, trainer, {"update": update, "seconds": seconds, "best": best, "bad_evals": bad_evals,
                              "state": state, "vocab": vocab.to_json()})  # fmt: skip
        _write_metrics(cfg.out, metrics)

    # The chunk to train next is a pure function of `update`: resuming needs no iterator state.
    all_chunks = None
    train_nll, sg_losses, last_save = [], [], time.perf_counter()
    while update < cfg.updates and bad_evals < cfg.patience:
        t0 = time.perf_counter()
        k = update % steps_per_pass
        if k == 0 or trainer.s is None:  # (re)start of a pass over the streams: a fresh state
            trainer.begin_sequence(streams.shape[0])
            all_chunks = None
        if all_chunks is None:
            all_chunks = list(chunks(streams, cfg.T))
        x, y = (xp().asarray(a) for a in all_chunks[k])
        last = k == steps_per_pass - 1
        context = y[-1] if cfg.context else None  # the next input character: known at the chunk's end
        m, _ = trainer.train_chunk(x, lambda z, y=y: softmax_xent_sum(z, y), ends_sequence=last, context=context)
        train_nll.append(m["loss"] / y.shape[0])
        if m["sg_loss"] is not None:
            sg_losses.append(m["sg_loss"])
        update += 1
        seconds += time.perf_counter() - t0
        if update % cfg.eval_every == 0 or update == cfg.updates:
            bpc = evaluate_bpc(trainer.net, valid, batch=min(32, max(1, (len(valid) - 1) // 100)))
            improved = bpc < best
            best, bad_evals = (bpc, 0) if improved else (best, bad_evals + 1)
            metrics.append({
                "update": update, "train_bpc": float(np.mean(train_nll)) / LN2, "valid_bpc": bpc,
                "best_valid_bpc": best, "sg_loss": float(np.mean(sg_losses)) if sg_losses else None,
                "seconds": round(seconds, 2),
            })  # fmt: skip
            log(f"update {update}: train {metrics[-1]['train_bpc']:.3f} valid {bpc:.3f} bits/char")
            train_nll, sg_losses = [], []
            if improved:
                checkpoint(os.path.join(cfg.out, BEST))
            checkpoint()
            last_save = time.perf_counter()
        elif time.perf_counter() - last_save > cfg.checkpoint_every:
            checkpoint()
            last_save = time.perf_counter()
    checkpoint()
    # Test BPC by two rules, side by side: the model as training left it, and the best-validation model (early
    # stopping; the one the tables report). Validation and test are different text, so the two can disagree.
    test = test_ids[: cfg.eval_chars + 1]
    test_batch = min(32, max(1, (len(test) - 1) // 100))  # as for validation
    final_test_bpc = evaluate_bpc(trainer.net, test, batch=test_batch)
    best_path = os.path.join(cfg.out, BEST)
    if os.path.exists(best_path):
        _restore(best_path, trainer)
    test_bpc = evaluate_bpc(trainer.net, test, batch=test_batch)
    metrics.append({"update": update, "final": True, "best_valid_bpc": best, "test_bpc": test_bpc,
                    "final_test_bpc": final_test_bpc,
                    "stopped_early": bad_evals >= cfg.patience and update < cfg.updates,
                    "seconds": round(seconds, 2)})  # fmt: skip
    _write_metrics(cfg.out, metrics)
    log(f"charlm {cfg.mode} T={cfg.T}: best validation {best:.3f}; test {test_bpc:.3f} bits/char (best-validation "
        f"model), {final_test_bpc:.3f} (final model)")
    return metrics


def train_rnn(cfg, resume=False, log=print, corpus=None):
    """Train one recurrent run as configured (copy, repeat_copy or charlm); returns its metric records. The matrix
    products use cfg.threads BLAS threads for the run (the limit before it is restored after)."""
    cfg.validate()
    with use_blas_threads(cfg.threads):
        if cfg.task == "charlm":
            return train_charlm(cfg, resume=resume, log=log, corpus=corpus)
        return train_copy(cfg, resume=resume, log=log)
