"""Tests of bnnlite/backends/planes.py and the paths it feeds: the choice of
path (bnn_sel_choose in kernels/bconv_select.h, asked through select_path
and call_path), the plane lists and weight planes, and the AVX2 bit-plane
conv and its small-output path, which equal the NumPy reference and the
popcount core bit for bit.
"""
import itertools

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bnnlite import backends as B
from bnnlite.backends.planes import PlaneLists, WeightPlanes, call_path, plane_lists, weight_planes
from bnnlite.bitpack import WORD_BITS, WORD_DTYPE, pack_bits, unpack_bits, words_for

from _kernel_cases import (CHANNELS, GARBAGE_WORD, SETTINGS, Case, _bits_out, _float_out,
                           _get, ref)


def _module(variant):
    try:
        return B.get_backend(f"cython-{variant}")._impl.mod
    except (ImportError, RuntimeError):
        pytest.skip(f"the {variant} build does not run here")


class TestPathChoice:
    """bnn_sel_choose (kernels/bconv_select.h), through select_path."""

    def test_the_three_paths(self):
        mod = _module("avx2")
        if not mod.HAVE_PLANES:
            pytest.skip("this build has no bit-plane conv")

        def choose(n, ho, wo, pool, have_planes, have_wplanes, k=3, cw=2):
            return mod.select_path(n, ho, wo, pool, have_planes, have_wplanes, k, k, cw)

        assert choose(4, 16, 16, False, True, True) == mod.PATH_PLANES     # 1024 pixels
        assert choose(1, 8, 8, False, True, True) == mod.PATH_WPLANES      # 64 pixels
        assert choose(1, 8, 8, False, False, True) == mod.PATH_WPLANES
        assert choose(4, 16, 16, False, False, True) == mod.PATH_WPLANES
        assert choose(1, 8, 8, False, True, False) == mod.PATH_CORE
        assert choose(1, 8, 300, False, True, True) == mod.PATH_CORE        # rows too wide
        assert choose(4, 16, 16, True, True, True) == mod.PATH_PLANES
        # 1x1 convs of up to 4 words (Cin <= 256): the pointwise run, either size
        for cw in (1, 2, 4):
            assert choose(4, 16, 16, False, True, True, k=1, cw=cw) == mod.PATH_CORE
            assert choose(1, 8, 8, False, True, True, k=1, cw=cw) == mod.PATH_CORE
        # wider ones, and pooled ones (no pointwise run there), as before
        assert choose(4, 16, 16, False, True, True, k=1, cw=5) == mod.PATH_PLANES
        assert choose(1, 8, 8, False, True, True, k=1, cw=8) == mod.PATH_WPLANES
        assert choose(4, 16, 16, True, True, True, k=1, cw=2) == mod.PATH_PLANES

    def test_builds_without_planes_take_the_core(self):
        mod = _module("generic")
        assert mod.PATH_CORE == mod.select_path(4, 16, 16, False, True, True, 3, 3, 2)

    def test_call_path_hands_over_that_paths_data(self):
        be = B.get_backend("cython-avx2") if "cython-avx2" in B.available_backends() else None
        if be is None or not be._impl.mod.HAVE_PLANES:
            pytest.skip("no AVX2 build with the bit-plane conv here")
        mod = be._impl.mod
        w = np.random.default_rng(0).integers(0, 2**63, (64, 3, 3, 2), dtype=np.uint64).astype(WORD_DTYPE)
        wp = be.prepare_weights(w)
        assert isinstance(wp.planes, PlaneLists) and isinstance(wp.wplanes, WeightPlanes)
        planes, ws, wplanes = call_path(mod, wp, (4, 18, 18, 2), 1, 2, False)
        assert planes is wp.planes and wplanes is None
        assert ws.nbytes == 2 * mod.planes_workspace_bytes(wp.planes.nplanes) and ws.ctypes.data % 64 == 0
        planes, ws, wplanes = call_path(mod, wp, (1, 10, 10, 2), 1, 1, False)
        assert planes is None and wplanes is wp.wplanes
        assert ws.nbytes == mod.wplanes_workspace_bytes(wp.wplanes.nplanes, 64)
        wp.planes = wp.wplanes = None
        assert call_path(mod, wp, (4, 18, 18, 2), 1, 1, False) == (None, None, None)
        # a 1x1 conv of 2 words takes the pointwise run: no plane data, no scratch
        w1 = be.prepare_weights(w[:, :1, :1])
        assert w1.planes is not None and w1.wplanes is not None
        assert call_path(mod, w1, (4, 16, 16, 2), 1, 2, False) == (None, None, None)


