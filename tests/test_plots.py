"""minidni.runs.plots: plot_alignment and plot_runs write real PNGs, refuse bad input, and draw what they are given."""

import numpy as np
import pytest
from matplotlib.legend import Legend

from minidni.runs.plots import plot_alignment, plot_runs

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
    plot_alignment([5], [[0.5, -0.2]], tmp_path / "one.png")
    assert_png(tmp_path / "one.png")


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
    assert [line.get_label() for line in sg_lines] == ["cdni: M after block 0", "cdni: M after block 1"]
    assert np.isnan(sg_lines[0].get_ydata()[0]) and np.isfinite(sg_lines[0].get_ydata()[1:]).all()
    assert [t.get_text() for t in ax_sg.get_legend().get_texts()] == ["cdni (blocks 0-1, lower lighter)"]
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
