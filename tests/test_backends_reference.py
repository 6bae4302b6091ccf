"""Tests of the NumPy oracle itself (bnnlite/backends/reference.py).
"""
import numpy as np

from bnnlite.backends import reference

from _kernel_cases import (Case)


class TestReferenceItself:
    def test_reference_popcount_formula(self):
        c = Case(n=1, h=5, w=5, k=3, pad=1, cin=65, cout=9, stride=2, seed=21)
        pop = reference.bconv_popcount(c.x, c.w, 2)
        np.testing.assert_array_equal(c.k_bits - 2 * pop, c.oracle_acc())
