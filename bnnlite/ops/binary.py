"""The binary ops: ``sign_pack`` (floats -> packed bits) and ``bconv2d`` (XNOR-popcount conv).

Public names: SignPack, BConv2D, SIGN_PACK, BCONV2D, pack_conv_weight.

Bundle:

* ``sign_pack``: attr channels; ``threshold`` float32 (channels): bit = x < threshold.
* ``bconv2d``: attrs cin, cout, kh, kw, stride, padding, output (float | bits),
  rprelu (optional bool); ``weight`` uint64 (cout, kh, kw, cw), cw = ceil(cin / 64),
  tail bits 0.  acc = K - 2 popcount(x XOR w) with +1 padding, K = kh kw cin;
  float: y = fma(acc * scale, multiplier, bias) (+ residual[c mod C_res]) (-> RPReLU),
  datasets ``scale`` (from format 3), ``multiplier``, ``bias`` [, ``rprelu_*``], float32 (cout);
  bits: bit = acc < ``threshold`` int32 (cout).

In ONNX, bits become their +-1 float stand-in: ``Sign`` of the thresholded
activations, a ``Pad`` with +1 (the padding convention) and a float ``Conv``
with the +-1 weights times scale * multiplier (one rounding fewer than
bnnlite's fma); an integer threshold becomes ``Sign(acc - thr + 0.5)``, exact
because acc and thr are integers.  ONNX ``Sign(0)`` is 0 where bnnlite's is
+1: it matters only for an activation exactly at its threshold.
"""
from __future__ import annotations

import numpy as np

from ..bitpack import WORD_BITS, WORD_DTYPE, pack_bits, unpack_bits, words_for
from ..bounds import abs64, bits_out, rounding
from .conv import CONV_ATTRS, conv_output_shape
from .registry import Inferred, OpKind, SchemaError, register
from .runtime import RuntimeOp

__all__ = ["SignPack", "BConv2D", "SIGN_PACK", "BCONV2D", "pack_conv_weight"]

_PER_COUT = ("float32", ("cout",))
_RPRELU = ("rprelu_gamma", "rprelu_beta", "rprelu_zeta")


def pack_conv_weight(w, flip=None) -> np.ndarray:
    """(Cout, Cin, KH, KW) latent weights -> the packed ``weight`` (Cout, KH, KW, Cw):
    bit = (w < 0) XOR flip[cout] (flip: the channels whose output sign is flipped)."""
    neg = (w < 0).transpose(0, 2, 3, 1)
    if flip is not None:
        neg = neg != flip[:, None, None, None]
    return pack_bits(np.where(neg, -1.0, 1.0), 0.0)


# ---------------------------------------------------------------- sign_pack
def _sign_pack_infer(attrs, inputs):
    inputs.need("float")
    shape = inputs.shapes[0]
    if len(shape) != 3 or shape[-1] != attrs["channels"]:
        raise SchemaError(f"input of shape {shape} is not an (H, W, C) map with "
                          f"C = channels = {attrs['channels']}")
    return Inferred(shape, "bits")


class SignPack(RuntimeOp):
    """bits = x < threshold, packed along channels."""
    kind = "bits"
    bits = 1

    def bind(self, t, ctx):
        return ctx.backend.pack(t[self.inputs[0]], self.arrays["threshold"], t[self.outputs[0]],
                                ctx.threads, bind=True)


def _sign_pack_onnx(g, rec):
    d = g.node("Sub", [rec.inputs[0], g.per_channel(rec.name + "_t", rec.arrays["threshold"])], [rec.name + "_d"])
    g.pm1[rec.outputs[0]] = g.node("Sign", [d], [rec.outputs[0]])


