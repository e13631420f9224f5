"""`--kernels auto` (minidni.cuda.autotune): the choosing rule, the plan of a step, its cache and its key, and the
trainer's use of it - on the CPU emulator, where the timings are the wall clock and say nothing about a GPU, so
the rule itself is tested with a timer that returns chosen figures."""

import copy
import json
import os

import numpy as np
import pytest

from minidni.cuda import autotune
from minidni.cuda.emulator import emulator_available, unavailable_reason
from minidni.cuda.fused import FusedDNIStep, op_key
from minidni.cuda.loader import get_kernels
from minidni.cuda.timing import DeviceTimer, Timing
from minidni.dni.network import build_network
from minidni.cuda.fused import use_kernels

pytestmark = [
    pytest.mark.skipif(not emulator_available(), reason=f"CPU emulator: {unavailable_reason()}"),
    pytest.mark.usefixtures("isolated"),
]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIDNI_CACHE", str(tmp_path / "cache"))


def _net(**kw):
    args = dict(depth=3, d_in=13, hidden=37, n_classes=5, sg_hidden=19, sg_layers=1, lr=1e-2, sg_lr=1e-2, seed=3)
    args.update(kw)
    return build_network(**args)


class ScriptedTimer:
    """A timer that runs nothing and answers the figures it was given: autotune.measure times the kernel first,
    then the unfused alternative, so odd calls are kernels and even calls unfused."""

    def __init__(self, kernel_s, unfused_s):
        self.kernel_s, self.unfused_s, self.calls = kernel_s, unfused_s, 0

    def __call__(self, fn, repeats):
        self.calls += 1
        return Timing(self.kernel_s if self.calls % 2 else self.unfused_s, False)


def test_a_kernel_is_kept_unless_more_than_five_percent_slower():
    assert autotune.choose(1.05, 1.0, 3) == 3
    assert autotune.choose(1.0501, 1.0, 3) == "unfused"
    assert autotune.choose(0.5, 1.0, 2) == 2


def test_the_plan_names_every_operation_a_step_launches():
    """operations(B) is what the plan covers: every (op, shape) a real step looks up, and nothing else."""
    for kw in (dict(mode="cdni", sg="linear"), dict(mode="dni", sg="mlp", optimizer="sgd"), dict(depth=4, mode="cdni")):
        net = _net(**kw)
        use_kernels(net, get_kernels("emulator"))
        looked_up, original = [], net.fused_step._version

        def spy(op, *dims):
            looked_up.append(op_key(op, *dims))
            return original(op, *dims)

        net.fused_step._version = spy
        rng = np.random.default_rng(0)
        net.train_step(rng.standard_normal((11, 13)).astype(np.float32), rng.integers(0, 5, 11))
        assert set(looked_up) == set(net.fused_step.operations(11)), kw


def test_plan_for_chooses_per_shape_caches_and_rekeys(monkeypatch):
    net = _net(mode="cdni", sg="linear")
    use_kernels(net, get_kernels("emulator"))
    step = net.fused_step
    timer = ScriptedTimer(kernel_s=2.0, unfused_s=1.0)  # every kernel twice as slow: all unfused
    plan, record = autotune.plan_for(step, 11, get_kernels("emulator"), timer=timer, log=lambda m: None)
    assert set(plan) == set(step.operations(11)) and set(plan.values()) == {"unfused"}
    assert record["measured_now"] == len(plan) and os.path.isfile(record["cache"])
    assert timer.calls == 2 * len(plan)

    again = ScriptedTimer(kernel_s=1.0, unfused_s=2.0)
    plan2, record2 = autotune.plan_for(step, 11, get_kernels("emulator"), timer=again, log=lambda m: None)
    assert plan2 == plan and again.calls == 0 and record2["measured_now"] == 0  # the cache answered

    monkeypatch.setattr(autotune, "kernels_fingerprint", lambda: "a changed tiles.cuh")
    plan3, _ = autotune.plan_for(step, 11, get_kernels("emulator"), timer=again, log=lambda m: None)
    assert again.calls == 2 * len(plan) and "unfused" not in plan3.values()  # measured again: kernels win

    monkeypatch.setattr(autotune, "device_identity", lambda kernels: {"device": "another GPU"})
    fresh = ScriptedTimer(kernel_s=1.0, unfused_s=1.0)
    autotune.plan_for(step, 11, get_kernels("emulator"), timer=fresh, log=lambda m: None)
    assert fresh.calls == 2 * len(plan)  # another device: measured again


