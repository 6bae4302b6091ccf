"""Adapter of the numba kernels (``_numba_kernels``), the fallback for
installs without the compiled extension.

numba is the optional extra ``bnnlite[numba]``: it is imported (and the
kernels compiled, or loaded from the user's cache) only when this backend
is made, never when bnnlite is imported.

Public names: NumbaKernels.
"""
from __future__ import annotations

import importlib

import numpy as np

from ..bitpack import WORD_DTYPE
from . import reference
from .api import Kernels, passive_openmp
from .prepared import blocked_layout

__all__ = ["NumbaKernels"]


class NumbaKernels(Kernels):
    """The numba kernels; ImportError when numba is not installed."""

    variant = "numba"

    def __init__(self):
        passive_openmp()  # numba's default threading layer here is OpenMP
        self.mod = importlib.import_module(f"{__package__}._numba_kernels")
        self.layout = self.mod.LAYOUT
        # numba's "workqueue" threading layer terminates the process when two
        # threads launch parallel kernels at once ("omp" and "tbb" do not); the
        # layer is chosen at the first parallel launch, so make one now.
        self.mod.pack(np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32),
                      np.zeros((1, 1, 1, 1), WORD_DTYPE), 1)
        import numba
        self.concurrent_calls = numba.threading_layer() in ("omp", "tbb")

    def prepare(self, w):
        return blocked_layout(w, self.mod.CO_BLOCK, self.mod.CO_BLOCK)

    def pack(self, x, thr, out, threads):
        self.mod.pack(x, thr, out, threads)

    def bconv_float(self, x, pw, k_bits, stride, epilogue, out, out_bits, threads, pool, path):
        e = epilogue
        self.mod.bconv_float(x, pw.data, pw.cout, pw.kh, pw.kw, pw.cw, k_bits, stride,
                             e.scale, e.mult, e.bias, e.residual, e.rprelu, out, out_bits,
                             e.next_thr, threads, pool)

    def bconv_bits(self, x, pw, k_bits, stride, thr, out, threads, path):
        self.mod.bconv_bits(x, pw.data, pw.cout, pw.kh, pw.kw, pw.cw, k_bits, stride, thr, out,
                            threads)

    def conv_float(self, x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads):
        self.mod.conv_float(x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads)

    def fma_epilogue(self, y, mult, bias, relu, threads):
        self.mod.fma_epilogue(y, mult, bias, relu, threads)

    def bmaxpool2(self, x, out, threads):
        self.mod.bmaxpool2(x, out, threads)

    def maxpool2(self, x, out, threads):
        self.mod.maxpool2(x, out, threads)

    def lookup_u8(self, x, table, out):
        reference.lookup_u8(x, table, out)  # NumPy is as fast for this one
