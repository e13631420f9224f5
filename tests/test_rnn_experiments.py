"""The recurrent experiments (minidni.experiments.recurrent) and their command line: the runs of each experiment and
budget, the smoke budget end to end (results, table, figure), skipping finished runs, --jobs, and the flags."""

import json
import random

import pytest

from minidni import cli
from minidni.experiments import recurrent as rnn_experiments
from minidni.recurrent.multinet import MultiNetConfig
from minidni.experiments.recurrent import COPY_MODES, PAPER_LENGTHS, make_runs, run_experiment
from minidni.runs.rnn_train import RNNConfig

pytestmark = pytest.mark.usefixtures("isolated")  # tests/conftest.py: temporary data cache, numpy backend
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WORDS = "the a cat dog bird sat ran flew on over to and with mat tree house".split()


def write_text(path, sentences=120, seed=0):
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(4, 9))) + "." for _ in range(sentences)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def run_cli(capsys, *argv):
    rc = cli.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def strip_seconds(results):
    """{run: result} without the wall-clock seconds in the metric records."""
    return {name: {**r, "metrics": [{k: v for k, v in m.items() if k != "seconds"} for m in r["metrics"]]}
            for name, r in results.items()}  # fmt: skip


def no_training(*args, **kw):
    raise AssertionError("a finished run was trained again")


def assert_written(out, name, runs):
    """results.json (complete, one entry per run, with its key), table.md and the figure."""
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == name and saved["budget"] == "smoke" and saved["complete"] is True
    assert saved["command"].startswith(f"python -m minidni experiment {name} --budget smoke")
    assert list(saved["results"]) == [r.name for r in runs]
    for run in runs:
        result = saved["results"][run.name]
        assert {k: result[k] for k in run.key} == run.key and result["metrics"]
        assert (out / "runs" / run.name / "result.json").exists()
    table = (out / "table.md").read_text()
    assert table.startswith(f"`{saved['command']}` (all runs done)")
    assert (out / f"{name}.png").read_bytes()[:8] == PNG_SIGNATURE
    return saved, table


def table_row(table, first_cell):
    line = next(line for line in table.splitlines() if line.startswith(f"| {first_cell} |"))
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


# ------------------------------------------------------------------------------------------------------------
# the runs of each experiment


@pytest.mark.parametrize("task", ["copy", "repeat_copy"])
@pytest.mark.parametrize("budget,Ts", [("smoke", (2, 3)), ("short", (2, 3, 4, 5)), ("paper", (2, 3, 4, 5))])
def test_copy_runs(task, budget, Ts):
    runs = make_runs(task, budget)
    assert [r.name for r in runs] == [f"{task}-{m}-T{T}" for T in Ts for m in COPY_MODES]
    assert [r.key for r in runs] == [{"mode": m, "T": T} for T in Ts for m in COPY_MODES]
    for run in runs:
        assert isinstance(run.cfg, RNNConfig) and run.cfg.validate()
        assert (run.cfg.task, run.cfg.mode, run.cfg.T, run.cfg.seed) == (task, run.key["mode"], run.key["T"], 0)
    assert {r.cfg.hidden for r in runs} == {{"smoke": 16, "short": 128, "paper": 256}[budget]}
    assert {r.cfg.episodes for r in runs} == {{"smoke": 60, "short": 20_000, "paper": 200_000}[budget]}
    assert set(Ts) <= set(PAPER_LENGTHS[task]["dni"]) and set(Ts) <= set(PAPER_LENGTHS[task]["bptt"])


def test_charlm_runs():
    for budget in ("smoke", "short", "paper"):
        runs = make_runs("charlm", budget, text="ptb:/data/ptb")
        assert [r.name for r in runs] == [f"charlm-{m}-T5" for m in COPY_MODES]
        assert [r.key for r in runs] == [{"mode": m, "T": 5} for m in COPY_MODES]
        for run in runs:
            assert run.cfg.validate() and (run.cfg.task, run.cfg.T, run.cfg.text) == ("charlm", 5, "ptb:/data/ptb")
            assert run.cfg.mode == run.key["mode"]
    assert make_runs("charlm", "smoke")[0].cfg.text == "shakespeare"
    smoke = make_runs("charlm", "smoke")[0].cfg
    assert (smoke.hidden, smoke.batch, smoke.updates, smoke.eval_every) == (16, 4, 40, 20)


