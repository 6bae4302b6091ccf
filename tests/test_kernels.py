"""Tests of the binary kernels of every available backend.

Each backend is checked against (a) a float +-1 convolution oracle built
only from bitpack.unpack_bits and plain NumPy (independent of the kernels'
popcount formula) and (b) bnnlite.reference, bit for bit.  Backends that are
not built here are skipped with the reason.  Outputs are pre-filled with
garbage so any element a kernel forgets to write is caught.
"""
import importlib.util
import itertools
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from bnnlite import backend as B
from bnnlite import reference
from bnnlite.bitpack import WORD_BITS, WORD_DTYPE, pack_bits, unpack_bits, words_for

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow,
                                           HealthCheck.function_scoped_fixture])
CHANNELS = [1, 3, 63, 64, 65, 127, 128, 130, 200]
ALL = ["cython-avx512", "cython-avx2", "cython-generic", "numba", "numpy"]
GARBAGE_WORD = np.iinfo(WORD_DTYPE).max


def _get(name):
    try:
        return B.get_backend(name)
    except (ImportError, RuntimeError) as exc:
        pytest.skip(f"backend {name} not available here: {exc}")


@pytest.fixture(scope="module", params=ALL)
def be(request):
    return _get(request.param)


@pytest.fixture(scope="module")
def ref():
    return B.get_backend("numpy")


# --------------------------------------------------------------------------
# Cases and oracles
# --------------------------------------------------------------------------
@st.composite
def conv_cases(draw):
    k = draw(st.sampled_from([1, 3]))
    pad = draw(st.sampled_from([0, 1]))
    h = draw(st.integers(1, 9))
    w = draw(st.integers(1, 9))
    assume(h + 2 * pad >= k and w + 2 * pad >= k)
    return dict(n=draw(st.integers(1, 3)), h=h, w=w, k=k, pad=pad,
                cin=draw(st.sampled_from(CHANNELS)), cout=draw(st.sampled_from(CHANNELS)),
                stride=draw(st.sampled_from([1, 2])), seed=draw(st.integers(0, 2**32 - 1)))


class Case:
    """Random packed input (with its +1 border) and weights for one conv."""

    def __init__(self, n, h, w, k, pad, cin, cout, stride, seed):
        self.rng = np.random.default_rng(seed)
        self.cin, self.cout, self.k, self.stride = cin, cout, k, stride
        self.x = np.zeros((n, h + 2 * pad, w + 2 * pad, words_for(cin)), WORD_DTYPE)
        self.x[:, pad:pad + h, pad:pad + w] = pack_bits(self.rng.standard_normal((n, h, w, cin)))
        self.w = pack_bits(self.rng.standard_normal((cout, k, k, cin)))
        self.k_bits = k * k * cin
        self.n = n
        self.ho = (h + 2 * pad - k) // stride + 1
        self.wo = (w + 2 * pad - k) // stride + 1

    @property
    def out_shape(self):
        return (self.n, self.ho, self.wo, self.cout)

    @property
    def bits_shape(self):
        return (self.n, self.ho, self.wo, words_for(self.cout))

    def f32(self, *shape):
        return self.rng.standard_normal(shape).astype(np.float32)

    def oracle_acc(self):
        """sum of a*w over the window with a, w in {-1,+1}, as float64."""
        xf = unpack_bits(self.x, self.cin).astype(np.float64)   # zero words -> +1
        wf = unpack_bits(self.w, self.cin).astype(np.float64)
        s, acc = self.stride, 0.0
        for i in range(self.k):
            for j in range(self.k):
                patch = xf[:, i:i + s * (self.ho - 1) + 1:s, j:j + s * (self.wo - 1) + 1:s]
                acc = acc + np.einsum("nhwc,oc->nhwo", patch, wf[:, i, j, :])
        return acc


def _float_out(be, c, wp, mult, bias, residual=None, rprelu=None, next_thr=None,
               threads=1, scale=None):
    out = np.full(c.out_shape, np.nan, np.float32)
    bits = None if next_thr is None else np.full(c.bits_shape, GARBAGE_WORD, WORD_DTYPE)
    be.bconv_float(c.x, wp, c.k_bits, c.stride, mult, bias, residual, rprelu, out,
                   bits, next_thr, threads, scale=scale)
    return out, bits


def _bits_out(be, c, wp, thr, threads=1):
    out = np.full(c.bits_shape, GARBAGE_WORD, WORD_DTYPE)
    be.bconv_bits(c.x, wp, c.k_bits, c.stride, thr, out, threads)
    return out


# --------------------------------------------------------------------------
class TestConvIntegers:
    """mult=1, bias=0 float mode and bits mode give exact integers."""

    @given(case=conv_cases())
    @SETTINGS
    def test_float_mode_equals_pm1_oracle(self, be, case):
        c = Case(**case)
        out, _ = _float_out(be, c, be.prepare_weights(c.w),
                            np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32))
        np.testing.assert_array_equal(out, c.oracle_acc().astype(np.float32))

    @given(case=conv_cases())
    @SETTINGS
    def test_bits_mode_equals_oracle_and_reference(self, be, ref, case):
        c = Case(**case)
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, c.cout).astype(np.int32)
        got = _bits_out(be, c, be.prepare_weights(c.w), thr)
        np.testing.assert_array_equal(got, pack_bits(c.oracle_acc(), thr))
        np.testing.assert_array_equal(got, _bits_out(ref, c, ref.prepare_weights(c.w), thr))

    @pytest.mark.parametrize("k", [1, 3])
    def test_long_runs_and_saturated_words(self, be, ref, k):
        """More than 31 words per kernel row (Cin = 2100: 33 words) and
        all-ones XOR words for half the channels: every partial-sum flush of
        the AVX2 byte counters happens, at their largest values."""
        c = Case(n=2, h=3, w=4, k=k, pad=1, cin=2100, cout=40, stride=1, seed=9)
        c.x[0, 1:-1, 1:-1] = pack_bits(-np.ones((3, 4, c.cin)))   # all -1
        c.w[:20] = 0                                              # all +1
        ones, zeros = np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32)
        out, _ = _float_out(be, c, be.prepare_weights(c.w), ones, zeros)
        np.testing.assert_array_equal(out, c.oracle_acc().astype(np.float32))
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, c.cout).astype(np.int32)
        np.testing.assert_array_equal(_bits_out(be, c, be.prepare_weights(c.w), thr),
                                      _bits_out(ref, c, ref.prepare_weights(c.w), thr))

    @pytest.mark.parametrize("k,cw", [(1, 1), (1, 2), (1, 4), (1, 29), (1, 30), (1, 31),
                                      (1, 32), (1, 59), (1, 60), (1, 61),
                                      (3, 1), (3, 3), (3, 10), (3, 11)])
    @pytest.mark.parametrize("strided", [False, True])
    def test_step_groups_and_flush_boundaries(self, be, ref, k, cw, strided):
        """Runs of kw*cw steps (or cw when the input is a strided view) just
        below, at and above the AVX2 core's boundaries: groups of 3 steps
        through the carry-save adder, 1 or 2 steps left over, and the
        byte-counter flush every 30 steps.  No padding and all-ones XOR
        words for half the channels, so every byte counter reaches its
        largest value (8 per step) at each flush."""
        cin = WORD_BITS * cw                                       # no tail bits
        c = Case(n=1, h=k + 1, w=k + 7, k=k, pad=0, cin=cin, cout=40, stride=1, seed=13)
        c.x[:] = pack_bits(-np.ones(c.x.shape[:3] + (cin,)))     # all -1
        c.w[:20] = 0                                              # all +1
        x = c.x
        if strided:  # sxw != cw: the core walks kw runs of cw words per row
            big = np.zeros(c.x.shape[:3] + (cw + 2,), WORD_DTYPE)
            big[..., 1:1 + cw] = c.x
            x = big[..., 1:1 + cw]
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, c.cout).astype(np.int32)
        ones, zeros = np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32)
        out = np.full(c.out_shape, np.nan, np.float32)
        be.bconv_float(x, be.prepare_weights(c.w), c.k_bits, 1, ones, zeros, None, None,
                       out, None, None, 1)
        np.testing.assert_array_equal(out, c.oracle_acc().astype(np.float32))
        bits = np.full(c.bits_shape, GARBAGE_WORD, WORD_DTYPE)
        be.bconv_bits(x, be.prepare_weights(c.w), c.k_bits, 1, thr, bits, 1)
        np.testing.assert_array_equal(bits, _bits_out(ref, c, ref.prepare_weights(c.w), thr))

    @pytest.mark.parametrize("cout", [3, 8, 16, 20, 24, 32, 40, 56, 61])
    @pytest.mark.parametrize("cw", [1, 10, 11])
    def test_channel_groups_per_block(self, be, ref, cout, cw):
        """The AVX2 core takes all groups of 8 channels of a 32-channel block
        at once (1 to 4 groups, last block partial), across flush
        boundaries (3x3 kernel: 9, 90 and 99 steps), with saturated bytes."""
        cin = WORD_BITS * cw
        c = Case(n=1, h=4, w=9, k=3, pad=0, cin=cin, cout=cout, stride=1, seed=17)
        c.x[:] = pack_bits(-np.ones(c.x.shape[:3] + (cin,)))     # all -1
        c.w[: cout // 2] = 0                                      # all +1
        ones, zeros = np.ones(cout, np.float32), np.zeros(cout, np.float32)
        out, _ = _float_out(be, c, be.prepare_weights(c.w), ones, zeros)
        np.testing.assert_array_equal(out, c.oracle_acc().astype(np.float32))
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, cout).astype(np.int32)
        np.testing.assert_array_equal(_bits_out(be, c, be.prepare_weights(c.w), thr),
                                      _bits_out(ref, c, ref.prepare_weights(c.w), thr))

    def test_all_backends_agree_on_integers(self):
        names = [n for n in ALL if n in B.available_backends()]
        assert "numpy" in names
        c = Case(n=2, h=7, w=9, k=3, pad=1, cin=130, cout=65, stride=1, seed=7)
        thr = np.zeros(c.cout, np.int32)
        ones, zeros = np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32)
        res = {n: (_float_out(B.get_backend(n), c, B.get_backend(n).prepare_weights(c.w),
                              ones, zeros)[0],
                   _bits_out(B.get_backend(n), c, B.get_backend(n).prepare_weights(c.w), thr))
               for n in names}
        for n in names:
            np.testing.assert_array_equal(res[n][0], res["numpy"][0], err_msg=n)
            np.testing.assert_array_equal(res[n][1], res["numpy"][1], err_msg=n)


