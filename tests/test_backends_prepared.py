"""Tests of bnnlite/backends/prepared.py through Backend.prepare_weights.
"""
import numpy as np
import pytest

from bnnlite.bitpack import WORD_DTYPE

from _kernel_cases import (Case, _bits_out, be)


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
