"""Pictures of runs, drawn from their metrics (the dicts written to metrics.jsonl), with matplotlib.

What this module deliberately is not: interactive. Figures are written to files (PNG) with the non-GUI Agg
backend, so they work on servers and in CI.
"""

import io
import re

import numpy as np

from minidni.data.checkpoint import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nan(value):
    return float("nan") if value is None else value


# Every figure's words for the keys of metrics.jsonl (axis labels, panel titles): one table, so that no figure shows
# a raw key. A title is the label without its parenthesis ("test error (%)" -> "test error").
METRIC_LABELS = {
    "epoch": "epoch",
    "train_loss": "training loss (cross-entropy, epoch mean)",
    "test_error_pct": "test error (%)",
    "val_error_pct": "validation error (%)",
    "test_loss": "test loss (cross-entropy)",
    "sg_loss": "SG regression loss (epoch mean)",
    "input_loss": "synthetic-input regression loss (epoch mean)",
    "sg_cosine": "cos(dh_syn, dh_true)",
}


def metric_label(key):
    """The words for a metric key: METRIC_LABELS, or the key with spaces for underscores if it is not there."""
    return METRIC_LABELS.get(key, key.replace("_", " "))


def metric_title(key):
    return metric_label(key).split(" (")[0]


def sg_module_name(i):
    """The name every figure and log line gives the SG module that reads block i's output."""
    return f"SG module after block {i}"


def epoch_axis(ax, epochs):
    """Whole-number epoch ticks; a run of one epoch gets limits of +-0.5 around it instead of matplotlib's +-4%."""
    import matplotlib.ticker

    epochs = [e for e in epochs if e is not None]
    if epochs and min(epochs) == max(epochs):  # (MaxNLocator would fall back to 0.1 steps between 0.5 and 1.5)
        ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([epochs[0]]))
        ax.set_xlim(epochs[0] - 0.5, epochs[0] + 0.5)
    else:
        ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))


def _marker(n_points, many="."):
    """A single point must be seen: a big marker then, a small one (or none) on a curve of many points."""
    return "o" if n_points == 1 else many


def log_axis(ax):
    """Put ax's y axis on a log scale with enough labelled ticks (4 or more), written as plain numbers (0.2, 20;
    not 2 x 10^1), however many decades the data spans: powers of 10 over several, 1-2-5 over a few, 1-9 within
    one (and within a small factor, where these would be too few, matplotlib's LogLocator itself takes even linear
    steps). Call it after everything is drawn: it reads the limits."""
    from matplotlib import ticker

    ax.set_yscale("log")
    lo, hi = ax.get_ylim()
    for subs in ((1.0,), (1.0, 2.0, 5.0), tuple(range(1, 10))):  # the sparsest set that gives 4 ticks or more
        ticks = [t for t in ticker.LogLocator(subs=subs).tick_values(lo, hi) if lo <= t <= hi]
        if len(ticks) >= 4:
            break
    ax.yaxis.set_major_locator(ticker.FixedLocator(ticks))
    ax.yaxis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:.6g}"))
    ax.yaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_ylim(lo, hi)


