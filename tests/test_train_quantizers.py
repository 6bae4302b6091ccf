"""bnnlite.train.quantizers and the binary conv of bnnlite.train.models.

* forward of both quantizers: sign with sign(0) = +1 (also -0.0), dtype kept;
* backward: STE = grad * 1{|x| <= 1} (exactly at 1 and just above), Bi-Real's
  approx_sign = grad * (2 - 2|x|)+;
* clip_latent_weights clamps only BinaryConv2d latent weights;
* BinaryConv2d: +1 padding of the binarised input, XNOR alpha = mean|W| per
  output channel, and its forward equals the bnnlite.bitpack semantics
  (bit = x < threshold, dot = K - 2 popcount(a XOR w), padding = bit 0).
"""
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnlite.bitpack import WORD_BITS, pack_bits
from bnnlite.train.models import (BinaryConv2d, build_model, clip_latent_weights,
                                  default_config)
from bnnlite.train.quantizers import QUANTIZERS, ApproxSign, SteSign, approx_sign, ste_sign

SETTINGS = settings(derandomize=True, max_examples=40, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
TINY = {"widths": [8, 8, 16, 16, 32, 32]}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _np_sign(a):
    """+1 for a >= 0 (so +1 for 0 and -0.0), -1 otherwise; written without torch."""
    a = np.asarray(a, np.float64)
    return np.where(a >= 0, 1.0, -1.0)


def _grad_of(fn, x):
    """d(sum(fn(x) * w))/dx for a fixed random upstream gradient w; returns (w, grad)."""
    x = x.clone().requires_grad_(True)
    w = torch.linspace(-3.0, 5.0, x.numel(), dtype=x.dtype).reshape(x.shape)
    (fn(x) * w).sum().backward()
    return w.detach(), x.grad


QUANT_FNS = {"ste_sign": ste_sign, "approx_sign": approx_sign}


class TestForward:
    @pytest.mark.parametrize("name", sorted(QUANT_FNS))
    def test_signs_of_known_values(self, name):
        x = torch.tensor([0.0, -0.0, -1e-30, 1e-30, -1.0, 1.0, -7.5, 3.25, -1e30, 1e30])
        y = QUANT_FNS[name](x)
        assert y.tolist() == [1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0, -1.0, 1.0]

    @pytest.mark.parametrize("name", sorted(QUANT_FNS))
    @pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
    def test_dtype_preserved(self, name, dtype):
        x = torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0], dtype=dtype)
        y = QUANT_FNS[name](x)
        assert y.dtype == dtype
        assert y.shape == x.shape
        assert y.tolist() == [-1.0, -1.0, 1.0, 1.0, 1.0]

    @pytest.mark.parametrize("name", sorted(QUANT_FNS))
    def test_bfloat16_tiny_negative_is_minus_one(self, name):
        # smallest positive bf16 subnormal, negated: still negative -> -1
        tiny = torch.tensor([2.0 ** -133], dtype=torch.bfloat16)
        assert tiny.item() > 0
        assert QUANT_FNS[name](-tiny).item() == -1.0
        assert QUANT_FNS[name](tiny).item() == 1.0

    @SETTINGS
    @given(seed=st.integers(0, 2**32 - 1), name=st.sampled_from(sorted(QUANT_FNS)))
    def test_matches_numpy_sign(self, seed, name):
        rng = np.random.default_rng(seed)
        a = (rng.standard_normal(200) * rng.choice([1e-3, 1.0, 1e3], 200)).astype(np.float32)
        a[rng.integers(0, 200, 20)] = 0.0
        y = QUANT_FNS[name](torch.from_numpy(a)).numpy()
        np.testing.assert_array_equal(y, _np_sign(a).astype(np.float32))

    def test_modules_and_registry(self):
        x = torch.tensor([-0.3, 0.0, 0.3])
        assert SteSign()(x).tolist() == [-1.0, 1.0, 1.0]
        assert ApproxSign()(x).tolist() == [-1.0, 1.0, 1.0]
        assert QUANTIZERS["ste_sign"] is SteSign and QUANTIZERS["approx_sign"] is ApproxSign
        assert SteSign.precision == 1 and ApproxSign.precision == 1