def test_a_damaged_cache_file_is_measured_again(tmp_path):
    net = _net(mode="cdni", sg="linear")
    use_kernels(net, get_kernels("emulator"))
    _, record = autotune.plan_for(net.fused_step, 11, get_kernels("emulator"), timer=ScriptedTimer(1, 1),
                                  log=lambda m: None)  # fmt: skip
    with open(record["cache"], "w") as f:
        f.write("{not json")
    timer = ScriptedTimer(1, 1)
    autotune.plan_for(net.fused_step, 11, get_kernels("emulator"), timer=timer, log=lambda m: None)
    assert timer.calls > 0
    json.loads(open(record["cache"]).read())  # rewritten whole


@pytest.mark.parametrize("mixed", [False, True])
def test_a_planned_step_is_the_same_step(mixed):
    """Whatever the plan picks, per operation and shape, the step equals the engine's (float32 tolerance)."""
    engine = _net(mode="cdni", sg="linear")
    for opt in engine.optimizers().values():
        opt.eps = 1e-3  # as tests/test_fused.py: keep rounding noise out of Adam's near-zero elements
    fused = copy.deepcopy(engine)
    use_kernels(fused, get_kernels("emulator"))
    keys = sorted(fused.fused_step.operations(11))
    kernel = fused.fused_step.v  # the fastest kernel of each op
    plan = {k: ("unfused" if i % 2 == 0 or not mixed else kernel[k.split("(")[0]]) for i, k in enumerate(keys)}
    use_kernels(fused, get_kernels("emulator"), plan=plan)
    rng = np.random.default_rng(1)
    for _ in range(2):
        x, y = rng.standard_normal((11, 13)).astype(np.float32), rng.integers(0, 5, 11)
        want, got = engine.train_step(x, y), fused.train_step(x, y)
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-5)
        np.testing.assert_allclose(got["sg_loss"], want["sg_loss"], rtol=1e-4)
    for k, v in engine.state_arrays().items():
        np.testing.assert_allclose(fused.state_arrays()[k], v, rtol=2e-5, atol=2e-5, err_msg=k)


def test_an_unknown_version_is_refused():
    net = _net(mode="cdni")
    with pytest.raises(ValueError, match="linear_forward has versions"):
        FusedDNIStep(net, get_kernels("emulator"), versions={"linear_forward": 7})


def test_the_real_timer_runs_on_the_emulator():
    """The measuring path end to end (the wall clock here: a check of the plumbing, not of a GPU)."""
    net = _net(mode="dni", sg="mlp")
    use_kernels(net, get_kernels("emulator"))
    timer = DeviceTimer(get_kernels("emulator"), rounds=1)
    plan, record = autotune.plan_for(net.fused_step, 11, get_kernels("emulator"), timer=timer, log=lambda m: None)
    assert set(plan) == set(net.fused_step.operations(11))
    assert all(t["kernel"] > 0 and t["unfused"] > 0 for t in record["timings_us"].values())
    assert record["identity"]["device"].startswith("CPU emulator")


def test_the_trainer_records_its_auto_plan_in_config_json(tmp_path, monkeypatch):
    """--kernels auto on the cupy backend (here the CuPy stand-in, the kernels on the emulator) times the step's
    operations at start-up and writes the plan, with its timings and what they were measured on, to config.json."""
    pytest.importorskip("cupy", reason="the CuPy stand-in reads the installed CuPy's API")
    from minidni.cuda import loader
    from minidni.cuda.cupy_standin import CupyStandin, standin_kernels
    from minidni.runs.train import TrainConfig, train

    standin = CupyStandin()
    real = loader.get_kernels
    monkeypatch.setattr(loader, "get_kernels", lambda t: standin_kernels(standin) if t == "cupy" else real(t))
    lines = []
    with standin.active():
        cfg = TrainConfig(data="spirals", model="fcn3", mode="cdni", hidden=8, epochs=1, batch=32, train_subset=128,
                          test_subset=64, progress=False, out=str(tmp_path / "run"))  # fmt: skip
        train(cfg, log=lines.append)
    info = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(info["kernels"]["plan"]) == {k for k in info["kernels"]["timings_us"]}
    assert info["kernels"]["identity"]["device"].startswith("CPU emulator")
    assert any(line.startswith("training step: auto (") for line in lines), lines
