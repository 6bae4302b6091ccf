"""Argument checks of the Backend methods (``api.Backend``).

Every user-facing array is checked here (dtype, shape, last axis
contiguous, aligned, writeable outputs, no overlap between outputs and
inputs) and every bad value raises a ValueError that names the argument,
the value it got and what is accepted; the kernels below check nothing.

Names: array, integer, flag, float_outputs, no_overlap, packed_weights,
conv_geometry, valid_output, F32, I32, U8.
"""
from __future__ import annotations

import numpy as np

from ..bitpack import WORD_BITS, WORD_DTYPE, words_for
from .prepared import PreparedWeights

F32 = np.dtype(np.float32)
I32 = np.dtype(np.int32)
U8 = np.dtype(np.uint8)


def array(name, a, dtype, shape, *, writeable=False, contiguous=False):
    """Check one array; ``shape`` entries that are None are not checked.
    contiguous=False asks only the last axis to be contiguous."""
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


def integer(name, v, lo):
    """``v`` as an int >= lo (bools refused)."""
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
        raise ValueError(f"{name}: expected an int >= {lo}, got {v!r}")
    if v < lo:
        raise ValueError(f"{name}: expected an int >= {lo}, got {v}")
    return int(v)


def flag(name, v):
    """``v`` as a bool (True or False only, NumPy's included)."""
    if not isinstance(v, (bool, np.bool_)):
        raise ValueError(f"{name}: expected True or False, got {v!r}")
    return bool(v)


def float_outputs(out, out_bits, next_thr, nhw, cout):
    """The outputs of a float-mode conv: floats, packed bits (with their thresholds), or both."""
    if out is None and out_bits is None:
        raise ValueError("out: expected a float32 (N,Ho,Wo,Cout) array (None is "
                         "allowed only when out_bits is given)")
    if out is not None:
        array("out", out, F32, (*nhw, cout), writeable=True)
    if out_bits is not None:
        array("out_bits", out_bits, WORD_DTYPE, (*nhw, words_for(cout)), writeable=True)
        if next_thr is None:
            raise ValueError("next_thr: expected float32 (Cout,) with out_bits, got None")
        array("next_thr", next_thr, F32, (cout,), contiguous=True)


def no_overlap(outputs, inputs):
    """No output shares memory with an input or with another output
    (``outputs``, ``inputs``: (name, array or None) pairs)."""
    for on, o in outputs:
        if o is None:
            continue
        for iname, i in inputs:
            if i is not None and np.may_share_memory(o, i):
                raise ValueError(f"{on} overlaps {iname}: expected separate buffers")
    for k, (an, a) in enumerate(outputs):
        for bn, b in outputs[k + 1:]:
            if a is not None and b is not None and np.may_share_memory(a, b):
                raise ValueError(f"{an} overlaps {bn}: expected separate buffers")


def packed_weights(w_packed, cin):
    """Check packed weights (Cout,KH,KW,Cw) and their real input-channel count
    cin (None: not given; else its tail bits must be 0); returns cin."""
    array("w_packed", w_packed, WORD_DTYPE, (None, None, None, None))
    if min(w_packed.shape) < 1:
        raise ValueError(f"w_packed: expected a non-empty (Cout,KH,KW,Cw) array, "
                         f"got shape {w_packed.shape}")
    if cin is None:
        return None
    cw = w_packed.shape[3]
    cin = integer("cin", cin, 1)
    if words_for(cin) != cw:
        raise ValueError(f"cin: expected a channel count with words_for(cin) == "
                         f"Cw = {cw}, got {cin}")
    tail = cw * WORD_BITS - cin
    if tail and np.any(w_packed[..., -1] >> WORD_DTYPE.type(WORD_BITS - tail)):
        raise ValueError(f"w_packed: tail bits (channels >= {cin}) must be 0")
    return cin


def conv_geometry(x, pw, k_bits, stride):
    """(N, Ho, Wo, k_bits, stride) of a binary conv of x with the prepared
    weights pw, each checked against the others."""
    if not isinstance(pw, PreparedWeights):
        raise ValueError(f"wp: expected PreparedWeights from prepare_weights, got "
                         f"{type(pw).__name__}")
    array("x", x, WORD_DTYPE, (None, None, None, pw.cw))
    stride = integer("stride", stride, 1)
    k_bits = integer("k_bits", k_bits, 1)
    taps = pw.kh * pw.kw
    if pw.cin is not None and k_bits != taps * pw.cin:
        raise ValueError(f"k_bits: expected KH*KW*cin = {taps * pw.cin}, got {k_bits}")
    if k_bits % taps or words_for(k_bits // taps) != pw.cw:
        raise ValueError(f"k_bits: expected KH*KW*Cin with words_for(Cin) == {pw.cw} "
                         f"(KH*KW = {taps}), got {k_bits}")
    return (x.shape[0], *valid_output(x, pw.kh, pw.kw, stride), k_bits, stride)


def valid_output(x, kh, kw, stride):
    """(Ho, Wo) of a valid kh x kw conv of the padded input x (N,Hp,Wp,C)."""
    hp, wp = x.shape[1], x.shape[2]
    if hp < kh or wp < kw:
        raise ValueError(f"x: expected a (padded) input of at least {kh}x{kw} "
                         f"pixels, got {hp}x{wp}")
    return (hp - kh) // stride + 1, (wp - kw) // stride + 1
