"""Kernel backend selector: one API, three implementations.

``get_backend(name=None)`` returns a :class:`Backend` whose methods have the
same signatures for every implementation:

* ``"cython"``: the compiled extension.  ``bnnlite._bconv_avx512`` when the CPU
  has AVX512F/BW/VL/DQ + AVX512VPOPCNTDQ + FMA, else ``bnnlite._bconv_avx2``
  when it has AVX2 + POPCNT + FMA, else ``bnnlite._bconv_neon`` on ARM64,
  else ``bnnlite._bconv_generic`` (a variant that is not built is skipped;
  setup.py builds the x86 ones on x86-64 only, the NEON one on aarch64 only).
  The CPU is asked through the compiled probe ``bnnlite._cpu``.
  ``"cython-avx512"`` / ``"cython-avx2"`` / ``"cython-neon"`` /
  ``"cython-generic"`` force one build.  Inside a build, the path of each
  binary conv (bit planes, weight planes or popcount core) is the kernels'
  choice (kernels/bconv_select.h; bnnlite/_planes.py prepares its data).
* ``"numba"``: ``bnnlite._numba_kernels`` (numba, the optional extra
  ``bnnlite[numba]``, is imported only then).
* ``"numpy"``: ``bnnlite.reference`` (slow, the test oracle).

Default: cython, else numba (with a one-line warning when the extension is
missing), else an ImportError that names the extra to install.
``BNNLITE_BACKEND=cython|numba|numpy`` forces one; forcing an unavailable
one raises ImportError.

This layer checks every user-facing array (dtype, shape, last axis
contiguous, no overlap between outputs and inputs) and raises ValueError
naming the bad value and the expected one; the kernels below check nothing.
Importing this module is cheap: no extension, no numba, no compilation.

Public names: get_backend, available_backends, Backend, PreparedWeights,
BACKEND_NAMES, ENV_VAR, NUMBA_EXTRA.
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings

import numpy as np

from . import _planes
from .bitpack import WORD_BITS, WORD_DTYPE, words_for

__all__ = ["get_backend", "available_backends", "Backend", "PreparedWeights",
           "BACKEND_NAMES", "ENV_VAR", "NUMBA_EXTRA"]

ENV_VAR = "BNNLITE_BACKEND"
#: Names accepted by get_backend / $BNNLITE_BACKEND.
BACKEND_NAMES = ("cython", "numba", "numpy", "cython-avx512", "cython-avx2",
                 "cython-neon", "cython-generic")
#: The pip extra that installs numba (pyproject.toml).
NUMBA_EXTRA = "numba"
_F32 = np.dtype(np.float32)
_I32 = np.dtype(np.int32)
# The bit-plane paths' data (kernels/planes_avx2.h, wplanes_avx2.h), made and
# chosen in bnnlite/_planes.py; these names are what tests and tools reach.
_plane_lists = _planes.plane_lists
_weight_planes = _planes.weight_planes


# --------------------------------------------------------------------------
# Prepared weights
# --------------------------------------------------------------------------
class PreparedWeights:
    """Weights rearranged once (at load time) for one backend's inner loop.

    ``data`` is an opaque C-contiguous word array in the backend's own layout
    (``layout`` names it); ``cout, kh, kw, cw`` describe the original
    (Cout, KH, KW, Cw) bitpack array; ``cin`` the real input channels if
    they were given to prepare_weights (else None).  ``planes``: the
    plane lists of the bit-plane conv (a ``_planes.PlaneLists``), and
    ``wplanes`` the weight planes of its small-output path (a
    ``_planes.WeightPlanes``), when the backend has them and the layer fits
    them, else None (then the popcount core runs; setting them to None
    forces that).  Which one a call uses: ``_planes.call_path``.  Only the backend that made it may consume it (checked by
    ``layout``).
    """

    __slots__ = ("cout", "kh", "kw", "cw", "data", "layout", "cin", "planes", "wplanes")

    def __init__(self, cout, kh, kw, cw, data, layout, cin=None, planes=None, wplanes=None):
        self.cout, self.kh, self.kw, self.cw = int(cout), int(kh), int(kw), int(cw)
        self.data = data
        self.layout = layout
        self.cin = None if cin is None else int(cin)
        self.planes = planes
        self.wplanes = wplanes

    @property
    def shape(self):
        """The (Cout, KH, KW, Cw) shape of the packed weights it came from."""
        return (self.cout, self.kh, self.kw, self.cw)

    def __repr__(self):
        return (f"PreparedWeights(cout={self.cout}, kh={self.kh}, kw={self.kw}, "
                f"cw={self.cw}, layout={self.layout!r})")


def _aligned_empty(n_words: int) -> np.ndarray:
    """A zeroed 1-D word array whose data pointer is 64-byte aligned (the
    512-bit weight loads never split a cache line)."""
    return _planes.aligned_bytes(n_words * WORD_DTYPE.itemsize).view(WORD_DTYPE)


def _blocked_layout(w: np.ndarray, lanes: int, block: int) -> np.ndarray:
    """(Cout,KH,KW,Cw) -> output-channel blocks with the channels innermost.

    Cout is padded with zero words to a multiple of ``lanes``; block b holds
    channels [b*block, b*block + width) as (KH, KW, Cw, width) with
    width = block except for the last block (a multiple of lanes), so one
    vector load reads the same word of ``lanes`` consecutive channels.  The
    pad channels compute garbage that is never stored.
    """
    cout, kh, kw, cw = w.shape
    cpad = -(-cout // lanes) * lanes
    wpad = np.zeros((cpad, kh, kw, cw), WORD_DTYPE)
    wpad[:cout] = w
    data = _aligned_empty(cpad * kh * kw * cw)
    pos = 0
    for c0 in range(0, cpad, block):
        blk = wpad[c0:c0 + block].transpose(1, 2, 3, 0).reshape(-1)
        data[pos:pos + blk.size] = blk
        pos += blk.size
    return data


# --------------------------------------------------------------------------
# Implementations (each a thin adapter over an unchecked kernel module)
# --------------------------------------------------------------------------
def _passive_openmp():
    """Let idle OpenMP workers sleep instead of spin (unless the user chose).

    libgomp reads OMP_WAIT_POLICY once, when it is loaded, i.e. when the
    first kernel module is imported.  On a shared machine a spinning worker
    steals the core from the thread doing the work (measured: threads=2 ran
    2x slower than threads=1 next to a training job; passive: no loss); the
    cost is a few microseconds of wake-up per kernel call.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _CythonImpl:
    concurrent_calls = True  # plain C + OpenMP, no shared state between calls

    def __init__(self, module_name: str, variant: str):
        _passive_openmp()
        self.mod = importlib.import_module(module_name)
        if self.mod.WORD_BITS_C != WORD_BITS:  # kernels/_bitpack.pxd drifted
            raise ImportError(f"{module_name} was built with {self.mod.WORD_BITS_C}-bit "
                              f"words, bitpack.WORD_BITS is {WORD_BITS}; rebuild it")
        self.variant = variant
        self.layout = f"cython-b{self.mod.CO_BLOCK}-l{self.mod.LANES}"

    def prepare(self, w):
        return _blocked_layout(w, self.mod.LANES, self.mod.CO_BLOCK)

    def prepare_planes(self, w, cin):
        """(plane lists, weight planes) of the bit-plane conv, each None where
        the build lacks it or the layer does not fit it."""
        return _planes.prepare(self.mod, w, cin)

    def pack(self, x, thr, out, threads):
        self.mod.pack_raw(x, thr, out, threads)

    def bconv_scratch(self, x, pw, stride, threads, pool):
        """(plane lists, workspace, weight planes) of this call's path (see
        ``_planes.call_path``)."""
        return _planes.call_path(self.mod, pw, x.shape, stride, threads, pool)

    def bconv(self, x, pw, k_bits, stride, scale, mult, bias, residual, rprelu, out,
              out_bits, next_thr, thr, threads, pool=False, planes=None, ws=None, wplanes=None):
        g, b, z = rprelu if rprelu is not None else (None, None, None)
        self.mod.bconv_raw(x, pw.data, pw.kh, pw.kw, pw.cw, pw.cout, k_bits, stride,
                           scale, mult, bias, residual, g, b, z, out, out_bits, next_thr,
                           thr, threads, pool, planes, ws, wplanes)

    def conv_float(self, x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads):
        kh, kw, cin, cout = w.shape
        self.mod.fconv_raw(x, w.reshape(-1), kh, kw, cin, cout, stride, mult, bias, relu, out,
                           out_bits, next_thr, threads)

    def bmaxpool2(self, x, out, threads):
        self.mod.bmaxpool2_raw(x, out, threads)

    def maxpool2(self, x, out, threads):
        self.mod.maxpool2_raw(x, out, threads)

    def lookup_u8(self, x, table, out):
        c = table.shape[1]
        self.mod.lookup_u8_raw(x.reshape(-1, c), table, out.reshape(-1, c))


