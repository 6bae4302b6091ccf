"""Value bounds: a loaded model cannot make inf or NaN from any legal input.

Public names: FLOAT32_MAX, input_bound, op_bounds, check_bounds, and for the
op modules rounding, abs64, bits_out, same_bound.

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

__all__ = ["FLOAT32_MAX", "input_bound", "op_bounds", "check_bounds", "rounding", "abs64", "bits_out", "same_bound"]

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


def op_bounds(op: str, attrs: dict, arrays: dict, in_bounds: list) -> dict:
    """{quantity: bound} of one op, given the bounds of its float inputs (None for bits).

    The key ``"out"`` is the bound of the op's float output (absent for bits)."""
    from .ops import lookup  # here, not at the top: the op modules import this one
    return lookup(op).bounds(attrs, arrays, in_bounds)


def check_bounds(header: dict, ops, error, path) -> dict:
    """Walk ``ops`` (OpRecords in order) from the input bound; raise ``error`` naming the op
    and the quantity whose bound passes FLOAT32_MAX.  Returns {tensor: bound}."""
    x = input_bound(header["normalization_mean"], header["normalization_std"])
    if not x <= FLOAT32_MAX:
        raise error(f"{path}: normalization_mean/std let the normalised input reach {x:.3g}, "
                    f"beyond float32 ({FLOAT32_MAX:.4g}): std too small")
    bounds = {"input": x}
    for i, rec in enumerate(ops):
        got = op_bounds(rec.op, rec.attrs, rec.arrays, [bounds.get(s) for s in rec.inputs])
        for what, b in got.items():
            if b is not None and not b <= FLOAT32_MAX:
                raise error(f"{path}: op {i} ({rec.name!r}): its values can reach {b:.3g} in "
                            f"{'the output' if what == 'out' else what!r}, beyond float32 "
                            f"({FLOAT32_MAX:.4g}) for inputs in the legal range; parameters too large")
        if "out" in got:
            bounds[rec.outputs[0]] = got["out"]
    return bounds