def _fma_exact(a, b, c) -> np.float32:
    """float32 a*b + c rounded once to nearest-even, from exact rational arithmetic."""
    from fractions import Fraction
    exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c))
    if exact == 0:  # IEEE: -0 only for (-0) + (-0); an exact cancellation gives +0
        neg = (a == 0 or b == 0) and c == 0 and (np.signbit(a) != np.signbit(b)) and np.signbit(c)
        return np.float32(-0.0 if neg else 0.0)
    near = np.float32(float(exact))          # within one float32 ulp of the answer
    cands = [np.nextafter(near, np.float32(-np.inf)), near, np.nextafter(near, np.float32(np.inf))]
    cands = [v for v in cands if np.isfinite(v)]
    err = [abs(Fraction(float(v)) - exact) for v in cands]
    best = min(err)
    ties = [v for v, e in zip(cands, err) if e == best]
    return min(ties, key=lambda v: int(np.float32(v).view(np.int32)) & 1)  # even mantissa wins


class TestFma:
    """reference.fma32 (and numba's) is the correctly rounded float32 fma."""

    F32 = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-2.0 ** 60, max_value=2.0 ** 60)

    @given(a=F32, b=F32, c=F32, cancel=st.booleans())
    @settings(derandomize=True, max_examples=400, deadline=None)
    def test_equals_exact_rounding(self, a, b, c, cancel):
        a, b, c = np.float32(a), np.float32(b), np.float32(c)
        if cancel:  # c = -round(a*b): the result is the product's rounding error
            c = -np.float32(np.float64(a) * np.float64(b))
        assume(np.isfinite(np.float64(a) * np.float64(b) + np.float64(c)))
        want = _fma_exact(a, b, c)
        got = reference.fma32(a, b, c)
        assert got.view(np.int32) == np.float32(want).view(np.int32), (a, b, c, got, want)

    def test_numba_fma_is_the_same(self):
        pytest.importorskip("numba")
        from numba import njit
        from bnnlite._numba_kernels import fma32

        @njit
        def many(a, b, c, out):
            for i in range(a.size):
                out[i] = fma32(a[i], b[i], c[i])
        rng = np.random.default_rng(0)
        a, b = (rng.standard_normal(100_000).astype(np.float32) for _ in range(2))
        c = -(a.astype(np.float64) * b).astype(np.float32)  # worst case: exact cancellation
        c[::2] = rng.standard_normal(50_000).astype(np.float32)
        out = np.empty_like(a)
        many(a, b, c, out)
        np.testing.assert_array_equal(out.view(np.int32), reference.fma32(a, b, c).view(np.int32))

    def test_not_a_mul_then_add(self):
        """The test data above can tell fma from a rounded product plus c."""
        a = b = np.float32(1 + 2 ** -12)      # a*b = 1 + 2^-11 + 2^-24 needs 25 bits
        c = np.float32(-(1 + 2 ** -11))
        assert reference.fma32(a, b, c) == np.float32(2 ** -24)
        assert a * b + c == 0


class TestConvFloat:
    """Full float epilogue: bit-identical to the reference, fused pack."""

    @given(case=conv_cases(), use_res=st.booleans(), use_rp=st.booleans(),
           res_div=st.sampled_from([1, 2, 3, 5]))
    @SETTINGS
    def test_bit_identical_to_reference(self, be, ref, case, use_res, use_rp, res_div):
        c = Case(**case)
        scale, mult, bias = c.f32(c.cout) * 0.1, c.f32(c.cout), c.f32(c.cout)
        residual = None
        if use_res:
            cres = c.cout // res_div if c.cout % res_div == 0 else c.cout
            residual = c.f32(c.n, c.ho, c.wo, cres)
        rprelu = (c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)) if use_rp else None
        nthr = c.f32(c.cout)
        got, got_bits = _float_out(be, c, be.prepare_weights(c.w), mult, bias, residual,
                                   rprelu, nthr, scale=scale)
        want, want_bits = _float_out(ref, c, ref.prepare_weights(c.w), mult, bias,
                                     residual, rprelu, nthr, scale=scale)
        assert np.array_equal(got, want), np.abs(got - want).max()
        np.testing.assert_array_equal(got_bits, want_bits)
        # the fused "sign + pack" equals packing the float output
        np.testing.assert_array_equal(got_bits, pack_bits(got, nthr))

    def test_epilogue_formula_by_hand(self, be):
        c = Case(n=1, h=3, w=3, k=3, pad=1, cin=64, cout=16, stride=1, seed=3)
        acc = c.oracle_acc().astype(np.float32)
        scale, mult, bias = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        res = c.f32(1, 3, 3, 8)
        gamma, beta, zeta = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        out, _ = _float_out(be, c, be.prepare_weights(c.w), mult, bias, res,
                            (gamma, beta, zeta), scale=scale)
        y = reference.fma32(acc * scale, mult, bias) + np.concatenate([res, res], axis=-1)
        want = np.where(y >= gamma, (y - gamma) + zeta, beta * (y - gamma) + zeta)
        np.testing.assert_array_equal(out, want.astype(np.float32))

    def test_bits_only_float_mode(self, be):
        """out=None with out_bits: only the fused pack is produced."""
        c = Case(n=2, h=5, w=6, k=3, pad=1, cin=65, cout=130, stride=1, seed=4)
        mult, bias, nthr = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        wp = be.prepare_weights(c.w)
        full, full_bits = _float_out(be, c, wp, mult, bias, next_thr=nthr)
        bits = np.full(c.bits_shape, GARBAGE_WORD, WORD_DTYPE)
        be.bconv_float(c.x, wp, c.k_bits, 1, mult, bias, None, None, None, bits, nthr, 1)
        np.testing.assert_array_equal(bits, full_bits)

    def test_threads_give_identical_results(self, be):
        c = Case(n=3, h=9, w=9, k=3, pad=1, cin=128, cout=200, stride=1, seed=5)
        mult, bias, nthr = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        wp = be.prepare_weights(c.w)
        one = _float_out(be, c, wp, mult, bias, next_thr=nthr, threads=1)
        two = _float_out(be, c, wp, mult, bias, next_thr=nthr, threads=2)
        np.testing.assert_array_equal(one[0], two[0])
        np.testing.assert_array_equal(one[1], two[1])


