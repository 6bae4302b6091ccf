# cython: language_level=3
"""Cython mirror of the packing conventions.

``bnnlite/bitpack.py`` is the source of truth (WORD_DTYPE, WORD_BITS, bit 1
means -1, LSB-first along the channel axis, tail bits 0, zero word = +1
padding).  This file only mirrors the word type so the kernels agree with it;
``bnnlite.backends`` (native.py) checks at import time that ``sizeof(word_t) * 8`` equals
``bitpack.WORD_BITS`` and refuses the extension otherwise.

Public names: word_t, WORD_BITS (compile-time), words_for.
"""
from libc.stdint cimport uint64_t

# Must match bitpack.WORD_DTYPE (uint64).
ctypedef uint64_t word_t

# Bits per word, derived from the type so no literal is repeated here.
cdef enum:
    WORD_BITS = sizeof(word_t) * 8


cdef inline Py_ssize_t words_for(Py_ssize_t channels) noexcept nogil:
    """Number of words that hold ``channels`` bits (bitpack.words_for)."""
    return (channels + WORD_BITS - 1) // WORD_BITS