def plot_learning_curves(metrics, path, title=None, paper_error=None):
    """Training loss, validation/test error and (if present) SG losses and gradient alignment per epoch.

    metrics: list of per-epoch dicts; paper_error: optional {label: test error %} drawn as labelled reference
    lines (e.g. {"paper (Jaderberg et al.), cDNI FCN3": 2.2}). Returns the (closed) matplotlib Figure.
    """
    plt = pyplot()
    epochs = [m["epoch"] for m in metrics]
    has_sg = any(m.get("sg_loss") for m in metrics)
    has_align = any(m.get("sg_cosine") for m in metrics)
    ncols = 2 + has_sg + has_align
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6))
    small = _marker(len(epochs))  # "." on a curve, "o" for a single epoch

    ax = axes[0]
    ax.plot(epochs, [m["train_loss"] for m in metrics], marker="o")
    ax.set(xlabel=metric_label("epoch"), ylabel=metric_label("train_loss"), title=metric_title("train_loss"))
    log_axis(ax)

    ax = axes[1]
    ax.plot(epochs, [m["test_error_pct"] for m in metrics], marker="o", label="test")
    if any(m.get("val_error_pct") is not None for m in metrics):
        ax.plot(epochs, [_nan(m.get("val_error_pct")) for m in metrics], marker=small, label="validation")
    for label, value in (paper_error or {}).items():
        ax.axhline(value, ls="--", c="gray", lw=1)
        ax.annotate(label, (epochs[0], value), fontsize=7, color="gray", va="bottom")
    ax.set(xlabel=metric_label("epoch"), ylabel="classification error (%)", title="classification error")
    ax.legend(fontsize=8)

    col = 2
    if has_sg:
        ax = axes[col]
        col += 1
        n = len(metrics[-1]["sg_loss"])
        for i in range(n):  # None (no target in that epoch, under stochastic updates) is drawn as a gap
            ax.plot(epochs, [_nan(m["sg_loss"][i]) for m in metrics], marker=small, label=sg_module_name(i))
        if any(m.get("input_loss") for m in metrics):  # complete unlock: the synthetic-input models too
            for i in range(len(metrics[-1]["input_loss"])):
                values = [_nan(m["input_loss"][i]) for m in metrics]
                ax.plot(epochs, values, ls="--", marker=small, label=f"synthetic input of block {i + 1}")
        ax.set(xlabel=metric_label("epoch"), ylabel=metric_label("sg_loss"), title="synthetic-gradient loss")
        log_axis(ax)
        ax.legend(fontsize=8)
    if has_align:
        ax = axes[col]
        n = len(metrics[-1]["sg_cosine"])
        for i in range(n):
            ax.plot(epochs, [m["sg_cosine"][i] for m in metrics], marker=small, label=sg_module_name(i))
        ax.set(xlabel=metric_label("epoch"), ylabel=metric_label("sg_cosine"), ylim=(-0.1, 1.0),
               title="gradient alignment (held-out batch)")  # fmt: skip
        ax.legend(fontsize=8)
    for ax in axes:
        epoch_axis(ax, epochs)

    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig


