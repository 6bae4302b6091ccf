"""``flatten``: an (H, W, C) map to an H*W*C vector, in NHWC order.

Public names: Flatten, FLATTEN, flattened_shape.

Bundle: no attrs, no datasets.  At run time a reshape view of its input
buffer: planned as such, never run.
"""
from __future__ import annotations

import numpy as np

from ..bounds import same_bound
from .registry import Inferred, OpKind, register
from .runtime import RuntimeOp

__all__ = ["Flatten", "FLATTEN", "flattened_shape"]


def _infer(attrs, inputs):
    inputs.need("float")
    return Inferred((int(np.prod(inputs.shapes[0])),), "float")


class Flatten(RuntimeOp):
    """NHWC flatten: a view, no copy (its buffer is planned as a reshape)."""
    kind = "float"
    reshape_view = True

    def bind(self, t, ctx):
        return lambda: None


def flattened_shape(bundle, name):
    """The (H, W, C) shape that the vector ``name`` was flattened from, or None when no
    ``flatten`` made it: what a mirror in NCHW order permutes a following dense by."""
    rec = next((r for r in bundle.ops if r.outputs[0] == name), None)
    return bundle.shapes[rec.inputs[0]] if rec is not None and rec.op == "flatten" else None


def _to_onnx(g, rec):
    # bnnlite flattens NHWC; the ONNX tensors are NCHW.
    t = g.node("Transpose", [rec.inputs[0]], [rec.name + "_nhwc"], perm=[0, 2, 3, 1])
    g.node("Flatten", [t], [rec.outputs[0]], axis=1)


def _to_torch(rec, bundle):
    from torch import nn
    return nn.Flatten()  # NCHW order: the dense after it permutes its weight (dense.py)


FLATTEN = register(OpKind("flatten", Flatten, _infer, same_bound, to_onnx=_to_onnx, to_torch=_to_torch))