class TestSteBackward:
    def test_pass_through_inside_and_at_one_blocked_above(self):
        one_up = float(np.nextafter(np.float32(1.0), np.float32(2.0)))
        vals = [-2.0, -one_up, -1.0, -0.999, -0.5, 0.0, 0.5, 0.999, 1.0, one_up, 2.0]
        x = torch.tensor(vals, dtype=torch.float32)
        w, g = _grad_of(ste_sign, x)
        mask = np.array([0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0], np.float32)
        np.testing.assert_array_equal(g.numpy(), w.numpy() * mask)

    def test_custom_clip_value(self):
        x = torch.tensor([-0.6, -0.5, 0.2, 0.5, 0.51])
        w, g = _grad_of(lambda t: ste_sign(t, clip_value=0.5), x)
        np.testing.assert_array_equal(g.numpy(), w.numpy() * np.array([0, 1, 1, 1, 0], np.float32))
        w, g = _grad_of(SteSign(clip_value=0.5), x)
        np.testing.assert_array_equal(g.numpy(), w.numpy() * np.array([0, 1, 1, 1, 0], np.float32))

    @SETTINGS
    @given(seed=st.integers(0, 2**32 - 1))
    def test_random(self, seed):
        a = (np.random.default_rng(seed).standard_normal(300) * 1.5).astype(np.float32)
        w, g = _grad_of(ste_sign, torch.from_numpy(a))
        np.testing.assert_array_equal(g.numpy(), w.numpy() * (np.abs(a) <= 1.0))

    def test_bfloat16_grad_dtype(self):
        x = torch.tensor([-1.5, -1.0, 0.0, 0.75, 1.25], dtype=torch.bfloat16)
        w, g = _grad_of(ste_sign, x)
        assert g.dtype == torch.bfloat16
        assert g.float().tolist() == (w.float() * torch.tensor([0.0, 1, 1, 1, 0])).tolist()


class TestApproxSignBackward:
    def test_known_values(self):
        x = torch.tensor([-2.0, -1.0, -0.75, -0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5], dtype=torch.float64)
        w, g = _grad_of(approx_sign, x)
        factor = np.array([0, 0, 0.5, 1.0, 1.5, 2.0, 1.5, 1.0, 0.5, 0, 0])
        np.testing.assert_array_equal(g.numpy(), w.numpy() * factor)

    @SETTINGS
    @given(seed=st.integers(0, 2**32 - 1))
    def test_random(self, seed):
        a = (np.random.default_rng(seed).standard_normal(300) * 1.5).astype(np.float64)
        w, g = _grad_of(approx_sign, torch.from_numpy(a))
        expect = w.numpy() * np.maximum(2.0 - 2.0 * np.abs(a), 0.0)
        np.testing.assert_allclose(g.numpy(), expect, rtol=0, atol=1e-12)

    def test_never_negative_factor(self):
        # a factor (2 - 2|x|) without the clamp would flip the gradient sign for |x| > 1
        x = torch.tensor([-3.0, 3.0])
        w, g = _grad_of(approx_sign, x)
        assert g.tolist() == [0.0, 0.0]


class TestClipLatentWeights:
    def test_binary_clamped_real_untouched(self):
        torch.manual_seed(0)
        model = build_model({**default_config("xnor"), **TINY})
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.rand(p.shape, generator=g) * 6.0 - 3.0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        clip_latent_weights(model)
        after = model.state_dict()
        binary = {f"blocks.{i}.conv.weight" for i in range(1, 6)}
        assert all(isinstance(model.blocks[i].conv, BinaryConv2d) for i in range(1, 6))
        for k, v in after.items():
            if k in binary:
                assert v.abs().max() <= 1.0
                assert before[k].abs().max() > 1.0  # the test did move it out of range
                np.testing.assert_array_equal(v.numpy(), np.clip(before[k].numpy(), -1.0, 1.0))
            else:
                assert torch.equal(v, before[k]), k
        assert before["blocks.0.conv.weight"].abs().max() > 1.0  # real first conv stays out of range

    def test_fp32_model_unchanged(self):
        torch.manual_seed(1)
        model = build_model({**default_config("fp32"), **TINY})
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(torch.rand(p.shape, generator=g) * 6.0 - 3.0)
        before = {k: v.clone() for k, v in model.state_dict().items()}
        clip_latent_weights(model)
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    def test_custom_bound(self):
        conv = BinaryConv2d(2, 3, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.linspace(-2, 2, conv.weight.numel()).reshape(conv.weight.shape))
        clip_latent_weights(conv, bound=0.25)
        assert conv.weight.min().item() == -0.25 and conv.weight.max().item() == 0.25