def _sign_pack_torch(rec, bundle):
    """Bits as +-1 floats (bit 1 = -1), as the ONNX form and the training code hold them."""
    import torch
    from torch import nn

    class SignPM1(nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("t", torch.from_numpy(rec.arrays["threshold"].copy()).view(1, -1, 1, 1))

        def forward(self, x):
            return torch.where(x < self.t, -1.0, 1.0)
    return SignPM1()


SIGN_PACK = register(OpKind(
    "sign_pack", SignPack, _sign_pack_infer, bits_out,
    int_attrs={"channels": 1}, datasets={"threshold": ("float32", ("channels",))}, to_onnx=_sign_pack_onnx,
    to_torch=_sign_pack_torch))


# ---------------------------------------------------------------- bconv2d
def _bconv2d_infer(attrs, inputs):
    inputs.need("bits")
    out = conv_output_shape(attrs, inputs.shapes[0])
    attrs["cw"] = words_for(attrs["cin"])
    if attrs["output"] == "bits":
        if len(inputs.shapes) == 2:
            raise SchemaError("a residual input needs output='float'")
        return Inferred(out, "bits", {"threshold": ("int32", ("cout",))})
    datasets = {"multiplier": _PER_COUT, "bias": _PER_COUT}
    if inputs.version >= 3:
        datasets["scale"] = _PER_COUT
    if inputs.raw_attrs.get("rprelu", False) is True:
        attrs["rprelu"] = True
        datasets.update(dict.fromkeys(_RPRELU, _PER_COUT))
    if len(inputs.shapes) == 2:
        rs, rk = inputs.shapes[1], inputs.kinds[1]
        if rk != "float" or len(rs) != 3 or rs[:2] != out[:2] or attrs["cout"] % rs[2]:
            raise SchemaError(f"residual {inputs.names[1]!r} of shape {rs} does not fit "
                              f"output {out} (same H, W; cout a multiple of its channels)")
    return Inferred(out, "float", datasets)


def _bconv2d_check_arrays(attrs, arrays):
    tail = attrs["cw"] * WORD_BITS - attrs["cin"]
    if tail and np.any(arrays["weight"][..., -1] >> np.uint64(WORD_BITS - tail)):
        raise SchemaError("packed weight has non-zero tail bits (must be 0)")


def _bconv2d_bounds(attrs, arrays, in_bounds):
    if attrs["output"] == "bits":
        return {}
    k = attrs["kh"] * attrs["kw"] * attrs["cin"]
    if "scale" in arrays:
        scale, mult = abs64(arrays["scale"]), abs64(arrays["multiplier"])
    else:  # format 2: y = acc * multiplier + bias
        scale, mult = abs64(arrays["multiplier"]), 1.0
    t = k * scale * rounding(0)
    y = (t * mult + abs64(arrays["bias"])) * rounding(0)
    out = {"acc * scale": float(t.max(initial=0.0))}
    if len(in_bounds) > 1:
        y = (y + in_bounds[1]) * rounding(0)
    if attrs.get("rprelu"):
        out["before rprelu"] = float(y.max(initial=0.0))
        g, b, z = (abs64(arrays[name]) for name in _RPRELU)
        y = (np.maximum(1.0, b) * (y + g) + z) * rounding(0)
    out["out"] = float(y.max(initial=0.0))
    return out


class BConv2D(RuntimeOp):
    """XNOR-popcount conv: acc = K - 2*popcount(x XOR w), then the folded output transform
    (float: y = fma(acc * scale, multiplier, bias) [+ residual] [-> RPReLU];
    bits: acc < threshold)."""
    kind = "?"
    bits = 1

    def __init__(self, rec, shapes, backend):
        super().__init__(rec, shapes, backend)
        a = self.attrs
        self.kind = "bits" if a["output"] == "bits" else "float"
        self.bits_border = a["padding"]  # its input is stored padded: padding costs no pass
        self.k_bits = a["kh"] * a["kw"] * a["cin"]
        self.prepared = backend.prepare_weights(self.arrays["weight"], cin=a["cin"])
        if self.kind == "float" and "scale" not in self.arrays:
            # Format 2: y = acc * multiplier + bias, two roundings; the same floats
            # as fma(acc * scale, 1, bias) with scale = that multiplier.
            self.arrays = {**self.arrays, "scale": self.arrays["multiplier"],
                           "multiplier": np.ones_like(self.arrays["multiplier"])}
        self.rprelu = None
        if a.get("rprelu"):
            self.rprelu = tuple(self.arrays[name] for name in _RPRELU)
        self.fused_pack = None  # (tensor name, thresholds) once a sign_pack is fused in
        self.pool = False       # True once the following 2x2 max-pool is fused in
        self.conv_out_shape = self.out_shape  # before pooling (for MAC counts)

    def describe(self):
        a = self.attrs
        s = f"{a['kh']}x{a['kw']}/{a['stride']} pad {a['padding']}, out={a['output']}"
        if len(self.inputs) > 1:
            s += f", +residual {self.inputs[1]!r}"
        if self.rprelu is not None:
            s += ", rprelu"
        if self.pool:
            s += ", fused maxpool2d"
        if self.fused_pack is not None:
            s += f", fused sign_pack -> {self.fused_pack[0]!r}"
        return s

    def bind(self, t, ctx):
        x = ctx.padded(self.inputs[0], self.attrs["padding"])
        if self.kind == "bits":
            return ctx.backend.bconv_bits(x, self.prepared, self.k_bits, self.attrs["stride"],
                                          self.arrays["threshold"], t[self.outputs[0]], ctx.threads,
                                          bind=True)
        res = t[self.inputs[1]] if len(self.inputs) > 1 else None
        out_bits = next_thr = None
        if self.fused_pack is not None:
            out_bits, next_thr = t[self.fused_pack[0]], self.fused_pack[1]
        return ctx.backend.bconv_float(x, self.prepared, self.k_bits, self.attrs["stride"],
                                       self.arrays["multiplier"], self.arrays["bias"], res, self.rprelu,
                                       t[self.outputs[0]], out_bits, next_thr, ctx.threads,
                                       pool=self.pool, scale=self.arrays["scale"], bind=True)


def _bconv2d_onnx(g, rec):
    a, ar, n, out = rec.attrs, rec.arrays, rec.name, rec.outputs[0]
    p = a["padding"]
    w = unpack_bits(ar["weight"], a["cin"]).transpose(0, 3, 1, 2)  # (Cout,KH,KW,Cin) -> OIHW, +-1
    xin = g.pm1[rec.inputs[0]]
    if p:
        pads = g.const(n + "_pads", np.array([0, 0, p, p, 0, 0, p, p], np.int64))
        xin = g.node("Pad", [xin, pads, g.const(n + "_one", np.array(1.0, np.float32))], [n + "_pad"],
                     mode="constant")
    conv = {"kernel_shape": [a["kh"], a["kw"]], "strides": [a["stride"]] * 2}
    if a["output"] == "bits":
        acc = g.node("Conv", [xin, g.const(n + "_w", w.astype(np.float32))], [n + "_acc"], **conv)
        # bit 1 (-1) iff acc < thr:  Sign(acc - thr + 0.5) is -1 exactly then.
        shift = g.per_channel(n + "_shift", 0.5 - ar["threshold"].astype(np.float64))
        d = g.node("Add", [acc, shift], [n + "_d"])
        g.pm1[out] = g.node("Sign", [d], [out])
        return
    m = ar["multiplier"] * ar.get("scale", 1.0)
    wf = (w * m[:, None, None, None]).astype(np.float32)
    y = g.node("Conv", [xin, g.const(n + "_w", wf), g.const(n + "_b", ar["bias"])], [n + "_y"], **conv)
    if len(rec.inputs) > 1:
        res = rec.inputs[1]
        rep = a["cout"] // g.shapes[res][2]
        if rep > 1:
            res = g.node("Concat", [res] * rep, [n + "_rep"], axis=1)
        y = g.node("Add", [y, res], [n + "_sum"])
    if a.get("rprelu"):
        t = g.node("Sub", [y, g.per_channel(n + "_g", ar["rprelu_gamma"])], [n + "_t"])
        t = g.node("PRelu", [t, g.per_channel(n + "_s", ar["rprelu_beta"])], [n + "_pr"])
        y = g.node("Add", [t, g.per_channel(n + "_z", ar["rprelu_zeta"])], [n + "_act"])
    g.node("Identity", [y], [out])


def _bconv2d_torch(rec, bundle):
    """The binary conv as PyTorch FP32 computes it without bit kernels: a float conv of the +-1
    input (padded with +1) and the +-1 weights, then the op's output transform; the
    baseline ``bnnlite-bench``'s torch-fp32 engine runs for a binary bundle."""
    import torch
    import torch.nn.functional as F
    from torch import nn
    a, ar = rec.attrs, rec.arrays
    w = unpack_bits(ar["weight"], a["cin"]).transpose(0, 3, 1, 2).astype(np.float32)  # OIHW, +-1
    p, s = a["padding"], a["stride"]

    class BConvPM1(nn.Module):
        def __init__(self):
            super().__init__()
            if a["output"] == "bits":
                self.register_buffer("w", torch.from_numpy(w))
                self.register_buffer("thr", torch.from_numpy(ar["threshold"].astype(np.float32)).view(1, -1, 1, 1))
                return
            m = ar["multiplier"] * ar.get("scale", 1.0)
            self.register_buffer("w", torch.from_numpy((w * m[:, None, None, None]).astype(np.float32)))
            self.register_buffer("b", torch.from_numpy(ar["bias"].copy()))
            if a.get("rprelu"):
                for name in _RPRELU:
                    self.register_buffer(name, torch.from_numpy(ar[name].copy()).view(1, -1, 1, 1))

        def forward(self, x, res=None):
            if p:
                x = F.pad(x, (p, p, p, p), value=1.0)
            if a["output"] == "bits":
                return torch.where(F.conv2d(x, self.w, stride=s) < self.thr, -1.0, 1.0)
            y = F.conv2d(x, self.w, self.b, stride=s)
            if res is not None:
                y = y + res.repeat(1, y.shape[1] // res.shape[1], 1, 1)
            if a.get("rprelu"):
                t = y - self.rprelu_gamma
                y = torch.where(t >= 0, t, self.rprelu_beta * t) + self.rprelu_zeta
            return y
    return BConvPM1()


BCONV2D = register(OpKind(
    "bconv2d", BConv2D, _bconv2d_infer, _bconv2d_bounds, inputs=(1, 2), int_attrs=CONV_ATTRS,
    str_attrs={"output": ("float", "bits")}, datasets={"weight": (WORD_DTYPE.name, ("cout", "kh", "kw", "cw"))},
    check_arrays=_bconv2d_check_arrays, to_onnx=_bconv2d_onnx, to_torch=_bconv2d_torch))
