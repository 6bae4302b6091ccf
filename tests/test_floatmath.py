"""Tests of bnnlite/floatmath.py: fma32 is the correctly rounded float32 fma
(and so is the numba kernels' own)."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from bnnlite import floatmath

from _kernel_cases import _fma_exact


class TestFma:
    """floatmath.fma32 (and numba's) is the correctly rounded float32 fma."""

    F32 = st.floats(width=32, allow_nan=False, allow_infinity=False, min_value=-2.0 ** 60, max_value=2.0 ** 60)

    @given(a=F32, b=F32, c=F32, cancel=st.booleans())
    @settings(derandomize=True, max_examples=400, deadline=None)
    def test_equals_exact_rounding(self, a, b, c, cancel):
        a, b, c = np.float32(a), np.float32(b), np.float32(c)
        if cancel:  # c = -round(a*b): the result is the product's rounding error
            c = -np.float32(np.float64(a) * np.float64(b))
        assume(np.isfinite(np.float64(a) * np.float64(b) + np.float64(c)))
        want = _fma_exact(a, b, c)
        got = floatmath.fma32(a, b, c)
        assert got.view(np.int32) == np.float32(want).view(np.int32), (a, b, c, got, want)

    def test_numba_fma_is_the_same(self):
        pytest.importorskip("numba")
        from numba import njit
        from bnnlite.backends._numba_kernels import fma32

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
        np.testing.assert_array_equal(out.view(np.int32), floatmath.fma32(a, b, c).view(np.int32))

    def test_not_a_mul_then_add(self):
        """The test data above can tell fma from a rounded product plus c."""
        a = b = np.float32(1 + 2 ** -12)      # a*b = 1 + 2^-11 + 2^-24 needs 25 bits
        c = np.float32(-(1 + 2 ** -11))
        assert floatmath.fma32(a, b, c) == np.float32(2 ** -24)
        assert a * b + c == 0
