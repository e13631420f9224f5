"""Copy and Repeat Copy: exact episode layouts, the loss and its gradient, the metrics, and the curriculum."""

import json
import math

import numpy as np
import pytest

from minidni.recurrent import tasks
from minidni.core.gradcheck import assert_close, numerical_gradient


def rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------------------------
# episodes: layouts checked by hand


def test_copy_episode_layout_by_hand():
    ep = tasks.copy_episode(rng(3), batch=2, n=2, bits=3)
    assert ep.length == 2
    for b in range(2):
        p0, p1 = ep.x[0, b, :3].tolist(), ep.x[1, b, :3].tolist()  # the two shown vectors
        assert set(p0 + p1) <= {0.0, 1.0}
        #                        bits   delim
        expected_x = [p0 + [0], p1 + [0], [0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]]
        expected_y = [[0, 0, 0], [0, 0, 0], [0, 0, 0], p0, p1]
        assert ep.x[:, b].tolist() == expected_x
        assert ep.y[:, b].tolist() == expected_y
        assert ep.mask[:, b].tolist() == [0, 0, 0, 1, 1]


def test_repeat_copy_episode_layout_by_hand():
    ep = tasks.repeat_copy_episode(rng(4), batch=2, n=2, repeats=3, bits=3, max_repeats=4)
    assert ep.length == 2
    assert ep.x.shape == (2 + 1 + 6 + 1, 2, 5) and ep.y.shape == (10, 2, 4)
    for b in range(2):
        p0, p1 = ep.x[0, b, :3].tolist(), ep.x[1, b, :3].tolist()
        zero = [0, 0, 0, 0, 0]
        #                        bits  delim repeat
        expected_x = [p0 + [0, 0], p1 + [0, 0], [0, 0, 0, 1, 0.75]] + [zero] * 7
        answer = [p0 + [0], p1 + [0]] * 3  # the pattern three times, end channel 0
        expected_y = [[0, 0, 0, 0]] * 3 + answer + [[0, 0, 0, 1]]
        assert ep.x[:, b].tolist() == expected_x
        assert ep.y[:, b].tolist() == expected_y
        assert ep.mask[:, b].tolist() == [0, 0, 0] + [1] * 7


@pytest.mark.parametrize("task", tasks.TASKS)
@pytest.mark.parametrize("level", [1, 4])
def test_make_episode_shapes_dtypes_and_mask(task, level):
    bits, B = 5, 3
    ep = tasks.make_episode(task, rng(level), B, level, bits=bits)
    assert isinstance(ep, tasks.Episode) and ep.length == level
    for a in (ep.x, ep.y, ep.mask):
        assert a.dtype == np.float32
    L = ep.x.shape[0]
    d_in, d_out = tasks.task_dims(task, bits)
    assert ep.x.shape == (L, B, d_in) and ep.y.shape == (L, B, d_out) and ep.mask.shape == (L, B)
    assert set(np.unique(ep.y)) <= {0.0, 1.0} and set(np.unique(ep.mask)) <= {0.0, 1.0}
    if task == "copy":
        assert L == 2 * level + 1
        scored = level
    else:
        repeats = ep.x[level, 0, bits + 1] * tasks.MAX_REPEATS
        assert repeats == round(repeats) and 1 <= repeats <= tasks.MAX_REPEATS
        repeats = round(float(repeats))
        assert L == level + 1 + level * repeats + 1
        scored = level * repeats + 1
        assert np.all(ep.x[level, :, bits + 1] == ep.x[level, 0, bits + 1])  # one count for the whole batch
    # scored: exactly the last steps; inputs there are all zero
    assert ep.mask.tolist() == [[0.0] * B] * (L - scored) + [[1.0] * B] * scored
    assert not ep.x[L - scored :].any()
    assert not ep.y[: L - scored].any()  # nothing to output while reading


def test_patterns_are_random_across_the_batch_and_across_episodes():
    ep = tasks.copy_episode(rng(0), batch=64, n=20, bits=8)
    p = ep.x[:20, :, :8]  # (N, B, bits)
    assert len({p[:, b].tobytes() for b in range(64)}) == 64  # every sequence its own pattern
    sigma = math.sqrt(0.25 / p.size)
    assert abs(p.mean() - 0.5) < 5 * sigma  # Bernoulli(0.5) bits
    assert abs(p[:, :, 0].mean() - 0.5) < 5 * math.sqrt(0.25 / p[:, :, 0].size)  # every channel, not just on average
    again = tasks.copy_episode(rng(0), batch=64, n=20, bits=8)
    other = tasks.copy_episode(rng(1), batch=64, n=20, bits=8)
    assert np.array_equal(again.x, ep.x)  # reproducible from the seed
    assert not np.array_equal(other.x, ep.x)


