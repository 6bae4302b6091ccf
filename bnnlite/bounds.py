"""Value bounds: a loaded model cannot make inf or NaN from any legal input.

Public names: FLOAT32_MAX, input_bound, op_bounds, check_bounds.

Finite parameters are not enough: a scale of 3.4e38 is finite, but
``acc * scale`` overflows and every logit becomes NaN.  So the loader walks
the graph once with an upper bound on ``|value|`` of every float tensor and of
every intermediate an op computes, starting from the legal input range
(images in [0, 1] before normalisation), and refuses the bundle where a bound
passes the largest float32.  Each op's bound comes from its formula
(docs/format.md, "Value bounds"):

* input  ``x = (u - mean) / std``, u in [0, 1]:   max(|mean|, |1 - mean|) / std
* conv2d ``acc = sum of x w``:  X * sum|w| per output channel (its L1 norm);
  ``y = acc * multiplier + bias``: |acc| |multiplier| + |bias|; ReLU adds nothing
* bconv2d (float) ``acc`` is an integer in [-K, K], K = kh kw cin:
  ``t = acc * scale``: K |scale|;  ``y = t * multiplier + bias``: |t| |multiplier| + |bias|;
  plus the residual's bound;  RPReLU ``beta (y - gamma) + zeta``:
  max(1, |beta|) (|y| + |gamma|) + |zeta|
* dense  ``x W^T + b``: X * sum|W| per output row + |b|
* max-pools and flatten keep the bound; sign_pack and bit ops end it (bits).

Each bound is the exact-arithmetic one times the worst growth of float32
rounding: every computed partial sum of n terms is at most (1 + 2^-24)^n times
the sum of their magnitudes (any summation order, FMA or not), and an op adds
a few more roundings.  So a bound at or under FLOAT32_MAX means no value
computed in float32 can overflow, whatever the summation order of the backend.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["FLOAT32_MAX", "input_bound", "op_bounds", "check_bounds"]

FLOAT32_MAX = float(np.finfo(np.float32).max)
_U = 2.0 ** -24  # unit roundoff of float32


def _rounding(n_terms: int) -> float:
    """Upper bound of (1 + u)^(n + 4): a sum of n terms plus the op's few other roundings."""
    return math.exp((n_terms + 4) * _U * (1 + _U))


def _abs64(a) -> np.ndarray:
    return np.abs(np.asarray(a, np.float64))


def input_bound(mean, std) -> float:
    """Bound of the normalised input ``(u - mean) / std`` over u in [0, 1]."""
    mean, std = _abs64(mean), np.asarray(std, np.float64)
    dev = np.maximum(mean, np.abs(1.0 - np.asarray(mean, np.float64)))
    return float(np.max(dev / std, initial=0.0)) * _rounding(0)


def op_bounds(op: str, attrs: dict, arrays: dict, in_bounds: list) -> dict:
    """{quantity: bound} of one op, given the bounds of its float inputs (None for bits).

    The key ``"out"`` is the bound of the op's float output (absent for bits)."""
    x = in_bounds[0] if in_bounds else None
    if op in ("maxpool2d", "flatten"):
        return {"out": x}
    if op in ("sign_pack", "bmaxpool2d"):
        return {}
    if op == "conv2d":
        w = _abs64(arrays["weight"])
        n = attrs["kh"] * attrs["kw"] * attrs["cin"]
        acc = x * w.reshape(n, -1).sum(axis=0) * _rounding(n)
        mult = _abs64(arrays["multiplier"]) if "multiplier" in arrays else 1.0
        y = (acc * mult + _abs64(arrays["bias"])) * _rounding(0)
        return {"conv sum": float(acc.max(initial=0.0)), "out": float(y.max(initial=0.0))}
    if op == "bconv2d":
        if attrs["output"] == "bits":
            return {}
        k = attrs["kh"] * attrs["kw"] * attrs["cin"]
        if "scale" in arrays:
            scale, mult = _abs64(arrays["scale"]), _abs64(arrays["multiplier"])
        else:  # format 2: y = acc * multiplier + bias
            scale, mult = _abs64(arrays["multiplier"]), 1.0
        t = k * scale * _rounding(0)
        y = (t * mult + _abs64(arrays["bias"])) * _rounding(0)
        out = {"acc * scale": float(t.max(initial=0.0))}
        if len(in_bounds) > 1:
            y = (y + in_bounds[1]) * _rounding(0)
        if attrs.get("rprelu"):
            out["before rprelu"] = float(y.max(initial=0.0))
            g, b, z = (_abs64(arrays[k_]) for k_ in ("rprelu_gamma", "rprelu_beta", "rprelu_zeta"))
            y = (np.maximum(1.0, b) * (y + g) + z) * _rounding(0)
        out["out"] = float(y.max(initial=0.0))
        return out
    if op == "dense":
        w = _abs64(arrays["weight"])
        n = attrs["units_in"]
        y = (x * w.sum(axis=1) + _abs64(arrays["bias"])) * _rounding(n)
        return {"out": float(y.max(initial=0.0))}
    raise AssertionError(op)


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
