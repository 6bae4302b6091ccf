"""``dense``: the float classifier, y = x W^T + b.

Public names: Dense, DENSE.

Bundle: attrs units_in, units_out; ``weight`` float32 (units_out, units_in),
``bias`` float32 (units_out).  A weight that follows a flatten is in
NHWC-flatten order.
"""
from __future__ import annotations

import numpy as np

from ..bounds import abs64, rounding
from .registry import Inferred, OpKind, SchemaError, register
from .runtime import RuntimeOp
from .shape import flattened_shape

__all__ = ["Dense", "DENSE"]


def _infer(attrs, inputs):
    inputs.need("float")
    if inputs.shapes[0] != (attrs["units_in"],):
        raise SchemaError(f"input shape {inputs.shapes[0]} is not ({attrs['units_in']},)")
    return Inferred((attrs["units_out"],), "float")


def _bounds(attrs, arrays, in_bounds):
    w = abs64(arrays["weight"])
    y = (in_bounds[0] * w.sum(axis=1) + abs64(arrays["bias"])) * rounding(attrs["units_in"])
    return {"out": float(y.max(initial=0.0))}


class Dense(RuntimeOp):
    kind = "float"

    def bind(self, t, ctx):
        out = t[self.outputs[0]]
        # Per image (a stack of 1 x units_in rows): batch-size independent, as in Conv2D.
        rows, out_rows = t[self.inputs[0]][:, None, :], out[:, None, :]
        wt, bias = self.arrays["weight"].T, self.arrays["bias"]

        def call():
            np.matmul(rows, wt, out=out_rows)
            np.add(out, bias, out=out)
        return call


def _to_onnx(g, rec):
    g.node("Gemm", [rec.inputs[0], g.const(rec.name + "_w", rec.arrays["weight"]),
                    g.const(rec.name + "_b", rec.arrays["bias"])], [rec.outputs[0]], transB=1)


def _to_torch(rec, bundle):
    import torch
    from torch import nn
    a, wt = rec.attrs, rec.arrays["weight"]
    lin = nn.Linear(a["units_in"], a["units_out"])
    hwc = flattened_shape(bundle, rec.inputs[0])
    if hwc is not None:  # bundle weights are in NHWC-flatten order; torch flattens NCHW.
        wt = wt.reshape((a["units_out"],) + tuple(hwc)).transpose(0, 3, 1, 2).reshape(a["units_out"], -1)
    lin.weight.data = torch.from_numpy(wt.copy())
    lin.bias.data = torch.from_numpy(rec.arrays["bias"].copy())
    return lin


DENSE = register(OpKind(
    "dense", Dense, _infer, _bounds, int_attrs={"units_in": 1, "units_out": 1},
    datasets={"weight": ("float32", ("units_out", "units_in")), "bias": ("float32", ("units_out",))},
    to_onnx=_to_onnx, to_torch=_to_torch))
