"""Pictures of runs, drawn from their metrics (the dicts written to metrics.jsonl), with matplotlib.

What this module deliberately is not: interactive. Figures are written to files (PNG) with the non-GUI Agg
backend, so they work on servers and in CI.
"""

import io

from .checkpoint import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(metrics, path, title=None, paper_error=None):
    """Training loss, validation/test error and (if present) SG losses and gradient alignment per epoch.

    metrics: list of per-epoch dicts; paper_error: optional {label: test error %} drawn as labelled reference
    lines (e.g. {"paper (Jaderberg et al.), cDNI FCN3": 2.2}).
    """
    plt = _pyplot()
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
        for i in range(n):
            ax.plot(epochs, [m["sg_loss"][i] for m in metrics], marker=".", label=f"M after block {i}")
        ax.set(xlabel="epoch", ylabel="SG loss (epoch mean)", yscale="log", title="synthetic-gradient loss")
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
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write(path, buf.getvalue())
