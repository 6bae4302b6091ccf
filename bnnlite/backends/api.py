"""The Backend contract: one API over every kernel family, with checked arguments.

``Backend`` is what ``get_backend`` returns and what the graph calls: each
method's docstring gives its formula and each argument's dtype, shape and
contiguity; it checks them (``_checks``: ValueError naming the value and
what is accepted), then calls its adapter, a ``Kernels`` (``native``:
the compiled extension; ``numba_impl``; ``numpy_impl``: the NumPy oracle),
now or, with ``bind=True``, later: the kernel call is returned as a
zero-argument callable that a graph plan keeps.

A binary conv hands its adapter named objects: the float epilogue's
operands as an ``Epilogue`` (``RPReLU`` for the activation's), and the
bit-plane path data of this call as a ``planes.CallPath`` (the adapter's
``call_path``; the popcount core's is ``planes.CORE``).

Public names: Backend, Kernels, Epilogue, RPReLU, passive_openmp.
"""
from __future__ import annotations

import functools
import os
from typing import NamedTuple

import numpy as np

from ..bitpack import WORD_DTYPE, words_for
from . import _checks as chk
from .planes import CORE
from .prepared import PreparedWeights

__all__ = ["Backend", "Kernels", "Epilogue", "RPReLU", "passive_openmp"]


class RPReLU(NamedTuple):
    """The RPReLU activation's per-channel float32 (Cout,) operands:
    y = (t - gamma) + zeta if t >= gamma else beta * (t - gamma) + zeta."""
    gamma: np.ndarray
    beta: np.ndarray
    zeta: np.ndarray


class Epilogue(NamedTuple):
    """The float-mode operands of a binary conv (``Backend.bconv_float``),
    checked: y = fma(float(acc) * scale, mult, bias) (+ residual) (-> rprelu),
    stored to out, and packed against next_thr when out_bits is given."""
    scale: np.ndarray                 # float32 (Cout,)
    mult: np.ndarray                  # float32 (Cout,)
    bias: np.ndarray                  # float32 (Cout,)
    residual: np.ndarray | None       # float32 (N,Ho,Wo,Cres)
    rprelu: RPReLU | None
    next_thr: np.ndarray | None       # float32 (Cout,), None unless out_bits


class Kernels:
    """What an adapter (one per kernel family) provides: the kernels,
    unchecked, with ``Backend``'s argument order and every argument already
    checked (outputs preallocated, last axes contiguous, no overlaps).

    ``variant`` names the build, ``layout`` the prepared-weight layout it
    consumes (``PreparedWeights.layout``), and ``concurrent_calls`` says
    whether several threads may run its kernels at once.  The two plane
    hooks have defaults for families without the bit-plane paths: no plane
    data (``prepare_planes``) and the popcount core for every call
    (``call_path``).
    """

    variant: str
    layout: str
    concurrent_calls = False

    def prepare(self, w):
        """(Cout,KH,KW,Cw) packed weights, C-contiguous -> the ``layout`` array."""
        raise NotImplementedError

    def prepare_planes(self, w, cin):
        """(PlaneLists or None, WeightPlanes or None) of a layer (planes.prepare)."""
        return None, None

    def call_path(self, pw, x_shape, stride, threads, pool):
        """The planes.CallPath of one bound binary conv (planes.call_path)."""
        return CORE

    def pack(self, x, thr, out, threads):
        raise NotImplementedError

    def bconv_float(self, x, pw, k_bits, stride, epilogue, out, out_bits, threads, pool, path):
        raise NotImplementedError

    def bconv_bits(self, x, pw, k_bits, stride, thr, out, threads, path):
        raise NotImplementedError

    def conv_float(self, x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads):
        raise NotImplementedError

    def fma_epilogue(self, y, mult, bias, relu, threads):
        raise NotImplementedError

    def bmaxpool2(self, x, out, threads):
        raise NotImplementedError

    def maxpool2(self, x, out, threads):
        raise NotImplementedError

    def lookup_u8(self, x, table, out):
        raise NotImplementedError