class _NumbaImpl:
    variant = "numba"

    def __init__(self):
        _passive_openmp()  # numba's default threading layer here is OpenMP
        self.mod = importlib.import_module("bnnlite._numba_kernels")
        self.layout = self.mod.LAYOUT
        # numba's "workqueue" threading layer terminates the process when two
        # threads launch parallel kernels at once ("omp" and "tbb" do not); the
        # layer is chosen at the first parallel launch, so make one now.
        self.mod.pack(np.zeros((1, 1, 1, 1), np.float32), np.zeros(1, np.float32),
                      np.zeros((1, 1, 1, 1), WORD_DTYPE), 1)
        import numba
        self.concurrent_calls = numba.threading_layer() in ("omp", "tbb")
        self._reference = importlib.import_module("bnnlite.reference")  # NumPy is as fast for these

    def prepare(self, w):
        return _blocked_layout(w, self.mod.CO_BLOCK, self.mod.CO_BLOCK)

    def pack(self, x, thr, out, threads):
        self.mod.pack(x, thr, out, threads)

    def bconv(self, x, pw, k_bits, stride, scale, mult, bias, residual, rprelu, out,
              out_bits, next_thr, thr, threads, pool=False):
        self.mod.bconv(x, pw.data, pw.cout, pw.kh, pw.kw, pw.cw, k_bits, stride,
                       scale, mult, bias, residual, rprelu, out, out_bits, next_thr, thr,
                       threads, pool)

    def conv_float(self, x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads):
        self.mod.conv_float(x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads)

    def bmaxpool2(self, x, out, threads):
        self.mod.bmaxpool2(x, out, threads)

    def maxpool2(self, x, out, threads):
        self.mod.maxpool2(x, out, threads)

    def lookup_u8(self, x, table, out):
        self._reference.lookup_u8(x, table, out)