def test_multinet_runs():
    for budget, ticks in (("smoke", 40), ("short", 10_000), ("paper", 50_000)):
        runs = make_runs("multinet", budget)
        labels = ["dni", "dni-state-only", "bprop", "cut", "frozen"]
        assert [r.name for r in runs] == [f"multinet-{label}" for label in labels]
        assert [r.key for r in runs] == [{"system": label} for label in labels]
        assert [r.cfg.system for r in runs] == ["dni", "dni", "bprop", "cut", "frozen"]
        assert [r.cfg.sg_context for r in runs] == [True, False, True, True, True]  # (unused outside dni)
        for run in runs:
            assert isinstance(run.cfg, MultiNetConfig) and run.cfg.validate() and run.cfg.ticks == ticks


@pytest.mark.parametrize("name", rnn_experiments.RNN_EXPERIMENTS)
def test_seeds_name_their_runs(name):
    runs = make_runs(name, "smoke", seeds=(0, 3))
    names = [r.name for r in runs]
    assert len(set(names)) == len(names) == 2 * len(make_runs(name, "smoke"))
    for run in runs:
        assert run.name.endswith("-s3") == (run.cfg.seed == 3)
        assert run.cfg.seed in (0, 3)


def test_unknown_experiment_budget_or_jobs(tmp_path):
    with pytest.raises(ValueError, match="unknown recurrent experiment 'sort'"):
        make_runs("sort", "smoke")
    with pytest.raises(ValueError, match="unknown budget 'weekend'"):
        make_runs("copy", "weekend")
    for jobs in (0, 1.5):
        with pytest.raises(ValueError, match="jobs"):
            run_experiment("multinet", "smoke", str(tmp_path / "x"), jobs=jobs)
    assert not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------------------------------
# the smoke budget end to end


def test_copy_smoke_through_the_command_line(tmp_path, capsys, monkeypatch):
    out = tmp_path / "copy"
    rc, _, err = run_cli(capsys, "experiment", "copy", "--budget", "smoke", "--out", out)
    assert rc == 0, err
    runs = make_runs("copy", "smoke")
    saved, table = assert_written(out, "copy", runs)
    assert "recalled" in table and "Jaderberg" in table
    for T in (2, 3):  # ours: the longest length solved per mode; then the paper's, labelled
        row = table_row(table, T)
        ours = [str(saved["results"][f"copy-{m}-T{T}"]["metrics"][-1]["solved"]) for m in COPY_MODES]
        assert row == [str(T), *ours, str(PAPER_LENGTHS["copy"]["bptt"][T]), str(PAPER_LENGTHS["copy"]["dni"][T])]
    for run in runs:
        final = saved["results"][run.name]["metrics"][-1]
        assert final["episode"] == 60 and final["solved"] == final["level"] - 1

    # started again: every run is skipped, and nothing written changes
    before = {name: (out / name).read_bytes() for name in ("results.json", "table.md")}
    real_train_one = rnn_experiments._train_one
    monkeypatch.setattr(rnn_experiments, "_train_one", no_training)
    rc, _, err = run_cli(capsys, "experiment", "copy", "--budget", "smoke", "--out", out)
    assert rc == 0, err
    assert [line for line in err.splitlines() if line.endswith(": done earlier")] == [
        f"{r.name}: done earlier" for r in runs
    ]
    assert {name: (out / name).read_bytes() for name in before} == before

    # a run whose result.json is missing is the only one trained again, resumed from its (final) checkpoint
    (out / "runs" / "copy-dni-T3" / "result.json").unlink()
    trained = []
    monkeypatch.setattr(rnn_experiments, "_train_one", lambda run, log, resume: trained.append((run.name, resume))
                        or real_train_one(run, log, resume))  # fmt: skip
    assert run_experiment("copy", "smoke", str(out), log=lambda s: None) == saved["results"]
    assert trained == [("copy-dni-T3", True)]


