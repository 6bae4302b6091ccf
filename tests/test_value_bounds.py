"""The loader's value bounds, op by op: the largest accepted parameter gives finite outputs
on the worst legal input, and a parameter 1% larger is refused -- and would overflow
(bnnlite/bounds.py, docs/format.md "Value bounds").

Each case is a tiny bundle whose output is proportional to one knob (a weight, a scale,
a slope, a bias, the input's 1/std).  The largest accepted knob is found by bisection
through ``read_bundle`` itself (the test does not reuse the bound formulas), then:

* at that knob the model loads and the worst legal image (all 255, or all 0) gives
  finite logits, within 1% of float32's largest value in the tested tensor;
* at the knob times 1.002 the bundle is refused;
* the same arrays 1% past the knob, run without the check (``Model(Bundle)``), give
  inf or NaN: the bound is what keeps the outputs finite, not a margin far away.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

from bnnlite import Model
from bnnlite.bundle import BundleError, OpRecord, read_bundle, write_bundle

FMAX = float(np.finfo(np.float32).max)
TINY = 2.0 ** -100  # the read-out dense: keeps the logits far below the tested tensor's bound


def _header(hwc, std=1.0):
    c = hwc[2]
    return {"producer": "test", "architecture": "test", "input_shape": list(hwc), "input_layout": "NHWC",
            "normalization_mean": [0.0] * c, "normalization_std": [std] * c, "class_names": [],
            "config": {}, "metrics": {}}


def _readout(src, n):
    """flatten ``src`` (n values) -> logits = TINY * x (one logit per value)."""
    return [OpRecord("flatten", "flatten", [src], ["flat"]),
            OpRecord("dense", "readout", ["flat"], ["logits"], {"units_in": n, "units_out": n},
                     {"weight": np.eye(n, dtype=np.float32) * np.float32(TINY), "bias": np.zeros(n, np.float32)})]


def _f(v, n=1):
    return np.full(n, v, np.float32)


# ---------------------------------------------------------------- the cases: knob -> (header, ops)
def _std_knob(build):
    build.std_knob = True  # the knob is 1/std (a bisection may pass float32's largest value)
    return build


@_std_knob
def case_input_std(k):
    # x = (u - 0) / std, u in [0, 1]: the knob is 1/std.
    return _header((1, 1, 1), std=float(np.float32(1.0 / k))), _readout("input", 1)


def _parameter_free(op, hwc, n_inputs, n_out):
    """``op`` on the input ``n_inputs`` times (pools, add, concat have no parameters: the input's
    range, 1/std, is the knob) -> the read-out of its ``n_out`` values."""
    attrs = {"size": 2, "stride": 2} if op == "avgpool2d" else {}
    return _std_knob(lambda k: (_header(hwc, std=float(np.float32(1.0 / k))),
                                [OpRecord(op, op, ["input"] * n_inputs, [op], attrs)] + _readout(op, n_out)))


def _conv(weight=1.0, mult=1.0, bias=0.0):
    # 2x2 image, one 2x2 conv without padding: acc = sum of the 4 taps (x = u in [0, 1]).
    rec = OpRecord("conv2d", "conv", ["input"], ["conv"],
                   {"cin": 1, "cout": 1, "kh": 2, "kw": 2, "stride": 1, "padding": 0, "activation": "none"},
                   {"weight": np.full((2, 2, 1, 1), weight, np.float32), "multiplier": _f(mult), "bias": _f(bias)})
    return _header((2, 2, 1)), [rec] + _readout("conv", 1)


def _bconv(scale=1.0, mult=1.0, bias=0.0, beta=None, gamma=0.0, zeta=0.0, negative=False, residual=False,
           std=1.0):
    # 64 channels, all bits 0 (u = 1 >= threshold 0.5); weight bits all 0 (acc = +K = 64) or all 1 (-K).
    attrs = {"cin": 64, "cout": 64, "kh": 1, "kw": 1, "stride": 1, "padding": 0, "output": "float"}
    arrays = {"weight": np.full((64, 1, 1, 1), np.uint64(2 ** 64 - 1) if negative else 0, np.uint64),
              "scale": _f(scale, 64), "multiplier": _f(mult, 64), "bias": _f(bias, 64)}
    if beta is not None:
        attrs["rprelu"] = True
        arrays.update(rprelu_gamma=_f(gamma, 64), rprelu_beta=_f(beta, 64), rprelu_zeta=_f(zeta, 64))
    ops = [OpRecord("sign_pack", "sign", ["input"], ["bits"], {"channels": 64},
                    {"threshold": _f(0.5 / std, 64)}),
           OpRecord("bconv2d", "bconv", ["bits", "input"] if residual else ["bits"], ["bconv"], attrs, arrays)]
    return _header((1, 1, 64), std=std), ops + _readout("bconv", 64)


def _dense(weight=1.0, bias=0.0):
    rec = OpRecord("dense", "dense", ["flat"], ["logits"], {"units_in": 4, "units_out": 1},
                   {"weight": np.full((1, 4), weight, np.float32), "bias": _f(bias)})
    return _header((2, 2, 1)), [OpRecord("flatten", "flatten", ["input"], ["flat"]), rec]


HALF = FMAX / 2
CASES = {
    # name: (build(knob), the tensor whose values the knob drives, worst-case image value)
    "input 1/std": (case_input_std, "input", 255),
    "conv2d weight": (lambda k: _conv(weight=k), "conv", 255),
    "conv2d multiplier": (lambda k: _conv(mult=k), "conv", 255),
    "conv2d bias": (lambda k: _conv(weight=HALF / 4, bias=k), "conv", 255),
    "bconv2d scale": (lambda k: _bconv(scale=k), "bconv", 255),
    "bconv2d multiplier": (lambda k: _bconv(mult=k), "bconv", 255),
    "bconv2d bias": (lambda k: _bconv(scale=HALF / 64, bias=k), "bconv", 255),
    "bconv2d residual": (lambda k: _bconv(scale=HALF / 64, residual=True, std=float(np.float32(1 / k))),
                         "bconv", 255),
    "rprelu beta": (lambda k: _bconv(beta=k, negative=True), "bconv", 255),
    "rprelu gamma": (lambda k: _bconv(scale=HALF / 64, beta=1.0, gamma=-k), "bconv", 255),
    "rprelu zeta": (lambda k: _bconv(scale=HALF / 64, beta=1.0, zeta=k), "bconv", 255),
    "dense weight": (lambda k: _dense(weight=k), "logits", 255),
    "dense bias": (lambda k: _dense(weight=HALF / 4, bias=k), "logits", 255),
    # Means: the sum of n inputs is what reaches float32's limit, so the mean reaches 1/n of it.
    "avgpool2d": (_parameter_free("avgpool2d", (2, 2, 1), 1, 1), "avgpool2d", 255, 1 / 4),
    "global_avgpool": (_parameter_free("global_avgpool", (3, 3, 1), 1, 1), "global_avgpool", 255, 1 / 9),
    "add": (_parameter_free("add", (1, 1, 2), 2, 2), "add", 255),
    "concat": (_parameter_free("concat", (1, 1, 2), 3, 6), "concat", 255),
}


def _accepted(build, k, path) -> bool:
    header, ops = build(k)
    write_bundle(path, header, ops)
    try:
        read_bundle(path)
        return True
    except BundleError as e:
        assert "beyond float32" in str(e), e
        return False


def _largest_accepted(build, path) -> float:
    # 3.4e38 would be a finite parameter; for 1/std it needs a subnormal std, so go past it.
    lo, hi = 1e-3, 1e39 if getattr(build, "std_knob", False) else 3.4e38
    assert _accepted(build, lo, path) and not _accepted(build, hi, path)
    for _ in range(40):
        mid = float(np.sqrt(lo * hi))
        lo, hi = (mid, hi) if _accepted(build, mid, path) else (lo, mid)
    return lo


def _tensor_after_run(model, name, value):
    x = np.full((1,) + model.input_shape, value, np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        logits = model.logits(x)
        t = model.graph.plan(1).tensors[name]
    return logits, np.abs(t.astype(np.float64)).max()


@pytest.mark.parametrize("case", list(CASES))
def test_bound_is_tight_and_safe(case, tmp_path):
    build, tensor, value, *frac = CASES[case]
    frac = frac[0] if frac else 1.0  # the tensor's share of float32's range at the bound
    path = tmp_path / "b.h5"
    k = _largest_accepted(build, path)
    # Accepted: finite logits on the worst legal image, and the tensor really gets near the limit.
    assert _accepted(build, k, path)
    model = Model.load(path)
    logits, peak = _tensor_after_run(model, tensor, value)
    assert np.isfinite(logits).all()
    assert 0.99 * FMAX * frac <= peak <= FMAX * frac, f"{case}: peak {peak:.4g} at the largest accepted knob {k:.4g}"
    # Slightly over: refused.
    assert not _accepted(build, k * 1.002, path)
    # 1% over, without the check: the outputs do overflow.
    header, ops = build(k * 1.01)
    write_bundle(path, *build(k))
    bundle = read_bundle(path)
    over = {rec.name: rec for rec in ops}
    bundle.header = dict(bundle.header, normalization_std=np.asarray(header["normalization_std"], np.float32))
    for rec in bundle.ops:
        rec.arrays = dict(over[rec.name].arrays)
    with warnings.catch_warnings():  # the byte table of an overflowing 1/std overflows too
        warnings.simplefilter("ignore", RuntimeWarning)
        model = Model(bundle)
    logits, _ = _tensor_after_run(model, tensor, value)
    assert not np.isfinite(logits).all(), f"{case}: 1% past the bound the outputs stayed finite"