class _NumpyImpl:
    variant = "numpy"
    concurrent_calls = False  # NumPy loops that hold the GIL: threads would only queue

    def __init__(self):
        self.mod = importlib.import_module("bnnlite.reference")
        self.layout = self.mod.LAYOUT

    def prepare(self, w):
        return self.mod.prepare_weights(w)

    def pack(self, x, thr, out, threads):
        self.mod.pack(x, thr, out)

    def bconv(self, x, pw, k_bits, stride, scale, mult, bias, residual, rprelu, out,
              out_bits, next_thr, thr, threads, pool=False):
        w = pw.data.reshape(pw.shape)
        if thr is not None:
            self.mod.bconv_bits(x, w, k_bits, stride, thr, out_bits)
            return
        if out is None:  # the reference always produces the floats
            out = np.empty(out_bits.shape[:3] + (pw.cout,), np.float32)
        self.mod.bconv_float(x, w, k_bits, stride, mult, bias, residual, rprelu,
                             out, out_bits, next_thr, pool=pool, scale=scale)

    def conv_float(self, x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads):
        self.mod.conv_float(x, w, bias, stride, relu, out, out_bits, next_thr, mult=mult)

    def bmaxpool2(self, x, out, threads):
        self.mod.bmaxpool2(x, out)

    def maxpool2(self, x, out, threads):
        self.mod.maxpool2(x, out)

    def lookup_u8(self, x, table, out):
        self.mod.lookup_u8(x, table, out)


