"""minidni.runs.plots: plot_alignment and plot_runs write real PNGs, refuse bad input, and draw what they are given."""

import re
from pathlib import Path

import numpy as np
import pytest
from matplotlib.legend import Legend

from minidni.runs import plots
from minidni.runs.plots import METRIC_LABELS, log_axis, plot_alignment, plot_learning_curves, plot_runs, pyplot

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 1000, f"{path} is not a non-empty PNG ({len(data)} bytes)"


def cosines(T=7, n_blocks=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (T, n_blocks))  # (T, n_blocks)


# -- plot_alignment -------------------------------------------------------------------------------------------


def test_alignment_writes_curves_and_a_diverging_heatmap(tmp_path):
    steps = np.array([0, 10, 20, 40, 80, 160, 320])  # uneven spacing is allowed
    cos = cosines()
    cos[2, 1] = np.nan  # not measured: a gap
    fig = plot_alignment(steps, cos, tmp_path / "a.png", title="t", block_labels=["b0", "b1", "b2"])
    assert_png(tmp_path / "a.png")
    ax_curves, ax_map = fig.axes[0], fig.axes[1]
    assert len(ax_curves.get_lines()) == 3 + 1  # one curve per block, and the zero line
    assert [t.get_text() for t in ax_curves.get_legend().get_texts()] == ["b0", "b1", "b2"]
    (mesh,) = ax_map.collections
    assert mesh.get_clim() == (-1, 1), "the heatmap's colour scale must be fixed to -1..1"
    assert mesh.get_cmap().name == "RdBu_r"
    assert np.allclose(np.ma.filled(mesh.get_array(), np.nan).reshape(3, 7), cos.T, equal_nan=True)
    assert len(fig.axes) == 3, "curves, heatmap and its colorbar"


def test_alignment_single_measurement(tmp_path):
    fig = plot_alignment([5], [[0.5, -0.2]], tmp_path / "one.png")
    assert_png(tmp_path / "one.png")
    for ax in fig.axes[:2]:  # the curves and the heatmap: the one step, and nothing around it but +-0.5
        assert ax.get_xlim() == (4.5, 5.5)
        assert [t for t in ax.get_xticks() if 4.5 <= t <= 5.5] == [5]
    assert fig.axes[0].get_lines()[0].get_marker() == "o"


@pytest.mark.parametrize(
    "steps, cos, kw, message",
    [
        (np.arange(7), cosines()[:, 0], {}, "cosine must be"),  # 1-D
        (np.arange(6), cosines(), {}, "cosine must be"),  # T mismatch
        (np.arange(7)[:, None], cosines(), {}, "steps must be"),  # 2-D steps
        (np.zeros(7), cosines(), {}, "strictly increasing"),
        (np.arange(7), cosines() * 2, {}, "in \\[-1, 1\\]"),
        (np.arange(7), cosines(), {"block_labels": ["a", "b"]}, "block_labels"),
        (np.arange(7), np.zeros((7, 0)), {}, "cosine must be"),
    ],
)
def test_alignment_rejects_bad_input(tmp_path, steps, cos, kw, message):
    with pytest.raises(ValueError, match=message):
        plot_alignment(steps, cos, tmp_path / "bad.png", **kw)
    assert not (tmp_path / "bad.png").exists()


# -- plot_runs ----------------------------------------------------------------------------------------------


def records(n_epochs, n_blocks, error0=50.0):
    """Per-epoch dicts as minidni.runs.train writes them; n_blocks = 0 for bprop (no "sg_loss" key at all)."""
    out = []
    for e in range(1, n_epochs + 1):
        r = {"epoch": e, "train_loss": 1.0 / e, "test_error_pct": error0 / e, "val_error_pct": None, "seconds": 0.1}
        if n_blocks:
            r["sg_loss"] = [1e-4 / e * (i + 1) for i in range(n_blocks)]
        out.append(r)
    return out


PAPER = {
    "paper (Jaderberg et al. 2016), bprop FCN3: 2.0 (verified)": 2.0,
    "paper (Jaderberg et al. 2016), cdni FCN3: 2.2 (recalled)": 2.2,
}


