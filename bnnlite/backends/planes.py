"""The prepared data of the bit-plane paths of the binary conv, and the
choice of path for one call.

The compiled kernels run a binary conv one of three ways (the paths of
kernels/bconv_select.h): the bit-plane conv (kernels/planes_avx2.h), which
needs the layer's plane lists; its small-output path
(kernels/wplanes_avx2.h), which needs the layer's weight planes; or the
popcount core, which needs neither.  At load time ``prepare`` makes the
lists and planes a layer fits (``plane_lists``, ``weight_planes``); per bound
call, ``call_path`` -- the one place in Python where the three paths meet --
asks the kernels which path the call takes (``select_path``: the C
selector's own choice) and hands over that path's data and scratch as a
``CallPath``.  All three give the same integers, so the same floats.

Public names: PlaneLists, WeightPlanes, CallPath, CORE, prepare, call_path,
plane_lists, weight_planes, weight_bits.
"""
from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np

from ..bitpack import WORD_BITS
from .prepared import aligned_bytes

__all__ = ["PlaneLists", "WeightPlanes", "CallPath", "CORE", "prepare", "call_path",
           "plane_lists", "weight_planes", "weight_bits"]


class PlaneLists(NamedTuple):
    """The plane lists of one layer (``plane_lists``; kernels/planes_avx2.h,
    bnn_pl_lists); the kernel module reads it by field name."""
    idx: np.ndarray      # uint16: the lists of plane numbers, back to back
    off: np.ndarray      # int32 (15 * sets + 1,): where list m of set s starts
    w1: np.ndarray       # int32 (Cout,): |W1| of each channel
    ones: np.ndarray     # uint8 (Cout,): 1 where the channel sums W1, 0 for W0
    nplanes: int         # KH*KW*Cw*64 + 1 (the last plane is zero)
    hi: int              # levels of the sixteens counter


class WeightPlanes(NamedTuple):
    """The weight planes of one layer (``weight_planes``; kernels/wplanes_avx2.h,
    bnn_wp_planes); the kernel module reads it by field name."""
    w: np.ndarray        # uint8 (G, nplanes, 32): bit c of plane k = weight bit k of channel 256g + c
    a: np.ndarray        # int16 (G*256,): |W1| of each channel, 0 past Cout
    nplanes: int
    hi: int


class CallPath(NamedTuple):
    """What one binary conv call hands the kernel module for its path
    (``call_path``): the data of the path it takes, None where unused.
    ``bconv_raw`` takes them as its last three arguments, in this order."""
    planes: PlaneLists | None         # the bit-plane conv's plane lists
    workspace: np.ndarray | None      # uint8 scratch: threads * the path's bytes, 64-aligned
    wplanes: WeightPlanes | None      # the small-output path's weight planes


#: The popcount core's call: no plane data, no scratch.
CORE = CallPath(None, None, None)


def prepare(mod, w: np.ndarray, cin):
    """(PlaneLists or None, WeightPlanes or None) of the packed weights w
    (Cout, KH, KW, Cw) for the kernel module ``mod``: each where the build
    has the bit-plane paths (mod.HAVE_PLANES) and the layer fits them."""
    if not getattr(mod, "HAVE_PLANES", False):
        return None, None
    return (plane_lists(w, cin, mod.PLANES_HI, mod.PLANES_SETS),
            weight_planes(w, cin, mod.PLANES_HI))


def call_path(mod, pw, x_shape, stride, threads, pool) -> CallPath:
    """The CallPath of one binary conv call to ``mod.bconv_raw``.

    The path is the kernels' choice (``mod.select_path``, the C function
    bnn_sel_choose in kernels/bconv_select.h), from the output's size, the
    kernel and words per pixel of ``pw`` (a PreparedWeights) and the data it
    holds.  The workspace is that path's scratch for ``threads`` threads.
    Made once per bound call (a graph plan), so the kernel allocates nothing
    per call; a bound call is never run by two threads at once (its outputs
    would collide), so neither is its scratch."""
    ho = (x_shape[1] - pw.kh) // stride + 1
    wo = (x_shape[2] - pw.kw) // stride + 1
    path = mod.select_path(x_shape[0], ho, wo, pool, pw.planes is not None,
                           pw.wplanes is not None, pw.kh, pw.kw, pw.cw)
    if path == mod.PATH_PLANES:
        ws = aligned_bytes(threads * mod.planes_workspace_bytes(pw.planes.nplanes))
        return CallPath(pw.planes, ws, None)
    if path == mod.PATH_WPLANES:
        ws = aligned_bytes(threads * mod.wplanes_workspace_bytes(pw.wplanes.nplanes, pw.cout))
        return CallPath(None, ws, pw.wplanes)
    return CORE


def weight_bits(w: np.ndarray) -> np.ndarray:
    """(Cout, KH*KW*Cw*64) uint8: column k is weight bit k of each channel,
    k numbered as the planes of the bit-plane conv ((i*KW + j)*Cw*64 + c).
    Bit c of a word is bit c % 8 of byte c // 8 (little-endian words, LSB first)."""
    return np.unpackbits(w.astype("<u8").view(np.uint8), axis=-1,
                         bitorder="little").reshape(w.shape[0], -1)


