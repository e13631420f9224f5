"""The first run: the four training modes side by side, one table and one figure.

    python -m minidni modes --data mnist --out runs/modes

trains the same FCN 3 (784-256-256-10, batch norm, Adam) four times with the same seed, data and schedule:

    nobprop   only the output layer learns: what the hidden layers give for free (a floor, not a method)
    bprop     backpropagation: every block waits for the gradient to come back down (update locked)
    dni       every hidden block updates at once with a synthetic gradient from an MLP (two hidden layers of 1,024
              units, the paper's) that sees only the block's output h (label free), itself regressed onto the
              gradient the block above passes down
    cdni      the same with a linear module that also sees the label (conditional DNI)

and writes into OUT:

    table.md        the test errors (and the paper's, labelled recalled), printed at the end
    modes.png       the figure below
    runs/<mode>/    each run's own directory (config.json, metrics.jsonl, curves.png, timeline.json, checkpoint)

The figure, left to right and top to bottom: (1) test error per epoch, every mode on one axis; (2) how well each
SG module predicts the true gradient, cos(dh_syn, dh_true) on a held-out validation batch, per epoch; (3, 4) what
update locking costs: steps of bprop and cdni as recorded by the trainer, re-timed into the earliest schedule that
their dependencies allow with one worker per block (minidni.runs.timeline). Under bprop block 0 waits for the whole
forward and backward pass; under cdni it is done with a batch before block 1 starts.

Ten epochs of each, with the paper's modules, take about two and a half minutes on 2 cores with one BLAS thread
(the dni run most of it: its module costs about ten times the network's step; --dni-hidden 256 is about four times
cheaper and ends worse). docs/results.md has the measured table and times. An interrupted call continues where it
stopped: finished runs are skipped, a stopped one resumes from its checkpoint
(minidni.experiments.feedforward.run_all).

What this module deliberately is not: an experiment of the paper. It is the one command that shows what the rest
of minidni explains; Table 1 at the paper's sizes is `python -m minidni experiment table1`.
"""

import json
import os

import numpy as np

from minidni.data.checkpoint import atomic_write
from minidni.experiments.feedforward import Run, paper_cell, run_all
from minidni.runs.plots import pyplot, save_figure
from minidni.runs.threads import DEFAULT_THREADS
from minidni.runs.timeline import (
    COLOURS,
    Timeline,
    draw_timeline,
    earliest_schedule,
    legend_handles,
    makespan,
    warmup_steps_of,
    without_steps,
)
from minidni.runs.train import TIMELINE, TrainConfig, load_data

MODES = ("nobprop", "bprop", "dni", "cdni")
EPOCHS = 10
DNI_HIDDEN = 1024  # width of the dni module's two hidden layers, the paper's
TIMELINE_STEPS = 6  # steps recorded block by block; the first WARMUP_STEPS are not drawn: allocations, BLAS start
WARMUP_STEPS = 3
DESCRIPTIONS = {
    "nobprop": "only the output layer learns",
    "bprop": "backpropagation (update locked)",
    "dni": "DNI: MLP SG module (2 x {sg_hidden}), no labels",
    "cdni": "cDNI: linear SG module, sees the label",
}


def modes_runs(data="mnist", model="fcn3", modes=MODES, epochs=EPOCHS, seed=0, dni_hidden=DNI_HIDDEN, **fields):
    """One minidni.experiments.feedforward.Run per mode, identical but for the mode (and the dni module's width,
    dni_hidden). fields: further TrainConfig fields for every run (e.g. train_subset for a quick look)."""
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        raise ValueError(f"modes must be a non-empty subset of {MODES}, got {list(modes)}")
    runs = []
    for mode in modes:
        cfg = TrainConfig(data=data, model=model, mode=mode, epochs=epochs, seed=seed, progress=False,
                          diagnostics=mode in ("dni", "cdni"), timeline=TIMELINE_STEPS, **fields)  # fmt: skip
        if mode == "dni":
            cfg.sg_hidden = dni_hidden
        runs.append(Run({"mode": mode}, cfg.validate()))
    return runs


def train_modes(out, data="mnist", model="fcn3", modes=MODES, epochs=EPOCHS, seed=0, threads=DEFAULT_THREADS,
                log=print, **fields):  # fmt: skip
    """Train the modes into out/runs/<mode>, then write out/table.md and out/modes.png; returns the table's rows
    ({mode, test_error_pct, ...} per mode; format_table prints them as the table). Finished runs are skipped,
    stopped ones resumed."""
    runs = modes_runs(data, model, modes, epochs, seed, **fields)
    os.makedirs(out, exist_ok=True)
    loaded = load_data(runs[0].cfg, log)  # once for all runs: they differ only in mode
    metrics = run_all(runs, out, log, loaded, threads=threads)  # one at a time: the timelines are not shared
    rows = [summary_row(run, metrics[run.name]) for run in runs]
    table = format_table(rows, data, model, epochs)
    atomic_write(os.path.join(out, "table.md"), table + "\n")
    atomic_write(os.path.join(out, "results.json"), json.dumps(rows, indent=1))
    plot_modes(runs, metrics, os.path.join(out, "modes.png"),
               title=f"{model.upper()} on {data}, {epochs} epoch{'s' * (epochs != 1)}")  # fmt: skip
    log(f"wrote {os.path.join(out, 'table.md')}, {os.path.join(out, 'modes.png')} and each run's files in "
        f"{os.path.join(out, 'runs')}/<mode>")
    return rows


