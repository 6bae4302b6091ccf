"""The pools: 2x2 ``maxpool2d`` on floats, ``bmaxpool2d`` on packed bits, ``avgpool2d``
and ``global_avgpool`` on floats.

Public names: MaxPool2D, BMaxPool2D, AvgPool2D, GlobalAvgPool, MAXPOOL2D, BMAXPOOL2D,
AVGPOOL2D, GLOBAL_AVGPOOL, column_sum.

Bundle: the 2x2 pools have attrs size = 2, stride = 2 (an odd last row or
column is dropped, as PyTorch's floor mode does); no datasets.  On bits, bit
1 is -1, so the max of four is -1 only if all four are: the AND of the words.
``global_avgpool`` has no attrs: (H, W, C) -> (1, 1, C), the mean of each
channel (a ``flatten`` after it gives the (C,) vector).

Both average pools round as PyTorch's CPU kernels do on channels_last
tensors (what the exporter and the trainer feed), bit for bit:
``avg_pool2d(x, 2)`` is ((x00 + x01) + x10) + x11, then / 4, in float32;
``adaptive_avg_pool2d(x, 1)`` (= ``x.mean((2, 3))``) is PyTorch's cascade
sum over the H*W positions of each channel (:func:`column_sum`), then / (H*W).
"""
from __future__ import annotations

import numpy as np

from ..bounds import bits_out, rounding, same_bound
from .registry import Inferred, OpKind, SchemaError, register
from .runtime import RuntimeOp

__all__ = ["MaxPool2D", "BMaxPool2D", "AvgPool2D", "GlobalAvgPool", "MAXPOOL2D", "BMAXPOOL2D", "AVGPOOL2D",
           "GLOBAL_AVGPOOL", "column_sum"]

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


def _onnx_node(op, **attrs):
    """A to_onnx of one ONNX node ``op`` on the op's float input."""
    def to_onnx(g, rec):
        g.node(op, [rec.inputs[0]], [rec.outputs[0]], **attrs)
    return to_onnx


def _torch_layer(layer, *args):
    """A to_torch that builds ``torch.nn.<layer>(*args)`` (torch imported only when called)."""
    def to_torch(rec, bundle):
        from torch import nn
        return getattr(nn, layer)(*args)
    return to_torch


_POOL2 = {"kernel_shape": [2, 2], "strides": [2, 2]}


def _bmaxpool_onnx(g, rec):
    # The max of the +-1 stand-ins is the bits' max-pool.
    g.pm1[rec.outputs[0]] = g.node("MaxPool", [g.pm1[rec.inputs[0]]], [rec.outputs[0]], **_POOL2)


MAXPOOL2D = register(OpKind(
    "maxpool2d", MaxPool2D, _infer_on("float"), same_bound,
    int_attrs=_POOL_ATTRS, to_onnx=_onnx_node("MaxPool", **_POOL2), to_torch=_torch_layer("MaxPool2d", 2)))
BMAXPOOL2D = register(OpKind(
    "bmaxpool2d", BMaxPool2D, _infer_on("bits"), bits_out,
    int_attrs=_POOL_ATTRS, to_onnx=_bmaxpool_onnx, to_torch=_torch_layer("MaxPool2d", 2)))  # on +-1


# ---------------------------------------------------------------- average pools
def _avg_bounds(attrs, arrays, in_bounds):
    # A mean of n values of |x| <= B: a float sum of n terms (up to n B: the partial sums
    # can overflow where the mean could not), then one division.
    n = attrs.get("hw", 4)
    return {"sum": in_bounds[0] * n * rounding(n), "out": in_bounds[0] * rounding(n)}


class AvgPool2D(RuntimeOp):
    """2x2 mean, stride 2: ((x00 + x01) + x10) + x11, then * 0.25 (exact, = / 4): the
    order of PyTorch's CPU ``avg_pool2d``, so the same float32 bits."""
    kind = "float"

    def bind(self, t, ctx):
        x, out = t[self.inputs[0]], t[self.outputs[0]]
        ho, wo = self.out_shape[:2]
        corners = [x[:, i:2 * ho:2, j:2 * wo:2] for i in (0, 1) for j in (0, 1)]

        def call():
            np.add(corners[0], corners[1], out=out)
            np.add(out, corners[2], out=out)
            np.add(out, corners[3], out=out)
            np.multiply(out, np.float32(0.25), out=out)
        return call


