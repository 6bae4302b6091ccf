"""Tests of bnnlite/backends/_checks.py through the Backend methods: bad
arguments are refused with a ValueError that names them.
"""
import numpy as np
import pytest

from bnnlite import backends as B
from bnnlite.bitpack import WORD_BITS, WORD_DTYPE

from _kernel_cases import (Case, be)


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

    def test_fma_epilogue_arguments(self, be):
        y, v = np.zeros((4, 8), np.float32), np.zeros(8, np.float32)
        with pytest.raises(ValueError, match=r"y: expected shape \(\?, \?\)"):
            be.fma_epilogue(np.zeros((2, 2, 8), np.float32), v, v, False)
        with pytest.raises(ValueError, match="y: expected dtype float32"):
            be.fma_epilogue(y.astype(np.float64), v, v, False)
        with pytest.raises(ValueError, match=r"mult: expected shape \(8\)"):
            be.fma_epilogue(y, v[:4], v, False)
        with pytest.raises(ValueError, match="bias: expected a C-contiguous"):
            be.fma_epilogue(y, v, np.zeros(16, np.float32)[::2], False)
        with pytest.raises(ValueError, match="relu: expected True or False"):
            be.fma_epilogue(y, v, v, 1)
        with pytest.raises(ValueError, match="y overlaps mult"):
            be.fma_epilogue(y, y[0], v, False)
        with pytest.raises(ValueError, match="last axis must be contiguous"):
            be.fma_epilogue(np.zeros((4, 16), np.float32)[:, ::2], v, v, False)
        y.flags.writeable = False
        with pytest.raises(ValueError, match="y: expected a writeable array"):
            be.fma_epilogue(y, v, v, False)

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
