"""The 2x2 max-pools: ``maxpool2d`` on floats, ``bmaxpool2d`` on packed bits.

Public names: MaxPool2D, BMaxPool2D, MAXPOOL2D, BMAXPOOL2D.

Bundle: attrs size = 2, stride = 2; no datasets.  On bits, bit 1 is -1, so
the max of four is -1 only if all four are: the AND of the words.
"""
from __future__ import annotations

from ..bounds import bits_out, same_bound
from .registry import Inferred, OpKind, SchemaError, register
from .runtime import RuntimeOp

__all__ = ["MaxPool2D", "BMaxPool2D", "MAXPOOL2D", "BMAXPOOL2D"]

_POOL_ATTRS = {"size": 1, "stride": 1}


def _infer_on(kind):
    def infer(attrs, inputs):
        inputs.need(kind)
        shape = inputs.shapes[0]
        if attrs["size"] != 2 or attrs["stride"] != 2:
            raise SchemaError("only size=2, stride=2 pooling is supported")
        if len(shape) != 3 or shape[0] < 2 or shape[1] < 2:
            raise SchemaError(f"cannot pool input of shape {shape}")
        return Inferred((shape[0] // 2, shape[1] // 2, shape[2]), kind)
    return infer


class MaxPool2D(RuntimeOp):
    kind = "float"

    def bind(self, t, ctx):
        return ctx.backend.maxpool2(t[self.inputs[0]], t[self.outputs[0]], ctx.threads, bind=True)


class BMaxPool2D(RuntimeOp):
    """Max-pool on bits: bit 1 is -1, so the max is -1 only if all four are: AND."""
    kind = "bits"
    bits = 1

    def bind(self, t, ctx):
        return ctx.backend.bmaxpool2(t[self.inputs[0]], t[self.outputs[0]], ctx.threads, bind=True)


def _maxpool_onnx(g, rec):
    g.node("MaxPool", [rec.inputs[0]], [rec.outputs[0]], kernel_shape=[2, 2], strides=[2, 2])


def _bmaxpool_onnx(g, rec):
    # The max of the +-1 stand-ins is the bits' max-pool.
    g.pm1[rec.outputs[0]] = g.node("MaxPool", [g.pm1[rec.inputs[0]]], [rec.outputs[0]],
                                   kernel_shape=[2, 2], strides=[2, 2])


def _maxpool_torch(rec, bundle):
    from torch import nn
    return nn.MaxPool2d(2)


MAXPOOL2D = register(OpKind(
    "maxpool2d", MaxPool2D, _infer_on("float"), same_bound,
    int_attrs=_POOL_ATTRS, to_onnx=_maxpool_onnx, to_torch=_maxpool_torch))
BMAXPOOL2D = register(OpKind(
    "bmaxpool2d", BMaxPool2D, _infer_on("bits"), bits_out,
    int_attrs=_POOL_ATTRS, to_onnx=_bmaxpool_onnx))
