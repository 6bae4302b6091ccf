"""Tests of the packing conventions in bnnlite.bitpack (the source of truth
that every kernel follows): LSB-first order, bit 1 = -1, sign(0) = +1, tail
bits 0, pack/unpack round trip, and binary_dot = the float +-1 dot."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnnlite.bitpack import (WORD_BITS, WORD_DTYPE, binary_dot, pack_bits, sign,
                             unpack_bits, words_for)

SETTINGS = settings(derandomize=True, max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])
CHANNELS = [1, 3, 63, 64, 65, 127, 128, 130, 200]


def _rng(seed):
    return np.random.default_rng(seed)


class TestConstants:
    def test_word_type(self):
        assert WORD_DTYPE == np.dtype(np.uint64)
        assert WORD_BITS == 8 * WORD_DTYPE.itemsize

    @pytest.mark.parametrize("c", CHANNELS)
    def test_words_for(self, c):
        assert words_for(c) * WORD_BITS >= c
        assert (words_for(c) - 1) * WORD_BITS < c


class TestBitOrder:
    @pytest.mark.parametrize("c", CHANNELS)
    def test_single_negative_channel_sets_lsb_first_bit(self, c):
        for ch in {0, c // 2, c - 1}:
            x = np.ones((1, c), np.float32)
            x[0, ch] = -1.0
            w = pack_bits(x)
            expect = np.zeros(words_for(c), WORD_DTYPE)
            expect[ch // WORD_BITS] = WORD_DTYPE.type(1) << WORD_DTYPE.type(ch % WORD_BITS)
            np.testing.assert_array_equal(w[0], expect)

    def test_bit_one_means_minus_one(self):
        x = np.array([[-3.0, 2.0, -0.5]], np.float32)
        assert int(pack_bits(x)[0, 0]) == 0b101
        np.testing.assert_array_equal(unpack_bits(pack_bits(x), 3), [[-1, 1, -1]])

    def test_sign_of_zero_is_plus_one(self):
        np.testing.assert_array_equal(sign(np.array([0.0, -0.0, -1e-30, 1e-30])),
                                      [1, 1, -1, 1])

    def test_value_equal_to_threshold_gives_bit_zero(self):
        thr = np.array([0.5, -2.0, 0.0], np.float32)
        x = thr[None].copy()
        assert int(pack_bits(x, thr)[0, 0]) == 0
        # just below the threshold gives -1 (bit 1)
        below = np.nextafter(thr, np.float32(-np.inf))[None]
        assert int(pack_bits(below, thr)[0, 0]) == 0b111

    @given(c=st.sampled_from(CHANNELS), seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_tail_bits_are_zero(self, c, seed):
        x = -np.abs(_rng(seed).standard_normal((4, c))) - 1.0  # every bit 1
        w = pack_bits(x)
        assert w.shape == (4, words_for(c)) and w.dtype == WORD_DTYPE
        tail = words_for(c) * WORD_BITS - c
        last = w[:, -1]
        if tail:
            assert np.all(last >> WORD_DTYPE.type(WORD_BITS - tail) == 0)
        assert int(np.bitwise_count(w).sum()) == 4 * c


class TestRoundTrip:
    @given(c=st.sampled_from(CHANNELS), lead=st.integers(1, 5), seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_pack_unpack_bit_by_bit(self, c, lead, seed):
        rng = _rng(seed)
        x = rng.standard_normal((lead, 3, c)).astype(np.float32)
        thr = rng.standard_normal(c).astype(np.float32)
        w = pack_bits(x, thr)
        back = unpack_bits(w, c)
        np.testing.assert_array_equal(back, np.where(x < thr, -1.0, 1.0))
        # and each bit individually, by shifting
        for ch in range(0, c, max(1, c // 7)):
            bit = (w[..., ch // WORD_BITS] >> WORD_DTYPE.type(ch % WORD_BITS)) & WORD_DTYPE.type(1)
            np.testing.assert_array_equal(bit.astype(bool), x[..., ch] < thr[ch])

    @given(c=st.sampled_from(CHANNELS), seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_pack_of_unpack_is_identity(self, c, seed):
        rng = _rng(seed)
        bits = rng.integers(0, 2, (6, c)).astype(bool)
        w = pack_bits(np.where(bits, -1.0, 1.0))
        np.testing.assert_array_equal(pack_bits(unpack_bits(w, c)), w)


class TestBinaryDot:
    @given(c=st.sampled_from(CHANNELS), seed=st.integers(0, 2**32 - 1))
    @SETTINGS
    def test_equals_float_dot(self, c, seed):
        rng = _rng(seed)
        a = np.where(rng.random((5, c)) < 0.5, -1.0, 1.0).astype(np.float32)
        b = np.where(rng.random((5, c)) < 0.5, -1.0, 1.0).astype(np.float32)
        got = binary_dot(pack_bits(a), pack_bits(b), c)
        np.testing.assert_array_equal(got, (a * b).sum(-1).astype(np.int32))

    def test_zero_padding_word_is_plus_one(self):
        # A zero word is +1 on every channel: dot with itself is K.
        z = np.zeros(words_for(70), WORD_DTYPE)
        assert int(binary_dot(z, z, 70)) == 70
        np.testing.assert_array_equal(unpack_bits(z[None], 70), np.ones((1, 70)))
