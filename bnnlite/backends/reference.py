"""Plain NumPy reference of every bnnlite kernel: the test oracle.

Readable, not fast.  The NumPy backend runs it through its adapter
(``numpy_impl``), after ``api.Backend`` has checked every argument (nothing
here checks anything); the float32 operations are done in exactly the
order the compiled kernels use, so results agree bit for bit:

    acc = K - 2 * popcount(x XOR w)        (int, summed over KH, KW, Cw)
    t = float32(acc) * scale[co]
    t = fma(t, mult[co], bias[co])                  (one rounding: floatmath.fma32)
    t = t + residual[n, ho, wo, co % Cres]          (if residual)
    t = (t - gamma) + zeta  if t >= gamma  else  beta * (t - gamma) + zeta
                                                    (if rprelu)

which is also PyTorch's own float32 order for alpha * conv -> BatchNorm ->
+ shortcut -> RPReLU (docs/conventions.md).

Public names: pack, prepare_weights, bconv_popcount, bconv_float,
bconv_bits, conv_float, fma_epilogue, bmaxpool2, maxpool2, lookup_u8, LAYOUT.
"""
from __future__ import annotations

import numpy as np

from ..bitpack import WORD_BITS, WORD_DTYPE, words_for
from ..floatmath import fma32

__all__ = ["pack", "prepare_weights", "bconv_popcount", "bconv_float", "bconv_bits",
           "conv_float", "fma_epilogue", "bmaxpool2", "maxpool2", "lookup_u8", "LAYOUT"]

#: Name of the prepared-weight layout of this backend: the bitpack layout
#: (Cout, KH, KW, Cw) itself, C-contiguous.
LAYOUT = "numpy-ohwc"


def _pack_words(bits: np.ndarray) -> np.ndarray:
    """bool (..., C) -> words (..., words_for(C)), LSB first, tail bits 0."""
    c = bits.shape[-1]
    nw = words_for(c)
    weights = np.left_shift(np.ones(1, WORD_DTYPE), np.arange(WORD_BITS, dtype=WORD_DTYPE))
    padded = np.zeros(bits.shape[:-1] + (nw * WORD_BITS,), WORD_DTYPE)
    padded[..., :c] = bits
    grouped = padded.reshape(bits.shape[:-1] + (nw, WORD_BITS))
    # Bits are disjoint, so the sum is the OR of the shifted bits.
    return (grouped * weights).sum(axis=-1, dtype=WORD_DTYPE)


def pack(x, thr, out, threads=1):
    """out[..., k] bit j = x[..., k*WORD_BITS + j] < thr[k*WORD_BITS + j].

    x float32 (N,H,W,C); thr float32 (C,); out word (N,H,W,words_for(C)).
    """
    out[...] = _pack_words(x < thr)


def prepare_weights(w_packed):
    """The reference consumes the bitpack layout as is: a C-contiguous copy of
    the (Cout,KH,KW,Cw) word array (a copy, so the caller may reuse its own)."""
    return np.array(w_packed, dtype=WORD_DTYPE, order="C", copy=True)


def bconv_popcount(x, w, stride):
    """popcount(x XOR w) summed over (KH, KW, Cw), valid conv, int64.

    x word (N,Hp,Wp,Cw); w word (Cout,KH,KW,Cw) -> (N,Ho,Wo,Cout).
    """
    n, hp, wp, cw = x.shape
    cout, kh, kw, _ = w.shape
    ho = (hp - kh) // stride + 1
    wo = (wp - kw) // stride + 1
    pop = np.zeros((n, ho, wo, cout), np.int64)
    for i in range(kh):
        for j in range(kw):
            # Input pixels that meet kernel tap (i, j) for every output pixel.
            patch = x[:, i:i + stride * (ho - 1) + 1:stride,
                      j:j + stride * (wo - 1) + 1:stride, :]
            for co in range(cout):
                pop[..., co] += np.bitwise_count(patch ^ w[co, i, j]).sum(
                    axis=-1, dtype=np.int64)
    return pop


def _float_chain(acc, scale, mult, bias, residual, rprelu):
    """The float32 epilogue, one operation at a time (see module docstring)."""
    cout = acc.shape[-1]
    t = acc.astype(np.float32) * scale
    t = fma32(t, mult, bias)
    if residual is not None:
        reps = cout // residual.shape[-1]
        t = t + np.tile(residual, (1,) * (residual.ndim - 1) + (reps,))
    if rprelu is not None:
        gamma, beta, zeta = rprelu
        d = t - gamma
        t = np.where(t >= gamma, d + zeta, beta * d + zeta)
    return t.astype(np.float32, copy=False)