class TestConvPool:
    """bconv_float(..., pool=True): fused 2x2/2 max-pool (+ pack) equals
    bconv_float, then maxpool2, then pack -- bit for bit, every backend."""

    @given(case=conv_cases(), use_res=st.booleans(), use_rp=st.booleans(),
           res_div=st.sampled_from([1, 2, 3, 5]), with_out=st.booleans())
    @SETTINGS
    def test_equals_conv_then_pool_then_pack(self, be, ref, case, use_res, use_rp,
                                             res_div, with_out):
        c = Case(**case)
        assume(c.ho >= 2 and c.wo >= 2)
        mult, bias, nthr = c.f32(c.cout) * 0.1, c.f32(c.cout), c.f32(c.cout)
        scale = c.f32(c.cout)
        residual = None
        if use_res:
            cres = c.cout // res_div if c.cout % res_div == 0 else c.cout
            residual = c.f32(c.n, c.ho, c.wo, cres)
        rprelu = (c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)) if use_rp else None
        full, _ = _float_out(ref, c, ref.prepare_weights(c.w), mult, bias, residual, rprelu,
                             scale=scale)
        pshape = (c.n, c.ho // 2, c.wo // 2)
        want = np.empty(pshape + (c.cout,), np.float32)
        reference.maxpool2(full, want)
        for b in (be, ref):
            out = np.full(pshape + (c.cout,), np.nan, np.float32) if with_out else None
            bits = np.full(pshape + (words_for(c.cout),), GARBAGE_WORD, WORD_DTYPE)
            b.bconv_float(c.x, b.prepare_weights(c.w), c.k_bits, c.stride, mult, bias,
                          residual, rprelu, out, bits, nthr, pool=True, scale=scale)
            if with_out:
                assert np.array_equal(out, want), b.name
            np.testing.assert_array_equal(bits, pack_bits(want, nthr), err_msg=b.name)

    def test_odd_sizes_threads_and_views(self, be, ref):
        c = Case(n=3, h=9, w=11, k=3, pad=1, cin=130, cout=200, stride=1, seed=21)
        mult, bias, nthr = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        res_buf = c.f32(c.n, c.ho + 1, c.wo, 2 * c.cout)
        res = res_buf[:, 1:, :, :c.cout]
        fbuf = np.full((c.n, 4 + 2, 5 + 2, c.cout), -7.0, np.float32)
        bbuf = np.full((c.n, 4 + 2, 5 + 2, words_for(c.cout)), GARBAGE_WORD, WORD_DTYPE)
        be.bconv_float(c.x, be.prepare_weights(c.w), c.k_bits, 1, mult, bias, res, None,
                       fbuf[:, 1:-1, 1:-1], bbuf[:, 1:-1, 1:-1], nthr, threads=2, pool=True)
        want = np.empty((c.n, 4, 5, c.cout), np.float32)
        want_bits = np.empty((c.n, 4, 5, words_for(c.cout)), WORD_DTYPE)
        ref.bconv_float(c.x, ref.prepare_weights(c.w), c.k_bits, 1, mult, bias,
                        np.ascontiguousarray(res), None, want, want_bits, nthr, pool=True)
        np.testing.assert_array_equal(fbuf[:, 1:-1, 1:-1], want)
        np.testing.assert_array_equal(bbuf[:, 1:-1, 1:-1], want_bits)
        assert np.all(fbuf[:, 0] == -7.0) and np.all(bbuf[:, :, -1] == GARBAGE_WORD)

    def test_pool_validation(self, be):
        c = Case(n=1, h=5, w=6, k=3, pad=1, cin=64, cout=8, stride=1, seed=2)
        wp = be.prepare_weights(c.w)
        ones, zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
        with pytest.raises(ValueError, match=r"out: expected shape \(1, 2, 3, 8\)"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones, zeros, None, None,
                           np.empty(c.out_shape, np.float32), pool=True)
        with pytest.raises(ValueError, match=r"residual: expected shape \(1, 5, 6, \?\)"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones, zeros,
                           np.zeros((1, 2, 3, 8), np.float32), None,
                           np.empty((1, 2, 3, 8), np.float32), pool=True)
        with pytest.raises(ValueError, match="pool: expected True or False"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones, zeros, None, None,
                           np.empty((1, 2, 3, 8), np.float32), pool=1)


class TestConvFloatReal:
    """conv_float (direct real conv of the first layer): every backend gives
    the reference's bits; the floats are those of a plain float64 conv
    within float32 rounding."""

    @given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
           cin=st.integers(1, 4), cout=st.sampled_from([1, 3, 16, 63, 64, 65, 128, 130]),
           k=st.sampled_from([1, 3]), stride=st.sampled_from([1, 2]),
           relu=st.booleans(), with_out=st.booleans(), with_mult=st.booleans(),
           seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_equals_reference(self, be, ref, n, h, w, cin, cout, k, stride, relu,
                              with_out, with_mult, seed):
        rng = np.random.default_rng(seed)
        x = np.zeros((n, h + 2, w + 2, cin), np.float32)
        x[:, 1:-1, 1:-1] = rng.standard_normal((n, h, w, cin))
        wt = rng.standard_normal((k, k, cin, cout)).astype(np.float32)
        bias, nthr, mult = (rng.standard_normal(cout).astype(np.float32) for _ in range(3))
        mult = mult if with_mult else None
        ho, wo = (h + 2 - k) // stride + 1, (w + 2 - k) // stride + 1
        res = []
        for b in (be, ref):
            out = np.full((n, ho, wo, cout), np.nan, np.float32)
            bits = np.full((n, ho, wo, words_for(cout)), GARBAGE_WORD, WORD_DTYPE)
            b.conv_float(x, wt, bias, stride, relu, out if with_out or b is ref else None,
                         bits, nthr, mult=mult)
            res.append((out, bits))
        if with_out:
            assert np.array_equal(res[0][0], res[1][0])
        np.testing.assert_array_equal(res[0][1], res[1][1])
        np.testing.assert_array_equal(res[1][1], pack_bits(res[1][0], nthr))
        want = np.zeros((n, ho, wo, cout))
        for i in range(k):
            for j in range(k):
                patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
                want += np.einsum("nhwc,co->nhwo", patch.astype(np.float64), wt[i, j])
        want = want * (1.0 if mult is None else mult) + bias
        if relu:
            want = np.maximum(want, 0)
        np.testing.assert_allclose(res[1][0], want, rtol=1e-5, atol=1e-5)

    def test_fma_order_by_hand(self, be):
        """acc = fma(x, w, acc) over (i, j, c) in row-major order, then fma(acc, mult, bias),
        from exact rational arithmetic one step at a time."""
        rng = np.random.default_rng(5)
        x = np.zeros((1, 4, 4, 3), np.float32)
        x[:, 1:-1, 1:-1] = rng.standard_normal((1, 2, 2, 3))
        wt = rng.standard_normal((3, 3, 3, 5)).astype(np.float32)
        mult, bias = (rng.standard_normal(5).astype(np.float32) for _ in range(2))
        out = np.empty((1, 2, 2, 5), np.float32)
        be.conv_float(x, wt, bias, 1, False, out, mult=mult)
        want = np.empty_like(out)
        for ho in range(2):
            for wo in range(2):
                for co in range(5):
                    acc = np.float32(0)
                    for i in range(3):
                        for j in range(3):
                            for c in range(3):
                                acc = _fma_exact(x[0, ho + i, wo + j, c], wt[i, j, c, co], acc)
                    want[0, ho, wo, co] = _fma_exact(acc, mult[co], bias[co])
        np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))

    def test_validation(self, be):
        x = np.zeros((1, 4, 4, 3), np.float32)
        wt = np.zeros((3, 3, 3, 8), np.float32)
        b = np.zeros(8, np.float32)
        out = np.empty((1, 2, 2, 8), np.float32)
        with pytest.raises(ValueError, match=r"x: expected shape \(\?, \?, \?, 3\)"):
            be.conv_float(np.zeros((1, 4, 4, 2), np.float32), wt, b, 1, False, out)
        with pytest.raises(ValueError, match="w: expected a C-contiguous"):
            be.conv_float(x, np.zeros((3, 3, 3, 16), np.float32)[..., ::2], b, 1, False, out)
        with pytest.raises(ValueError, match=r"out: expected shape \(1, 2, 2, 8\)"):
            be.conv_float(x, wt, b, 1, False, np.empty((1, 4, 4, 8), np.float32))
        with pytest.raises(ValueError, match="relu: expected True or False"):
            be.conv_float(x, wt, b, 1, 1, out)
        with pytest.raises(ValueError, match="next_thr"):
            be.conv_float(x, wt, b, 1, False, out, np.empty((1, 2, 2, 1), WORD_DTYPE))
        with pytest.raises(ValueError, match="out: expected a float32"):
            be.conv_float(x, wt, b, 1, False, None)


