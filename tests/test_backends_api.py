"""Tests of bnnlite/backends/api.py: every Backend method on every
available backend, against the float +-1 oracle and the NumPy reference, bit
for bit (cases and fixtures: _kernel_cases.py); bind=True.  The argument
checks are tested in test_backends_checks.py, prepared weights in
test_backends_prepared.py, the bit-plane paths in test_backends_planes.py.
"""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from bnnlite import backends as B
from bnnlite import floatmath
from bnnlite.backends import reference
from bnnlite.bitpack import WORD_BITS, WORD_DTYPE, pack_bits, unpack_bits, words_for

from _kernel_cases import (ALL, CHANNELS, GARBAGE_WORD, SETTINGS, Case, _bits_out, _fma_exact,
                           _float_out, be, conv_cases, ref)


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


class TestConvFloat:
    """Full float epilogue: bit-identical to the reference, fused pack."""

    @given(case=conv_cases(), use_res=st.booleans(), use_rp=st.booleans(),
           res_div=st.sampled_from([1, 2, 3, 5]), unit_scale=st.booleans())
    @SETTINGS
    def test_bit_identical_to_reference(self, be, ref, case, use_res, use_rp, res_div, unit_scale):
        c = Case(**case)
        scale, mult, bias = c.f32(c.cout) * 0.1, c.f32(c.cout), c.f32(c.cout)
        if unit_scale:   # no weight scale: the AVX-512 1x1 path skips the product by 1
            scale = np.ones(c.cout, np.float32)
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

    @pytest.mark.parametrize("cin,cout,cres,stride,unit", [
        (32, 32, 32, 1, True), (64, 40, 8, 1, True), (128, 128, 64, 1, True),
        (130, 96, 96, 2, False), (512, 24, 24, 1, True), (64, 200, 200, 1, False),
        (128, 96, 24, 1, True)])
    @pytest.mark.parametrize("use_rp", [False, True])
    def test_pointwise_runs(self, be, ref, cin, cout, cres, stride, unit, use_rp):
        """1x1 convs over long runs (2 x 7 x 37 pixels: several work items of
        the flat run, kernels/bconv_select.h) with every epilogue piece: unit
        or real scales, a residual repeated (cres % 16 == 0 or not), RPReLU,
        the fused pack into words two blocks share; and bits mode."""
        c = Case(n=2, h=7, w=37, k=1, pad=0, cin=cin, cout=cout, stride=stride, seed=cin + cout)
        scale = np.ones(cout, np.float32) if unit else c.f32(cout) * 0.1
        mult, bias, nthr = c.f32(cout), c.f32(cout), c.f32(cout)
        residual = c.f32(c.n, c.ho, c.wo, cres)
        rprelu = (c.f32(cout), c.f32(cout), c.f32(cout)) if use_rp else None
        got = _float_out(be, c, be.prepare_weights(c.w), mult, bias, residual, rprelu, nthr,
                         scale=scale)
        want = _float_out(ref, c, ref.prepare_weights(c.w), mult, bias, residual, rprelu, nthr,
                          scale=scale)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, cout).astype(np.int32)
        np.testing.assert_array_equal(_bits_out(be, c, be.prepare_weights(c.w), thr),
                                      pack_bits(c.oracle_acc(), thr))

    def test_epilogue_formula_by_hand(self, be):
        c = Case(n=1, h=3, w=3, k=3, pad=1, cin=64, cout=16, stride=1, seed=3)
        acc = c.oracle_acc().astype(np.float32)
        scale, mult, bias = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        res = c.f32(1, 3, 3, 8)
        gamma, beta, zeta = c.f32(c.cout), c.f32(c.cout), c.f32(c.cout)
        out, _ = _float_out(be, c, be.prepare_weights(c.w), mult, bias, res,
                            (gamma, beta, zeta), scale=scale)
        y = floatmath.fma32(acc * scale, mult, bias) + np.concatenate([res, res], axis=-1)
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


