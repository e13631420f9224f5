"""The first run (minidni.experiments.modes): the four modes trained side by side, one table, one figure; a second
call reuses finished runs; bad input is refused with what was expected."""

import json

import pytest

from minidni.experiments.modes import (
    DNI_HIDDEN,
    MODES,
    TIMELINE_STEPS,
    WARMUP_STEPS,
    modes_runs,
    recorded_steps,
    train_modes,
)
from minidni.runs.timeline import earliest_schedule

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: temporary data cache, numpy backend

TINY = {"hidden": 16, "batch": 64, "val_size": 64}


def test_the_runs_differ_only_in_mode_and_the_dni_module():
    runs = modes_runs("spirals", epochs=2, **TINY)
    assert [r.cfg.mode for r in runs] == list(MODES)
    fields = [{k: v for k, v in vars(r.cfg).items() if k not in ("mode", "sg_hidden", "diagnostics")} for r in runs]
    assert all(f == fields[0] for f in fields)
    assert [r.cfg.diagnostics for r in runs] == [False, False, True, True]  # alignment where there are SG modules
    assert next(r for r in runs if r.cfg.mode == "dni").cfg.sg_hidden == DNI_HIDDEN
    assert all(r.cfg.timeline == TIMELINE_STEPS for r in runs)


@pytest.mark.parametrize("modes", [(), ("bprop", "backprop"), ("feedback",)])
def test_unknown_modes_are_refused(modes):
    with pytest.raises(ValueError, match="modes must be a non-empty subset of"):
        modes_runs("spirals", modes=modes)


def test_train_modes_writes_the_table_and_the_figure_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "modes"
    logged = []
    rows = train_modes(str(out), data="spirals", epochs=2, log=logged.append, **TINY)
    assert [r["mode"] for r in rows] == list(MODES)
    table = (out / "table.md").read_text()
    for r in rows:  # the table holds each run's last test error, as its own metrics say
        with open(out / "runs" / r["mode"] / "metrics.jsonl") as f:
            last = json.loads(f.read().splitlines()[-1])
        assert r["test_error_pct"] == last["test_error_pct"]
        assert f"| {r['mode']} |" in table and f"{last['test_error_pct']:.2f}" in table
    assert "sg_cosine" in rows[2] and "sg_cosine" in rows[3] and "sg_cosine" not in rows[1]
    assert "paper" not in rows[0]  # the paper's numbers are MNIST's: none beside a spirals run
    assert (out / "modes.png").stat().st_size > 0
    assert json.loads((out / "results.json").read_text()) == rows

    # the drawn timelines leave out the warm-up step and can be re-timed
    events = recorded_steps(str(out / "runs" / "cdni"))
    assert {e.step for e in events} == set(range(WARMUP_STEPS, TIMELINE_STEPS))
    assert len(earliest_schedule(events)) == len(events)

    logged.clear()
    again = train_modes(str(out), data="spirals", epochs=2, log=logged.append, **TINY)
    assert again == rows
    assert sum("done earlier" in line for line in logged) == len(MODES)


def test_the_command_prints_the_table(tmp_path, capsys):
    from minidni.cli import main

    out = tmp_path / "cli"
    rc = main(["modes", "--data", "spirals", "--epochs", "1", "--modes", "bprop,cdni", "--dni-hidden", "8",
               "--out", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert rc == 0
    assert printed.startswith("FCN3 on spirals, 1 epoch,") and "| bprop |" in printed and "| cdni |" in printed
    assert (out / "table.md").read_text().strip() in printed
    rc = main(["modes", "--data", "spirals", "--modes", "bprop,backprop", "--out", str(tmp_path / "bad")])
    assert rc != 0 and "modes must be a non-empty subset of" in capsys.readouterr().err
