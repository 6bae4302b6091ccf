"""float32 arithmetic that NumPy lacks, rounded as the kernels and PyTorch round.

The runtime (``graph``), the exporter (``bnnlite.train.export``) and the NumPy
oracle (``backends.reference``) compute with it, so it lives apart from all
three: none of them imports the others for it.

Public names: fma32.
"""
from __future__ import annotations

import numpy as np

__all__ = ["fma32"]


def fma32(a, b, c) -> np.ndarray:
    """float32 ``a * b + c`` rounded once, like the C ``fmaf`` (NumPy has no fma).

    In float64 the product of two float32 is exact; the sum is rounded to
    float64 *to odd* (its exact error e comes from TwoSum: if e != 0 and the
    last bit is even, step one ulp towards e), and rounding that to float32
    is then correctly rounded (Boldo & Melquiond: to-odd with >= 2 extra bits
    makes the double rounding innocuous; 53 >= 24 + 2).  Broadcasts like a ufunc.
    """
    a, b, c = (np.asarray(v, np.float32).astype(np.float64) for v in (a, b, c))
    p = a * b                      # exact
    s = p + c
    with np.errstate(invalid="ignore"):  # inf - inf when s is inf: handled below
        bp = s - p
        e = (p - (s - bp)) + (c - bp)  # TwoSum: p + c == s + e exactly
    bits = np.ascontiguousarray(s).view(np.int64).reshape(s.shape)
    even = (bits & 1) == 0
    step = np.where((e > 0) == (s > 0), 1, -1)   # away from / towards zero
    inexact = (e != 0) & np.isfinite(e)          # e is NaN when s is inf or NaN
    odd = np.where(inexact & even, bits + step, bits).view(np.float64)
    return odd.astype(np.float32)