def _np_binary_conv(x, w, alpha, threshold=None, pad_value=1.0):
    """Hand-written 3x3 stride-1 'same' conv of sign(x - t) with sign(w), times alpha (NCHW, float64)."""
    x = np.asarray(x, np.float64)
    if threshold is not None:
        x = x - np.asarray(threshold, np.float64)[None, :, None, None]
    xb = _np_sign(x)
    n, cin, h, wd = xb.shape
    padded = np.full((n, cin, h + 2, wd + 2), pad_value)
    padded[:, :, 1:-1, 1:-1] = xb
    wb = _np_sign(w)
    out = np.zeros((n, wb.shape[0], h, wd))
    for ky in range(3):
        for kx in range(3):
            out += np.einsum("nchw,oc->nohw", padded[:, :, ky:ky + h, kx:kx + wd], wb[:, :, ky, kx])
    return out * np.asarray(alpha, np.float64)[None, :, None, None]


class TestBinaryConv2d:
    def test_alpha_is_mean_abs_per_output_channel(self):
        torch.manual_seed(2)
        conv = BinaryConv2d(3, 4, 3, padding=1, scale="mean")
        with torch.no_grad():
            conv.weight.mul_(torch.tensor([1.0, 2.0, 0.1, 5.0]).view(4, 1, 1, 1))
        w = conv.weight.detach().numpy()
        expect = np.abs(w).reshape(4, -1).mean(axis=1)
        np.testing.assert_allclose(conv.scale().detach().numpy(), expect, rtol=1e-6)
        assert len(set(np.round(expect, 6))) == 4  # really per channel, not one global mean

    def test_forward_equals_hand_conv_with_plus_one_padding(self):
        torch.manual_seed(3)
        conv = BinaryConv2d(5, 6, 3, padding=1, scale="mean")
        rng = np.random.default_rng(3)
        x = rng.standard_normal((2, 5, 7, 6)).astype(np.float32)
        x[0, :, 0, :] = 0.0  # sign(0) = +1 on a border row
        y = conv(torch.from_numpy(x)).detach().numpy()
        w = conv.weight.detach().numpy()
        alpha = np.abs(w).reshape(6, -1).mean(1)
        np.testing.assert_allclose(y, _np_binary_conv(x, w, alpha), rtol=1e-5, atol=1e-5)

    def test_all_negative_input_border_differs_from_zero_padding(self):
        conv = BinaryConv2d(2, 1, 3, padding=1, scale="mean")
        with torch.no_grad():
            conv.weight.fill_(0.5)  # sign(W) = +1 everywhere, alpha = 0.5
        x = -torch.ones(1, 2, 4, 4)
        y = conv(x).detach().numpy()[0, 0]
        # sum over 2 channels of the 3x3 window of -1 (inside) / +1 (padding), times 0.5
        plus_one = _np_binary_conv(x.numpy(), conv.weight.detach().numpy(), [0.5])[0, 0]
        zero_pad = _np_binary_conv(x.numpy(), conv.weight.detach().numpy(), [0.5], pad_value=0.0)[0, 0]
        np.testing.assert_allclose(y, plus_one)
        assert y[1, 1] == -9.0            # interior: 2 channels * 9 taps * (-1) * 0.5
        assert y[0, 0] == 0.5 * 2 * (5 - 4)   # corner: 5 padded (+1) and 4 real (-1) taps
        assert y[0, 1] == 0.5 * 2 * (3 - 6)   # edge: 3 padded, 6 real
        assert not np.allclose(y, zero_pad)   # zero padding would give -4 at the corner
        assert zero_pad[0, 0] == -4.0

    def test_learned_scale_and_threshold(self):
        torch.manual_seed(4)
        conv = BinaryConv2d(3, 6, 3, padding=1, input_quantizer="approx_sign", scale="learned", learn_threshold=True)
        with torch.no_grad():
            conv.alpha.copy_(torch.tensor([0.5, -1.0, 2.0, 0.25, 3.0, 1.5]))
            conv.threshold.copy_(torch.tensor([0.3, -0.2, 0.0]))
        x = np.random.default_rng(4).standard_normal((1, 3, 5, 5)).astype(np.float32)
        x[0, 0, 2, 2] = 0.3  # exactly at the threshold -> +1
        y = conv(torch.from_numpy(x)).detach().numpy()
        expect = _np_binary_conv(x, conv.weight.detach().numpy(), conv.alpha.detach().numpy(),
                                 threshold=[0.3, -0.2, 0.0])
        np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)

    def test_bad_scale_rejected(self):
        with pytest.raises(ValueError, match="scale"):
            BinaryConv2d(2, 2, 3, padding=1, scale="max")