class TestStridedViews:
    """Inputs and outputs may be views with strided outer axes."""

    @pytest.mark.parametrize("stride", [1, 2])
    def test_outputs_into_padded_interior(self, be, ref, stride):
        c = Case(n=2, h=8, w=7, k=3, pad=1, cin=127, cout=65, stride=stride, seed=11)
        wp, rwp = be.prepare_weights(c.w), ref.prepare_weights(c.w)
        thr = c.rng.integers(-50, 50, c.cout).astype(np.int32)
        buf = np.full((c.n, c.ho + 2, c.wo + 2, words_for(c.cout)), GARBAGE_WORD, WORD_DTYPE)
        buf[:, 1:-1, 1:-1] = 0
        inner = buf[:, 1:-1, 1:-1]
        be.bconv_bits(c.x, wp, c.k_bits, stride, thr, inner, 1)
        np.testing.assert_array_equal(inner, _bits_out(ref, c, rwp, thr))
        assert np.all(buf[:, 0] == GARBAGE_WORD) and np.all(buf[:, :, -1] == GARBAGE_WORD)

        mult, bias, nthr = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        fbuf = np.full((c.n, c.ho + 2, c.wo + 2, c.cout), -7.0, np.float32)
        bbuf = np.full((c.n, c.ho + 2, c.wo + 2, words_for(c.cout)), GARBAGE_WORD, WORD_DTYPE)
        res_buf = c.f32(c.n, c.ho + 2, c.wo + 1, 2 * c.cout)
        res = res_buf[:, 2:, 1:, c.cout:]   # strided residual view
        be.bconv_float(c.x, wp, c.k_bits, stride, mult, bias, res, None,
                       fbuf[:, 1:-1, 1:-1], bbuf[:, 1:-1, 1:-1], nthr, 2)
        want, want_bits = _float_out(ref, c, rwp, mult, bias, np.ascontiguousarray(res),
                                     next_thr=nthr)
        np.testing.assert_array_equal(fbuf[:, 1:-1, 1:-1], want)
        np.testing.assert_array_equal(bbuf[:, 1:-1, 1:-1], want_bits)
        assert np.all(fbuf[:, 0] == -7.0) and np.all(bbuf[:, -1] == GARBAGE_WORD)

    def test_strided_input_view(self, be, ref):
        c = Case(n=2, h=6, w=6, k=3, pad=1, cin=200, cout=40, stride=1, seed=12)
        big = np.zeros((c.n * 2,) + c.x.shape[1:3] + (c.x.shape[3] + 3,), WORD_DTYPE)
        big[::2, :, :, 1:1 + c.x.shape[3]] = c.x
        view = big[::2, :, :, 1:1 + c.x.shape[3]]
        thr = np.zeros(c.cout, np.int32)
        out = np.empty(c.bits_shape, WORD_DTYPE)
        be.bconv_bits(view, be.prepare_weights(c.w), c.k_bits, 1, thr, out, 1)
        np.testing.assert_array_equal(out, _bits_out(ref, c, ref.prepare_weights(c.w), thr))


