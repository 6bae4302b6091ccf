"""Value bounds: a loaded model cannot make inf or NaN from any legal input.

Public names: FLOAT32_MAX, input_bound, and for the op modules rounding,
abs64, bits_out, same_bound.  The walk over a bundle's graph is
``bundle.check_bounds`` (it looks each op's formula up in the registry, which
imports this module).

Finite parameters are not enough: a scale of 3.4e38 is finite, but
``acc * scale`` overflows and every logit becomes NaN.  So the loader walks
the graph once with an upper bound on ``|value|`` of every float tensor and of
every intermediate an op computes, starting from the legal input range
(images in [0, 1] before normalisation: ``x = (u - mean) / std`` is bounded by
max(|mean|, |1 - mean|) / std), and refuses the bundle where a bound passes
the largest float32.  Each op's bound comes from its formula, in its module
under bnnlite/ops/ (the ``bounds`` of its OpKind; the table is in
docs/format.md, "Value bounds"): a conv sums at most X * ||w||_1 per output
channel, a float binary conv at most K |scale| before its BN, max-pools and
flatten keep the bound, and sign_pack and bit ops end it (bits).

Each bound is the exact-arithmetic one times the worst growth of float32
rounding: every computed partial sum of n terms is at most (1 + 2^-24)^n times
the sum of their magnitudes (any summation order, FMA or not), and an op adds
a few more roundings.  So a bound at or under FLOAT32_MAX means no value
computed in float32 can overflow, whatever the summation order of the backend.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["FLOAT32_MAX", "input_bound", "rounding", "abs64", "bits_out", "same_bound"]

FLOAT32_MAX = float(np.finfo(np.float32).max)
_U = 2.0 ** -24  # unit roundoff of float32


def rounding(n_terms: int) -> float:
    """Upper bound of (1 + u)^(n + 4): a sum of n terms plus the op's few other roundings."""
    return math.exp((n_terms + 4) * _U * (1 + _U))


def abs64(a) -> np.ndarray:
    return np.abs(np.asarray(a, np.float64))


def bits_out(attrs, arrays, in_bounds) -> dict:
    """The bounds of an op whose output is bits: none (it only compares)."""
    return {}


def same_bound(attrs, arrays, in_bounds) -> dict:
    """The bounds of an op whose output values are some of its input's (pools, flatten)."""
    return {"out": in_bounds[0]}


def input_bound(mean, std) -> float:
    """Bound of the normalised input ``(u - mean) / std`` over u in [0, 1]."""
    mean, std = abs64(mean), np.asarray(std, np.float64)
    dev = np.maximum(mean, np.abs(1.0 - np.asarray(mean, np.float64)))
    return float(np.max(dev / std, initial=0.0)) * rounding(0)
