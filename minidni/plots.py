"""Pictures of runs, drawn from their metrics (the dicts written to metrics.jsonl), with matplotlib.

What this module deliberately is not: interactive. Figures are written to files (PNG) with the non-GUI Agg
backend, so they work on servers and in CI.
"""

import io

from .checkpoint import atomic_write


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _nan(value):
    return float("nan") if value is None else value


def plot_learning_curves(metrics, path, title=None, paper_error=None):
    """Training loss, validation/test error and (if present) SG losses and gradient alignment per epoch.

    metrics: list of per-epoch dicts; paper_error: optional {label: test error %} drawn as labelled reference
    lines (e.g. {"paper (Jaderberg et al.), cDNI FCN3": 2.2}).
    """
    plt = pyplot()
    epochs = [m["epoch"] for m in metrics]
    has_sg = any(m.get("sg_loss") for m in metrics)
    has_align = any(m.get("sg_cosine") for m in metrics)
    ncols = 2 + has_sg + has_align
    fig, axes = plt.subplots(1, ncols, figsize=(4.2 * ncols, 3.6))

    ax = axes[0]
    ax.plot(epochs, [m["train_loss"] for m in metrics], marker="o")
    ax.set(xlabel="epoch", ylabel="training loss (batch-mean CE)", yscale="log", title="training loss")

    ax = axes[1]
    ax.plot(epochs, [m["test_error_pct"] for m in metrics], marker="o", label="test")
    if any(m.get("val_error_pct") is not None for m in metrics):
        ax.plot(epochs, [m.get("val_error_pct") for m in metrics], marker=".", label="validation")
    for label, value in (paper_error or {}).items():
        ax.axhline(value, ls="--", c="gray", lw=1)
        ax.annotate(label, (epochs[0], value), fontsize=7, color="gray", va="bottom")
    ax.set(xlabel="epoch", ylabel="error %", title="classification error")
    ax.legend(fontsize=8)

    col = 2
    if has_sg:
        ax = axes[col]
        col += 1
        n = len(metrics[-1]["sg_loss"])
        for i in range(n):  # None (no target in that epoch, under stochastic updates) is drawn as a gap
            ax.plot(epochs, [_nan(m["sg_loss"][i]) for m in metrics], marker=".", label=f"M after block {i}")
        if any(m.get("input_loss") for m in metrics):  # complete unlock: the synthetic-input models too
            for i in range(len(metrics[-1]["input_loss"])):
                values = [_nan(m["input_loss"][i]) for m in metrics]
                ax.plot(epochs, values, ls="--", marker=".", label=f"I of block {i + 1}")
        ax.set(xlabel="epoch", ylabel="regression loss (epoch mean)", yscale="log", title="synthetic-gradient loss")
        ax.legend(fontsize=8)
    if has_align:
        ax = axes[col]
        n = len(metrics[-1]["sg_cosine"])
        for i in range(n):
            ax.plot(epochs, [m["sg_cosine"][i] for m in metrics], marker=".", label=f"block {i}")
        ax.set(
            xlabel="epoch", ylabel="cos(dh_syn, dh_true)", ylim=(-0.1, 1.0), title="gradient alignment (held-out batch)"
        )
        ax.legend(fontsize=8)

    if title:
        fig.suptitle(title)
    save_figure(fig, path)


def save_figure(fig, path):
    """Write a matplotlib figure to `path` as PNG, atomically, and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    pyplot().close(fig)
    atomic_write(path, buf.getvalue())