def _hard_floats(rng, shape):
    """float32 values that stress a fused multiply-add: normal, tiny (products
    and sums in the subnormals), huge (products that overflow), powers of two
    +- an ulp (exact ties of the single rounding), zeros of both signs, inf, NaN."""
    kind = rng.integers(0, 6, shape)
    v = rng.standard_normal(shape)
    v = np.where(kind == 1, v * 2.0 ** rng.integers(-149, -100, shape), v)
    v = np.where(kind == 2, v * 2.0 ** rng.integers(60, 126, shape), v)
    v = np.where(kind == 3, np.sign(v) * (1 + 2.0 ** rng.integers(-23, -10, shape))
                 * 2.0 ** rng.integers(-8, 8, shape), v)
    v = np.where(kind == 4, np.where(v < 0, -0.0, 0.0), v)
    v = v.astype(np.float32)
    special = rng.random(shape) < 0.01
    v[special] = rng.choice(np.array([np.inf, -np.inf, np.nan], np.float32), int(special.sum()))
    return v


def _same_floats(a, b):
    """Equal bit for bit, every NaN counting as the same NaN."""
    nan = np.isnan(a)
    np.testing.assert_array_equal(nan, np.isnan(b))
    np.testing.assert_array_equal(np.where(nan, 0, a.view(np.int32)), np.where(nan, 0, b.view(np.int32)))


class TestFmaEpilogue:
    """fma_epilogue (the im2col conv's folded batch-norm, in place): every
    backend gives floatmath.fma32's bits (one rounding), then np.maximum(y, 0)."""

    @given(rows=st.integers(1, 40), c=st.sampled_from(CHANNELS), relu=st.booleans(),
           threads=st.sampled_from([1, 2]), seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_equals_fma32(self, be, rows, c, relu, threads, seed):
        rng = np.random.default_rng(seed)
        y = _hard_floats(rng, (rows, c))
        mult, bias = _hard_floats(rng, (c,)), _hard_floats(rng, (c,))
        # (1 + 2^-12)^2 = 1 + 2^-11 + 2^-24 is halfway between two floats: a tie
        # (bias 0), and with bias 2^-60 just above one, which a float64 sum
        # rounded again to float32 gets wrong (double rounding)
        y[0, ::3] = np.float32(1 + 2.0 ** -12)
        mult[::3] = np.float32(1 + 2.0 ** -12)
        bias[::6] = 0.0
        bias[3::6] = 2.0 ** -60
        with np.errstate(all="ignore"):           # inf - inf, overflow: as fmaf
            want = floatmath.fma32(y, mult, bias)
        if relu:
            want = np.maximum(want, 0)
        got = y.copy()
        with np.errstate(all="ignore"):
            be.fma_epilogue(got, mult, bias, relu, threads)
        _same_floats(got, want)

    def test_rows_of_a_strided_view_and_mult_one_is_plus_bias(self, be):
        rng = np.random.default_rng(7)
        buf = rng.standard_normal((9, 2, 70)).astype(np.float32)
        keep = buf.copy()
        y = buf[:, 0, 3:68]                      # rows 2*70 floats apart
        bias = rng.standard_normal(65).astype(np.float32)
        be.fma_epilogue(y, np.ones(65, np.float32), bias, False, 2)
        _same_floats(y, keep[:, 0, 3:68] + bias)
        np.testing.assert_array_equal(buf[:, 1], keep[:, 1])   # the rest is untouched
        np.testing.assert_array_equal(buf[:, 0, :3], keep[:, 0, :3])

    def test_fma_by_hand_and_relu_signs(self, be):
        y = np.array([[1 + 2.0 ** -12, -0.0, -3.0, np.nan, 1e-40]], np.float32)
        mult = np.array([1 + 2.0 ** -12, 1.0, 1.0, 1.0, 0.5], np.float32)
        bias = np.array([-1.0, -0.0, 1.0, 0.0, 0.0], np.float32)
        want = np.array([[np.nan if np.isnan(a) else _fma_exact(a, b, c)
                          for a, b, c in zip(y[0], mult, bias)]], np.float32)
        got = y.copy()
        be.fma_epilogue(got, mult, bias, False)
        _same_floats(got, want)
        assert np.signbit(got[0, 1])             # -0 * 1 + -0 = -0
        be.fma_epilogue(y, mult, bias, True)
        _same_floats(y, np.maximum(want, 0))
        assert not np.signbit(y[0, 1]) and np.isnan(y[0, 3])   # -0 -> +0, NaN kept


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