def test_repeat_copy_draws_every_count_from_one_to_max_repeats_uniformly():
    g, counts = rng(5), {}
    for _ in range(600):
        ep = tasks.make_episode("repeat_copy", g, 1, 2, bits=2, max_repeats=3)
        r = round(float(ep.x[2, 0, 3]) * 3)
        counts[r] = counts.get(r, 0) + 1
    assert set(counts) == {1, 2, 3}
    assert all(abs(c - 200) < 5 * math.sqrt(600 * (1 / 3) * (2 / 3)) for c in counts.values()), counts
    for _ in range(20):  # max_repeats = 1: always one copy
        assert tasks.make_episode("repeat_copy", g, 1, 2, bits=2, max_repeats=1).x.shape[0] == 2 + 1 + 2 + 1


@pytest.mark.parametrize(
    "call",
    [
        lambda: tasks.copy_episode(rng(), 0, 3),
        lambda: tasks.copy_episode(rng(), 2, 0),
        lambda: tasks.copy_episode(rng(), 2, 3, bits=0),
        lambda: tasks.copy_episode(rng(), 2, True),
        lambda: tasks.copy_episode(rng(), 2, 2.0),
        lambda: tasks.repeat_copy_episode(rng(), 2, 3, 0),
        lambda: tasks.repeat_copy_episode(rng(), 2, 3, 4, max_repeats=3),
        lambda: tasks.repeat_copy_episode(rng(), 2, 0, 1),
        lambda: tasks.repeat_copy_episode(rng(), 0, 3, 1),
        lambda: tasks.repeat_copy_episode(rng(), 2, 3, 1, bits=0),
        lambda: tasks.make_episode("reverse", rng(), 2, 3),
        lambda: tasks.make_episode("copy", rng(), 2, 0),
        lambda: tasks.make_episode("repeat_copy", rng(), 2, 3, max_repeats=0),
    ],
)
def test_bad_episode_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_the_generator_must_be_a_generator():
    with pytest.raises(TypeError, match="Generator"):
        tasks.copy_episode(0, 2, 3)


# ------------------------------------------------------------------------------------------------------------
# loss and metrics


def outputs(seed=0, L=5, B=3, D=4, scale=2.0):
    """Random float64 logits, bit targets and a mask that leaves some steps unscored."""
    g = rng(seed)
    z = g.standard_normal((L, B, D)) * scale
    y = g.integers(0, 2, (L, B, D)).astype(np.float64)
    mask = (g.random((L, B)) < 0.6).astype(np.float64)
    mask[0, 0], mask[1, 0] = 1.0, 0.0  # at least one of each
    return z, y, mask


def direct_xent(z, y):
    s = 1 / (1 + np.exp(-z))
    return -(y * np.log(s) + (1 - y) * np.log(1 - s))


def test_loss_is_the_masked_cross_entropy_per_sequence():
    z, y, mask = outputs()
    loss, _ = tasks.sigmoid_xent(z, y, mask)
    expected = float(np.sum(direct_xent(z, y) * mask[:, :, None])) / z.shape[1]
    assert loss == pytest.approx(expected, rel=1e-12)
    # per sequence: the batch stacked twice has the same cost
    doubled, _ = tasks.sigmoid_xent(np.concatenate([z, z], 1), np.concatenate([y, y], 1), np.tile(mask, (1, 2)))
    assert doubled == pytest.approx(loss, rel=1e-12)


def test_loss_gradient_matches_central_differences():
    z, y, mask = outputs(1)
    _, dz = tasks.sigmoid_xent(z, y, mask)
    num = numerical_gradient(lambda: tasks.sigmoid_xent(z, y, mask)[0], z)
    assert_close(dz, num, rtol=1e-6, atol=1e-9, name="dlogits")
    assert not dz[mask == 0].any()  # unscored steps get no gradient at all
    assert_close(dz, (1 / (1 + np.exp(-z)) - y) * mask[:, :, None] / z.shape[1], rtol=1e-12, name="closed form")


def test_float32_logits_give_float32_gradients():
    z, y, mask = outputs(2)
    _, dz = tasks.sigmoid_xent(z.astype(np.float32), y.astype(np.float32), mask.astype(np.float32))
    assert dz.dtype == np.float32