class TestPackAndPool:
    @given(n=st.integers(1, 3), h=st.integers(1, 9), w=st.integers(1, 9),
           c=st.sampled_from(CHANNELS), seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_pack_matches_bitpack(self, be, n, h, w, c, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        thr = rng.standard_normal(c).astype(np.float32)
        x[..., ::5] = thr[::5]          # x == thr must give bit 0 (+1)
        out = np.full((n, h, w, words_for(c)), GARBAGE_WORD, WORD_DTYPE)
        be.pack(x, thr, out, 1)
        np.testing.assert_array_equal(out, pack_bits(x, thr))
        # into a strided interior view
        buf = np.full((n, h + 2, w + 2, words_for(c)), GARBAGE_WORD, WORD_DTYPE)
        be.pack(x, thr, buf[:, 1:-1, 1:-1], 2)
        np.testing.assert_array_equal(buf[:, 1:-1, 1:-1], pack_bits(x, thr))
        assert np.all(buf[:, 0] == GARBAGE_WORD)

    @given(n=st.integers(1, 3), h=st.integers(2, 9), w=st.integers(2, 9),
           cw=st.integers(1, 4), seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_bmaxpool2(self, be, n, h, w, cw, seed):
        rng = np.random.default_rng(seed)
        # dense ones so that the AND is not all zero
        x = (rng.integers(0, 2**63, (n, h, w, cw), dtype=np.uint64)
             | rng.integers(0, 2**63, (n, h, w, cw), dtype=np.uint64))
        buf = np.full((n, h // 2 + 2, w // 2 + 2, cw), GARBAGE_WORD, WORD_DTYPE)
        out = buf[:, 1:-1, 1:-1]
        be.bmaxpool2(x, out, 1)
        v = x[:, :h // 2 * 2, :w // 2 * 2]
        want = v[:, ::2, ::2] & v[:, ::2, 1::2] & v[:, 1::2, ::2] & v[:, 1::2, 1::2]
        np.testing.assert_array_equal(out, want)
        assert np.all(buf[:, 0] == GARBAGE_WORD)
        # the bit meaning: max over +-1 values of the unpacked tensor
        xf = unpack_bits(x, cw * WORD_BITS)
        mf = xf[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, -1).max(axis=(2, 4))
        np.testing.assert_array_equal(unpack_bits(np.ascontiguousarray(out), cw * WORD_BITS), mf)

    @given(n=st.integers(1, 3), h=st.integers(2, 9), w=st.integers(2, 9),
           c=st.sampled_from(CHANNELS), seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_maxpool2(self, be, n, h, w, c, seed):
        rng = np.random.default_rng(seed)
        x = rng.standard_normal((n, h, w, c)).astype(np.float32)
        out = np.full((n, h // 2, w // 2, c), np.nan, np.float32)
        be.maxpool2(x, out, 2)
        want = x[:, :h // 2 * 2, :w // 2 * 2].reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        np.testing.assert_array_equal(out, want)

    @given(shape=st.lists(st.integers(1, 5), min_size=1, max_size=4), c=st.integers(1, 5),
           seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_lookup_u8_takes_each_bytes_value_from_its_channels_column(self, be, shape, c, seed):
        rng = np.random.default_rng(seed)
        x = rng.integers(0, 256, tuple(shape) + (c,), dtype=np.uint8)
        x.flat[:2] = (0, 255)                       # both ends of the table
        table = rng.standard_normal((256, c)).astype(np.float32)
        out = np.full(x.shape, np.nan, np.float32)
        be.lookup_u8(x, table, out)
        want = np.stack([table[x[..., k], k] for k in range(c)], axis=-1)
        np.testing.assert_array_equal(out, want)

    def test_lookup_u8_rejects_bad_arguments(self, be):
        x = np.zeros((2, 4, 4, 3), np.uint8)
        table, out = np.zeros((256, 3), np.float32), np.empty((2, 4, 4, 3), np.float32)
        with pytest.raises(ValueError, match="x: expected dtype uint8"):
            be.lookup_u8(x.astype(np.float32), table, out)
        with pytest.raises(ValueError, match=r"table: expected shape \(256, 3\)"):
            be.lookup_u8(x, table[:, :2].copy(), out)
        with pytest.raises(ValueError, match="x: expected a C-contiguous array"):
            be.lookup_u8(np.zeros((2, 4, 8, 3), np.uint8)[:, :, ::2], table, out)
        with pytest.raises(ValueError, match="out: expected a writeable array"):
            out.flags.writeable = False
            be.lookup_u8(x, table, out)


class TestBind:
    """bind=True checks the arguments at once and returns the kernel call."""

    def test_bound_call_equals_direct_call_and_sees_new_input(self, be):
        c = Case(n=2, h=5, w=5, k=3, pad=1, cin=64, cout=40, stride=1, seed=3)
        wp = be.prepare_weights(c.w)
        mult, bias, thr = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        res = c.f32(*c.out_shape)
        want, want_bits = _float_out(be, c, wp, mult, bias, res, next_thr=thr)
        out = np.full(c.out_shape, np.nan, np.float32)
        bits = np.full(c.bits_shape, GARBAGE_WORD, WORD_DTYPE)
        call = be.bconv_float(c.x, wp, c.k_bits, 1, mult, bias, res, None, out, bits, thr, bind=True)
        assert np.isnan(out).all() and (bits == GARBAGE_WORD).all()  # nothing ran yet
        call()
        np.testing.assert_array_equal(out, want)
        np.testing.assert_array_equal(bits, want_bits)
        # The call reads the buffers each time: new input values, new result.
        c.x[:, 1:-1, 1:-1] = ~c.x[:, 1:-1, 1:-1] & WORD_DTYPE.type((1 << 64) - 1)
        call()
        again, again_bits = _float_out(be, c, wp, mult, bias, res, next_thr=thr)
        np.testing.assert_array_equal(out, again)
        np.testing.assert_array_equal(bits, again_bits)
        assert not np.array_equal(out, want)

    def test_errors_are_raised_when_binding(self, be):
        c = Case(n=1, h=4, w=4, k=3, pad=1, cin=64, cout=8, stride=1, seed=1)
        wp = be.prepare_weights(c.w)
        out = np.empty(c.bits_shape, WORD_DTYPE)
        with pytest.raises(ValueError, match="thr: expected dtype int32"):
            be.bconv_bits(c.x, wp, c.k_bits, 1, np.zeros(8, np.float32), out, bind=True)
        with pytest.raises(ValueError, match="out: expected dtype float32"):
            be.maxpool2(np.zeros((1, 4, 4, 3), np.float32), np.zeros((1, 2, 2, 3)), bind=True)

    def test_empty_output_binds_to_a_no_op(self, be):
        x = np.zeros((1, 1, 1, 1), WORD_DTYPE)   # a 1x1 image pools to 0x0
        call = be.bmaxpool2(x, np.zeros((1, 0, 0, 1), WORD_DTYPE), bind=True)
        assert call() is None


class TestValidation:
    """The Python layer rejects bad arguments with a ValueError naming them."""

    def _setup(self, be):
        c = Case(n=1, h=4, w=4, k=3, pad=1, cin=64, cout=8, stride=1, seed=1)
        return c, be.prepare_weights(c.w)

    def test_bad_dtype_shape_and_layout(self, be):
        c, wp = self._setup(be)
        ones, zeros = np.ones(8, np.float32), np.zeros(8, np.float32)
        out = np.empty(c.out_shape, np.float32)
        with pytest.raises(ValueError, match="x: expected dtype uint64"):
            be.bconv_float(c.x.astype(np.int64), wp, c.k_bits, 1, ones, zeros, None, None, out)
        with pytest.raises(ValueError, match="mult: expected dtype float32"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones.astype(np.float64), zeros, None, None, out)
        with pytest.raises(ValueError, match=r"out: expected shape \(1, 4, 4, 8\)"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones, zeros, None, None, out[:, :3])
        with pytest.raises(ValueError, match="last axis must be contiguous"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones, zeros, None, None,
                           np.empty((1, 4, 4, 16), np.float32)[..., ::2])
        with pytest.raises(ValueError, match="k_bits"):
            be.bconv_float(c.x, wp, c.k_bits + WORD_BITS * 9, 1, ones, zeros, None, None, out)
        with pytest.raises(ValueError, match="stride"):
            be.bconv_float(c.x, wp, c.k_bits, 0, ones, zeros, None, None, out)
        with pytest.raises(ValueError, match="threads"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones, zeros, None, None, out, threads=0)
        with pytest.raises(ValueError, match="residual: expected Cres dividing"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones, zeros,
                           np.zeros((1, 4, 4, 3), np.float32), None, out)
        with pytest.raises(ValueError, match="next_thr"):
            be.bconv_float(c.x, wp, c.k_bits, 1, ones, zeros, None, None, out,
                           np.empty(c.bits_shape, WORD_DTYPE), None)
        with pytest.raises(ValueError, match="thr: expected dtype int32"):
            be.bconv_bits(c.x, wp, c.k_bits, 1, zeros, np.empty(c.bits_shape, WORD_DTYPE))
        with pytest.raises(ValueError, match="wp: expected PreparedWeights"):
            be.bconv_bits(c.x, c.w, c.k_bits, 1, np.zeros(8, np.int32),
                          np.empty(c.bits_shape, WORD_DTYPE))
        with pytest.raises(ValueError, match="out overlaps x"):
            be.bmaxpool2(c.x, c.x[:, :3, :3])
        with pytest.raises(ValueError, match="thr: expected shape"):
            be.pack(np.zeros((1, 2, 2, 5), np.float32), np.zeros(4, np.float32),
                    np.empty((1, 2, 2, 1), WORD_DTYPE))

    def test_weights_from_another_layout_are_refused(self, be):
        others = [n for n in ("numba", "numpy", "cython") if n != be.name]
        for name in others:
            try:
                other = B.get_backend(name)
            except (ImportError, RuntimeError):
                continue
            c, _ = self._setup(be)
            wp = other.prepare_weights(c.w)
            if wp.layout == be.prepare_weights(c.w).layout:
                continue
            with pytest.raises(ValueError, match="prepared for layout"):
                be.bconv_bits(c.x, wp, c.k_bits, 1, np.zeros(8, np.int32),
                              np.empty(c.bits_shape, WORD_DTYPE))


class TestSelector:
    def test_unknown_name(self):
        with pytest.raises(ValueError, match="cython, numba, numpy"):
            B.get_backend("fortran")

    def test_env_var_forces_backend(self, monkeypatch):
        monkeypatch.setenv(B.ENV_VAR, "numpy")
        assert B.get_backend().name == "numpy"
        monkeypatch.setenv(B.ENV_VAR, "nope")
        with pytest.raises(ValueError, match="unknown name 'nope'"):
            B.get_backend()

    def test_default_prefers_cython(self, monkeypatch):
        monkeypatch.delenv(B.ENV_VAR, raising=False)
        try:
            B.get_backend("cython")
        except ImportError:
            pytest.skip("Cython extension not built")
        be = B.get_backend()
        assert be.name == "cython"
        # The best variant this CPU runs, among those that are built.
        want = "generic"
        for variant, has in (("avx512", B._cpu_has_avx512), ("avx2", B._cpu_has_avx2)):
            if has() and importlib.util.find_spec(f"bnnlite._bconv_{variant}") is not None:
                want = variant
                break
        assert be.variant == want

    @pytest.mark.parametrize("has512, has2, built, want", [
        (True, True, ("avx512", "avx2", "generic"), "avx512"),
        (False, True, ("avx512", "avx2", "generic"), "avx2"),
        (False, True, ("avx512", "generic"), "generic"),      # avx2 not built
        (False, False, ("avx512", "avx2", "generic"), "generic"),
        (True, True, ("avx2", "generic"), "avx2"),            # avx512 not built
    ])
    def test_cython_picks_best_built_variant(self, monkeypatch, has512, has2, built, want):
        class Fake:
            def __init__(self, module_name, variant):
                if variant not in built:
                    raise ImportError(f"No module named {module_name!r}")
                self.variant = variant

        monkeypatch.setattr(B, "_CythonImpl", Fake)
        monkeypatch.setattr(B, "_CACHE", {})
        monkeypatch.setattr(B, "_cpu_has_avx512", lambda: has512)
        monkeypatch.setattr(B, "_cpu_has_avx2", lambda: has2)
        be = B.get_backend("cython")
        assert (be.name, be.variant) == ("cython", want)
        if not has2:
            with pytest.raises(RuntimeError, match="cython-avx2 needs a CPU with AVX2"):
                B.get_backend("cython-avx2")
        elif "avx2" not in built:
            with pytest.raises(ImportError, match="_bconv_avx2 is not built"):
                B.get_backend("cython-avx2")
        else:
            assert B.get_backend("cython-avx2").variant == "avx2"

    def test_fallback_to_numba_warns_once(self, monkeypatch):
        pytest.importorskip("numba")
        monkeypatch.delenv(B.ENV_VAR, raising=False)

        def missing(*a, **k):
            raise ImportError("No module named 'bnnlite._bconv_generic'")

        monkeypatch.setattr(B, "_CythonImpl", missing)
        monkeypatch.setattr(B, "_CACHE", {})
        monkeypatch.setattr(B, "_warned_fallback", False)
        with pytest.warns(RuntimeWarning, match="Cython kernels unavailable"):
            assert B.get_backend().name == "numba"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert B.get_backend().name == "numba"
        with pytest.raises(ImportError, match="not built"):
            B.get_backend("cython")

    def test_import_is_cheap(self):
        # numpy is imported first: the time measured is bnnlite's own.
        code = ("import sys, time, numpy; t = time.perf_counter(); import bnnlite.backend; "
                "dt = time.perf_counter() - t; "
                "bad = [m for m in ('numba', 'bnnlite._numba_kernels', "
                "'bnnlite._bconv_avx512', 'bnnlite._bconv_avx2') if m in sys.modules]; "
                "print(dt, bad)")
        env = dict(os.environ)
        env.pop(B.ENV_VAR, None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)
        dt, bad = res.stdout.split(" ", 1)
        assert bad.strip() == "[]"
        assert float(dt) < 0.5  # own cost is ~10 ms; generous for a busy machine

    def test_numba_workqueue_layer_is_never_called_concurrently(self):
        """numba's workqueue layer terminates the process on concurrent launches:
        with it, Model must keep to one calling thread, and still give the results."""
        pytest.importorskip("numba")
        code = ("import numpy as np, bnnlite, numba; from bnnlite.backend import get_backend; "
                "be = get_backend('numba'); print(numba.threading_layer(), be.concurrent_calls); "
                "m = bnnlite.Model.pretrained(backend='numba', threads=2); "
                "x = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8); "
                "m1 = bnnlite.Model.pretrained(backend='numba'); "
                "print(bool((m.logits(x) == m1.logits(x)).all()))")
        env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
        env.pop(B.ENV_VAR, None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.split() == ["workqueue", "False", "True"]
        # The cython and numpy backends say what they are.
        assert B.get_backend("numpy").concurrent_calls is False


class TestReferenceItself:
    def test_reference_popcount_formula(self):
        c = Case(n=1, h=5, w=5, k=3, pad=1, cin=65, cout=9, stride=2, seed=21)
        pop = reference.bconv_popcount(c.x, c.w, 2)
        np.testing.assert_array_equal(c.k_bits - 2 * pop, c.oracle_acc())


class TestPrepareWeights:
    def test_cin_checks_tail_bits_and_k_bits(self, be):
        c = Case(n=1, h=4, w=4, k=3, pad=1, cin=65, cout=8, stride=1, seed=2)
        wp = be.prepare_weights(c.w, cin=65)
        assert (wp.cout, wp.kh, wp.kw, wp.cw, wp.cin) == (8, 3, 3, 2, 65)
        out = np.empty(c.bits_shape, WORD_DTYPE)
        with pytest.raises(ValueError, match="KH\\*KW\\*cin = 585"):
            be.bconv_bits(c.x, wp, 9 * 66, 1, np.zeros(8, np.int32), out)
        bad = c.w.copy()
        bad[3, 1, 1, 1] |= WORD_DTYPE.type(1) << WORD_DTYPE.type(5)   # channel 69
        with pytest.raises(ValueError, match="tail bits"):
            be.prepare_weights(bad, cin=65)
        with pytest.raises(ValueError, match="cin"):
            be.prepare_weights(c.w, cin=200)

    def test_prepared_data_is_contiguous_and_independent(self, be):
        c = Case(n=1, h=3, w=3, k=1, pad=0, cin=3, cout=3, stride=1, seed=6)
        w = c.w.copy()
        wp = be.prepare_weights(w)
        assert wp.data.flags.c_contiguous and not np.may_share_memory(wp.data, w)
        thr = np.zeros(3, np.int32)
        before = _bits_out(be, c, wp, thr)
        w[...] = ~w   # the caller may reuse / free its array
        np.testing.assert_array_equal(_bits_out(be, c, wp, thr), before)


# --------------------------------------------------------------------------
# The AVX2 bit-plane conv (kernels/_bconv_planes.h)
# --------------------------------------------------------------------------
@st.composite
def plane_cases(draw):
    """Layers big enough for the bit-plane conv: blocks of >= 128 pixels."""
    k = draw(st.sampled_from([1, 3, 3, 5]))     # T's sliding window sums depend on kw
    return dict(n=draw(st.integers(1, 5)), h=draw(st.integers(4, 20)),
                w=draw(st.sampled_from([4, 7, 8, 16, 17, 32, 33])), k=k, pad=k // 2,
                cin=draw(st.sampled_from(CHANNELS)), cout=draw(st.sampled_from(CHANNELS)),
                stride=draw(st.sampled_from([1, 1, 2])), seed=draw(st.integers(0, 2**32 - 1)))


@st.composite
def small_cases(draw):
    """Outputs too small for plane blocks: n * ho * wo < 128 conv pixels."""
    k = draw(st.sampled_from([1, 3, 3]))
    return dict(n=draw(st.integers(1, 2)), h=draw(st.integers(1, 8)), w=draw(st.integers(1, 8)),
                k=k, pad=k // 2, cin=draw(st.sampled_from(CHANNELS)),
                cout=draw(st.sampled_from(CHANNELS + [256, 300])),
                stride=draw(st.sampled_from([1, 1, 2])), seed=draw(st.integers(0, 2**32 - 1)))


@pytest.fixture(scope="module")
def avx2():
    b = _get("cython-avx2")
    if not b._impl.mod.HAVE_PLANES:
        pytest.skip("this build has no bit-plane conv")
    return b


class TestBitPlanes:
    """The bit-plane path of the AVX2 build equals the NumPy reference and the
    popcount core (the same weights with ``planes`` None) bit for bit."""

    @staticmethod
    def _planes_apply(be, c, wp, pool=False):
        mod = be._impl.mod
        return (wp.planes is not None and
                mod.planes_block_pixels(c.n, c.ho, c.wo, pool) >= mod.PLANES_MIN_PIXELS)

    @staticmethod
    def _core(be, w, cin=None):
        wp = be.prepare_weights(w, cin=cin)
        wp.planes = wp.wplanes = None
        return wp

    @given(case=plane_cases(), pool=st.booleans(), use_res=st.booleans(),
           use_rp=st.booleans(), res_div=st.sampled_from([1, 2, 3]))
    @settings(SETTINGS, max_examples=40)
    def test_float_mode_equals_reference_and_core(self, avx2, ref, case, pool, use_res,
                                                  use_rp, res_div):
        c = Case(**case)
        assume(not pool or (c.ho >= 2 and c.wo >= 2))
        wp = avx2.prepare_weights(c.w, cin=c.cin)
        assume(self._planes_apply(avx2, c, wp, pool))
        mult, bias, nthr, scale = (c.f32(c.cout) for _ in range(4))
        residual = None
        if use_res:
            cres = c.cout // res_div if c.cout % res_div == 0 else c.cout
            residual = c.f32(c.n, c.ho, c.wo, cres)
        rprelu = (c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)) if use_rp else None
        oshape = (c.n, c.ho // 2, c.wo // 2) if pool else (c.n, c.ho, c.wo)
        got = []
        for b, w in ((avx2, wp), (avx2, self._core(avx2, c.w, c.cin)), (ref, ref.prepare_weights(c.w))):
            out = np.full(oshape + (c.cout,), np.nan, np.float32)
            bits = np.full(oshape + (words_for(c.cout),), GARBAGE_WORD, WORD_DTYPE)
            b.bconv_float(c.x, w, c.k_bits, c.stride, mult, bias, residual, rprelu, out, bits,
                          nthr, threads=2, pool=pool, scale=scale)
            got.append((out, bits))
        for out, bits in got[1:]:
            np.testing.assert_array_equal(got[0][0], out)
            np.testing.assert_array_equal(got[0][1], bits)

    @given(case=plane_cases())
    @settings(SETTINGS, max_examples=25)
    def test_integers_and_bits_mode_equal_oracle(self, avx2, case):
        c = Case(**case)
        wp = avx2.prepare_weights(c.w)          # no cin: the tail taps are listed too
        assume(self._planes_apply(avx2, c, wp))
        out, _ = _float_out(avx2, c, wp, np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32))
        acc = c.oracle_acc()
        np.testing.assert_array_equal(out, acc.astype(np.float32))
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, c.cout).astype(np.int32)
        np.testing.assert_array_equal(_bits_out(avx2, c, wp, thr), pack_bits(acc, thr))

    @pytest.mark.parametrize("fill", ["random", "all_minus_one"])
    def test_counts_past_the_low_byte_equal_oracle(self, avx2, fill):
        """K = 9216: a channel's list holds up to 4608 planes, so its sums take
        up to 13 bits (10 + 3 bit planes) and the high byte of the count is
        exercised; with every input -1 the sums reach the list lengths."""
        c = Case(n=1, h=16, w=16, k=3, pad=1, cin=1024, cout=24, stride=1, seed=11)
        if fill == "all_minus_one":
            c.x[:, 1:-1, 1:-1] = pack_bits(-np.ones((1, 16, 16, c.cin)))
        wp = avx2.prepare_weights(c.w, cin=c.cin)
        assert wp.planes is not None and 4 + wp.planes[5] >= 13
        assert self._planes_apply(avx2, c, wp)
        out, _ = _float_out(avx2, c, wp, np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32))
        np.testing.assert_array_equal(out, c.oracle_acc().astype(np.float32))

    def test_outputs_into_padded_interior_views(self, avx2, ref):
        c = Case(n=4, h=8, w=8, k=3, pad=1, cin=256, cout=136, stride=1, seed=5)
        wp = avx2.prepare_weights(c.w, cin=c.cin)
        assert self._planes_apply(avx2, c, wp)
        mult, bias, nthr = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        res = c.f32(c.n, c.ho + 1, c.wo, 2 * c.cout)[:, 1:, :, :c.cout]
        fbuf = np.full((c.n, c.ho + 2, c.wo + 2, c.cout), -7.0, np.float32)
        bbuf = np.full((c.n, c.ho + 2, c.wo + 2, words_for(c.cout)), GARBAGE_WORD, WORD_DTYPE)
        avx2.bconv_float(c.x, wp, c.k_bits, 1, mult, bias, res, None,
                         fbuf[:, 1:-1, 1:-1], bbuf[:, 1:-1, 1:-1], nthr, threads=2)
        want, want_bits = np.empty(c.out_shape, np.float32), np.empty(c.bits_shape, WORD_DTYPE)
        ref.bconv_float(c.x, ref.prepare_weights(c.w), c.k_bits, 1, mult, bias,
                        np.ascontiguousarray(res), None, want, want_bits, nthr)
        np.testing.assert_array_equal(fbuf[:, 1:-1, 1:-1], want)
        np.testing.assert_array_equal(bbuf[:, 1:-1, 1:-1], want_bits)
        assert np.all(fbuf[:, 0] == -7.0) and np.all(bbuf[:, :, -1] == GARBAGE_WORD)

    def test_python_threads_each_have_their_own_scratch(self, avx2, ref):
        import threading
        c = Case(n=4, h=16, w=16, k=3, pad=1, cin=128, cout=64, stride=1, seed=9)
        wp = avx2.prepare_weights(c.w, cin=c.cin)
        assert self._planes_apply(avx2, c, wp)
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, c.cout).astype(np.int32)
        want = _bits_out(ref, c, ref.prepare_weights(c.w), thr)
        bad = []

        def work():
            out = np.empty(c.bits_shape, WORD_DTYPE)
            call = avx2.bconv_bits(c.x, wp, c.k_bits, 1, thr, out, bind=True)
            for _ in range(30):
                out[...] = GARBAGE_WORD
                call()
                bad.append(not np.array_equal(out, want))

        ts = [threading.Thread(target=work) for _ in range(3)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        assert len(bad) == 90 and not any(bad)

    @pytest.mark.parametrize("cout", [40, 41, 70])
    def test_plane_lists_split_each_set_by_which_channels_need_a_plane(self, avx2, cout):
        """Sets of up to ``size`` (PLANES_SETS) consecutive channels, never
        across a group of 64; list m of a set holds the planes exactly the
        channels in bit pattern m need, the union of the sides is the
        smallest of all choices, and a set of one takes its shorter side."""
        rng = np.random.default_rng(3)
        cin = 70
        group, size = avx2._impl.mod.PLANES_SETS
        wf = rng.standard_normal((cout, 3, 3, cin))
        wf[0] = 1.0                             # no -1 bit at all: an empty W1 side
        wf[1:size] = -1.0                       # all -1: set 0's sides can all be empty
        wf[size + 1] = -wf[size]                # complements: one side of each is the same list
        w = pack_bits(wf)
        P = 2 ** size - 1
        idx, off, w1, ones, nplanes, hi = B._plane_lists(w, cin, avx2._impl.mod.PLANES_HI,
                                                         (group, size))
        cpix = words_for(cin) * WORD_BITS
        bits = unpack_bits(w, cin).reshape(cout, -1) < 0          # -1 -> True
        plane = (np.arange(9)[:, None] * cpix + np.arange(cin)).reshape(-1)
        sets = [range(c, min(c + size, g + group, cout))
                for g in range(0, cout, group) for c in range(g, min(g + group, cout), size)]
        assert nplanes == 9 * cpix + 1 and len(off) == P * len(sets) + 1
        assert (w1 == bits.sum(axis=1)).all()
        side = {co: set(plane[bits[co] == bool(ones[co])]) for co in range(cout)}
        for s, chans in enumerate(sets):
            parts = []
            for m in range(1, P + 1):
                lst = idx[off[P * s + m - 1]:off[P * s + m]]
                real = lst[lst != nplanes - 1]
                assert len(lst) % 16 == 0 and len(lst) - len(real) < 16
                parts.append(set(real))
            for i, c in enumerate(chans):
                assert set().union(*(parts[m - 1] for m in range(1, P + 1) if m >> i & 1)) == side[c]
            for m in range(1, P + 1):
                assert not parts[m - 1] or m < 1 << len(chans)
                for m2 in range(m + 1, P + 1):
                    assert not parts[m - 1] & parts[m2 - 1]
            best = min(np.count_nonzero(np.any([bits[c] == sc for c, sc in zip(chans, ss)], axis=0))
                       for ss in itertools.product((True, False), repeat=len(chans)))
            assert len(set().union(*parts)) == best
            if len(chans) == 1:
                assert ones[chans[0]] == (w1[chans[0]] <= bits.shape[1] - w1[chans[0]])
        assert off[P] == 0                                  # set 0: nothing to add
        # set 1: its first two channels share one side: nothing in the lists of one but not the other
        assert all(off[P + m - 1] == off[P + m] for m in range(1, P + 1) if (m ^ m >> 1) & 1)
        per_channel = [sum(off[P * s + m] - off[P * s + m - 1] for m in range(1, P + 1) if m >> i & 1)
                       for s, chans in enumerate(sets) for i in range(len(chans))]
        assert 2 ** hi > max(per_channel) // 16

    @given(case=small_cases(), pool=st.booleans(), use_res=st.booleans(), use_rp=st.booleans(),
           threads=st.sampled_from([1, 2]))
    @settings(SETTINGS, max_examples=40)
    def test_small_outputs_take_the_weight_planes_and_equal_reference_and_core(
            self, avx2, ref, case, pool, use_res, use_rp, threads):
        """Outputs too small to fill plane blocks (one small image, say) run on
        the weight planes (bnn_wplanes_unit): same floats, bits and integers
        as the NumPy reference and the popcount core."""
        c = Case(**case)
        pool = pool and c.ho >= 2 and c.wo >= 2
        wp = avx2.prepare_weights(c.w, cin=c.cin)
        assume(not self._planes_apply(avx2, c, wp, pool))
        planes, _, wplanes = avx2._impl.bconv_scratch(c.x, wp, c.stride, threads, pool)
        assert planes is None
        assume(wplanes is not None)
        mult, bias, nthr, scale = (c.f32(c.cout) for _ in range(4))
        residual = c.f32(c.n, c.ho, c.wo, c.cout) if use_res else None
        rprelu = (c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)) if use_rp else None
        oshape = (c.n, c.ho // 2, c.wo // 2) if pool else (c.n, c.ho, c.wo)
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, c.cout).astype(np.int32)
        got = []
        for b, w in ((avx2, wp), (avx2, self._core(avx2, c.w, c.cin)), (ref, ref.prepare_weights(c.w))):
            out = np.full(oshape + (c.cout,), np.nan, np.float32)
            bits = np.full(oshape + (words_for(c.cout),), GARBAGE_WORD, WORD_DTYPE)
            b.bconv_float(c.x, w, c.k_bits, c.stride, mult, bias, residual, rprelu, out, bits,
                          nthr, threads=threads, pool=pool, scale=scale)
            got.append((out, bits, _bits_out(b, c, w, thr, threads)))
        for other in got[1:]:
            for a, b in zip(got[0], other):
                np.testing.assert_array_equal(a, b)
        acc, _ = _float_out(avx2, c, wp, np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32))
        np.testing.assert_array_equal(acc, c.oracle_acc().astype(np.float32))

    @pytest.mark.parametrize("fill", ["random", "all_minus_one"])
    def test_weight_plane_counts_past_the_low_byte_equal_oracle(self, avx2, fill):
        """K = 9216 on the weight planes: a pixel adds up to 9216 planes, so the
        sums take up to 14 bits; with every input -1 every plane is added."""
        c = Case(n=1, h=4, w=4, k=3, pad=1, cin=1024, cout=300, stride=1, seed=12)
        if fill == "all_minus_one":
            c.x[:, 1:-1, 1:-1] = pack_bits(-np.ones((1, 4, 4, c.cin)))
        wp = avx2.prepare_weights(c.w, cin=c.cin)
        assert avx2._impl.bconv_scratch(c.x, wp, 1, 1, False)[2] is not None
        out, _ = _float_out(avx2, c, wp, np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32))
        np.testing.assert_array_equal(out, c.oracle_acc().astype(np.float32))

    def test_weight_planes_hold_each_channels_bits(self, avx2):
        """Plane k of group g: bit c = weight bit k of channel 256g + c (plane
        numbers as the plane lists'), zero past Cout and in the last plane;
        a = |W1| per channel; 32-byte aligned for the kernel's loads."""
        rng = np.random.default_rng(4)
        cout, cin = 300, 70
        w = pack_bits(rng.standard_normal((cout, 3, 3, cin)))
        planes, a, nplanes, hi = B._weight_planes(w, cin, avx2._impl.mod.PLANES_HI)
        cpix = words_for(cin) * WORD_BITS
        assert planes.shape == (2, nplanes, 32) and nplanes == 9 * cpix + 1
        assert planes.ctypes.data % 32 == 0
        bits = np.unpackbits(planes, axis=-1, bitorder="little")        # (G, nplanes, 256)
        want = np.zeros((512, nplanes), np.uint8)
        want[:cout, :-1] = (unpack_bits(w, cpix) < 0).reshape(cout, -1)  # -1 -> 1, tail channels 0
        np.testing.assert_array_equal(bits.transpose(0, 2, 1).reshape(512, nplanes), want)
        np.testing.assert_array_equal(a, want.sum(axis=1))
        assert 16 * 2 ** hi > nplanes - 1 + 15 * 15

    def test_layers_beyond_the_int16_counts_use_the_core(self, avx2):
        w = np.zeros((1, 3, 3, words_for(4096)), WORD_DTYPE)      # K = 36864 >= 2^15
        big = avx2.prepare_weights(w, cin=4096)
        assert big.planes is None and big.wplanes is None
        small = avx2.prepare_weights(w[:, :, :, :1], cin=64)
        assert small.planes is not None and small.wplanes is not None