# --------------------------------------------------------------------------
# Validation helpers (ValueError naming the bad value and the expected one)
# --------------------------------------------------------------------------
def _arr(name, a, dtype, shape, *, writeable=False, contiguous=False):
    """Check one array; ``shape`` entries that are None are not checked."""
    if not isinstance(a, np.ndarray):
        raise ValueError(f"{name}: expected a numpy.ndarray, got {type(a).__name__}")
    if a.dtype != dtype:
        raise ValueError(f"{name}: expected dtype {dtype}, got {a.dtype}")
    if a.ndim != len(shape) or any(e is not None and e != s for e, s in zip(shape, a.shape)):
        want = "(" + ", ".join("?" if e is None else str(e) for e in shape) + ")"
        raise ValueError(f"{name}: expected shape {want}, got {a.shape}")
    if contiguous:
        if not a.flags.c_contiguous:
            raise ValueError(f"{name}: expected a C-contiguous array, got strides {a.strides}")
    elif a.shape[-1] > 1 and a.strides[-1] != a.itemsize:
        raise ValueError(f"{name}: the last axis must be contiguous (stride "
                         f"{a.itemsize}), got strides {a.strides}")
    if not a.flags.aligned:
        raise ValueError(f"{name}: expected an aligned array")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name}: expected a writeable array")
    return a


def _int(name, v, lo):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    if v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v}")
    return int(v)


def _check_float_outputs(out, out_bits, next_thr, nhw, cout):
    """The outputs of a float-mode conv: floats, packed bits (with their thresholds), or both."""
    if out is None and out_bits is None:
        raise ValueError("out: expected a float32 (N,Ho,Wo,Cout) array (None is "
                         "allowed only when out_bits is given)")
    if out is not None:
        _arr("out", out, _F32, (*nhw, cout), writeable=True)
    if out_bits is not None:
        _arr("out_bits", out_bits, WORD_DTYPE, (*nhw, words_for(cout)), writeable=True)
        if next_thr is None:
            raise ValueError("next_thr: expected float32 (Cout,) with out_bits, got None")
        _arr("next_thr", next_thr, _F32, (cout,), contiguous=True)


def _no_overlap(outputs, inputs):
    for on, o in outputs:
        if o is None:
            continue
        for iname, i in inputs:
            if i is not None and np.may_share_memory(o, i):
                raise ValueError(f"{on} overlaps {iname}: expected separate buffers")