def bconv_float(x, wp, k_bits, stride, mult, bias, residual, rprelu, out,
                out_bits=None, next_thr=None, threads=1, pool=False, scale=None):
    """Valid binary conv with the float epilogue (see module docstring).

    x word (N,Hp,Wp,Cw) (zero-word border = +1 padding already in place);
    wp prepared weights (Cout,KH,KW,Cw); out float32 (N,Ho,Wo,Cout);
    out_bits word (N,Ho,Wo,words_for(Cout)) gets bit co = y < next_thr[co].
    pool: y is max-pooled 2x2/2 (as maxpool2) before it is stored and
    packed; out/out_bits are then (N,Ho//2,Wo//2,.).  scale None: all ones.
    """
    acc = k_bits - 2 * bconv_popcount(x, wp, stride)
    if scale is None:
        scale = np.ones(wp.shape[0], np.float32)
    y = _float_chain(acc, scale, mult, bias, residual, rprelu)
    if pool:
        yp = np.empty(out.shape, np.float32)
        maxpool2(y, yp)
        y = yp
    out[...] = y
    if out_bits is not None:
        out_bits[...] = _pack_words(y < next_thr)


def bconv_bits(x, wp, k_bits, stride, thr, out, threads=1):
    """Valid binary conv, only packed bits: bit co = acc < thr[co] (int32)."""
    acc = k_bits - 2 * bconv_popcount(x, wp, stride)
    out[...] = _pack_words(acc < thr.astype(np.int64))


def conv_float(x, w, bias, stride, relu, out, out_bits=None, next_thr=None, threads=1,
               mult=None):
    """Valid real-valued conv of an already zero-padded input (first layer).

    acc = 0, then for (i, j, c) in row-major order
    acc = fma(x[n, ho*s+i, wo*s+j, c], w[i, j, c, co], acc)  (float32, one
    rounding per tap, as oneDNN's conv on an FMA CPU); y = fma(acc,
    mult[co], bias[co]) (y = acc + bias[co] if mult is None); with relu
    y = y if (y > 0 or y is NaN) else 0.  out[...] = y (if out is not None);
    out_bits bit co = y < next_thr[co].
    x float32 (N,Hp,Wp,Cin); w float32 (KH,KW,Cin,Cout); bias (Cout,).
    """
    n, hp, wp, cin = x.shape
    kh, kw, _, cout = w.shape
    ho = (hp - kh) // stride + 1
    wo = (wp - kw) // stride + 1
    acc = np.zeros((n, ho, wo, cout), np.float32)
    for i in range(kh):
        for j in range(kw):
            patch = x[:, i:i + stride * (ho - 1) + 1:stride, j:j + stride * (wo - 1) + 1:stride]
            for c in range(cin):
                acc = fma32(patch[..., c:c + 1], w[i, j, c], acc)
    y = acc + bias if mult is None else fma32(acc, mult, bias)
    if relu:
        y = np.where((y > 0) | (y != y), y, np.float32(0)).astype(np.float32)
    if out is not None:
        out[...] = y
    if out_bits is not None:
        out_bits[...] = _pack_words(y < next_thr)


def fma_epilogue(y, mult, bias, relu, threads=1):
    """In place on y (R, C): y = fma(y, mult, bias) (one rounding, fma32), then
    with relu y = np.maximum(y, 0) (NaN kept, -0.0 -> +0.0)."""
    y[...] = fma32(y, mult, bias)
    if relu:
        np.maximum(y, 0, out=y)


def bmaxpool2(x, out, threads=1):
    """2x2/2 max-pool on bits: AND of the four words (max is -1 only if all are)."""
    ho, wo = out.shape[1], out.shape[2]
    v = x[:, :2 * ho, :2 * wo]
    out[...] = v[:, 0::2, 0::2] & v[:, 0::2, 1::2] & v[:, 1::2, 0::2] & v[:, 1::2, 1::2]


def lookup_u8(x, table, out):
    """out[..., c] = table[x[..., c], c] (x uint8, table float32 (256, C))."""
    out[...] = table[x, np.arange(table.shape[1])]


def maxpool2(x, out, threads=1):
    """2x2/2 max-pool, float32 NHWC: max(max(x00, x01), max(x10, x11))."""
    ho, wo = out.shape[1], out.shape[2]
    v = x[:, :2 * ho, :2 * wo]
    out[...] = np.maximum(np.maximum(v[:, 0::2, 0::2], v[:, 0::2, 1::2]),
                          np.maximum(v[:, 1::2, 0::2], v[:, 1::2, 1::2]))