def passive_openmp():
    """Let idle OpenMP workers sleep instead of spin (unless the user chose).

    libgomp reads OMP_WAIT_POLICY once, when it is loaded, i.e. when the
    first kernel module is imported: adapters of OpenMP kernels call this
    before they import theirs.  On a shared machine a spinning worker
    steals the core from the thread doing the work (measured: threads=2 ran
    2x slower than threads=1 next to a training job; passive: no loss); the
    cost is a few microseconds of wake-up per kernel call.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _nothing():
    pass


class Backend:
    """Binary-network kernels of one implementation, with checked arguments.

    All arrays are preallocated by the caller.  The last axis of every array
    must be contiguous; other axes may be strided views (e.g. the interior of
    a padded buffer).  ``threads`` is an int >= 1.  Bit conventions are those
    of :mod:`bnnlite.bitpack` (bit 1 = -1, LSB first, tail bits 0).

    Every kernel method takes ``bind=False``; ``bind=True`` checks the
    arguments and returns the kernel call as a zero-argument callable instead
    of running it (see ``_call``).  The callable keeps references to the
    arrays: call it only while they keep their shape, dtype and memory.
    """

    def __init__(self, name: str, impl):
        self.name = name
        self.variant = impl.variant
        #: True when several threads may run kernels at the same time, each with
        #: threads=1 (Model then shares a batch out by chunks between threads).
        self.concurrent_calls = bool(getattr(impl, "concurrent_calls", False))
        self._impl = impl

    def __repr__(self):
        return f"<bnnlite Backend {self.name!r} ({self.variant})>"

    @staticmethod
    def _call(bind, fn, *args):
        """Run the kernel ``fn(*args)`` now, or with ``bind=True`` return it as a
        zero-argument callable: the arguments were checked once, and a caller that
        keeps these very buffers (a graph plan) calls it again without re-checking
        (the checks are tens of microseconds per call: with them, 0.2-0.3 ms of
        Python per batch-1 prediction, 5-8% of it; docs/benchmarks-history.md,
        "Arguments checked once per plan").
        ``fn`` None: nothing to compute (an empty output)."""
        call = _nothing if fn is None else functools.partial(fn, *args)
        if bind:
            return call
        call()
        return None

    # ---- packing ---------------------------------------------------------
    def pack(self, x, thr, out, threads=1, *, bind=False):
        """Pack channels: bit c of pixel = ``x[..., c] < thr[c]``, tail bits 0.

        x: float32 (N,H,W,C), last axis contiguous.
        thr: float32 (C,), contiguous.
        out: word (N,H,W,words_for(C)), last axis contiguous, writeable.
        """
        chk.array("x", x, chk.F32, (None, None, None, None))
        n, h, w, c = x.shape
        if c < 1:
            raise ValueError(f"x: expected at least 1 channel, got shape {x.shape}")
        chk.array("thr", thr, chk.F32, (c,), contiguous=True)
        chk.array("out", out, WORD_DTYPE, (n, h, w, words_for(c)), writeable=True)
        chk.no_overlap([("out", out)], [("x", x), ("thr", thr)])
        threads = chk.integer("threads", threads, 1)
        if out.size:
            return self._call(bind, self._impl.pack, x, thr, out, threads)
        return self._call(bind, None)

    # ---- weights ---------------------------------------------------------
    def prepare_weights(self, w_packed, cin=None) -> PreparedWeights:
        """Rearrange packed weights once (at load time) for this backend.

        w_packed: word (Cout,KH,KW,Cw) in the bitpack convention (tail bits
        0), last axis contiguous.  cin: optional real input-channel count;
        when given, the tail bits are checked to be 0 and later calls check
        ``k_bits == KH*KW*cin``.  Returns a :class:`PreparedWeights` whose
        ``data`` is a new C-contiguous array in this backend's layout (so
        w_packed may be freed); only this backend may consume it.
        """
        cin = chk.packed_weights(w_packed, cin)
        w_packed = np.ascontiguousarray(w_packed)
        data = self._impl.prepare(w_packed)
        planes, wplanes = self._impl.prepare_planes(w_packed, cin)
        return PreparedWeights(*w_packed.shape, data=data, layout=self._impl.layout,
                               cin=cin, planes=planes, wplanes=wplanes)

    def _check_wp(self, wp):
        if isinstance(wp, PreparedWeights) and wp.layout != self._impl.layout:
            raise ValueError(f"wp: prepared for layout {wp.layout!r}, this backend "
                             f"({self.name}) expects {self._impl.layout!r}; call its "
                             f"prepare_weights")

    # ---- convolutions ----------------------------------------------------
    def bconv_float(self, x, wp, k_bits, stride, mult, bias, residual, rprelu, out,
                    out_bits=None, next_thr=None, threads=1, pool=False, scale=None, *, bind=False):
        """Valid binary conv with a float32 epilogue (+ optional fused pool, pack).

        acc[n,ho,wo,co] = k_bits - 2 * popcount(x[n, ho*s+i, wo*s+j, :] XOR w[co,i,j,:])
        summed over (i, j) < (KH, KW) and the Cw words; then, in float32, in
        this order (PyTorch's: conv * alpha, then batch-norm as one FMA):
            y = float(acc) * scale[co];  y = fma(y, mult[co], bias[co])
            y = y + residual[n,ho,wo, co % Cres]                  (if residual)
            y = (y-gamma)+zeta if y >= gamma else beta*(y-gamma)+zeta  (if rprelu)
        out[n,ho,wo,co] = y, and out_bits bit co = y < next_thr[co].

        pool=True fuses a 2x2 stride-2 max-pool (see maxpool2) before the
        stores: out[n,i,j,co] = max(max(y[2i,2j], y[2i,2j+1]),
        max(y[2i+1,2j], y[2i+1,2j+1])) and out_bits bit co = out < next_thr,
        with out/out_bits of shape (N, Ho//2, Wo//2, .); the residual keeps
        the conv resolution (N, Ho, Wo, Cres).  Bit-identical to bconv_float
        followed by maxpool2 and pack.

        x: word (N,Hp,Wp,Cw) with its zero-word (+1) border already in place;
           Ho = (Hp-KH)//stride + 1, Wo = (Wp-KW)//stride + 1.
        wp: PreparedWeights from this backend's prepare_weights.
        k_bits: int, KH*KW*Cin (real bits).   stride: int >= 1.
        mult, bias: float32 (Cout,) contiguous.
        scale: float32 (Cout,) contiguous, or None for all ones.
        residual: None or float32 (N,Ho,Wo,Cres) with Cout % Cres == 0.
        rprelu: None or a tuple (gamma, beta, zeta) of float32 (Cout,).
        out: float32 (N,Ho,Wo,Cout), writeable; may be None if out_bits is given.
        out_bits: None or word (N,Ho,Wo,words_for(Cout)), writeable.
        next_thr: float32 (Cout,), required with out_bits.
        All arrays: last axis contiguous; outputs must not overlap inputs.
        """
        self._check_wp(wp)
        n, ho, wo, k_bits, stride = chk.conv_geometry(x, wp, k_bits, stride)
        pool = chk.flag("pool", pool)
        oh, ow = (ho // 2, wo // 2) if pool else (ho, wo)
        cout = wp.cout
        chk.array("mult", mult, chk.F32, (cout,), contiguous=True)
        chk.array("bias", bias, chk.F32, (cout,), contiguous=True)
        if scale is None:
            scale = np.ones(cout, np.float32)
        chk.array("scale", scale, chk.F32, (cout,), contiguous=True)
        if residual is not None:
            chk.array("residual", residual, chk.F32, (n, ho, wo, None))
            cres = residual.shape[3]
            if cres < 1 or cout % cres:
                raise ValueError(f"residual: expected Cres dividing Cout={cout}, got {cres}")
        if rprelu is not None:
            if not isinstance(rprelu, (tuple, list)) or len(rprelu) != 3:
                raise ValueError("rprelu: expected None or a tuple (gamma, beta, zeta)")
            rprelu = RPReLU(*rprelu)
            for nm, a in zip(RPReLU._fields, rprelu):
                chk.array(f"rprelu.{nm}", a, chk.F32, (cout,), contiguous=True)
        chk.float_outputs(out, out_bits, next_thr, (n, oh, ow), cout)
        threads = chk.integer("threads", threads, 1)
        ins = [("x", x), ("residual", residual), ("scale", scale), ("mult", mult), ("bias", bias)]
        chk.no_overlap([("out", out), ("out_bits", out_bits)], ins)
        if n * oh * ow == 0:
            return self._call(bind, None)
        epilogue = Epilogue(scale, mult, bias, residual, rprelu,
                            next_thr if out_bits is not None else None)
        return self._call(bind, self._impl.bconv_float, x, wp, k_bits, stride, epilogue, out,
                          out_bits, threads, pool,
                          self._impl.call_path(wp, x.shape, stride, threads, pool))

    def bconv_bits(self, x, wp, k_bits, stride, thr, out, threads=1, *, bind=False):
        """Valid binary conv producing only packed bits.

        acc = k_bits - 2 * popcount(x XOR w) as in bconv_float;
        out bit co = acc < thr[co] (integer compare), tail bits 0.

        x: word (N,Hp,Wp,Cw) with its border in place.  wp: PreparedWeights.
        k_bits: int KH*KW*Cin.  stride: int >= 1.
        thr: int32 (Cout,) contiguous.
        out: word (N,Ho,Wo,words_for(Cout)), writeable, last axis contiguous
             (may be the interior view of the next layer's padded buffer).
        """
        self._check_wp(wp)
        n, ho, wo, k_bits, stride = chk.conv_geometry(x, wp, k_bits, stride)
        chk.array("thr", thr, chk.I32, (wp.cout,), contiguous=True)
        chk.array("out", out, WORD_DTYPE, (n, ho, wo, words_for(wp.cout)), writeable=True)
        chk.no_overlap([("out", out)], [("x", x), ("thr", thr)])
        threads = chk.integer("threads", threads, 1)
        if n * ho * wo == 0:
            return self._call(bind, None)
        return self._call(bind, self._impl.bconv_bits, x, wp, k_bits, stride, thr, out, threads,
                          self._impl.call_path(wp, x.shape, stride, threads, False))

    # ---- real-valued first layer -------------------------------------------
    def conv_float(self, x, w, bias, stride, relu, out, out_bits=None, next_thr=None,
                   threads=1, mult=None, *, bind=False):
        """Valid real-valued conv (direct, for a few input channels) + fused pack.

        acc = 0; for (i, j, c) in row-major order:
            acc = fma(x[n, ho*stride+i, wo*stride+j, c], w[i, j, c, co], acc)
        (float32, one rounding per tap: every backend rounds the same way, as
        does PyTorch's oneDNN conv on an FMA CPU; BLAS-based convs may differ
        in the last bits); then y = fma(acc, mult[co], bias[co]) (y = acc +
        bias[co] when mult is None); relu: y = y if (y > 0 or y is NaN) else 0.
        out[n,ho,wo,co] = y; out_bits bit co = y < next_thr[co].

        x: float32 (N,Hp,Wp,Cin), zero padding already in place.
        w: float32 (KH,KW,Cin,Cout), C-contiguous.  bias, mult: float32 (Cout,).
        stride: int >= 1.  relu: bool.
        out: float32 (N,Ho,Wo,Cout), writeable, or None if out_bits is given.
        out_bits: None or word (N,Ho,Wo,words_for(Cout)); next_thr float32
        (Cout,) then required.  Last axes contiguous; no overlaps.
        """
        chk.array("w", w, chk.F32, (None, None, None, None), contiguous=True)
        kh, kw, cin, cout = w.shape
        if min(w.shape) < 1:
            raise ValueError(f"w: expected a non-empty (KH,KW,Cin,Cout) array, got {w.shape}")
        chk.array("x", x, chk.F32, (None, None, None, cin))
        stride = chk.integer("stride", stride, 1)
        n = x.shape[0]
        ho, wo = chk.valid_output(x, kh, kw, stride)
        chk.array("bias", bias, chk.F32, (cout,), contiguous=True)
        if mult is not None:
            chk.array("mult", mult, chk.F32, (cout,), contiguous=True)
        relu = chk.flag("relu", relu)
        chk.float_outputs(out, out_bits, next_thr, (n, ho, wo), cout)
        threads = chk.integer("threads", threads, 1)
        chk.no_overlap([("out", out), ("out_bits", out_bits)],
                       [("x", x), ("w", w), ("bias", bias), ("mult", mult)])
        if n * ho * wo == 0:
            return self._call(bind, None)
        return self._call(bind, self._impl.conv_float, x, w, mult, bias, stride, relu, out,
                          out_bits, next_thr if out_bits is not None else None, threads)

    def fma_epilogue(self, y, mult, bias, relu, threads=1, *, bind=False):
        """The folded batch-norm epilogue of a real-valued conv, in place:
        y[r, c] = fma(y[r, c], mult[c], bias[c]) (float32, one rounding:
        ``floatmath.fma32``, C's ``fmaf``); relu: then y = max(y, 0) with
        ``np.maximum`` semantics (NaN kept, -0.0 -> +0.0).  With mult all
        ones this is y + bias exactly (y * 1 is exact).

        y: float32 (R, C), last axis contiguous, writeable (e.g. an im2col
        conv's output as (N*Ho*Wo, Cout)).  mult, bias: float32 (C,),
        contiguous, not overlapping y.  relu: bool.
        """
        chk.array("y", y, chk.F32, (None, None), writeable=True)
        c = y.shape[1]
        chk.array("mult", mult, chk.F32, (c,), contiguous=True)
        chk.array("bias", bias, chk.F32, (c,), contiguous=True)
        relu = chk.flag("relu", relu)
        chk.no_overlap([("y", y)], [("mult", mult), ("bias", bias)])
        threads = chk.integer("threads", threads, 1)
        if y.size:
            return self._call(bind, self._impl.fma_epilogue, y, mult, bias, relu, threads)
        return self._call(bind, None)

    # ---- pooling ---------------------------------------------------------
    def bmaxpool2(self, x, out, threads=1, *, bind=False):
        """2x2 stride-2 max-pool on packed bits: out = AND of the four words.

        (bit 1 = -1, so the max is -1 only when all four are -1.)
        x: word (N,H,W,Cw); out: word (N,H//2,W//2,Cw), writeable; both with
        the last axis contiguous (out may be a strided interior view).
        """
        chk.array("x", x, WORD_DTYPE, (None, None, None, None))
        n, h, w, cw = x.shape
        chk.array("out", out, WORD_DTYPE, (n, h // 2, w // 2, cw), writeable=True)
        chk.no_overlap([("out", out)], [("x", x)])
        threads = chk.integer("threads", threads, 1)
        if out.size:
            return self._call(bind, self._impl.bmaxpool2, x, out, threads)
        return self._call(bind, None)

    def maxpool2(self, x, out, threads=1, *, bind=False):
        """2x2 stride-2 max-pool, float32 NHWC, ``np.maximum`` semantics.

        out = max(max(x[2i,2j], x[2i,2j+1]), max(x[2i+1,2j], x[2i+1,2j+1])).
        x: float32 (N,H,W,C); out: float32 (N,H//2,W//2,C), writeable; last
        axis contiguous.
        """
        chk.array("x", x, chk.F32, (None, None, None, None))
        n, h, w, c = x.shape
        chk.array("out", out, chk.F32, (n, h // 2, w // 2, c), writeable=True)
        chk.no_overlap([("out", out)], [("x", x)])
        threads = chk.integer("threads", threads, 1)
        if out.size:
            return self._call(bind, self._impl.maxpool2, x, out, threads)
        return self._call(bind, None)

    # ---- input normalisation ---------------------------------------------
    def lookup_u8(self, x, table, out, *, bind=False):
        """out[..., c] = table[x[..., c], c]: one float32 per byte value and
        channel (the input normalisation of uint8 images, precomputed).

        x: uint8 (..., C); table: float32 (256, C); out: float32 of x's shape,
        writeable.  All C-contiguous.
        """
        if not isinstance(x, np.ndarray) or x.ndim < 1:
            raise ValueError(f"x: expected a uint8 array with channels last, got {type(x).__name__}")
        c = x.shape[-1]
        chk.array("x", x, chk.U8, (None,) * x.ndim, contiguous=True)
        chk.array("table", table, chk.F32, (256, c), contiguous=True)
        chk.array("out", out, chk.F32, x.shape, writeable=True, contiguous=True)
        chk.no_overlap([("out", out)], [("x", x), ("table", table)])
        if out.size:
            return self._call(bind, self._impl.lookup_u8, x, table, out)
        return self._call(bind, None)

