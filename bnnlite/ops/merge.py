"""The ops that merge branches: ``add`` (elementwise sum of two) and ``concat`` (along channels).

Public names: Add, Concat, ADD, CONCAT.

Bundle: no attrs, no datasets.

* ``add``: two float tensors of one shape -> their sum (one float32 rounding,
  as PyTorch's ``+``).  A sum right after a float-output binary conv is the
  conv's residual input instead (bnnlite/ops/binary.py); this op is for the
  other places (two real branches, a sum of sums).
* ``concat``: 2..MAX_CONCAT float (H, W, C_i) maps of one H, W -> (H, W, sum C_i),
  in input order (PyTorch's ``torch.cat(dim=1)``); exact.
"""
from __future__ import annotations

import numpy as np

from ..bounds import rounding
from .registry import Inferred, OpKind, SchemaError, register
from .runtime import RuntimeOp

__all__ = ["Add", "Concat", "ADD", "CONCAT", "MAX_CONCAT"]

MAX_CONCAT = 64


def _need_floats(inputs):
    for i in range(len(inputs.shapes)):
        inputs.need("float", i)


def _add_infer(attrs, inputs):
    _need_floats(inputs)
    a, b = inputs.shapes
    if a != b:
        raise SchemaError(f"inputs {inputs.names[0]!r} {a} and {inputs.names[1]!r} {b} differ in shape")
    return Inferred(a, "float")


def _add_bounds(attrs, arrays, in_bounds):
    return {"out": (in_bounds[0] + in_bounds[1]) * rounding(0)}


class Add(RuntimeOp):
    kind = "float"

    def bind(self, t, ctx):
        a, b, out = t[self.inputs[0]], t[self.inputs[1]], t[self.outputs[0]]
        return lambda: np.add(a, b, out=out)


def _concat_infer(attrs, inputs):
    _need_floats(inputs)
    shapes = inputs.shapes
    if any(len(s) != 3 or s[:2] != shapes[0][:2] for s in shapes):
        raise SchemaError(f"inputs of shapes {shapes} are not (H, W, C) maps of one H, W")
    return Inferred(shapes[0][:2] + (sum(s[2] for s in shapes),), "float")


def _concat_bounds(attrs, arrays, in_bounds):
    return {"out": max(in_bounds)}


class Concat(RuntimeOp):
    kind = "float"

    def bind(self, t, ctx):
        parts, out = [t[name] for name in self.inputs], t[self.outputs[0]]
        return lambda: np.concatenate(parts, axis=-1, out=out)


def _add_onnx(g, rec):
    g.node("Add", list(rec.inputs), [rec.outputs[0]])


def _concat_onnx(g, rec):
    g.node("Concat", list(rec.inputs), [rec.outputs[0]], axis=1)  # NCHW channels


def _add_torch(rec, bundle):
    from torch import nn

    class AddMirror(nn.Module):
        def forward(self, a, b):
            return a + b
    return AddMirror()


def _concat_torch(rec, bundle):
    import torch
    from torch import nn

    class ConcatMirror(nn.Module):
        def forward(self, *parts):
            return torch.cat(parts, dim=1)
    return ConcatMirror()


ADD = register(OpKind("add", Add, _add_infer, _add_bounds, inputs=(2, 2), to_onnx=_add_onnx, to_torch=_add_torch))
CONCAT = register(OpKind("concat", Concat, _concat_infer, _concat_bounds, inputs=(2, MAX_CONCAT),
                         to_onnx=_concat_onnx, to_torch=_concat_torch))