def test_runs_mixing_bprop_and_cdni_with_paper_lines(tmp_path):
    runs = {"bprop": records(4, 0), "cdni": records(4, 2, error0=60.0)}
    runs["cdni"][0]["sg_loss"] = [None, 3e-4]  # stochastic updates: no target for block 0 that epoch
    fig = plot_runs(runs, tmp_path / "runs.png", paper=PAPER, title="FCN3")
    assert_png(tmp_path / "runs.png")
    ax_loss, ax_err, ax_sg = fig.axes
    legends = [[t.get_text() for t in legend.get_texts()] for legend in ax_err.findobj(Legend)]
    assert legends == [["bprop", "cdni"], list(PAPER)], legends  # the runs', and the reference lines' below
    # each reference line is horizontal at the paper's value, dashed, in the colour of the run it names
    refs = {line.get_label(): line for line in ax_err.get_lines() if line.get_label() in PAPER}
    assert set(refs) == set(PAPER)
    colors = {line.get_label(): line.get_color() for line in ax_err.get_lines()}
    for label, value in PAPER.items():
        assert np.allclose(refs[label].get_ydata(), value) and refs[label].get_linestyle() == "--"
    assert refs[next(iter(PAPER))].get_color() == colors["bprop"]
    # the SG panel: one curve per cdni module, none for bprop; the None is a gap
    sg_lines = ax_sg.get_lines()
    assert [line.get_label() for line in sg_lines] == ["cdni: SG module after block 0", "cdni: SG module after block 1"]
    assert np.isnan(sg_lines[0].get_ydata()[0]) and np.isfinite(sg_lines[0].get_ydata()[1:]).all()
    # the legend: a colour per run, a line style per block, each named in words
    legend = ax_sg.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == ["cdni", "SG module after block 0", "SG module after block 1"]
    styles = [h.get_linestyle() for h in legend.legend_handles[1:]]
    assert styles == [line.get_linestyle() for line in sg_lines] and len(set(styles)) == 2
    assert ax_loss.get_yscale() == "log" and ax_err.get_yscale() == "log"


def test_runs_without_sg_losses_have_no_sg_panel(tmp_path):
    fig = plot_runs({"bprop": records(3, 0), "nobprop": records(3, 0)}, tmp_path / "r.png")
    assert_png(tmp_path / "r.png")
    assert len(fig.axes) == 2


def test_runs_color_matching_is_by_whole_word(tmp_path):
    """'dni' must not claim the reference line of 'cDNI', nor 'bprop' that of 'nobprop'."""
    paper = {"paper, cDNI (recalled)": 2.2, "paper, nobprop (recalled)": 9.3}
    fig = plot_runs({"dni": records(2, 1), "bprop": records(2, 0)}, tmp_path / "w.png", paper=paper)
    refs = {line.get_label(): line.get_color() for line in fig.axes[1].get_lines()}
    assert refs["paper, cDNI (recalled)"] == "gray" and refs["paper, nobprop (recalled)"] == "gray"


@pytest.mark.parametrize(
    "runs, kw, message",
    [
        ({}, {}, "non-empty dict"),
        ({"a": []}, {}, "non-empty list"),
        ({"a": [{"epoch": 1, "train_loss": 1.0}]}, {}, "'test_error_pct'"),
        ({"a": records(2, 0)}, {"metric_keys": ()}, "at least one"),
        ({"a": records(2, 0)}, {"paper": {"cdni FCN3 (recalled)": 2.2}}, "paper's value"),
        ({"a": records(2, 0)}, {"paper": {"paper, cdni FCN3": 2.2}}, "'recalled'"),
        ({"a": records(2, 0)}, {"paper": {"paper (recalled)": float("nan")}}, "finite"),
        ({"a": records(2, 0)}, {"paper": PAPER, "metric_keys": ("train_loss",)}, "include 'test_error_pct'"),
    ],
)
def test_runs_rejects_bad_input(tmp_path, runs, kw, message):
    with pytest.raises(ValueError, match=message):
        plot_runs(runs, tmp_path / "bad.png", **kw)
    assert not (tmp_path / "bad.png").exists()


# -- what a newcomer reads: words, not keys; enough ticks; one epoch drawn as one epoch -----------------------------


def axis_texts(fig):
    return [t for ax in fig.axes for t in (ax.get_xlabel(), ax.get_ylabel(), ax.get_title())]


def test_no_figure_shows_a_raw_metric_key(tmp_path):
    with_sg = records(3, 2)
    for r in with_sg:
        r["sg_cosine"] = [0.5, 0.6]
    figs = [
        plot_runs({"bprop": records(3, 0), "cdni": with_sg}, tmp_path / "r.png",
                  metric_keys=("train_loss", "test_error_pct", "val_error_pct")),
        plot_learning_curves(with_sg, tmp_path / "c.png"),
    ]  # fmt: skip
    for fig in figs:
        texts = axis_texts(fig)
        raw = [t for t in texts for key in METRIC_LABELS if key != "epoch" and key in t]
        assert not raw, f"raw metric keys on the axes: {raw}"
    # one table of words for both functions
    assert METRIC_LABELS["train_loss"] in axis_texts(figs[0]) and METRIC_LABELS["train_loss"] in axis_texts(figs[1])
    assert METRIC_LABELS["test_error_pct"] == "test error (%)" and "test error" in axis_texts(figs[0])


