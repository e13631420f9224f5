"""`minidni plot`: finished runs read back from their directories and drawn side by side, with the paper's
numbers labelled as the paper's."""

import json

import pytest

from minidni.cli import main
from minidni.experiments.compare import compare_runs, paper_reference, read_run
from minidni.runs.train import TrainConfig, train


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    dirs = []
    for mode in ("bprop", "cdni"):
        cfg = TrainConfig(data="spirals", model="fcn3", mode=mode, hidden=16, epochs=2, batch=64, train_subset=640,
                          diagnostics=True, out=str(root / mode), progress=False)  # fmt: skip
        train(cfg, log=lambda *a: None)
        dirs.append(str(root / mode))
    return dirs


def test_read_run_gives_config_and_epochs(runs):
    config, metrics = read_run(runs[1])
    assert config["mode"] == "cdni" and [m["epoch"] for m in metrics] == [1, 2]
    assert len(metrics[0]["sg_cosine"]) == 2  # --diagnostics: one cosine per hidden block


def test_paper_reference_is_labelled_and_only_for_mnist():
    bprop = paper_reference({"data": "mnist", "model": "fcn3", "mode": "bprop"})
    assert bprop == {"paper (Jaderberg et al. 2016), bprop FCN3: 2.0 (verified)": 2.0}
    (label,) = paper_reference({"data": "mnist", "model": "fcn4", "mode": "cdni"})
    assert label.endswith("(recalled)") and label.startswith("paper")
    assert paper_reference({"data": "spirals", "model": "fcn3", "mode": "bprop"}) == {}
    assert paper_reference({"data": "mnist", "model": "fcn9", "mode": "bprop"}) == {}


def test_compare_runs_writes_curves_and_alignment_for_diagnosed_runs(runs, tmp_path):
    out = str(tmp_path / "cmp.png")
    written = compare_runs(runs, out)
    assert written == [out, str(tmp_path / "cmp_alignment_cdni_fcn3.png")]  # bprop has no synthetic gradients
    assert all((tmp_path / p).stat().st_size > 0 for p in written)


def test_compare_runs_errors(runs, tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        compare_runs([], str(tmp_path / "x.png"))
    with pytest.raises(ValueError, match="--labels names 1 runs but 2"):
        compare_runs(runs, str(tmp_path / "x.png"), labels=["a"])
    with pytest.raises(FileNotFoundError, match="not a training run directory"):
        compare_runs([str(tmp_path)], str(tmp_path / "x.png"))
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{}")
    (bad / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
    with pytest.raises(ValueError, match="not what minidni.runs.train writes"):
        compare_runs([str(bad)], str(tmp_path / "x.png"))


def test_cli_plot(runs, tmp_path, capsys):
    assert main(["plot", *runs, "--out", str(tmp_path / "c.png"), "--labels", "backprop,cDNI"]) == 0
    assert "wrote" in capsys.readouterr().out and (tmp_path / "c_alignment_cDNI.png").exists()
    assert main(["plot", str(tmp_path / "missing"), "--out", str(tmp_path / "d.png")]) == 1
    assert "not a training run directory" in capsys.readouterr().err