@pytest.fixture(scope="module")
def multinet_smoke(tmp_path_factory):
    """The multinet smoke experiment, trained once for the tests below, sequentially with one BLAS thread."""
    from threadpoolctl import threadpool_limits

    out = tmp_path_factory.mktemp("multinet") / "one"
    logged = []
    with threadpool_limits(limits=1, user_api="blas"):
        results = run_experiment("multinet", "smoke", str(out), log=logged.append)
    return out, results, logged


def test_multinet_smoke_writes_results_and_skips_finished_runs(multinet_smoke, monkeypatch):
    out, results, logged = multinet_smoke
    runs = make_runs("multinet", "smoke")
    assert [line for line in logged if line.endswith(": training")] == [f"{r.name}: training" for r in runs]
    saved, table = assert_written(out, "multinet", runs)
    assert saved["results"] == results
    for run in runs:
        final = results[run.name]["metrics"][-1]
        assert final["tick"] == 40 and 0 <= final["b_accuracy"] <= 1 and isinstance(final["solved"], bool)
        row = table_row(table, run.key["system"])
        assert row[1] == f"{final['b_accuracy']:.3f}" and row[2] == ("yes" if final["solved"] else "no")

    before = (out / "results.json").read_bytes()
    monkeypatch.setattr(rnn_experiments, "_train_one", no_training)
    logged = []
    assert run_experiment("multinet", "smoke", str(out), log=logged.append) == results
    assert [line for line in logged if "done earlier" in line] == [f"{r.name}: done earlier" for r in runs]
    assert (out / "results.json").read_bytes() == before


def test_two_jobs_give_the_same_results_as_one(multinet_smoke, tmp_path):
    _, one, _ = multinet_smoke
    logged = []
    two = run_experiment("multinet", "smoke", str(tmp_path / "two"), log=logged.append, jobs=2)
    assert sorted(line for line in logged if line.endswith(": finished")) == sorted(f"{n}: finished" for n in one)
    assert strip_seconds(two) == strip_seconds(one)
    saved = json.loads((tmp_path / "two" / "results.json").read_text())
    assert saved["complete"] is True and strip_seconds(saved["results"]) == strip_seconds(one)


def test_charlm_smoke_on_a_text_file(tmp_path, monkeypatch):
    text = write_text(tmp_path / "corpus.txt")
    out = tmp_path / "charlm"
    results = run_experiment("charlm", "smoke", str(out), log=lambda s: None, text=text)
    runs = make_runs("charlm", "smoke", text=text)
    saved, table = assert_written(out, "charlm", runs)
    assert saved["command"] == f"python -m minidni experiment charlm --budget smoke --text {text}"
    assert f"Character-level language model on {text}" in table and "recalled" in table
    for run in runs:
        final = results[run.name]["metrics"][-1]
        assert final["final"] is True and 0 < final["test_bpc"] < 10
        row = table_row(table, run.key["mode"])
        assert row[1:3] == [str(run.cfg.seed), f"{final['best_valid_bpc']:.3f}"]  # mode | seed | best validation

    before = (out / "results.json").read_bytes()
    monkeypatch.setattr(rnn_experiments, "_train_one", no_training)
    logged = []
    assert run_experiment("charlm", "smoke", str(out), log=logged.append, text=text) == results
    assert sum("done earlier" in line for line in logged) == 3
    assert (out / "results.json").read_bytes() == before


# ------------------------------------------------------------------------------------------------------------
# the command line's checks


@pytest.fixture
def recorded(monkeypatch):
    """minidni.experiments.recurrent.run_experiment replaced by a recorder: the CLI's parsing without any training."""
    calls = []
    monkeypatch.setattr(rnn_experiments, "run_experiment", lambda *a, **kw: calls.append((a, kw)) or {})
    return calls


