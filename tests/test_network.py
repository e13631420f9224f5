"""minidni.dni.network: what a learner sees when printing a Network, and the errors of its option checks."""

import re

import pytest

from minidni.dni.network import build_network, check_split


def trainable(part):
    return sum(int(p.size) for layer in part.layers for p in layer.params.values())


def test_print_net_shows_the_mode_every_block_every_sg_module_and_the_parameter_counts():
    net = build_network(3, "cdni", hidden=32, d_in=20, n_classes=4)
    text = repr(net)
    assert "object at 0x" not in text
    lines = text.splitlines()
    total = sum(trainable(b.layers) + (trainable(b.sg.net) if b.sg else 0) for b in net.blocks)
    assert lines[0] == f"Network(mode='cdni', sg_target='bootstrap'), {total:,} parameters:"
    assert re.fullmatch(r" +704  block 0: Linear\(20, 32, bias=False\) -> BatchNorm1d\(32\) -> ReLU\(\)", lines[1])
    assert lines[2].endswith("SG module after block 0 (linear given the label): "
                             "SyntheticGradient(d=32, hidden=(), n_classes=4)")  # fmt: skip
    assert f"{trainable(net.blocks[0].sg.net):,}  " in lines[2]
    assert "block 1: Linear(32, 32, bias=False)" in lines[3] and "SG module after block 1" in lines[4]
    assert lines[5].endswith("block 2 (output): Linear(32, 4)") and "132  " in lines[5]  # 32 x 4 + 4
    assert len(lines) == 6
    assert str(net) == text


@pytest.mark.parametrize(
    "kw, expected",
    [
        ({"mode": "bprop"}, ["Network(mode='bprop'", "block 0:", "block 1:", "block 2 (output):"]),
        ({"mode": "dni", "sg_hidden": 8}, ["(mlp): SyntheticGradient(d=16, hidden=(8, 8))"]),
        ({"mode": "dni", "p_update": 0.5}, ["p_update=0.5"]),
        ({"mode": "cdni", "unlock": True, "input_hidden": 8}, ["synthetic input of block 1: SyntheticInput(d_x=6",
                                                              "synthetic input of block 2"]),
        ({"mode": "cdni", "arch": "cnn", "in_shape": (1, 8, 8), "channels": 4, "sg_channels": 4},
         ["Conv2d(1, 4,", "MaxPool2d", "(conv given the label)", "Flatten() -> Linear(16, 3)"]),
    ],
)  # fmt: skip
def test_print_net_for_each_kind_of_network(kw, expected):
    net = build_network(3, d_in=6, hidden=16, n_classes=3, **kw)
    text = repr(net)
    for part in expected:
        assert part in text, f"{part!r} not in\n{text}"
    if kw["mode"] == "bprop":
        assert "SG module" not in text


def test_the_split_error_is_written_as_the_command_line_takes_it():
    with pytest.raises(ValueError) as e:
        check_split((3, 4), 8)
    message = str(e.value)
    assert "e.g. --split 2,6 (split=(2, 6) in Python); got 3,4" in message
    with pytest.raises(ValueError, match=r"got \[3, 'x'\]"):  # not integers: shown as given
        check_split([3, "x"], 8)
