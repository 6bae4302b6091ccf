"""Adapter of the compiled kernels (the Cython extension ``bnnlite._bconv_*``).

One build per instruction set, all from kernels/_bconv.pxi (setup.py);
``get_backend`` picks the one this CPU runs.  Inside a build, the path of
each binary conv (bit planes, weight planes or popcount core) is the C
selector's choice (kernels/bconv_select.h), asked through ``planes.call_path``
when a call is bound; its data is made once per layer by ``planes.prepare``.

Public names: CythonKernels.
"""
from __future__ import annotations

import importlib

from ..bitpack import WORD_BITS
from . import planes
from .api import Kernels, passive_openmp
from .prepared import blocked_layout

__all__ = ["CythonKernels"]

#: bconv_raw's float-mode arguments in bits mode: scale, mult, bias,
#: residual, gamma, beta, zeta, out.
_NO_FLOAT_MODE = (None,) * 8
_NO_RPRELU = (None, None, None)


class CythonKernels(Kernels):
    """The kernels of the compiled module ``module_name`` (build ``variant``)."""

    concurrent_calls = True  # plain C + OpenMP, no shared state between calls

    def __init__(self, module_name: str, variant: str):
        passive_openmp()
        self.mod = importlib.import_module(module_name)
        if self.mod.WORD_BITS_C != WORD_BITS:  # kernels/_bitpack.pxd drifted
            raise ImportError(f"{module_name} was built with {self.mod.WORD_BITS_C}-bit "
                              f"words, bitpack.WORD_BITS is {WORD_BITS}; rebuild it")
        self.variant = variant
        self.layout = f"cython-b{self.mod.CO_BLOCK}-l{self.mod.LANES}"

    def prepare(self, w):
        return blocked_layout(w, self.mod.LANES, self.mod.CO_BLOCK)

    def prepare_planes(self, w, cin):
        return planes.prepare(self.mod, w, cin)

    def call_path(self, pw, x_shape, stride, threads, pool):
        return planes.call_path(self.mod, pw, x_shape, stride, threads, pool)

    def pack(self, x, thr, out, threads):
        self.mod.pack_raw(x, thr, out, threads)

    def bconv_float(self, x, pw, k_bits, stride, epilogue, out, out_bits, threads, pool, path):
        e = epilogue
        g, b, z = e.rprelu or _NO_RPRELU
        self.mod.bconv_raw(x, pw.data, pw.kh, pw.kw, pw.cw, pw.cout, k_bits, stride,
                           e.scale, e.mult, e.bias, e.residual, g, b, z, out, out_bits,
                           e.next_thr, None, threads, pool, *path)

    def bconv_bits(self, x, pw, k_bits, stride, thr, out, threads, path):
        self.mod.bconv_raw(x, pw.data, pw.kh, pw.kw, pw.cw, pw.cout, k_bits, stride,
                           *_NO_FLOAT_MODE, out, None, thr, threads, False, *path)

    def conv_float(self, x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads):
        kh, kw, cin, cout = w.shape
        self.mod.fconv_raw(x, w.reshape(-1), kh, kw, cin, cout, stride, mult, bias, relu, out,
                           out_bits, next_thr, threads)

    def fma_epilogue(self, y, mult, bias, relu, threads):
        self.mod.fma_rows_raw(y, mult, bias, relu, threads)

    def bmaxpool2(self, x, out, threads):
        self.mod.bmaxpool2_raw(x, out, threads)

    def maxpool2(self, x, out, threads):
        self.mod.maxpool2_raw(x, out, threads)

    def lookup_u8(self, x, table, out):
        c = table.shape[1]
        self.mod.lookup_u8_raw(x.reshape(-1, c), table, out.reshape(-1, c))
