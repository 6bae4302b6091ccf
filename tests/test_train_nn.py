"""bnnlite.train.nn: the binary layers against hand-written NumPy maths (any kernel size,
stride 1 and 2, +1 padding, scales, thresholds), BinaryLinear, RSign, RPReLU, errors.
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnlite.train import nn as bnn


def _sign(x):
    return np.where(x >= 0, 1.0, -1.0)


def _np_conv(x, w, alpha, stride, padding, threshold=None):
    """sign(x - t) padded with +1, conv with sign(w) at ``stride``, times alpha (NCHW, float64)."""
    x = np.asarray(x, np.float64)
    if threshold is not None:
        x = x - np.asarray(threshold, np.float64)[None, :, None, None]
    xb = _sign(x)
    n, c, h, wd = xb.shape
    p = padding
    padded = np.full((n, c, h + 2 * p, wd + 2 * p), 1.0)
    padded[:, :, p:p + h, p:p + wd] = xb
    k = w.shape[-1]
    ho, wo = (h + 2 * p - k) // stride + 1, (wd + 2 * p - k) // stride + 1
    out = np.zeros((n, w.shape[0], ho, wo))
    wb = _sign(w)
    for i in range(k):
        for j in range(k):
            patch = padded[:, :, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            out += np.einsum("nchw,oc->nohw", patch, wb[:, :, i, j])
    return out * np.asarray(alpha, np.float64)[None, :, None, None]


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(k=st.sampled_from([1, 2, 3, 5]), stride=st.sampled_from([1, 2]), padding=st.integers(0, 2),
       cin=st.integers(1, 9), cout=st.integers(1, 5), h=st.integers(5, 9), scale=st.sampled_from(bnn.SCALES),
       thr=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_binary_conv_equals_the_maths(k, stride, padding, cin, cout, h, scale, thr, seed):
    torch.manual_seed(seed)
    conv = bnn.BinaryConv2d(cin, cout, k, stride=stride, padding=padding, scale=scale, learn_threshold=thr)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2, cin, h, h + 1)).astype(np.float32)
    t = None
    if thr:
        t = (0.3 * rng.standard_normal(cin)).astype(np.float32)
        with torch.no_grad():
            conv.threshold.copy_(torch.from_numpy(t))
        x[0, :, 0, 0] = t          # exactly at the threshold: +1
    x[1, :, 1, :] = 0.0            # sign(0) = +1
    y = conv(torch.from_numpy(x)).detach().numpy()
    w = conv.weight.detach().numpy()
    alpha = {"mean": np.abs(w).reshape(cout, -1).mean(1), "none": np.ones(cout),
             "learned": conv.scale().detach().numpy()}[scale]
    expect = _np_conv(x, w, alpha, stride, padding, t)
    assert y.shape == expect.shape
    np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)


def test_stride_two_one_by_one_picks_every_other_pixel():
    conv = bnn.BinaryConv2d(1, 1, 1, stride=2, scale="none")
    with torch.no_grad():
        conv.weight.fill_(1.0)
    x = torch.tensor([[[[1.0, -1.0, 1.0], [-1.0, -1.0, -1.0], [-1.0, 5.0, 1.0]]]])
    assert conv(x).tolist() == [[[[1.0, 1.0], [-1.0, 1.0]]]]


def test_binary_linear_equals_the_maths():
    torch.manual_seed(0)
    lin = bnn.BinaryLinear(70, 6, scale="mean", learn_threshold=True)
    with torch.no_grad():
        lin.threshold.normal_(0, 0.3)
    x = torch.randn(5, 70)
    w = lin.weight.detach().numpy()
    xb = _sign(x.numpy() - lin.threshold.detach().numpy())
    expect = (xb @ _sign(w).T) * np.abs(w).mean(1)
    np.testing.assert_allclose(lin(x).detach().numpy(), expect, rtol=1e-5, atol=1e-5)


def test_gradients_reach_weights_thresholds_and_scale():
    conv = bnn.BinaryConv2d(3, 4, 3, padding=1, input_quantizer="approx_sign", scale="learned", learn_threshold=True)
    x = (0.5 * torch.randn(2, 3, 6, 6)).requires_grad_()
    conv(x).square().sum().backward()
    for t in (x.grad, conv.weight.grad, conv.threshold.grad, conv.alpha.grad):
        assert t is not None and t.abs().sum() > 0


def test_rsign_learns_its_threshold_with_the_base_gradient():
    q = bnn.RSign(2, base="ste_sign")
    with torch.no_grad():
        q.threshold.copy_(torch.tensor([0.5, -0.5]))
    x = torch.tensor([[0.5, -0.6], [2.0, 0.0]], requires_grad=True)
    y = q(x)
    assert y.tolist() == [[1.0, -1.0], [1.0, 1.0]]
    y.sum().backward()
    # STE: gradient 1 where |x - b| <= 1, for x and (negated, summed) for b
    assert x.grad.tolist() == [[1.0, 1.0], [0.0, 1.0]]
    assert q.threshold.grad.tolist() == [-1.0, -2.0]


def test_rprelu_on_maps_and_vectors():
    act = bnn.RPReLU(2)
    with torch.no_grad():
        act.gamma.copy_(torch.tensor([1.0, 0.0]))
        act.beta.copy_(torch.tensor([0.5, -2.0]))
        act.zeta.copy_(torch.tensor([0.0, 3.0]))
    v = torch.tensor([[0.0, -1.0], [2.0, 1.0]])
    assert act(v).tolist() == [[-0.5, 5.0], [1.0, 4.0]]
    assert act(v.view(2, 2, 1, 1)).flatten().tolist() == [-0.5, 5.0, 1.0, 4.0]


@pytest.mark.parametrize("kw, match", [
    (dict(stride=3), "stride"), (dict(scale="max"), "scale"), (dict(input_quantizer="tanh"), "input_quantizer"),
    (dict(padding=-1), "padding"),
])
def test_bad_arguments_are_refused(kw, match):
    with pytest.raises(ValueError, match=match):
        bnn.BinaryConv2d(2, 2, 3, **kw)


# ---------------------------------------------------------------- Bi-Real ResNet-18

def test_birealresnet18_shapes_units_and_shortcuts():
    from bnnlite.train.models import build_model, default_config
    from bnnlite.train.resnet import BiRealUnit, Downsample
    model = build_model(default_config("birealresnet18"))
    units = [m for m in model.modules() if isinstance(m, BiRealUnit)]
    assert len(units) == 16
    assert [u.conv.stride for u in units].count(2) == 3
    downs = [u.shortcut for u in units if u.shortcut is not None]
    assert len(downs) == 3 and all(isinstance(d, Downsample) and d.pool is not None for d in downs)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    cfg = dict(default_config("birealresnet18"), stem="imagenet", image_size=64, num_classes=5)
    assert build_model(cfg)(torch.randn(1, 3, 64, 64)).shape == (1, 5)


def test_birealresnet18_trains_one_tiny_epoch(tmp_path):
    from _cifar_files import write_tiny_training_set
    from bnnlite.train.engine import TrainConfig, train
    data = write_tiny_training_set(tmp_path / "d", n_train=160, n_test=32, seed=0)
    torch.set_num_threads(1)
    m = train(TrainConfig(model="birealresnet18", data=str(data), out=str(tmp_path / "o"), epochs=1, batch_size=32,
                          val_size=32, subset=160, compile=False, bf16=False, progress=False, threads=1,
                          device="cpu", model_overrides={"widths": [8, 16, 16, 32], "units": [2, 2, 1, 1]}))
    assert 0.0 <= m["test_acc"] <= 1.0