# --------------------------------------------------------------------------
# The AVX2 bit-plane conv (kernels/planes_avx2.h, wplanes_avx2.h)
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
        return mod.PATH_PLANES == mod.select_path(c.n, c.ho, c.wo, pool, wp.planes is not None,
                                                  wp.wplanes is not None, c.k, c.k, words_for(c.cin))

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
        idx, off, w1, ones, nplanes, hi = plane_lists(w, cin, avx2._impl.mod.PLANES_HI,
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
        planes, _, wplanes = avx2._impl.call_path(wp, c.x.shape, c.stride, threads, pool)
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
        assert avx2._impl.call_path(wp, c.x.shape, 1, 1, False)[2] is not None
        out, _ = _float_out(avx2, c, wp, np.ones(c.cout, np.float32), np.zeros(c.cout, np.float32))
        np.testing.assert_array_equal(out, c.oracle_acc().astype(np.float32))

    def test_weight_planes_hold_each_channels_bits(self, avx2):
        """Plane k of group g: bit c = weight bit k of channel 256g + c (plane
        numbers as the plane lists'), zero past Cout and in the last plane;
        a = |W1| per channel; 32-byte aligned for the kernel's loads."""
        rng = np.random.default_rng(4)
        cout, cin = 300, 70
        w = pack_bits(rng.standard_normal((cout, 3, 3, cin)))
        planes, a, nplanes, hi = weight_planes(w, cin, avx2._impl.mod.PLANES_HI)
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

    @pytest.mark.parametrize("n,h,w", [(2, 16, 16), (1, 6, 6)])
    def test_wide_1x1_convs_still_take_the_plane_paths(self, avx2, ref, n, h, w):
        """Past 4 words per pixel a 1x1 conv stays on the bit planes (a large
        output) or the weight planes (a small one), and equals the reference."""
        c = Case(n=n, h=h, w=w, k=1, pad=0, cin=320, cout=72, stride=1, seed=h)
        wp = avx2.prepare_weights(c.w, cin=c.cin)
        planes, _, wplanes = avx2._impl.call_path(wp, c.x.shape, 1, 1, False)
        assert (planes is not None) == (n * h * w >= 256) and (planes is None) == (wplanes is not None)
        mult, bias, nthr, scale = (c.f32(c.cout) for _ in range(4))
        res, rprelu = c.f32(n, h, w, 24), (c.f32(c.cout), c.f32(c.cout), c.f32(c.cout))
        got = _float_out(avx2, c, wp, mult, bias, res, rprelu, nthr, scale=scale)
        want = _float_out(ref, c, ref.prepare_weights(c.w), mult, bias, res, rprelu, nthr, scale=scale)
        np.testing.assert_array_equal(got[0], want[0])
        np.testing.assert_array_equal(got[1], want[1])


class TestPointwiseAVX2:
    """The AVX2 pointwise run of 1x1 convs (kernels/bconv_avx2.h,
    bnn_avx2_pointwise), which the selector prefers up to 4 words per pixel
    and the core runs at any width without plane data, equals the NumPy
    reference bit for bit: a byte-accumulator flush every 30 words (Cin 1920,
    1984), its widest input (32 words: Cin 2048), and past it (the tile core);
    flat runs and rows into padded buffers (the next 3x3 conv's input)."""

    @pytest.mark.parametrize("cin,cout,cres,stride,padded", [
        (320, 72, 72, 1, False), (1920, 40, 8, 1, True), (1984, 33, 33, 2, False),
        (2048, 16, 16, 1, False), (2112, 9, 3, 1, True), (64, 96, 32, 1, True)])
    def test_wide_inputs_without_plane_data(self, avx2, ref, cin, cout, cres, stride, padded):
        c = Case(n=2, h=3, w=11, k=1, pad=0, cin=cin, cout=cout, stride=stride, seed=cin)
        wp = avx2.prepare_weights(c.w, cin=cin)
        wp.planes = wp.wplanes = None
        mult, bias, nthr, scale = (c.f32(cout) for _ in range(4))
        res = c.f32(c.n, c.ho, c.wo, cres)
        rprelu = (c.f32(cout), c.f32(cout), c.f32(cout))
        pad = 1 if padded else 0
        got = []
        for b, w in ((avx2, wp), (ref, ref.prepare_weights(c.w))):
            fbuf = np.full((c.n, c.ho + 2 * pad, c.wo + 2 * pad, cout), -7.0, np.float32)
            bbuf = np.full((c.n, c.ho + 2 * pad, c.wo + 2 * pad, words_for(cout)), GARBAGE_WORD,
                           WORD_DTYPE)
            inner = (slice(None), slice(pad, pad + c.ho), slice(pad, pad + c.wo))
            b.bconv_float(c.x, w, c.k_bits, stride, mult, bias, res, rprelu, fbuf[inner],
                          bbuf[inner], nthr, threads=2, scale=scale)
            got.append((fbuf, bbuf))
        np.testing.assert_array_equal(got[0][0], got[1][0])
        np.testing.assert_array_equal(got[0][1], got[1][1])
        thr = c.rng.integers(-c.k_bits, c.k_bits + 1, cout).astype(np.int32)
        np.testing.assert_array_equal(_bits_out(avx2, c, wp, thr), pack_bits(c.oracle_acc(), thr))
