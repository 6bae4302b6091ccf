"""Adapter of the NumPy oracle (``reference``): slow, plain, exact.

Public names: NumpyKernels.
"""
from __future__ import annotations

import numpy as np

from . import reference
from .api import Kernels

__all__ = ["NumpyKernels"]


class NumpyKernels(Kernels):
    """The NumPy reference as a backend (``BNNLITE_BACKEND=numpy``)."""

    variant = "numpy"
    layout = reference.LAYOUT
    concurrent_calls = False  # NumPy loops that hold the GIL: threads would only queue

    def prepare(self, w):
        return reference.prepare_weights(w)

    def pack(self, x, thr, out, threads):
        reference.pack(x, thr, out)

    def bconv_float(self, x, pw, k_bits, stride, epilogue, out, out_bits, threads, pool, path):
        e = epilogue
        if out is None:  # the reference always produces the floats
            out = np.empty(out_bits.shape[:3] + (pw.cout,), np.float32)
        reference.bconv_float(x, pw.data.reshape(pw.shape), k_bits, stride, e.mult, e.bias,
                              e.residual, e.rprelu, out, out_bits, e.next_thr, pool=pool,
                              scale=e.scale)

    def bconv_bits(self, x, pw, k_bits, stride, thr, out, threads, path):
        reference.bconv_bits(x, pw.data.reshape(pw.shape), k_bits, stride, thr, out)

    def conv_float(self, x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads):
        reference.conv_float(x, w, bias, stride, relu, out, out_bits, next_thr, mult=mult)

    def fma_epilogue(self, y, mult, bias, relu, threads):
        reference.fma_epilogue(y, mult, bias, relu)

    def bmaxpool2(self, x, out, threads):
        reference.bmaxpool2(x, out)

    def maxpool2(self, x, out, threads):
        reference.maxpool2(x, out)

    def lookup_u8(self, x, table, out):
        reference.lookup_u8(x, table, out)