def summary_row(run, metrics):
    """The table's numbers for one finished run."""
    last = metrics[-1]
    what = DESCRIPTIONS[run.cfg.mode].format(sg_hidden=run.cfg.sg_hidden)
    row = {"mode": run.cfg.mode, "what": what, "test_error_pct": last["test_error_pct"],
           "epochs": last["epoch"], "seconds_per_epoch": float(np.median([m["seconds"] for m in metrics]))}  # fmt: skip
    if last.get("sg_cosine"):  # dni, cdni: mean over the modules of cos(dh_syn, dh_true) after the last epoch
        row["sg_cosine"] = float(np.mean(last["sg_cosine"]))
    if run.cfg.data == "mnist":  # the paper's numbers are MNIST's
        row["paper"] = paper_cell(run.cfg.model, run.cfg.mode)
    return row


def format_table(rows, data, model, epochs):
    lines = [
        f"{model.upper()} on {data}, {epochs} epoch{'s' * (epochs != 1)}, batch 256. Paper: Jaderberg et al. 2016, "
        "Table 1, "
        "after 500k iterations (recalled values marked).",
        "",
        "| mode | what trains the hidden blocks | test error % | SG cosine | s/epoch | paper |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        cosine = f"{r['sg_cosine']:.2f}" if "sg_cosine" in r else "-"
        lines.append(f"| {r['mode']} | {r['what']} | {r['test_error_pct']:.2f} | {cosine} | "
                     f"{r['seconds_per_epoch']:.1f} | {r.get('paper', '-')} |")  # fmt: skip
    return "\n".join(lines)


def recorded_steps(run_dir):
    """The events of the steps recorded in run_dir/timeline.json after the WARMUP_STEPS first, or None."""
    path = os.path.join(run_dir, TIMELINE + ".json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        events = Timeline.events_from_json(f.read())
    return without_steps(events, warmup_steps_of(events, WARMUP_STEPS)) or None


def plot_modes(runs, metrics, path, title=None):
    """The one figure of the first run (see the module docstring)."""
    plt = pyplot()
    from matplotlib import ticker

    # two rows of panels and a last, empty row for the key of the timelines, where it covers nothing
    fig, axes = plt.subplots(3, 2, figsize=(13, 9), gridspec_kw={"height_ratios": [1.25, 1, 0.15]})
    key = fig.add_subplot(axes[2, 0].get_gridspec()[2, :])
    for ax in axes[2]:
        ax.remove()
    key.axis("off")
    ax = axes[0, 0]
    for k, run in enumerate(runs):
        m = metrics[run.name]
        epochs, error = [r["epoch"] for r in m], [r["test_error_pct"] for r in m]
        ax.plot(epochs, error, marker="o", ms=3, color=f"C{k}", label=f"{run.cfg.mode}: {error[-1]:.2f}%")
    ax.set_yscale("log")
    top = max(r["test_error_pct"] for run in runs for r in metrics[run.name])
    ax.set_ylim(top=3 * top)  # room for the legend above the curves
    ax.yaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="test error (%, log scale)", title="1. test error: the modes side by side")
    ax.legend(fontsize=8, loc="upper right", ncol=2)

    ax = axes[0, 1]
    drawn = False
    for k, run in enumerate(runs):
        aligned = [r for r in metrics[run.name] if r.get("sg_cosine")]
        if not aligned:
            continue
        cos = np.array([r["sg_cosine"] for r in aligned])  # (epochs, SG modules)
        for i in range(cos.shape[1]):
            ax.plot([r["epoch"] for r in aligned], cos[:, i], color=f"C{k}", ls=("-", "--", ":")[i % 3], marker=".",
                    label=f"{run.cfg.mode}: SG module after block {i}")  # fmt: skip
        drawn = True
    ax.axhline(0, c="0.7", lw=0.7)
    ax.set(xlabel="epoch", ylabel="cos(synthetic, true gradient)", ylim=(-0.1, 1.0),
           title="2. how well the SG modules predict the true gradient")  # fmt: skip
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
    if drawn:
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no dni or cdni run", ha="center", transform=ax.transAxes)

    timelines = {run.cfg.mode: recorded_steps(run.cfg.out) for run in runs if run.cfg.mode in ("bprop", "cdni")}
    timelines = {mode: events for mode, events in timelines.items() if events}
    early = {mode: earliest_schedule(events) for mode, events in timelines.items()}
    right = max((max(e.end for e in ev) for ev in early.values()), default=1.0) * 1e3
    for k, (ax, (mode, events)) in enumerate(zip(axes[1], early.items())):
        steps = len({e.step for e in events})
        busy = sum(e.duration for e in events if e.block == 0)
        idle = 1 - busy / makespan(events)  # block 0's share of the time spent waiting for other blocks
        draw_timeline(ax, events, f"{3 + k}. {mode}, one worker per block: {steps} steps in "
                      f"{makespan(events) * 1e3:.1f} ms, block 0 idle {100 * idle:.0f}%", arrows=False)  # fmt: skip
        ax.set_xlim(0, right)
    for ax in axes[1][len(early):]:
        ax.axis("off")
    key.legend(handles=legend_handles(), loc="center", ncol=len(COLOURS), fontsize=8, frameon=False,
               title="3, 4: training steps recorded by the trainer (after warm-up), each piece of work started as "
               "early as its inputs allow", title_fontsize=8)  # fmt: skip
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return path
