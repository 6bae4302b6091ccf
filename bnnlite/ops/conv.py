"""``conv2d``: the real-valued convolution (the first layer, fp32 models), with BN folded in.

Public names: Conv2D, CONV2D, conv_output_shape, folded_conv_weight.

Bundle: attrs cin, cout, kh, kw, stride, padding, activation (none | relu);
datasets ``weight`` float32 (kh, kw, cin, cout), ``bias`` float32 (cout) and,
from format 3, ``multiplier`` float32 (cout): y = fma(conv, multiplier, bias)
(format 2: y = conv + bias).
"""
from __future__ import annotations

import numpy as np

from ..bounds import abs64, rounding
from .registry import Inferred, OpKind, SchemaError, register
from .runtime import RuntimeOp

__all__ = ["Conv2D", "CONV2D", "conv_output_shape", "folded_conv_weight"]

CONV_ATTRS = {"cin": 1, "cout": 1, "kh": 1, "kw": 1, "stride": 1, "padding": 0}


def conv_output_shape(attrs, shape) -> tuple:
    """(Ho, Wo, cout) of a conv with ``attrs`` (cin, cout, kh, kw, stride, padding) on an
    (H, W, cin) input; SchemaError if the input has other channels or the kernel does not fit."""
    if len(shape) != 3 or shape[2] != attrs["cin"]:
        raise SchemaError(f"input shape {shape} does not have cin={attrs['cin']} channels")
    kh, kw, p, s = attrs["kh"], attrs["kw"], attrs["padding"], attrs["stride"]
    h, w = shape[0] + 2 * p, shape[1] + 2 * p
    if kh > h or kw > w or p >= max(kh, kw):
        raise SchemaError(f"kernel {kh}x{kw} with padding {p} does not fit input {shape}")
    return (h - kh) // s + 1, (w - kw) // s + 1, attrs["cout"]


def _infer(attrs, inputs):
    inputs.need("float")
    out = conv_output_shape(attrs, inputs.shapes[0])
    extra = {"multiplier": ("float32", ("cout",))} if inputs.version >= 3 else {}
    return Inferred(out, "float", extra)


def _bounds(attrs, arrays, in_bounds):
    w = abs64(arrays["weight"])
    n = attrs["kh"] * attrs["kw"] * attrs["cin"]
    acc = in_bounds[0] * w.reshape(n, -1).sum(axis=0) * rounding(n)
    mult = abs64(arrays["multiplier"]) if "multiplier" in arrays else 1.0
    y = (acc * mult + abs64(arrays["bias"])) * rounding(0)
    return {"conv sum": float(acc.max(initial=0.0)), "out": float(y.max(initial=0.0))}


def folded_conv_weight(rec) -> np.ndarray:
    """A ``conv2d`` op's weight as float32 OIHW with its multiplier folded in, for engines
    that compute ``conv + bias`` (ONNX, ``torch.nn.Conv2d``): the maths of
    ``fma(conv, multiplier, bias)`` with one rounding more.  Format 2 has no multiplier."""
    w = rec.arrays["weight"].transpose(3, 2, 0, 1)  # (KH,KW,Cin,Cout) -> OIHW
    if "multiplier" in rec.arrays:
        w = w * rec.arrays["multiplier"][:, None, None, None]
    return np.ascontiguousarray(w, np.float32)