def _bitpack_conv(x_nchw, w, alpha, threshold):
    """The runtime's semantics on packed words: bits = x < t (channels last), padding = all-zero
    words (+1), dot over the 9 taps = 9*Cin - 2 popcount(a XOR w), times alpha."""
    n, cin, h, wd = x_nchw.shape
    cout = w.shape[0]
    a = pack_bits(np.ascontiguousarray(x_nchw.transpose(0, 2, 3, 1)), threshold)  # (N, H, W, words)
    nw = a.shape[-1]
    ap = np.zeros((n, h + 2, wd + 2, nw), a.dtype)
    ap[:, 1:-1, 1:-1] = a
    wp = pack_bits(np.ascontiguousarray(w.transpose(0, 2, 3, 1)), 0.0)  # (Cout, 3, 3, words)
    pop = np.zeros((n, h, wd, cout), np.int64)
    for ky in range(3):
        for kx in range(3):
            xor = np.bitwise_xor(ap[:, ky:ky + h, kx:kx + wd, None, :], wp[None, None, None, :, ky, kx, :])
            pop += np.bitwise_count(xor).sum(-1, dtype=np.int64)
    acc = 9 * cin - 2 * pop
    return (acc * np.asarray(alpha, np.float64)).transpose(0, 3, 1, 2), acc.transpose(0, 3, 1, 2)


class TestAgreesWithBitpack:
    @pytest.mark.parametrize("cin", [3, WORD_BITS + 6])
    def test_training_forward_equals_packed_semantics(self, cin):
        torch.manual_seed(5)
        cout = 4
        conv = BinaryConv2d(cin, cout, 3, padding=1, scale="learned", learn_threshold=True)
        rng = np.random.default_rng(cin)
        t = rng.standard_normal(cin).astype(np.float32) * 0.5
        x = rng.standard_normal((2, cin, 5, 4)).astype(np.float32)
        x[:, :, 1, 1] = t  # exactly at the threshold: bit 0 (+1) in both
        x[0, :, 2, 2] = 0.0
        with torch.no_grad():
            conv.threshold.copy_(torch.from_numpy(t))
            conv.alpha.copy_(torch.from_numpy(rng.uniform(0.5, 2.0, cout).astype(np.float32)))
            conv.weight.view(-1)[:5] = 0.0  # sign(0) = +1 for weights too (bit 0)
        y = conv(torch.from_numpy(x)).detach().numpy().astype(np.float64)
        expect, acc = _bitpack_conv(x, conv.weight.detach().numpy(), conv.alpha.detach().numpy(), t)
        np.testing.assert_allclose(y, expect, rtol=1e-6, atol=1e-5)
        # the integer accumulator itself
        np.testing.assert_array_equal(np.rint(y / conv.alpha.detach().numpy()[None, :, None, None]), acc)

    def test_xnor_model_binary_layer_in_eval(self):
        """A BinaryConv2d inside an xnor model (mean scale, no threshold) = packed semantics at t = 0."""
        torch.manual_seed(6)
        model = build_model({**default_config("xnor"), **TINY}).eval()
        conv = model.blocks[2].conv
        x = np.random.default_rng(6).standard_normal((1, 8, 6, 6)).astype(np.float32)
        y = conv(torch.from_numpy(x)).detach().numpy()
        w = conv.weight.detach().numpy()
        expect, _ = _bitpack_conv(x, w, np.abs(w).reshape(w.shape[0], -1).mean(1), 0.0)
        np.testing.assert_allclose(y, expect, rtol=1e-5, atol=1e-5)