@pytest.mark.parametrize(
    "lo, hi",
    [
        (0.31, 0.35),
        (0.28, 0.42),
        (0.5, 0.52),
        (0.3, 0.9),
        (0.2, 0.9),
        (0.4, 4.0),
        (0.05, 2.0),
        (1e-6, 1e-4),
        (1e-9, 10.0),
    ],
)
def test_a_log_axis_labels_enough_ticks_however_narrow_its_range(lo, hi):
    plt = pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2, 3], [lo, (lo * hi) ** 0.5, hi])
    log_axis(ax)
    y0, y1 = ax.get_ylim()
    ticks = [t for t in ax.yaxis.get_majorticklocs() if y0 <= t <= y1]
    shown = [ax.yaxis.get_major_formatter()(t) for t in ticks]
    plt.close(fig)
    assert all(np.isclose(float(s), t, rtol=1e-4) for s, t in zip(shown, ticks)), f"labels {shown} for ticks {ticks}"
    assert ax.get_yscale() == "log"
    assert len([s for s in shown if s]) >= 4, f"only {shown} labelled on a log axis from {lo} to {hi}"
    assert not any("times" in s or "^" in s for s in shown), f"plain numbers, not powers: {shown}"
    assert len(shown) <= 10, f"crowded: {shown}"


def test_one_epoch_is_drawn_at_its_epoch_with_a_visible_marker(tmp_path):
    one = records(1, 2)
    one[0]["sg_cosine"] = [0.3, 0.4]
    for fig in (plot_runs({"cdni": one}, tmp_path / "r.png"), plot_learning_curves(one, tmp_path / "c.png")):
        for ax in fig.axes:
            assert ax.get_xlim() == (0.5, 1.5), f"{ax.get_title()}: x from {ax.get_xlim()}"
            ticks = [t for t in ax.get_xticks() if 0.5 <= t <= 1.5]
            assert ticks == [1], f"{ax.get_title()}: epoch ticks {ticks}"
            single = [line for line in ax.get_lines() if len(line.get_xdata()) == 1]
            assert all(line.get_marker() not in ("", "None", None, ".", ",") for line in single), "a point unseen"
    many = plot_runs({"cdni": records(12, 1)}, tmp_path / "m.png")
    ticks = many.axes[0].get_xticks()
    assert all(float(t).is_integer() for t in ticks), f"epoch ticks must be whole numbers: {ticks}"


def test_alignment_names_the_sg_modules_by_default(tmp_path):
    fig = plot_alignment([1, 2], [[0.1, 0.2], [0.3, 0.4]], tmp_path / "a.png", xlabel="epoch")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert labels == ["SG module after block 0", "SG module after block 1"]
    assert fig.axes[0].get_xlabel() == "epoch"


SG_SPELLINGS = re.compile(r"\bM\d* \(block|\bM\{|\bM after block|f\"M\{|\bI of block")
# figure or log text elsewhere in minidni/ that still spells an SG module otherwise; reported to its owner
KNOWN_ELSEWHERE = set()


def test_minidni_names_an_sg_module_one_way():
    """Figures and log lines call the module that reads block i's output "SG module after block i"
    (plots.sg_module_name); no "M after block i", "M1 (block 0)"."""
    root = Path(plots.__file__).resolve().parents[2]
    found = [
        f"{path.relative_to(root).as_posix()}:{n}: {line.strip()}"
        for path in sorted((root / "minidni").rglob("*.py"))
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if SG_SPELLINGS.search(line) and path.relative_to(root).as_posix() not in KNOWN_ELSEWHERE
    ]
    assert not found, "SG modules named otherwise than 'SG module after block i':\n" + "\n".join(found)
    assert plots.sg_module_name(2) == "SG module after block 2"


def test_each_blocks_sg_curve_is_told_apart_up_to_eight_blocks(tmp_path):
    fig = plot_runs({"dni": records(3, 8), "cdni": records(3, 8)}, tmp_path / "deep.png")
    handles = fig.axes[-1].get_legend().legend_handles[2:]  # after the two runs' colours
    assert [h.get_label() for h in handles] == [f"SG module after block {i}" for i in range(8)]
    looks = {(h.get_linestyle(), h.get_marker()) for h in handles}
    assert len(looks) == 8, f"two blocks drawn alike: {sorted(looks)}"
