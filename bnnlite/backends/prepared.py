"""Weights prepared once, at load time, for one backend's inner loop.

``PreparedWeights`` is what ``Backend.prepare_weights`` returns and every
binary conv consumes: the packed weights rearranged in the backend's own
layout (``blocked_layout`` for the compiled and numba kernels: output
channels innermost, so one vector load reads one word of several channels),
plus the bit-plane paths' data where the backend has them (``planes``).
Prepared arrays are 64-byte aligned (``aligned_bytes``) so the kernels'
vector loads never split a cache line.

Public names: PreparedWeights, blocked_layout, aligned_bytes, aligned_words,
ALIGN.
"""
from __future__ import annotations

import numpy as np

from ..bitpack import WORD_DTYPE

__all__ = ["PreparedWeights", "blocked_layout", "aligned_bytes", "aligned_words", "ALIGN"]

#: Alignment in bytes of every prepared array (one cache line, one 512-bit load).
ALIGN = 64


class PreparedWeights:
    """Weights rearranged once (at load time) for one backend's inner loop.

    ``data`` is an opaque C-contiguous word array in the backend's own layout
    (``layout`` names it); ``cout, kh, kw, cw`` describe the original
    (Cout, KH, KW, Cw) bitpack array; ``cin`` the real input channels if
    they were given to prepare_weights (else None).  ``planes``: the
    plane lists of the bit-plane conv (a ``planes.PlaneLists``), and
    ``wplanes`` the weight planes of its small-output path (a
    ``planes.WeightPlanes``), when the backend has them and the layer fits
    them, else None (then the popcount core runs; setting them to None
    forces that).  Which one a call uses: ``planes.call_path``.  Only the
    backend that made it may consume it (checked by ``layout``).
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


def aligned_bytes(nbytes: int) -> np.ndarray:
    """A zeroed uint8 array of nbytes whose data pointer is ALIGN-byte aligned."""
    raw = np.zeros(nbytes + ALIGN, np.uint8)
    off = -raw.ctypes.data % ALIGN
    return raw[off:off + nbytes]


def aligned_words(n_words: int) -> np.ndarray:
    """A zeroed 1-D word array whose data pointer is ALIGN-byte aligned (the
    512-bit weight loads never split a cache line)."""
    return aligned_bytes(n_words * WORD_DTYPE.itemsize).view(WORD_DTYPE)


def blocked_layout(w: np.ndarray, lanes: int, block: int) -> np.ndarray:
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
    data = aligned_words(cpad * kh * kw * cw)
    pos = 0
    for c0 in range(0, cpad, block):
        blk = wpad[c0:c0 + block].transpose(1, 2, 3, 0).reshape(-1)
        data[pos:pos + blk.size] = blk
        pos += blk.size
    return data
