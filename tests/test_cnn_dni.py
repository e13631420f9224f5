"""DNI on CNNs: the invariants of tests/test_dni.py, now with feature maps (B, C, H, W) between the blocks."""

import copy

import numpy as np
import pytest

from minidni.dni.network import build_network
from minidni.dni.steps import output_loss
from minidni.core.gradcheck import assert_close
from minidni.runs.train import TrainConfig
from test_dni import OracleSG  # an SG module that returns the true gradient it was given

f64 = np.float64


def tiny_cnn(mode, seed=0, **kw):
    """CNN 3 on (B, 2, 8, 8) images: 2 conv blocks (3 channels, 8x8 -> 4x4 -> 2x2) and a linear output."""
    return build_network(
        depth=3, arch="cnn", in_shape=(2, 8, 8), channels=3, sg_channels=4, n_classes=4, mode=mode, optimizer="sgd",
        lr=0.1, sg_lr=0.01, momentum=0.0, seed=seed, dtype=f64, **kw,
    )  # fmt: skip


def batch(seed=0, B=6):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((B, 2, 8, 8)), rng.integers(0, 4, B)


def params(net):
    return {k: v.copy() for k, v in net.state_arrays().items() if k.startswith("block") and "running_" not in k}


def true_gradients(net, x, y):
    """dL/dh_i for every hidden block's output (B, C, H, W), by backprop on a copy (nothing of net moves)."""
    ref = copy.deepcopy(net)
    hs, caches, h = [], [], x
    for block in ref.hidden:
        h, cache = block.forward(h)
        hs.append(h)
        caches.append(cache)
    _, dh, cache = output_loss(ref, h, y)
    dh = ref.output.backward(dh, cache)
    out = [None] * len(ref.hidden)
    for i in range(len(ref.hidden) - 1, -1, -1):
        out[i] = dh
        if i > 0:
            dh = ref.hidden[i].backward(dh, caches[i])
    return out


def test_cnn_dni_step_with_true_gradients_equals_a_backprop_step():
    x, y = batch(1)
    dni, bprop = tiny_cnn("dni"), tiny_cnn("bprop")
    for block, dh in zip(dni.hidden, true_gradients(dni, x, y), strict=True):
        assert dh.ndim == 4  # the gradient of a feature map
        block.sg = OracleSG(dh)
    dni.train_step(x, y)
    bprop.train_step(x, y)
    for (k, a), b in zip(params(dni).items(), params(bprop).values(), strict=True):
        assert_close(a, b, rtol=1e-10, atol=1e-13, name=k)


@pytest.mark.parametrize("mode", ["dni", "cdni"])
def test_conv_sg_modules_predict_feature_map_gradients_and_start_at_zero(mode):
    net = tiny_cnn(mode)
    x, y = batch(2)
    before = params(net)
    result = net.train_step(x, y)
    h, _ = net.hidden[0].forward(x)
    dh_syn, _ = net.hidden[0].sg.predict(h, y)
    assert dh_syn.shape == h.shape == (6, 3, 4, 4)
    assert net.hidden[0].sg.kind == ("cconv" if mode == "cdni" else "conv")
    # zero-initialised modules: the hidden blocks did not move on step 0, the output block did
    after = params(net)
    for k in before:
        if k.startswith(("block0.", "block1.")) and ".opt." not in k:
            assert np.array_equal(after[k], before[k]), k
    assert not np.array_equal(after["block2.1.W"], before["block2.1.W"])
    assert len(result["sg_loss"]) == 2


def test_cdni_cnn_label_maps_change_the_prediction():
    """A one-conv cDNI module (sg='linear') reads [h, label maps]: weights on the label channels alone make
    its prediction depend on the label, and only through the channel of each example's class."""
    net = tiny_cnn("cdni", sg="linear")
    sg = net.hidden[1].sg
    W = sg.net.layers[0].params["W"]  # (C, C + K, 5, 5): the last K input channels read the label maps
    W[:, -4:] = np.arange(4.0)[None, :, None, None]  # class k's map contributes k per kernel tap
    x, _ = batch(3)
    h, _ = net.hidden[1].forward(net.hidden[0].forward(x)[0])
    labels = np.array([0, 1, 2, 3, 1, 2])
    dh_syn, _ = sg.predict(h, labels)
    # a 2x2 map under a 5x5 "same" kernel: every output pixel sees all 4 pixels of its class map once
    assert_close(dh_syn, 4.0 * labels[:, None, None, None] * np.ones(dh_syn.shape), rtol=1e-12, atol=0,
                 name="label-map contribution")  # fmt: skip


def test_cnn_rejects_flat_inputs_and_the_fused_kernels():
    net = tiny_cnn("cdni")
    with pytest.raises(ValueError, match=r"images \(B, 2, H, W\)"):
        net.train_step(np.zeros((6, 128)), np.zeros(6, dtype=np.int64))
    with pytest.raises(ValueError, match="fused kernels implement fully connected networks; a convolutional one"):
        from minidni.cuda.fused import FusedDNIStep

        FusedDNIStep(net, kernels=None)
    with pytest.raises(ValueError, match="image data"):
        TrainConfig(data="spirals", model="cnn3").validate()