def _conv_geometry(x, pw, k_bits, stride):
    if not isinstance(pw, PreparedWeights):
        raise ValueError(f"wp: expected PreparedWeights from prepare_weights, got "
                         f"{type(pw).__name__}")
    _arr("x", x, WORD_DTYPE, (None, None, None, pw.cw))
    stride = _int("stride", stride, 1)
    k_bits = _int("k_bits", k_bits, 1)
    taps = pw.kh * pw.kw
    if pw.cin is not None and k_bits != taps * pw.cin:
        raise ValueError(f"k_bits: expected KH*KW*cin = {taps * pw.cin}, got {k_bits}")
    if k_bits % taps or words_for(k_bits // taps) != pw.cw:
        raise ValueError(f"k_bits: expected KH*KW*Cin with words_for(Cin) == {pw.cw} "
                         f"(KH*KW = {taps}), got {k_bits}")
    n, hp, wp_, _ = x.shape
    if hp < pw.kh or wp_ < pw.kw:
        raise ValueError(f"x: expected a (padded) input of at least {pw.kh}x{pw.kw} "
                         f"pixels, got {hp}x{wp_}")
    return n, (hp - pw.kh) // stride + 1, (wp_ - pw.kw) // stride + 1, k_bits, stride


def _nothing():
    pass


# --------------------------------------------------------------------------
# The public object
# --------------------------------------------------------------------------
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
        _arr("x", x, _F32, (None, None, None, None))
        n, h, w, c = x.shape
        if c < 1:
            raise ValueError(f"x: expected at least 1 channel, got shape {x.shape}")
        _arr("thr", thr, _F32, (c,), contiguous=True)
        _arr("out", out, WORD_DTYPE, (n, h, w, words_for(c)), writeable=True)
        _no_overlap([("out", out)], [("x", x), ("thr", thr)])
        threads = _int("threads", threads, 1)
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
        _arr("w_packed", w_packed, WORD_DTYPE, (None, None, None, None))
        if min(w_packed.shape) < 1:
            raise ValueError(f"w_packed: expected a non-empty (Cout,KH,KW,Cw) array, "
                             f"got shape {w_packed.shape}")
        cw = w_packed.shape[3]
        if cin is not None:
            cin = _int("cin", cin, 1)
            if words_for(cin) != cw:
                raise ValueError(f"cin: expected a channel count with words_for(cin) == "
                                 f"Cw = {cw}, got {cin}")
            tail = cw * WORD_BITS - cin
            if tail and np.any(w_packed[..., -1] >> WORD_DTYPE.type(WORD_BITS - tail)):
                raise ValueError(f"w_packed: tail bits (channels >= {cin}) must be 0")
        w_packed = np.ascontiguousarray(w_packed)
        data = self._impl.prepare(w_packed)
        planes, wplanes = getattr(self._impl, "prepare_planes", lambda w, c: (None, None))(w_packed, cin)
        return PreparedWeights(*w_packed.shape, data=data, layout=self._impl.layout,
                               cin=cin, planes=planes, wplanes=wplanes)

    def _scratch(self, x, wp, stride, threads, pool):
        """Extra arguments of the implementation's bconv: its scratch, if it has any."""
        make = getattr(self._impl, "bconv_scratch", None)
        return () if make is None else make(x, wp, stride, threads, pool)

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
        n, ho, wo, k_bits, stride = _conv_geometry(x, wp, k_bits, stride)
        if not isinstance(pool, (bool, np.bool_)):
            raise ValueError(f"pool: expected True or False, got {pool!r}")
        pool = bool(pool)
        oh, ow = (ho // 2, wo // 2) if pool else (ho, wo)
        cout = wp.cout
        _arr("mult", mult, _F32, (cout,), contiguous=True)
        _arr("bias", bias, _F32, (cout,), contiguous=True)
        if scale is None:
            scale = np.ones(cout, np.float32)
        _arr("scale", scale, _F32, (cout,), contiguous=True)
        if residual is not None:
            _arr("residual", residual, _F32, (n, ho, wo, None))
            cres = residual.shape[3]
            if cres < 1 or cout % cres:
                raise ValueError(f"residual: expected Cres dividing Cout={cout}, got {cres}")
        if rprelu is not None:
            if not isinstance(rprelu, (tuple, list)) or len(rprelu) != 3:
                raise ValueError("rprelu: expected None or a tuple (gamma, beta, zeta)")
            rprelu = tuple(rprelu)
            for nm, a in zip(("gamma", "beta", "zeta"), rprelu):
                _arr(f"rprelu.{nm}", a, _F32, (cout,), contiguous=True)
        _check_float_outputs(out, out_bits, next_thr, (n, oh, ow), cout)
        threads = _int("threads", threads, 1)
        ins = [("x", x), ("residual", residual), ("scale", scale), ("mult", mult), ("bias", bias)]
        _no_overlap([("out", out), ("out_bits", out_bits)], ins)
        if out is not None and out_bits is not None and np.may_share_memory(out, out_bits):
            raise ValueError("out overlaps out_bits: expected separate buffers")
        if n * oh * ow == 0:
            return self._call(bind, None)
        return self._call(bind, self._impl.bconv, x, wp, k_bits, stride, scale, mult, bias,
                          residual, rprelu, out, out_bits,
                          next_thr if out_bits is not None else None, None, threads, pool,
                          *self._scratch(x, wp, stride, threads, pool))

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
        n, ho, wo, k_bits, stride = _conv_geometry(x, wp, k_bits, stride)
        _arr("thr", thr, _I32, (wp.cout,), contiguous=True)
        _arr("out", out, WORD_DTYPE, (n, ho, wo, words_for(wp.cout)), writeable=True)
        _no_overlap([("out", out)], [("x", x), ("thr", thr)])
        threads = _int("threads", threads, 1)
        if n * ho * wo == 0:
            return self._call(bind, None)
        return self._call(bind, self._impl.bconv, x, wp, k_bits, stride, None, None, None, None,
                          None, None, out, None, thr, threads, False,
                          *self._scratch(x, wp, stride, threads, False))

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
        _arr("w", w, _F32, (None, None, None, None), contiguous=True)
        kh, kw, cin, cout = w.shape
        if min(w.shape) < 1:
            raise ValueError(f"w: expected a non-empty (KH,KW,Cin,Cout) array, got {w.shape}")
        _arr("x", x, _F32, (None, None, None, cin))
        stride = _int("stride", stride, 1)
        n, hp, wp_, _ = x.shape
        if hp < kh or wp_ < kw:
            raise ValueError(f"x: expected a (padded) input of at least {kh}x{kw} pixels, "
                             f"got {hp}x{wp_}")
        ho, wo = (hp - kh) // stride + 1, (wp_ - kw) // stride + 1
        _arr("bias", bias, _F32, (cout,), contiguous=True)
        if mult is not None:
            _arr("mult", mult, _F32, (cout,), contiguous=True)
        if not isinstance(relu, (bool, np.bool_)):
            raise ValueError(f"relu: expected True or False, got {relu!r}")
        _check_float_outputs(out, out_bits, next_thr, (n, ho, wo), cout)
        threads = _int("threads", threads, 1)
        _no_overlap([("out", out), ("out_bits", out_bits)],
                    [("x", x), ("w", w), ("bias", bias), ("mult", mult)])
        if out is not None and out_bits is not None and np.may_share_memory(out, out_bits):
            raise ValueError("out overlaps out_bits: expected separate buffers")
        if n * ho * wo == 0:
            return self._call(bind, None)
        return self._call(bind, self._impl.conv_float, x, w, mult, bias, stride, bool(relu), out,
                          out_bits, next_thr if out_bits is not None else None, threads)

    # ---- pooling ---------------------------------------------------------
    def bmaxpool2(self, x, out, threads=1, *, bind=False):
        """2x2 stride-2 max-pool on packed bits: out = AND of the four words.

        (bit 1 = -1, so the max is -1 only when all four are -1.)
        x: word (N,H,W,Cw); out: word (N,H//2,W//2,Cw), writeable; both with
        the last axis contiguous (out may be a strided interior view).
        """
        _arr("x", x, WORD_DTYPE, (None, None, None, None))
        n, h, w, cw = x.shape
        _arr("out", out, WORD_DTYPE, (n, h // 2, w // 2, cw), writeable=True)
        _no_overlap([("out", out)], [("x", x)])
        threads = _int("threads", threads, 1)
        if out.size:
            return self._call(bind, self._impl.bmaxpool2, x, out, threads)
        return self._call(bind, None)

    def maxpool2(self, x, out, threads=1, *, bind=False):
        """2x2 stride-2 max-pool, float32 NHWC, ``np.maximum`` semantics.

        out = max(max(x[2i,2j], x[2i,2j+1]), max(x[2i+1,2j], x[2i+1,2j+1])).
        x: float32 (N,H,W,C); out: float32 (N,H//2,W//2,C), writeable; last
        axis contiguous.
        """
        _arr("x", x, _F32, (None, None, None, None))
        n, h, w, c = x.shape
        _arr("out", out, _F32, (n, h // 2, w // 2, c), writeable=True)
        _no_overlap([("out", out)], [("x", x)])
        threads = _int("threads", threads, 1)
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
        _arr("x", x, np.dtype(np.uint8), (None,) * x.ndim, contiguous=True)
        _arr("table", table, _F32, (256, c), contiguous=True)
        _arr("out", out, _F32, x.shape, writeable=True, contiguous=True)
        _no_overlap([("out", out)], [("x", x), ("table", table)])
        if out.size:
            return self._call(bind, self._impl.lookup_u8, x, table, out)
        return self._call(bind, None)


# --------------------------------------------------------------------------
# Selection
# --------------------------------------------------------------------------
_CACHE: dict[str, Backend] = {}
_warned_fallback = False


#: Compiled variants, fastest first, with the CPU features each needs (the
#: -m flags setup.py builds it with, in GCC's names).
_CYTHON_VARIANTS = {"avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vpopcntdq",
                               "fma"),
                    "avx2": ("avx2", "popcnt", "fma"),
                    "neon": ("neon",),       # aarch64 (setup.py builds it there only)
                    "generic": ()}


def _cpu_has(features) -> bool:
    """All of ``features``, as the compiled probe bnnlite._cpu (built
    without -m flags, kernels/cpu_features.h) sees this CPU; False when the
    probe is not built or cannot tell (then only the generic build runs)."""
    if not features:
        return True
    try:
        cpu = importlib.import_module(f"{__package__}._cpu")
    except ImportError:
        return False
    return all(cpu.has(f) for f in features)


def _cpu_has_avx512() -> bool:
    return _cpu_has(_CYTHON_VARIANTS["avx512"])


def _cpu_has_avx2() -> bool:
    return _cpu_has(_CYTHON_VARIANTS["avx2"])


def _cpu_has_neon() -> bool:
    return _cpu_has(_CYTHON_VARIANTS["neon"])


def _cpu_supports(variant) -> bool:
    # Through the module-level names, so tests can pretend to be another CPU.
    return {"avx512": _cpu_has_avx512, "avx2": _cpu_has_avx2,
            "neon": _cpu_has_neon}.get(variant, lambda: True)()


def _cython_variant(variant):
    return _CythonImpl(f"bnnlite._bconv_{variant}", variant)


def _load(name: str) -> Backend:
    if name in _CACHE:
        return _CACHE[name]
    if name == "cython":
        impl = None
        for variant in _CYTHON_VARIANTS:  # the fastest one the CPU runs and the build has
            if impl is None and _cpu_supports(variant):
                try:
                    impl = _cython_variant(variant)
                except ImportError as exc:
                    missing = exc
        if impl is None:
            raise ImportError(
                "bnnlite: the Cython kernels (bnnlite._bconv_generic / _bconv_avx2 "
                "/ _bconv_avx512 / _bconv_neon) are not built; run `pip install -e .` or "
                "`python setup.py build_ext --inplace` with a C compiler, "
                f"or use BNNLITE_BACKEND=numba ({missing})") from missing
    elif name.startswith("cython-"):
        variant = name[len("cython-"):]
        if not _cpu_supports(variant):
            feats = [f.upper() for f in _CYTHON_VARIANTS[variant]]
            need = " and ".join(filter(None, (", ".join(feats[:-1]), feats[-1])))
            raise RuntimeError(f"bnnlite: {name} needs a CPU with {need}; "
                               "use 'cython'")
        try:
            impl = _cython_variant(variant)
        except ImportError as exc:
            raise ImportError(f"bnnlite: bnnlite._bconv_{variant} is not built ({exc})") from exc
    elif name == "numba":
        try:
            impl = _NumbaImpl()
        except ImportError as exc:
            raise ImportError(f"bnnlite: the numba backend needs numba: pip install "
                              f"'bnnlite[{NUMBA_EXTRA}]' ({exc})") from exc
    else:
        impl = _NumpyImpl()
    be = Backend("cython" if name.startswith("cython") else name, impl)
    _CACHE[name] = be
    return be


def _check_name(name) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKEND_NAMES:
        raise ValueError(f"bnnlite backend: unknown name {name!r}; expected one of "
                         f"{', '.join(BACKEND_NAMES)}")
    return name.strip().lower()


def get_backend(name: str | None = None) -> Backend:
    """Return the kernel backend ``name`` (or the best available one).

    name: None (cython, else numba, unless $BNNLITE_BACKEND names one), or
    one of BACKEND_NAMES.  Raises ValueError for an unknown name and
    ImportError/RuntimeError when a forced backend is not available, or
    when neither cython nor numba is (the message names the extra).  Backends are cached, so repeated calls are cheap.
    """
    global _warned_fallback
    if name is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            return _load(_check_name(env))
        try:
            return _load("cython")
        except ImportError as exc:
            why = str(exc).splitlines()[0]
        try:
            be = _load("numba")
        except ImportError as exc:
            raise ImportError(
                f"bnnlite: no kernels to run: the compiled ones are missing ({why}) and numba "
                f"is not installed.  Install the numba fallback with pip install "
                f"'bnnlite[{NUMBA_EXTRA}]', or build the compiled kernels (pip install . with "
                f"a C compiler), or set {ENV_VAR}=numpy for the slow NumPy reference") from exc
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"bnnlite: Cython kernels unavailable, using numba (slower): {why}",
                          RuntimeWarning, stacklevel=2)
        return be
    return _load(_check_name(name))


def available_backends() -> list[str]:
    """Names in BACKEND_NAMES that load on this machine (imports them)."""
    ok = []
    for name in BACKEND_NAMES:
        try:
            _load(name)
        except (ImportError, RuntimeError):
            continue
        ok.append(name)
    return ok