def test_loss_and_metrics_are_stable_at_huge_logits():
    _, y, mask = outputs(3)
    right = np.where(y > 0, 1000.0, -1000.0)
    n_scored = mask.sum() * y.shape[2]
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        loss, dz = tasks.sigmoid_xent(right, y, mask)
        assert loss == 0.0 and not dz.any()
        assert tasks.bits_per_bit(right, y, mask) == 0.0
        loss, dz = tasks.sigmoid_xent(-right, y, mask)  # confidently wrong everywhere: 1000 nats per scored bit
        assert loss == pytest.approx(1000 * n_scored / y.shape[1], rel=1e-12)
        assert_close(dz, np.where(y > 0, -1.0, 1.0) * mask[:, :, None] / y.shape[1], rtol=0, atol=0, name="dz")
        assert tasks.bits_per_bit(-right, y, mask) == pytest.approx(1000 / math.log(2), rel=1e-12)
        assert tasks.bits_per_bit(-right.astype(np.float32), y, mask) == pytest.approx(1000 / math.log(2), rel=1e-6)


def test_bits_per_bit_is_one_for_zero_logits_and_zero_for_a_perfect_answer():
    z, y, mask = outputs(4)
    assert tasks.bits_per_bit(np.zeros_like(z), y, mask) == pytest.approx(1.0, rel=1e-14)
    assert tasks.bits_per_bit(np.zeros_like(z, dtype=np.float32), y, mask) == pytest.approx(1.0, rel=1e-6)
    perfect = np.where(y > 0, 40.0, -40.0)
    assert 0 <= tasks.bits_per_bit(perfect, y, mask) < 1e-15
    # a mean over the scored bits, in bits: against the direct formula, with garbage where nothing is scored
    z[mask == 0] = 1e6
    expected = np.sum(direct_xent(np.where(mask[:, :, None] > 0, z, 0), y) * mask[:, :, None])
    expected /= mask.sum() * z.shape[2] * math.log(2)
    assert tasks.bits_per_bit(z, y, mask) == pytest.approx(expected, rel=1e-12)


def test_bit_error_rate_counts_the_wrong_scored_bits_exactly():
    L, B, D = 4, 2, 5
    y = rng(6).integers(0, 2, (L, B, D)).astype(np.float32)
    mask = np.array([[0, 1], [1, 1], [0, 1], [1, 0]], dtype=np.float32)  # 5 scored (t, b) pairs: 25 bits
    z = np.where(y > 0, 3.0, -3.0).astype(np.float32)
    assert tasks.bit_error_rate(z, y, mask) == 0.0
    scored = np.argwhere(np.broadcast_to(mask[:, :, None], y.shape) > 0)
    for t, b, k in scored[[0, 3, 7, 11, 12, 20, 24]]:  # flip 7 scored bits
        z[t, b, k] = -z[t, b, k]
    z[0, 0] = -z[0, 0]  # and every bit of an unscored step
    assert tasks.bit_error_rate(z, y, mask) == 7 / 25
    # logit 0 rounds to 0: right for target 0, wrong for target 1
    yy = np.array([[[0.0, 0.0, 1.0]]])
    assert tasks.bit_error_rate(np.zeros((1, 1, 3)), yy, np.ones((1, 1))) == 1 / 3


def test_loss_and_metrics_check_their_shapes_and_the_mask():
    z, y, mask = outputs(7)
    for f in (tasks.sigmoid_xent, tasks.bits_per_bit, tasks.bit_error_rate):
        with pytest.raises(ValueError, match=r"\(L, B, D\)"):
            f(z, y[:, :, :-1], mask)
        with pytest.raises(ValueError, match=r"mask \(L, B\)"):
            f(z, y, mask[:, :, None])
    for f in (tasks.bits_per_bit, tasks.bit_error_rate):
        with pytest.raises(ValueError, match="scores no outputs"):
            f(z, y, np.zeros_like(mask))


def test_a_model_that_answers_right_scores_zero_on_real_episodes():
    for task in tasks.TASKS:
        ep = tasks.make_episode(task, rng(8), 4, 3, bits=4)
        perfect = np.where(ep.y > 0, 60.0, -60.0).astype(np.float32)
        assert tasks.bit_error_rate(perfect, ep.y, ep.mask) == 0.0
        assert tasks.bits_per_bit(perfect, ep.y, ep.mask) < 1e-12
        assert tasks.bit_error_rate(-perfect, ep.y, ep.mask) == 1.0


# ------------------------------------------------------------------------------------------------------------
# the curriculum


def feed(cur, errors):
    return [cur.update(e) for e in errors]


def test_curriculum_advances_exactly_after_a_full_window_of_good_batches():
    cur = tasks.Curriculum(window=5)
    assert (cur.level, cur.solved, cur.history) == (1, 0, [])
    assert feed(cur, [0.0] * 4) == [False] * 4 and cur.level == 1  # not before the window is full
    assert cur.update(0.0) is True
    assert (cur.level, cur.solved, cur.history) == (2, 1, [(4, 2)])
    # the window starts again at the new level: 4 good batches are not enough, the 5th is
    assert feed(cur, [0.0] * 5) == [False] * 4 + [True]
    assert (cur.level, cur.solved, cur.history) == (3, 2, [(4, 2), (9, 3)])