class Conv2D(RuntimeOp):
    """Real-valued conv, then BN folded into a per-channel multiplier and bias
    (y = fma(conv, multiplier, bias), as PyTorch rounds conv -> BatchNorm;
    bundles of format 2 have no multiplier: y = conv + bias), optional ReLU.

    With at most DIRECT_MAX_CIN input channels (the first layer) it runs the
    backend's direct kernel (``Backend.conv_float``: fixed float order, the
    same bits on every backend, PyTorch's on an FMA CPU, and a following
    sign_pack fused in); otherwise im2col + BLAS (BLAS's summation order)."""
    kind = "float"
    DIRECT_MAX_CIN = 4

    def __init__(self, rec, shapes, backend):
        super().__init__(rec, shapes, backend)
        a = self.attrs
        self.w2d = np.ascontiguousarray(self.arrays["weight"].reshape(a["kh"] * a["kw"] * a["cin"], a["cout"]))
        self.w4d = self.w2d.reshape(a["kh"], a["kw"], a["cin"], a["cout"])
        self.bias = self.arrays["bias"]
        self.mult = self.arrays.get("multiplier")  # None in format-2 bundles
        self.direct = a["cin"] <= self.DIRECT_MAX_CIN
        self.fused_pack = None  # (tensor name, thresholds) once a sign_pack is fused in

    def describe(self):
        a = self.attrs
        s = f"{a['kh']}x{a['kw']}/{a['stride']} pad {a['padding']}, {a['activation']}"
        s += ", direct" if self.direct else ", im2col+BLAS"
        if self.fused_pack is not None:
            s += f", fused sign_pack -> {self.fused_pack[0]!r}"
        return s

    @property
    def pointwise(self) -> bool:
        """A 1x1, stride-1, unpadded im2col conv: its input (N, H, W, Cin) is
        already the (N, H*W, Cin) matrix, so there is no copy to make."""
        a = self.attrs
        return (not self.direct and a["kh"] == a["kw"] == a["stride"] == 1
                and a["padding"] == 0)

    def scratch_bytes_per_image(self):
        a, (ho, wo, _) = self.attrs, self.out_shape
        if self.direct or self.pointwise:
            return 0
        return 4 * ho * wo * a["kh"] * a["kw"] * a["cin"]

    def scratch(self, n):
        a, (h, w, c) = self.attrs, self.in_shape
        ho, wo, _ = self.out_shape
        p = a["padding"]
        if self.pointwise:
            return None
        sc = {}
        if self.direct or p:
            sc["pad"] = np.zeros((n, h + 2 * p, w + 2 * p, c), np.float32)
        if not self.direct:
            sc["cols"] = np.empty((n, ho, wo, a["kh"], a["kw"], c), np.float32)
        return sc

    def bind(self, t, ctx):
        if not self.direct:
            return self._bind_im2col(t, ctx)
        a, (h, w, _) = self.attrs, self.in_shape
        p, pad, src = a["padding"], ctx.scratch[self.name]["pad"], t[self.inputs[0]]
        interior = pad[:, p:p + h, p:p + w]
        out_bits = next_thr = None
        if self.fused_pack is not None:
            out_bits, next_thr = t[self.fused_pack[0]], self.fused_pack[1]
        conv = ctx.backend.conv_float(pad, self.w4d, self.bias, a["stride"], a["activation"] == "relu",
                                      t[self.outputs[0]], out_bits, next_thr, ctx.threads,
                                      mult=self.mult, bind=True)

        def call():
            interior[...] = src
            conv()
        return call

    def _bind_im2col(self, t, ctx):
        """im2col (none for a pointwise conv), one BLAS product per image, then
        the backend's fma epilogue (``Backend.fma_epilogue``: fma(y, mult, bias),
        relu) on the output in place.  Format 2 (no multiplier): mult = 1, and
        fma(y, 1, bias) is y + bias exactly."""
        a, (h, w, cin) = self.attrs, self.in_shape
        p, s = a["padding"], a["stride"]
        ho, wo, cout = self.out_shape
        src, out = t[self.inputs[0]], t[self.outputs[0]]
        n = out.shape[0]
        # One (Ho*Wo, K) @ (K, Cout) product per image, so an image's result does not
        # depend on the batch it came in (BLAS picks different kernels for other M).
        out3 = out.reshape(n, ho * wo, cout)
        mult = self.mult if self.mult is not None else np.ones(cout, np.float32)
        epilogue = ctx.backend.fma_epilogue(out3.reshape(-1, cout), mult, self.bias,
                                            a["activation"] == "relu", ctx.threads, bind=True)
        if self.pointwise:
            def call():
                np.matmul(src.reshape(n, h * w, cin), self.w2d, out=out3)
                epilogue()
            return call
        sc = ctx.scratch[self.name]
        cols = sc["cols"]
        pad = sc["pad"] if p else src
        windows = [(cols[:, :, :, i, j], pad[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s])
                   for i in range(a["kh"]) for j in range(a["kw"])]
        lhs = cols.reshape(n, ho * wo, -1)

        def call():
            if p:
                pad[:, p:p + h, p:p + w] = src
            for dst, win in windows:
                dst[...] = win
            np.matmul(lhs, self.w2d, out=out3)
            epilogue()
        return call


def _to_onnx(g, rec):
    a, p, n = rec.attrs, rec.attrs["padding"], rec.name
    relu = a["activation"] == "relu"
    w, b = g.const(n + "_w", folded_conv_weight(rec)), g.const(n + "_b", rec.arrays["bias"])
    y = g.node("Conv", [rec.inputs[0], w, b], [n + "_pre" if relu else rec.outputs[0]],
               kernel_shape=[a["kh"], a["kw"]], strides=[a["stride"]] * 2, pads=[p] * 4)
    if relu:
        g.node("Relu", [y], [rec.outputs[0]])


def _to_torch(rec, bundle):
    import torch
    from torch import nn
    a = rec.attrs
    conv = nn.Conv2d(a["cin"], a["cout"], (a["kh"], a["kw"]), a["stride"], a["padding"])
    conv.weight.data = torch.from_numpy(folded_conv_weight(rec))
    conv.bias.data = torch.from_numpy(rec.arrays["bias"].copy())
    return nn.Sequential(conv, nn.ReLU()) if a["activation"] == "relu" else conv


CONV2D = register(OpKind(
    "conv2d", Conv2D, _infer, _bounds, int_attrs=CONV_ATTRS, str_attrs={"activation": ("none", "relu")},
    datasets={"weight": ("float32", ("kh", "kw", "cin", "cout")), "bias": ("float32", ("cout",))},
    to_onnx=_to_onnx, to_torch=_to_torch))