def test_cli_passes_seeds_jobs_and_text_on(tmp_path, capsys, recorded):
    rc, _, err = run_cli(capsys, "experiment", "charlm", "--budget", "short", "--out", tmp_path, "--seeds", "2, 0,2",
                         "--jobs", "2", "--text", "ptb:/data/ptb")  # fmt: skip
    assert rc == 0, err
    ((args, kw),) = recorded
    assert args == ("charlm", "short", str(tmp_path))
    assert (kw["seeds"], kw["jobs"], kw["text"]) == ((2, 0), 2, "ptb:/data/ptb")
    assert run_cli(capsys, "experiment", "multinet", "--out", tmp_path)[0] == 0
    assert recorded[1][0][1] == "short" and recorded[1][1]["seeds"] == (0,)


def test_cli_passes_truncations_and_modes_on(tmp_path, capsys, recorded):
    rc, _, err = run_cli(capsys, "experiment", "copy", "--out", tmp_path, "--truncations", "3,2,3",
                         "--modes", "dni,bptt")  # fmt: skip
    assert rc == 0, err
    ((_, kw),) = recorded
    assert (kw["truncations"], kw["modes"]) == ((3, 2), ("dni", "bptt"))
    for bad in ("0", "a", ""):
        with pytest.raises(SystemExit) as exit_:
            cli.main(["experiment", "copy", "--out", str(tmp_path), "--truncations", bad])
        assert exit_.value.code == 2 and "--truncations" in capsys.readouterr().err


def test_truncations_and_modes_select_runs_and_are_checked():
    runs = make_runs("copy", "short", seeds=(0, 1), truncations=(2,), modes=("dni",))
    assert [r.name for r in runs] == ["copy-dni-T2", "copy-dni-T2-s1"]
    assert [r.cfg.seed for r in runs] == [0, 1]
    assert [r.key["mode"] for r in make_runs("charlm", "smoke", modes=("bptt",))] == ["bptt"]
    with pytest.raises(ValueError, match="unknown truncations or modes"):
        make_runs("copy", "short", modes=("rtrl",))
    with pytest.raises(ValueError, match="truncations select runs of copy"):
        make_runs("charlm", "short", truncations=(2,))
    with pytest.raises(ValueError, match="modes select runs"):
        make_runs("multinet", "short", modes=("dni",))


@pytest.mark.parametrize("seeds", ["a,b", "", "-1", "1.5", ","])
def test_cli_refuses_bad_seeds(tmp_path, capsys, recorded, seeds):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["experiment", "copy", "--out", str(tmp_path), "--seeds", seeds])
    assert exit_.value.code == 2 and "--seeds" in capsys.readouterr().err
    assert recorded == []


@pytest.mark.parametrize("flags", [["--models", "fcn3"], ["--data", "cifar10"]])
@pytest.mark.parametrize("name", ["copy", "multinet"])
def test_cli_refuses_image_flags_for_recurrent_experiments(tmp_path, capsys, recorded, name, flags):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["experiment", name, "--out", str(tmp_path), *flags])
    assert exit_.value.code == 2 and "--models and --data are for table1" in capsys.readouterr().err
    assert recorded == []


@pytest.mark.parametrize(
    "name,flags",
    [("table1", ["--text", "ptb:/data/ptb"]), ("unlock", ["--text", "ptb:/data/ptb"]), ("unlock", ["--seeds", "0,1"]),
     ("unlock", ["--seeds", "1"]), ("stochastic", ["--modes", "dni"])],  # table1 takes --seeds and --modes
)  # fmt: skip
def test_cli_refuses_recurrent_flags_for_image_experiments(tmp_path, capsys, name, flags, monkeypatch):
    from minidni.experiments import feedforward as experiments

    monkeypatch.setattr(experiments, "run_experiment", no_training)
    with pytest.raises(SystemExit) as exit_:
        cli.main(["experiment", name, "--out", str(tmp_path), *flags])
    assert exit_.value.code == 2 and "are for the recurrent experiments" in capsys.readouterr().err


def test_cli_reports_a_missing_text_file(tmp_path, capsys):
    missing = tmp_path / "nowhere.txt"
    rc, _, err = run_cli(capsys, "experiment", "charlm", "--budget", "smoke", "--out", tmp_path / "c", "--text",
                         missing)  # fmt: skip
    assert rc == 1 and "error:" in err and "no such file" in err and str(missing) in err