def plane_lists(w: np.ndarray, cin, hi_range, sets):
    """The plane lists of the bit-plane conv (kernels/planes_avx2.h), or
    None when the layer is too large for them.

    Plane k = (i*KW + j)*Cw*64 + c holds input bit c of tap (i, j) for 256
    pixels.  Channel co adds up one side of its taps (real channels c < cin
    only): W1, those whose weight bit is 1 (-1; ``ones[co]`` = 1), or W0;
    ``w1[co]`` = |W1|.  ``sets`` = (group, size), the kernel module's
    PLANES_SETS: channels go in sets of up to ``size`` (4) consecutive ones,
    never across a group of ``group`` (64, one output word), set s numbered
    from 0 in channel order, and a set's sides are chosen so that their
    union is smallest.  The union is split by
    which of the set's channels need each plane: with P = 2**size - 1 lists
    per set (15), list m (m = 1..P, bit i = the set's channel i) of set s is
    idx[off[P*s+m-1]:off[P*s+m]], padded with the zero plane (the last one)
    to a multiple of 16.  The kernel sums each list once, so a plane that
    several channels need is added once.  The sixteens counter needs ``hi``
    bits: at least (a channel's lists together)/16 + 1 values, within
    hi_range.  Returns a PlaneLists.
    """
    cout, kh, kw, cw = w.shape
    cpix = cw * WORD_BITS
    cin = cpix if cin is None else cin
    nplanes = kh * kw * cpix + 1
    k_real = kh * kw * cin
    if nplanes > 1 << 16 or k_real >= 1 << 15:  # uint16 plane numbers, int16 counts
        return None
    bits = weight_bits(w).reshape(cout, kh * kw, cpix)[:, :, :cin].reshape(cout, -1).astype(bool)
    plane = (np.arange(kh * kw)[:, None] * cpix + np.arange(cin)[None, :]).reshape(-1)
    w1 = bits.sum(axis=1)
    ones = np.zeros(cout, bool)
    group, size = sets
    patterns = (1 << size) - 1
    lists, per_channel = [], []
    for g0 in range(0, cout, group):
        for c0 in range(g0, min(g0 + group, cout), size):
            chans = range(c0, min(c0 + size, g0 + group, cout))
            senses = min(itertools.product((True, False), repeat=len(chans)),
                         key=lambda ss: np.count_nonzero(np.any(
                             [bits[c] == sc for c, sc in zip(chans, ss)], axis=0)))
            member = np.zeros(k_real, np.int64)          # bit i: the set's channel i needs it
            for i, (c, sc) in enumerate(zip(chans, senses)):
                ones[c] = sc
                member |= (bits[c] == sc).astype(np.int64) << i
            set_lists = [plane[member == m] for m in range(1, patterns + 1)]
            lens = [-(-len(x) // 16) * 16 for x in set_lists]
            lists += zip(set_lists, lens)
            per_channel += [sum(n for m, n in enumerate(lens, 1) if m >> i & 1) for i in range(len(chans))]
    off = np.zeros(len(lists) + 1, np.int32)
    off[1:] = np.cumsum([n for _, n in lists])
    idx = np.full(max(int(off[-1]), 1), nplanes - 1, np.uint16)
    for (x, _), o in zip(lists, off):
        idx[o:o + len(x)] = x
    hi = max(hi_range[0], (max(per_channel) // 16).bit_length())
    if hi > hi_range[1]:
        return None
    return PlaneLists(idx, off, w1.astype(np.int32), ones.astype(np.uint8), nplanes, hi)


def weight_planes(w: np.ndarray, cin, hi_range, lanes=256, patterns=15):
    """The weight planes of the bit-plane conv's small-output path
    (kernels/wplanes_avx2.h, bnn_wp_unit), or None when the layer is
    too large for them.

    Plane k of group g (k numbered as in ``plane_lists``) holds weight bit
    k of the ``lanes`` (256) channels 256g .. 256g+255: bit c % 64 of word
    c // 64, channels past Cout 0; plane nplanes-1 is zero.  ``a``: |W1| of
    each channel (its count of -1 weights), int16, 0 past Cout.  A pixel
    adds the planes of its input bits that are 1, spread over ``patterns``
    lists (15, one per set of pixels that has the bit), padded with the zero
    plane to multiples of 16, so the sixteens counter needs ``hi`` levels
    for up to K + 15*15 planes, within hi_range.  Returns a WeightPlanes.
    """
    cout, kh, kw, cw = w.shape
    nplanes = kh * kw * cw * WORD_BITS + 1
    k_real = kh * kw * (cw * WORD_BITS if cin is None else cin)
    hi = max(hi_range[0], ((nplanes - 1 + patterns * 15) // 16).bit_length())
    if nplanes > 1 << 16 or k_real >= 1 << 15 or hi > hi_range[1]:  # uint16 planes, int16 counts
        return None
    groups = -(-cout // lanes)
    bits = np.zeros((groups * lanes, nplanes), np.uint8)
    bits[:cout, :-1] = weight_bits(w)
    planes = np.packbits(bits.reshape(groups, lanes, nplanes).transpose(0, 2, 1), axis=-1,
                         bitorder="little")                 # (G, nplanes, 32): bit c of plane k
    a = bits.sum(axis=1, dtype=np.int64).astype(np.int16)
    aligned = aligned_bytes(planes.size).reshape(planes.shape)   # the kernel's loads are aligned
    aligned[...] = planes
    return WeightPlanes(aligned, a, nplanes, hi)

