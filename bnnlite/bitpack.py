"""The one place that fixes how binary tensors are laid out in bnnlite.

Every other module (the exporter, the runtime ops, the Cython kernels through
``kernels/_bitpack.pxd``, the numba fallback) imports these names instead of
writing 64 or "bit 1 means -1" again.

Conventions
-----------
* **Word**: ``WORD_DTYPE`` (``uint64``), ``WORD_BITS`` (64) bits per word.
* **Sign**: ``sign(x) = +1 if x >= 0 else -1`` -- sign(0) is +1, everywhere
  (training, export, runtime).
* **Bit meaning**: bit 1 means -1, bit 0 means +1.  So with a per-channel
  threshold ``t``, the bit of ``x`` is ``x < t``.
* **Packing axis**: the channel axis, which is the last axis (tensors are
  channels-last, NHWC).  Channel ``c`` goes to bit ``c % WORD_BITS`` (LSB
  first) of word ``c // WORD_BITS``.
* **Tail bits**: when C is not a multiple of ``WORD_BITS``, the unused high
  bits of the last word are 0 -- in activations *and* weights, so they XOR
  to 0 and never count.
* **Padding**: spatial padding of a binary conv is an all-zero word, i.e.
  every channel is +1.  It costs nothing in the kernel, and training pads
  the binarised activations with +1 to match (see ``docs/conventions.md``).
* **Dot product**: for ``K`` real (non-tail) bits,
  ``sum_i a_i * w_i = K - 2 * popcount(a XOR w)`` with a, w in {-1, +1}.

Public names: WORD_DTYPE, WORD_BITS, words_for, sign, pack_bits, unpack_bits,
binary_dot.
"""
from __future__ import annotations

import numpy as np

WORD_DTYPE = np.dtype(np.uint64)
WORD_BITS = WORD_DTYPE.itemsize * 8

__all__ = ["WORD_DTYPE", "WORD_BITS", "words_for", "sign", "pack_bits",
           "unpack_bits", "binary_dot"]


def words_for(channels: int) -> int:
    """Number of words that hold ``channels`` bits."""
    return -(-int(channels) // WORD_BITS)


def sign(x: np.ndarray) -> np.ndarray:
    """sign with sign(0) = +1, as float32 values in {-1, +1}."""
    return np.where(np.asarray(x) >= 0, 1.0, -1.0).astype(np.float32)


def pack_bits(x: np.ndarray, threshold: np.ndarray | float = 0.0) -> np.ndarray:
    """Pack the last axis of ``x`` into words: bit = ``x < threshold``.

    ``x`` (..., C) of any real dtype, ``threshold`` broadcastable to (C,).
    Returns (..., words_for(C)) ``WORD_DTYPE``, tail bits 0.  This is the
    readable reference; the runtime uses the fused kernels.
    """
    x = np.asarray(x)
    c = x.shape[-1]
    bits = (x < np.asarray(threshold)).astype(np.uint8)
    pad = words_for(c) * WORD_BITS - c
    if pad:
        bits = np.concatenate([bits, np.zeros(x.shape[:-1] + (pad,), np.uint8)], axis=-1)
    # LSB-first: bit j of a word is channel j of its group of WORD_BITS.
    bytes_ = np.packbits(bits, axis=-1, bitorder="little")
    return np.ascontiguousarray(bytes_).view("<u8").astype(WORD_DTYPE, copy=False)


def unpack_bits(words: np.ndarray, channels: int) -> np.ndarray:
    """Inverse of :func:`pack_bits` as +-1 float32 values, shape (..., channels)."""
    words = np.ascontiguousarray(words, dtype=WORD_DTYPE).astype("<u8", copy=False)
    bits = np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")
    return np.where(bits[..., :channels] == 1, -1.0, 1.0).astype(np.float32)


def binary_dot(a_words: np.ndarray, w_words: np.ndarray, k_bits: int) -> np.ndarray:
    """``K - 2 * popcount(a XOR w)`` summed over the last axis (int32)."""
    pop = np.bitwise_count(np.bitwise_xor(a_words, w_words)).sum(axis=-1, dtype=np.int64)
    return (k_bits - 2 * pop).astype(np.int32)
