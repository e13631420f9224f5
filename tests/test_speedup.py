"""The parallel benchmark (minidni.parallel.speedup) and the staleness experiment (minidni.experiments.staleness) on
their smoke budgets: the bookkeeping, the files, and the cost model's shape. Their speed figures are not tested
(benchmarks print ratios; a timed test would only measure the test machine)."""

import json
import math

import pytest

from minidni.parallel import speedup
from minidni.experiments import staleness
from minidni.cli import main
from minidni.parallel.simulate import Costs
from minidni.runs.train import TrainConfig


def test_measure_costs_times_every_piece_each_block_has():
    common = dict(data="spirals", model="fcn6", hidden=16, split="2,4", batch=32)
    cdni = speedup.measure_costs(TrainConfig(mode="cdni", **common), (2,), 3, repeats=3)
    bprop = speedup.measure_costs(TrainConfig(mode="bprop", **common), (2,), 3, repeats=3)
    assert cdni.n_blocks == bprop.n_blocks == 2 and cdni.batch == 32
    hidden, output = cdni.blocks
    assert min(hidden.forward, hidden.backward, hidden.update, hidden.synthetic, hidden.sg_update) > 0
    assert output.synthetic == output.sg_update == 0  # the output block has no SG module
    assert all(b.synthetic == b.sg_update == 0 for b in bprop.blocks)
    assert all(min(b.forward, b.backward, b.update) > 0 for b in bprop.blocks)


def test_transfer_is_a_positive_fraction_of_a_second():
    t = speedup.measure_transfer((8, 4), repeats=3)
    assert 0 < t < 1


def test_bench_parallel_smoke_writes_its_results_and_figures(tmp_path):
    out = tmp_path / "bench"
    r = speedup.run(str(out), budget="smoke", log=lambda *_: None)
    saved = json.loads((out / "results.json").read_text())
    assert saved["speedup_measured"] == pytest.approx(r["speedup_measured"])
    assert set(saved["samples_per_s"]) == {"cdni_workers", "bprop_workers", "cdni_1process", "bprop_1process_2threads"}
    assert all(math.isfinite(v) and v > 0 for v in saved["samples_per_s"].values())
    assert saved["prediction_error"] == pytest.approx(saved["speedup_predicted"] / saved["speedup_measured"] - 1)
    costs = json.loads((out / "costs.json").read_text())
    assert Costs.from_json(costs["cdni"]).n_blocks == 2  # written before the runs, read back whole
    assert {"bprop@8", "dni@8", "pipelined@64"} <= set(saved["scaling"])
    for name in (
        "scaling.png",
        "schedules.png",
        "schedules_4_workers.png",
        "cdni_workers/timeline.png",
        "cdni_workers/staleness.png",
    ):
        assert (out / name).stat().st_size > 0
    assert all(0 < v <= 2 for v in saved["blocks_busy"].values())  # two workers: at most two blocks busy
    with pytest.raises(FileExistsError, match="already holds this benchmark's runs"):
        speedup.run(str(out), budget="smoke", log=lambda *_: None)  # a second run never overwrites the first


def test_staleness_smoke_and_continue(tmp_path):
    out = tmp_path / "st"
    logged = []
    r = staleness.run(str(out), budget="smoke", log=logged.append)
    assert [row["delay"] for row in r["runs"]] == [0, 2, None]
    assert r["runs"][0]["staleness_mean"] == 0 and r["runs"][1]["staleness_mean"] > 1.5  # 2, but the last 2 less
    assert (out / "staleness.png").stat().st_size > 0
    again = staleness.run(str(out), budget="smoke", log=logged.append)  # finished runs are read, not retrained
    assert again["runs"] == r["runs"]
    assert sum("training" in line for line in logged) == 3


def test_cli_rejects_worker_flags_that_do_not_go_together(capsys, isolated):
    assert main(["train", "--data", "spirals", "--delay", "1"]) == 1
    assert "--delay is for blocks in workers" in capsys.readouterr().err
    assert main(["train", "--data", "spirals", "--workers", "thread", "--distributed"]) == 1
    assert "exclude each other" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["bench", "parallel", "--budget", "huge"])


def test_late_targets_add_a_prediction_to_every_module_regression():
    from minidni.parallel.simulate import BlockCost

    costs = Costs([BlockCost(1.0, 2.0, 0.5, 0.25, 0.75), BlockCost(1.0, 2.0, 0.5)], transfer=0.1, batch=8)
    late = speedup.late_targets(costs)
    assert late.blocks[0] == BlockCost(1.0, 2.0, 0.5, 0.25, 1.0)  # the regression now includes a new prediction
    assert late.blocks[1] == costs.blocks[1] and late.transfer == 0.1 and late.batch == 8
    assert costs.blocks[0].sg_update == 0.75  # the measured costs are left as they were