def test_errors_from_an_earlier_level_never_count():
    cur = tasks.Curriculum(window=3, threshold=0.5)
    feed(cur, [0.1, 0.1, 0.1])
    assert cur.level == 2
    assert feed(cur, [0.2, 0.2]) == [False, False]  # a window [0.1, 0.2, 0.2] would have passed
    assert cur.update(0.2) is True


def test_one_bad_batch_delays_the_advance_until_it_leaves_the_window():
    cur = tasks.Curriculum(window=5, threshold=0.15)
    errors = [0.0, 0.0, 1.0] + [0.0] * 5  # the bad batch is batch 2: it leaves the window at batch 7
    results = feed(cur, errors)
    assert results.index(True) == 7 and results.count(True) == 1
    assert cur.history == [(7, 2)]
    # a bad batch that keeps the mean below the threshold does not delay anything: the mean counts, not the max
    cur = tasks.Curriculum(window=5, threshold=0.15)
    assert feed(cur, [0.0, 0.0, 0.5, 0.0, 0.0]) == [False] * 4 + [True]


def test_the_threshold_is_strict():
    cur = tasks.Curriculum(window=2, threshold=0.25)
    assert feed(cur, [0.25] * 10) == [False] * 10
    assert cur.update(0.24) is True  # mean 0.245


def test_the_curriculum_stops_at_max_level():
    cur = tasks.Curriculum(start=2, window=2, max_level=3)
    assert cur.solved == 1 and not cur.done
    assert feed(cur, [0.0] * 2) == [False, True] and cur.level == 3
    assert feed(cur, [0.0] * 6) == [False] * 6
    assert (cur.level, cur.solved, cur.done, cur.history) == (3, 3, True, [(1, 3)])
    assert not tasks.Curriculum(window=1).done  # no max_level: never done


def test_state_dict_round_trip_continues_identically():
    errors = rng(9).uniform(0, 0.3, 400).tolist()
    ref = tasks.Curriculum(start=2, threshold=0.15, window=7, max_level=40)
    ref_results = feed(ref, errors)
    assert 3 <= len(ref.history)  # the sequence really advances, so the test can tell

    # resume after the first advance and 4 batches before another: fewer than `window` batches after the cut,
    # so a resumed curriculum that lost its saved errors could not advance there
    first_advance = ref.history[0][0]
    cut = next(i for i in range(first_advance + 1, len(errors)) if ref_results[i + 3])
    a = tasks.Curriculum(start=2, threshold=0.15, window=7, max_level=40)
    first = feed(a, errors[:cut])
    state = json.loads(json.dumps(a.state_dict()))  # what a checkpoint's JSON metadata keeps
    assert len(state["errors"]) >= 4 and state["history"]
    b = tasks.Curriculum(start=2, threshold=0.15, window=7, max_level=40)
    b.load_state_dict(state)
    rest = [(b.update(e), b.level, b.solved) for e in errors[cut:]]
    a_rest = [(a.update(e), a.level, a.solved) for e in errors[cut:]]
    assert rest == a_rest
    assert first + [r[0] for r in rest] == ref_results
    assert b.history == ref.history and b.state_dict() == ref.state_dict()


def test_load_state_dict_refuses_other_settings():
    state = tasks.Curriculum(window=4).state_dict()
    with pytest.raises(ValueError, match="settings"):
        tasks.Curriculum(window=5).load_state_dict(state)
    with pytest.raises(ValueError, match="settings"):
        tasks.Curriculum(window=4, threshold=0.1).load_state_dict(state)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"start": 0},
        {"start": 1.5},
        {"threshold": 0},
        {"threshold": -0.1},
        {"threshold": float("nan")},
        {"threshold": float("inf")},
        {"window": 0},
        {"window": True},
        {"max_level": 0},
        {"start": 3, "max_level": 2},
    ],
)
def test_bad_curriculum_arguments_raise(kwargs):
    with pytest.raises(ValueError):
        tasks.Curriculum(**kwargs)


@pytest.mark.parametrize("bad", [float("nan"), -0.1, "0.1", None])
def test_a_nan_or_nonsense_error_raises_and_records_nothing(bad):
    cur = tasks.Curriculum(window=2)
    cur.update(0.0)
    with pytest.raises(ValueError, match="error"):
        cur.update(bad)
    assert cur.batches == 1
    assert cur.update(0.0) is True  # the window still holds just the one good error before this