def save_figure(fig, path):
    """Write a matplotlib figure to `path` as PNG, atomically, and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())


# -------------------------------------------------------------------------------------------------------------
# gradient alignment over training, and several runs side by side


def plot_alignment(steps, cosine, path, title=None, block_labels=None, xlabel="training step"):
    """Per-block cos(dh_syn, dh_true) over training: as curves (left) and as a heatmap (right), one figure.

    steps: (T,) strictly increasing training steps (or epochs: pass xlabel="epoch") at which the alignment was
    measured; cosine: (T, n_blocks) array-like, cosine[t, i] = cos(dh_syn_i, dh_true_i) at steps[t] (NaN: not
    measured, drawn as a gap); block_labels: n_blocks names for the legend and the heatmap's rows (default
    "SG module after block i", the module whose prediction dh_syn_i is).
    The heatmap uses a diverging colormap fixed to -1..1, so that 0 (orthogonal: no information) is white and the
    colours of two figures can be compared. Returns the (closed) matplotlib Figure, for inspection.
    """
    steps = np.asarray(steps, dtype=float)  # (T,)
    cosine = np.asarray(cosine, dtype=float)  # (T, n_blocks)
    if steps.ndim != 1 or steps.size == 0:
        raise ValueError(f"steps must be a non-empty 1-D array (T,), got shape {steps.shape}")
    if cosine.ndim != 2 or cosine.shape[0] != steps.shape[0] or cosine.shape[1] == 0:
        raise ValueError(
            f"cosine must be (T, n_blocks) = ({steps.shape[0]}, n_blocks >= 1) to match steps, got shape {cosine.shape}"
        )
    if not np.all(np.isfinite(steps)) or np.any(np.diff(steps) <= 0):
        raise ValueError(f"steps must be finite and strictly increasing, got {steps.tolist()}")
    measured = cosine[~np.isnan(cosine)]
    if np.any(np.abs(measured) > 1 + 1e-6):
        raise ValueError(
            f"a cosine must lie in [-1, 1] (NaN for 'not measured'), got values up to {np.abs(measured).max():.3g}"
        )
    n_blocks = cosine.shape[1]
    labels = [sg_module_name(i) for i in range(n_blocks)] if block_labels is None else list(map(str, block_labels))
    if len(labels) != n_blocks:
        raise ValueError(f"block_labels must name each of the {n_blocks} blocks, got {len(labels)} labels")

    plt = pyplot()
    fig, (ax_curves, ax_map) = plt.subplots(1, 2, figsize=(11, 3.8), gridspec_kw={"width_ratios": [1, 1.15]})
    for i in range(n_blocks):  # lower blocks lighter, the top block darkest
        shade = plt.cm.viridis(0.85 * (1 - i / max(n_blocks - 1, 1)))
        marker = _marker(steps.size, "." if steps.size <= 60 else None)
        ax_curves.plot(steps, cosine[:, i], marker=marker, color=shade, label=labels[i])
    ax_curves.axhline(0, c="gray", lw=0.8)
    ax_curves.set(xlabel=xlabel, ylabel=metric_label("sg_cosine"), ylim=(-1.05, 1.05), title="per block")
    ax_curves.legend(fontsize=7, loc="lower right")

    # cell edges halfway between measurements, so that unevenly spaced steps are drawn where they were taken
    if steps.size > 1:
        mids = (steps[1:] + steps[:-1]) / 2
        edges = np.concatenate([[2 * steps[0] - mids[0]], mids, [2 * steps[-1] - mids[-1]]])  # (T + 1,)
    else:
        edges = np.array([steps[0] - 0.5, steps[0] + 0.5])
    mesh = ax_map.pcolormesh(edges, np.arange(n_blocks + 1) - 0.5, cosine.T, cmap="RdBu_r", vmin=-1, vmax=1)
    ax_map.set_yticks(range(n_blocks), labels, fontsize=7)  # row 0 (the lowest block) at the bottom
    ax_map.set(xlabel=xlabel, title="heatmap (white = orthogonal)")
    fig.colorbar(mesh, ax=ax_map, label=metric_label("sg_cosine"))
    for ax in (ax_curves, ax_map):
        if np.all(steps == np.round(steps)):  # whole steps or epochs: whole-number ticks (one step: +-0.5 around it)
            epoch_axis(ax, steps.tolist())
        elif steps.size == 1:
            ax.set_xlim(steps[0] - 0.5, steps[0] + 0.5)
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig


def _run_color(label, run_labels, palette):
    """The colour of the run whose label appears as a whole word in `label` (the longest such), else None."""
    named = [r for r in run_labels if re.search(rf"(?<![\w-]){re.escape(r)}(?![\w-])", label, re.IGNORECASE)]
    return palette[max(named, key=len)] if named else None


def plot_runs(runs, path, metric_keys=("train_loss", "test_error_pct"), paper=None, title=None):
    """Learning curves of several runs side by side: one panel per metric key, then their SG losses per block.

    runs: {label: list of per-epoch dicts as minidni.runs.train writes them to metrics.jsonl}, each dict with "epoch"
    and every key of metric_keys (a None value is drawn as a gap); "sg_loss" (per block, the epoch mean) is
    optional, so bprop / nobprop runs simply have no curves in the SG panel, which appears only if some run has
    SG losses. paper: {label: test error %} drawn on the "test_error_pct" panel as dashed reference lines; each
    label must say that the value is the paper's and whether it was verified or only recalled, e.g.
    "paper (Jaderberg et al. 2016), cdni FCN3: 2.2 (recalled)". A reference line takes the colour of the run
    whose label it names. Returns the (closed) matplotlib Figure, for inspection.
    """
    if not isinstance(runs, dict) or not runs:
        raise ValueError("runs must be a non-empty dict {label: list of per-epoch metric dicts}")
    metric_keys = tuple(metric_keys)
    if not metric_keys:
        raise ValueError("metric_keys must name at least one per-epoch metric, e.g. ('train_loss', 'test_error_pct')")
    for label, records in runs.items():
        if not isinstance(records, (list, tuple)) or not records or not all(isinstance(r, dict) for r in records):
            raise ValueError(f"run {label!r} must be a non-empty list of per-epoch metric dicts")
        for key in ("epoch",) + metric_keys:
            missing = [r.get("epoch", i) for i, r in enumerate(records) if key not in r]
            if missing:
                raise ValueError(f"run {label!r} has no {key!r} in the records of epochs {missing}")
    paper = dict(paper or {})
    for label, value in paper.items():
        text = str(label).lower()
        if "paper" not in text or not ("recalled" in text or "verified" in text):
            raise ValueError(
                f"the reference label {label!r} must say that it is the paper's value and whether it is "
                f"'verified' or 'recalled', e.g. 'paper (Jaderberg et al. 2016), bprop FCN3: 2.0 (verified)'"
            )
        if not np.isfinite(value):
            raise ValueError(f"the paper's value for {label!r} must be a finite number, got {value!r}")
    if paper and "test_error_pct" not in metric_keys:
        raise ValueError("paper values are test errors: include 'test_error_pct' in metric_keys to draw them")

    def n_sg(records):
        return max(len(r.get("sg_loss") or []) for r in records)

    has_sg = any(n_sg(records) for records in runs.values())
    plt = pyplot()
    from matplotlib.lines import Line2D

    ncols = len(metric_keys) + has_sg
    fig, axes = plt.subplots(1, ncols, figsize=(4.6 * ncols, 3.8), squeeze=False)
    axes = axes[0]
    palette = {label: f"C{k % 10}" for k, label in enumerate(runs)}
    all_epochs = [r["epoch"] for records in runs.values() for r in records]

    for ax, key in zip(axes, metric_keys):
        positive = True
        for label, records in runs.items():
            epochs = [r["epoch"] for r in records]
            values = np.array([_nan(r[key]) for r in records], dtype=float)
            positive &= bool(np.all(values[np.isfinite(values)] > 0))
            ax.plot(epochs, values, marker=_marker(len(epochs)), color=palette[label], label=label)
        ax.legend(fontsize=7)
        if key == "test_error_pct" and paper:
            refs = [
                ax.axhline(value, ls=(0, (4, 2 + k)), c=_run_color(label, runs, palette) or "gray", lw=1.2, label=label)
                for k, (label, value) in enumerate(paper.items())
            ]
            ax.add_artist(ax.get_legend())  # keep the runs' legend; the reference lines get their own, below
            ax.legend(handles=refs, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.24), frameon=False)
        ax.set(xlabel=metric_label("epoch"), ylabel=metric_label(key), title=metric_title(key))
        if positive and ("loss" in key or "error" in key):
            log_axis(ax)  # losses and errors of a learning run span decades
    for ax in axes:
        epoch_axis(ax, all_epochs)

    if has_sg:  # colour: the run; line style and marker: the block whose SG module it is (a legend entry each)
        ax = axes[-1]
        styles = [(ls, marker) for ls, marker in zip(("-", "--", ":", "-.") * 2, "osv^DPX*")]  # 8 blocks apart
        n_max = max(n_sg(records) for records in runs.values())
        for label, records in runs.items():
            n = n_sg(records)
            for i in range(n):  # None (no target that epoch) and missing epochs are gaps
                values = [_nan((r.get("sg_loss") or [None] * n)[i]) for r in records]
                ls, marker = styles[i % len(styles)]
                ax.plot([r["epoch"] for r in records], values, color=palette[label], ls=ls, marker=marker, ms=4,
                        label=f"{label}: {sg_module_name(i)}")  # fmt: skip
        handles = [Line2D([], [], color=palette[label], label=label) for label, rs in runs.items() if n_sg(rs)]
        handles += [Line2D([], [], color="gray", ls=ls, marker=marker, ms=4, label=sg_module_name(i))
                    for i, (ls, marker) in zip(range(n_max), styles * n_max)]  # fmt: skip
        ax.set(xlabel=metric_label("epoch"), ylabel=metric_label("sg_loss"), title="synthetic-gradient loss")
        log_axis(ax)
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside: no line hidden
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig
