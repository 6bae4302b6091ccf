"""numba fallback of bnnlite's binary kernels (used when the Cython build is
missing).  Importing this module compiles the kernels (eagerly, with explicit
signatures, so one machine code version serves contiguous and strided
arrays alike; ``cache=True`` keeps it on disk, in the user's cache: see
_cache_dir), so only its adapter (``numba_impl``) imports it, and only when
the numba backend is asked for.  numba is an optional extra (``bnnlite[numba]``).

Unchecked: ``api.Backend`` validates every argument first.

Formula (same as the Cython kernels and the NumPy oracle, ``reference``):
    acc = k_bits - 2 * popcount(x XOR w) summed over (KH, KW, Cw)
    float mode: y = float32(acc) * scale[co]; y = fma(y, mult[co], bias[co]);
                y = y + residual[..., co % Cres];
                y = (y-gamma)+zeta if y >= gamma else beta*(y-gamma)+zeta
                (numba contracts nothing into an FMA without fastmath; the
                one fma is LLVM's llvm.fma intrinsic, see fma32)
    bits mode:  bit co = acc < thr[co]

Weight layout (LAYOUT): Cout padded with zero words to a multiple of
CO_BLOCK, then blocks of CO_BLOCK output channels, each (KH, KW, Cw,
CO_BLOCK) with the channels innermost, flattened.  The kernel reads it as
rows of CO_BLOCK words (wdata[row, l]: an index from a range needs no
negative-index check, so the l loop is plain vector loads), and LLVM
vectorises the popcounts over l: vpopcntq on AVX-512, a vpshufb nibble
lookup + vpsadbw per 4 words on AVX2.  CO_BLOCK = 64 (rather than 32)
halves the per-word loop overhead (x loads, LLVM's alias checks).

Public names: pack, bconv_float, bconv_bits, conv_float, fma_epilogue, bmaxpool2,
maxpool2, popcount, fma32, CO_BLOCK, P, LAYOUT.
"""
from __future__ import annotations

import os

import numba
import numpy as np
from numba import njit, prange, types
from numba.extending import intrinsic

from ..bitpack import WORD_BITS

__all__ = ["pack", "bconv_float", "bconv_bits", "conv_float", "fma_epilogue", "bmaxpool2",
           "maxpool2", "popcount", "fma32", "CO_BLOCK", "P", "LAYOUT"]

#: Output channels per weight block (innermost, contiguous; one row).
CO_BLOCK = 64
#: Output pixels per register tile (each weight word is reused P times).
P = 4
LAYOUT = f"numba-b{CO_BLOCK}"



def _cache_dir() -> str:
    """Where numba keeps these kernels' machine code: $XDG_CACHE_HOME (or
    ~/.cache)/bnnlite/numba.  Never numba's default, a __pycache__ beside
    this file: in an installed package that folder outlives ``pip
    uninstall`` (pip removes only the files it installed), and a later
    editable install then imports the leftover folder as an empty namespace
    package (``module 'bnnlite' has no attribute 'Model'``: the README's
    quick start, a bench run then ``pip install -e``)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "bnnlite", "numba")


# numba fixes a function's cache folder when it is decorated, from
# config.CACHE_DIR ($NUMBA_CACHE_DIR): set it for the decorators below (unless
# the user chose one) and give the value back at the end of this module.
_USER_CACHE_DIR = numba.config.CACHE_DIR
if not _USER_CACHE_DIR:
    numba.config.CACHE_DIR = _cache_dir()

_WB = np.uint64(WORD_BITS)
_ONE = np.uint64(1)
_ZERO = np.uint64(0)


@intrinsic
def popcount(typingctx, x):
    """popcount of a uint64 as int64, lowered to LLVM's ctpop (-> popcnt /
    vpopcntq when vectorised)."""
    if isinstance(x, types.Integer) and x.bitwidth == WORD_BITS:
        def codegen(context, builder, sig, args):
            return builder.ctpop(args[0])
        return types.int64(x), codegen
    return None


@intrinsic
def fma32(typingctx, a, b, c):
    """float32 a * b + c with one rounding (LLVM's llvm.fma: the vfmadd
    instruction, or a correctly rounded libm call on a CPU without FMA)."""
    if all(t == types.float32 for t in (a, b, c)):
        def codegen(context, builder, sig, args):
            return builder.fma(*args)
        return types.float32(types.float32, types.float32, types.float32), codegen
    return None


def _arr(dtype, ndim, layout="A", readonly=False):
    return types.Array(dtype, ndim, layout, readonly=readonly)


_W4R = _arr(types.uint64, 4, readonly=True)
_W4 = _arr(types.uint64, 4)
_F4R = _arr(types.float32, 4, readonly=True)
_F4 = _arr(types.float32, 4)
_F1R = _arr(types.float32, 1, "C", readonly=True)
_I1R = _arr(types.int32, 1, "C", readonly=True)
_W1R = _arr(types.uint64, 1, "C", readonly=True)
_OPTS = dict(parallel=True, cache=True, nogil=True, fastmath=False)


@njit(types.void(_F4R, _F1R, _W4), **_OPTS)
def _pack(x, thr, out):
    n, h, w, c = x.shape
    nw = out.shape[3]
    for r in prange(n * h):
        i = r // h
        j = r - i * h
        for k in range(w):
            for q in range(nw):
                c0 = q * WORD_BITS
                bits = _ZERO
                for l in range(min(WORD_BITS, c - c0)):
                    if x[i, j, k, c0 + l] < thr[c0 + l]:
                        bits |= _ONE << np.uint64(l)
                out[i, j, k, q] = bits


@njit(inline="always")
def _fmax(a, b):
    # np.maximum semantics: NaN propagates, ties (0.0 vs -0.0) give b.
    return a if (a > b or a != a) else b


@njit(inline="always")
def _tile4(x, wdata, acc, n, h0, w0, stride, idx, kh, kw, cw):
    """acc[p, l] += popcount(x XOR w) for P=4 pixels (w0 + p*stride) and the
    CO_BLOCK channels of the block starting at row idx of wdata: each weight
    word is loaded once for the four pixels."""
    for i in range(kh):
        for j in range(kw):
            for c in range(cw):
                x0 = x[n, h0 + i, w0 + j, c]
                x1 = x[n, h0 + i, w0 + stride + j, c]
                x2 = x[n, h0 + i, w0 + 2 * stride + j, c]
                x3 = x[n, h0 + i, w0 + 3 * stride + j, c]
                for l in range(CO_BLOCK):  # vectorised by LLVM (see module doc)
                    wv = wdata[idx, l]
                    acc[0, l] += popcount(x0 ^ wv)
                    acc[1, l] += popcount(x1 ^ wv)
                    acc[2, l] += popcount(x2 ^ wv)
                    acc[3, l] += popcount(x3 ^ wv)
                idx += 1


@njit(inline="always")
def _tile1(x, wdata, acc, p, n, h0, w0, idx, kh, kw, cw):
    """Single-pixel version of _tile4 for the right edge of a row."""
    for i in range(kh):
        for j in range(kw):
            for c in range(cw):
                xv = x[n, h0 + i, w0 + j, c]
                for l in range(CO_BLOCK):
                    acc[p, l] += popcount(xv ^ wdata[idx, l])
                idx += 1


@njit(nogil=True, cache=True)
def _conv_row(x, wdata, cout, kh, kw, cw, k_bits, stride, mode_bits,
              scale, mult, bias, has_res, res, has_rp, gamma, beta, zeta,
              has_out, out, has_bits, bits, nthr, ithr, n, ho, wo_n, ridx,
              out_n, out_h, acc, wbits, y32):
    """One conv output row (n, ho), pixels 0 .. wo_n-1: floats to
    out[out_n, out_h, wo, :] (if has_out), bits to bits[out_n, out_h, wo, :]
    (if has_bits); the residual is read at res[n, ho, wo, :]."""
    nblk = (cout + CO_BLOCK - 1) // CO_BLOCK
    wblk = kh * kw * cw  # rows of CO_BLOCK words per block
    wdata = wdata.reshape(-1, CO_BLOCK)  # rows: see the module doc
    for wo0 in range(0, wo_n, P):
        npx = min(P, wo_n - wo0)
        for b in range(nblk):
            co0 = b * CO_BLOCK
            acc[:, :] = 0
            if npx == P:
                _tile4(x, wdata, acc, n, ho * stride, wo0 * stride, stride,
                       b * wblk, kh, kw, cw)
            else:
                for p in range(npx):
                    _tile1(x, wdata, acc, p, n, ho * stride, (wo0 + p) * stride,
                           b * wblk, kh, kw, cw)
            if co0 % WORD_BITS == 0:
                wbits[:] = _ZERO
            nco = min(CO_BLOCK, cout - co0)
            for p in range(npx):
                wo = wo0 + p
                word = _ZERO
                if mode_bits:
                    for l in range(nco):
                        if k_bits - 2 * acc[p, l] < ithr[co0 + l]:
                            word |= _ONE << np.uint64(l)
                else:
                    # One short loop per step so LLVM vectorises each;
                    # the float32 order is the documented one.
                    for l in range(nco):
                        y32[l] = np.float32(k_bits - 2 * acc[p, l]) * scale[co0 + l]
                    for l in range(nco):
                        y32[l] = fma32(y32[l], mult[co0 + l], bias[co0 + l])
                    if has_res:
                        cres = res.shape[3]
                        if cres == cout:  # no channel repeat: a contiguous, vectorisable read
                            for l in range(nco):
                                y32[l] = y32[l] + res[n, ho, wo, co0 + l]
                        else:
                            for l in range(nco):
                                y32[l] = y32[l] + res[n, ho, wo, ridx[co0 + l]]
                    if has_rp:
                        for l in range(nco):
                            y = y32[l]
                            g = gamma[co0 + l]
                            d = y - g
                            z = zeta[co0 + l]
                            y32[l] = d + z if y >= g else beta[co0 + l] * d + z
                    if has_out:
                        for l in range(nco):
                            out[out_n, out_h, wo, co0 + l] = y32[l]
                    if has_bits:
                        for l in range(nco):
                            if y32[l] < nthr[co0 + l]:
                                word |= _ONE << np.uint64(l)
                wbits[p] |= word << np.uint64(co0 % WORD_BITS)
            if has_bits and ((co0 + CO_BLOCK) % WORD_BITS == 0 or b == nblk - 1):
                for p in range(npx):
                    bits[out_n, out_h, wo0 + p, co0 // WORD_BITS] = wbits[p]


@njit(inline="always")
def _row_scratch():
    """Per-row (per-thread) scratch of _conv_row: accumulators, packed words, floats."""
    return (np.empty((P, CO_BLOCK), np.int64), np.empty(P, np.uint64),
            np.empty(CO_BLOCK, np.float32))


@njit(types.void(_W4R, _W1R, types.int64, types.int64, types.int64, types.int64,
                 types.int64, types.int64, types.int64,
                 _F1R, _F1R, _F1R, types.int64, _F4R, types.int64, _F1R, _F1R, _F1R,
                 types.int64, _F4, types.int64, _W4, _F1R, _I1R, types.int64), **_OPTS)
def _bconv(x, wdata, cout, kh, kw, cw, k_bits, stride, mode_bits,
           scale, mult, bias, has_res, res, has_rp, gamma, beta, zeta,
           has_out, out, has_bits, bits, nthr, ithr, pool):
    """acc = k_bits - 2 * popcount(x XOR w) over (KH, KW, Cw), valid conv.

    mode_bits: bits[..., co] bit = acc < ithr[co].  Else y = fma(f32(acc)*scale,
    mult, bias) (+ res[..., co % Cres]) (-> rprelu), stored to out if has_out and
    packed as y < nthr into bits if has_bits.  pool (float mode only): y is
    max-pooled 2x2/2 first (max(max(y00, y01), max(y10, y11))), out/bits
    are (N,Ho//2,Wo//2,.) and res stays (N,Ho,Wo,Cres).  x word
    (N,Hp,Wp,Cw), any outer strides; wdata the LAYOUT array; res/out float32
    (N,Ho,Wo,*); bits word (N,Ho,Wo,words_for(Cout)).  Unused arrays are
    1-element dummies and the has_* ints say which are real (one compiled
    signature).
    """
    n_img = x.shape[0]
    ho_n = (x.shape[1] - kh) // stride + 1
    wo_n = (x.shape[2] - kw) // stride + 1
    # Residual channel of each output channel (channel duplication).
    ridx = np.arange(cout) % res.shape[3]
    if not pool:
        for r in prange(n_img * ho_n):
            n = r // ho_n
            ho = r - n * ho_n
            acc, wbits, y32 = _row_scratch()
            _conv_row(x, wdata, cout, kh, kw, cw, k_bits, stride, mode_bits,
                      scale, mult, bias, has_res, res, has_rp, gamma, beta, zeta,
                      has_out, out, has_bits, bits, nthr, ithr, n, ho, wo_n, ridx,
                      n, ho, acc, wbits, y32)
        return
    hp_n = ho_n // 2
    wp_n = wo_n // 2
    for r in prange(n_img * hp_n):
        n = r // hp_n
        i = r - n * hp_n
        acc, wbits, y32 = _row_scratch()
        rows = np.empty((1, 2, 2 * wp_n, cout), np.float32)  # conv rows 2i, 2i+1
        for rr in range(2):
            _conv_row(x, wdata, cout, kh, kw, cw, k_bits, stride, 0,
                      scale, mult, bias, has_res, res, has_rp, gamma, beta, zeta,
                      1, rows, 0, bits, nthr, ithr, n, 2 * i + rr, 2 * wp_n, ridx,
                      0, rr, acc, wbits, y32)
        for j in range(wp_n):
            # Max of the 2x2 window, then each packed word assembled in a
            # register and stored once.
            for q in range((cout + WORD_BITS - 1) // WORD_BITS):
                word = _ZERO
                for co in range(q * WORD_BITS, min(cout, (q + 1) * WORD_BITS)):
                    m = _fmax(_fmax(rows[0, 0, 2 * j, co], rows[0, 0, 2 * j + 1, co]),
                              _fmax(rows[0, 1, 2 * j, co], rows[0, 1, 2 * j + 1, co]))
                    if has_out:
                        out[n, i, j, co] = m
                    if has_bits and m < nthr[co]:
                        word |= _ONE << np.uint64(co - q * WORD_BITS)
                if has_bits:
                    bits[n, i, j, q] = word


@njit(types.void(_F4R, _arr(types.float32, 4, "C", readonly=True), types.int64, _F1R, _F1R,
                 types.int64, types.int64, types.int64, _F4, types.int64, _W4, _F1R), **_OPTS)
def _conv_float(x, w, has_mult, mult, bias, stride, relu, has_out, out, has_bits, bits, nthr):
    """Valid float conv of a zero-padded input: acc = 0; acc = fma(x, w, acc)
    over (i, j, c) in row-major order; y = fma(acc, mult, bias) (acc + bias
    without mult) (relu: y > 0 or NaN ? y : 0); out = y, bit co of bits =
    y < nthr[co] (see reference.conv_float)."""
    n_img = x.shape[0]
    kh, kw, cin, cout = w.shape
    ho_n = (x.shape[1] - kh) // stride + 1
    wo_n = (x.shape[2] - kw) // stride + 1
    nw = (cout + WORD_BITS - 1) // WORD_BITS
    for r in prange(n_img * ho_n):
        n = r // ho_n
        ho = r - n * ho_n
        # A whole output row of accumulators, taps outermost: each output still
        # sums its taps in (i, j, c) order (same floats as the other backends),
        # and the innermost loop runs over contiguous channels, so it vectorises.
        acc = np.zeros((wo_n, cout), np.float32)
        for i in range(kh):
            for j in range(kw):
                for c in range(cin):
                    for wo in range(wo_n):
                        xv = x[n, ho * stride + i, wo * stride + j, c]
                        for co in range(cout):
                            acc[wo, co] = fma32(xv, w[i, j, c, co], acc[wo, co])
        for wo in range(wo_n):
            for q in range(nw):
                word = _ZERO  # assembled in a register, stored once
                for co in range(q * WORD_BITS, min(cout, (q + 1) * WORD_BITS)):
                    if has_mult:
                        y = fma32(acc[wo, co], mult[co], bias[co])
                    else:
                        y = acc[wo, co] + bias[co]
                    if relu and not (y > 0 or y != y):
                        y = np.float32(0.0)
                    if has_out:
                        out[n, ho, wo, co] = y
                    if has_bits and y < nthr[co]:
                        word |= _ONE << np.uint64(co - q * WORD_BITS)
                if has_bits:
                    bits[n, ho, wo, q] = word


@njit(types.void(_arr(types.float32, 2), _F1R, _F1R, types.int64), **_OPTS)
def _fma_epilogue(y, mult, bias, relu):
    """In place: y[r, c] = fma(y[r, c], mult[c], bias[c]) (fma32: llvm.fma, one
    rounding), then max(y, 0) when relu (NaN kept, -0.0 -> +0.0)."""
    rows, c = y.shape
    for r in prange(rows):
        for k in range(c):
            v = fma32(y[r, k], mult[k], bias[k])
            if relu and not (v > 0 or v != v):
                v = np.float32(0.0)
            y[r, k] = v


@njit(types.void(_W4R, _W4), **_OPTS)
def _bmaxpool2(x, out):
    n, ho, wo, cw = out.shape
    for r in prange(n * ho):
        i = r // ho
        j = r - i * ho
        for k in range(wo):
            for c in range(cw):
                # bit 1 (-1) survives the max only if all four are -1.
                out[i, j, k, c] = (x[i, 2 * j, 2 * k, c] & x[i, 2 * j, 2 * k + 1, c]
                                   & x[i, 2 * j + 1, 2 * k, c] & x[i, 2 * j + 1, 2 * k + 1, c])


@njit(types.void(_F4R, _F4), **_OPTS)
def _maxpool2(x, out):
    n, ho, wo, c = out.shape
    for r in prange(n * ho):
        i = r // ho
        j = r - i * ho
        for k in range(wo):
            for q in range(c):
                out[i, j, k, q] = _fmax(_fmax(x[i, 2 * j, 2 * k, q], x[i, 2 * j, 2 * k + 1, q]),
                                        _fmax(x[i, 2 * j + 1, 2 * k, q],
                                              x[i, 2 * j + 1, 2 * k + 1, q]))


# ---- thin Python wrappers (threads -> numba.set_num_threads) -----------------
_F1_DUMMY = np.zeros(1, np.float32)
_I1_DUMMY = np.zeros(1, np.int32)
_F4_DUMMY = np.zeros((1, 1, 1, 1), np.float32)
_W4_DUMMY = np.zeros((1, 1, 1, 1), np.uint64)


def _threads(threads):
    numba.set_num_threads(max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS)))


def pack(x, thr, out, threads):
    """bit c = x[..., c] < thr[c]; x float32 (N,H,W,C), out word (N,H,W,Cw)."""
    _threads(threads)
    _pack(x, thr, out)


def bconv_float(x, wdata, cout, kh, kw, cw, k_bits, stride, scale, mult, bias, residual,
                rprelu, out, out_bits, next_thr, threads, pool=False):
    """Valid binary conv, float mode (see module doc).

    x word (N,Hp,Wp,Cw); wdata the LAYOUT array; out float32 (N,Ho,Wo,Cout) or
    None; out_bits word (N,Ho,Wo,words_for(Cout)) or None, packed against
    next_thr; rprelu None or (gamma, beta, zeta); pool: fused 2x2/2 max-pool
    (out/out_bits then (N,Ho//2,Wo//2,.)).
    """
    _threads(threads)
    g, b, z = rprelu if rprelu is not None else (_F1_DUMMY,) * 3
    _bconv(x, wdata, cout, kh, kw, cw, k_bits, stride, 0, scale, mult, bias,
           int(residual is not None), _F4_DUMMY if residual is None else residual,
           int(rprelu is not None), g, b, z,
           int(out is not None), _F4_DUMMY if out is None else out,
           int(out_bits is not None), _W4_DUMMY if out_bits is None else out_bits,
           _F1_DUMMY if next_thr is None else next_thr, _I1_DUMMY, int(bool(pool)))


def bconv_bits(x, wdata, cout, kh, kw, cw, k_bits, stride, thr, out, threads):
    """Valid binary conv, bits mode: out bit co = acc < thr[co] (see module doc)."""
    _threads(threads)
    _bconv(x, wdata, cout, kh, kw, cw, k_bits, stride, 1, _F1_DUMMY, _F1_DUMMY, _F1_DUMMY,
           0, _F4_DUMMY, 0, _F1_DUMMY, _F1_DUMMY, _F1_DUMMY, 0, _F4_DUMMY, 1, out,
           _F1_DUMMY, thr, 0)


def conv_float(x, w, mult, bias, stride, relu, out, out_bits, next_thr, threads):
    """Valid float conv of a zero-padded input + fused pack (see _conv_float)."""
    _threads(threads)
    _conv_float(x, w, int(mult is not None), _F1_DUMMY if mult is None else mult, bias, stride, int(bool(relu)), int(out is not None),
                _F4_DUMMY if out is None else out, int(out_bits is not None),
                _W4_DUMMY if out_bits is None else out_bits,
                _F1_DUMMY if next_thr is None else next_thr)


def fma_epilogue(y, mult, bias, relu, threads):
    """y = fma(y, mult, bias) (+ relu) in place, y float32 (R, C) (see _fma_epilogue)."""
    _threads(threads)
    _fma_epilogue(y, mult, bias, int(bool(relu)))


def bmaxpool2(x, out, threads):
    """out = AND of the four words of each 2x2 window (word arrays)."""
    _threads(threads)
    _bmaxpool2(x, out)


def maxpool2(x, out, threads):
    """out = max of each 2x2 window (float32, np.maximum semantics)."""
    _threads(threads)
    _maxpool2(x, out)


numba.config.CACHE_DIR = _USER_CACHE_DIR   # the kernels above keep their folder
