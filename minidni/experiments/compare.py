"""Finished runs side by side: learning curves, SG losses and gradient alignment, read from their directories.

    python -m minidni plot runs/modes/runs/bprop runs/modes/runs/cdni --out compare.png

Each run directory is one written by `python -m minidni train` (config.json and metrics.jsonl). The figure puts
every run's training loss, test error and per-block SG losses side by side (minidni.runs.plots.plot_runs); where the
paper reports a number for a run's model and mode on MNIST (Jaderberg et al. 2016, Table 1), it is drawn as a
dashed line labelled as the paper's, with "(recalled)" on every value not checked against the paper's text.
Runs trained with --diagnostics also get their per-block alignment, cos(dh_syn, dh_true) per epoch, as curves and
a heatmap (minidni.runs.plots.plot_alignment), one figure per run next to the first.

What this module deliberately is not: a training or evaluation tool. It reads what runs wrote and draws it.
"""

import json
import os

from minidni.experiments.feedforward import PAPER_TABLE1, PAPER_VERIFIED
from minidni.runs.plots import plot_alignment, plot_runs
from minidni.runs.train import read_metrics


def read_run(run_dir):
    """(config dict, list of per-epoch metric dicts) of a run directory; a clear error if it is not one."""
    config_path, metrics_path = os.path.join(run_dir, "config.json"), os.path.join(run_dir, "metrics.jsonl")
    for path in (config_path, metrics_path):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{run_dir} is not a training run directory: {os.path.basename(path)} is missing")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)["config"]
        metrics = read_metrics(run_dir)
    except (ValueError, KeyError) as err:
        raise ValueError(
            f"{run_dir}: config.json or metrics.jsonl is not what minidni.runs.train writes ({err})"
        ) from err
    if not metrics:
        raise ValueError(f"{run_dir} has no finished epoch yet (metrics.jsonl is empty)")
    return config, metrics


def paper_reference(config):
    """{label: value} for the paper's Table 1 number of this run's model and mode, or {} if it has none."""
    model, mode = config.get("model"), config.get("mode")
    value = PAPER_TABLE1.get(model, {}).get(mode)
    if config.get("data") != "mnist" or value is None:
        return {}
    status = "verified" if (model, mode) in PAPER_VERIFIED else "recalled"
    return {f"paper (Jaderberg et al. 2016), {mode} {model.upper()}: {value} ({status})": value}


def compare_runs(run_dirs, out, labels=None, title=None):
    """Draw the runs in `run_dirs` into `out` (PNG) and, for runs with alignment diagnostics, into
    `<out without .png>_alignment_<label>.png`. Returns the list of files written."""
    if not run_dirs:
        raise ValueError("compare_runs needs at least one run directory")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"--labels names {len(labels)} runs but {len(run_dirs)} run directories were given")
    runs, paper, written = {}, {}, [out]
    for k, run_dir in enumerate(run_dirs):
        config, metrics = read_run(run_dir)
        label = labels[k] if labels else f"{config.get('mode')} {config.get('model')}"
        if label in runs:  # two runs of the same mode and model: tell them apart by their directories
            label = f"{label} ({os.path.basename(os.path.normpath(run_dir))})"
        runs[label] = metrics
        paper.update(paper_reference(config))
    plot_runs(runs, out, paper=paper, title=title)
    stem = out.removesuffix(".png")
    for label, metrics in runs.items():
        aligned = [m for m in metrics if m.get("sg_cosine")]
        if aligned:
            path = f"{stem}_alignment_{_slug(label)}.png"
            epochs, cosine = [m["epoch"] for m in aligned], [m["sg_cosine"] for m in aligned]
            plot_alignment(epochs, cosine, path, title=f"{label}: cos(dh_syn, dh_true) on a held-out batch",
                           xlabel="epoch")  # fmt: skip
            written.append(path)
    return written


def _slug(label):
    return "".join(c if c.isalnum() else "_" for c in label).strip("_")