# PyTorch's CPU sum (aten/src/ATen/native/cpu/SumKernel.cpp) reduces the H*W rows of a
# channels_last map column by column: blocks of _BLOCK columns with one cascade each
# (multi_row_sum), the rest with four interleaved cascades (row_sum).  Its vector width is
# 8 floats here, on AVX2 and on AVX512 builds alike (checked against torch 2.x).
_BLOCK = 4 * 8
_LEVELS = 4


def _cascade(rows):
    """multi_row_sum: float32 sum over axis 0 of ``rows`` (S, ...), in PyTorch's order: runs
    of 2^p rows into level 0, carried up through _LEVELS levels, then the levels added."""
    s = rows.shape[0]
    p = max(4, (1 if s <= 2 else int(s - 1).bit_length()) // _LEVELS)
    step, mask = 1 << p, (1 << p) - 1
    acc = np.zeros((_LEVELS,) + rows.shape[1:], np.float32)
    i = 0
    while i + step <= s:
        for _ in range(step):
            acc[0] += rows[i]
            i += 1
        for j in range(1, _LEVELS):
            acc[j] += acc[j - 1]
            acc[j - 1] = 0
            if i & (mask << (j * p)):
                break
    for k in range(i, s):
        acc[0] += rows[k]
    for j in range(1, _LEVELS):
        acc[0] += acc[j]
    return acc[0]


def _row_sum(rows):
    """row_sum: four interleaved cascades (rows k, k+4, ...), the leftover rows, then combined."""
    s = rows.shape[0]
    n4 = s // 4
    part = [_cascade(rows[k:4 * n4:4]) for k in range(4)]
    for k in range(4 * n4, s):
        part[0] += rows[k]
    for k in range(1, 4):
        part[0] += part[k]
    return part[0]


def column_sum(rows) -> np.ndarray:
    """The float32 sum over axis 0 of ``rows`` (S, N, C), rounded as PyTorch's CPU sum of a
    channels_last map over its S = H*W positions (the ``mean`` behind ``adaptive_avg_pool2d``)."""
    c = rows.shape[-1]
    m = c // _BLOCK * _BLOCK
    if m == c:
        return _cascade(rows)
    return np.concatenate([_cascade(rows[..., :m]), _row_sum(rows[..., m:])], axis=-1)


def _gap_infer(attrs, inputs):
    inputs.need("float")
    shape = inputs.shapes[0]
    if len(shape) != 3:
        raise SchemaError(f"cannot pool input of shape {shape}: not an (H, W, C) map")
    attrs["hw"] = shape[0] * shape[1]  # derived: the terms of each sum (its value bound)
    return Inferred((1, 1, shape[2]), "float")


class GlobalAvgPool(RuntimeOp):
    """(H, W, C) -> (1, 1, C): the mean of each channel, as PyTorch rounds it (column_sum)."""
    kind = "float"

    def bind(self, t, ctx):
        x, out = t[self.inputs[0]], t[self.outputs[0]]
        h, w, c = self.in_shape
        hw = np.float32(h * w)

        def call():
            rows = x.reshape(len(x), h * w, c).transpose(1, 0, 2)  # (S, N, C)
            np.divide(column_sum(rows), hw, out=out.reshape(len(x), c))
        return call


AVGPOOL2D = register(OpKind(
    "avgpool2d", AvgPool2D, _infer_on("float"), _avg_bounds,
    int_attrs=_POOL_ATTRS, to_onnx=_onnx_node("AveragePool", **_POOL2), to_torch=_torch_layer("AvgPool2d", 2)))
GLOBAL_AVGPOOL = register(OpKind(
    "global_avgpool", GlobalAvgPool, _gap_infer, _avg_bounds, to_onnx=_onnx_node("GlobalAveragePool"),
    to_torch=_torch_layer("AdaptiveAvgPool2d", 1)))
