"""Translate a bundle into standard ONNX ops (needs the ``onnx`` package).

Public names: bundle_to_onnx, bundle_to_onnx_model.

The ONNX graph takes the *normalised* float32 NCHW batch ``input`` and gives
``logits``.  Binary layers become what a generic engine can run -- the
prototype's "ONNX BNN": ``Sign`` on the (thresholded) activations, a
``Pad`` with +1 (our padding convention), and a float ``Conv`` whose weights
are the +-1 values times scale * multiplier, plus the folded bias (one
rounding fewer than bnnlite's fma(acc * scale, multiplier, bias)).  Bits
produced by an integer threshold (XNOR-Net layers) become
``Sign(acc - thr + 0.5)``, exact because acc and thr are integers.

ONNX ``Sign(0)`` is 0 where bnnlite's is +1; it only matters for an
activation exactly equal to its threshold, which float data practically
never hits.  Use it for benchmarks and ONNX tools; bnnlite is the exact path.
"""
from __future__ import annotations

import numpy as np

from .bitpack import unpack_bits
from .bundle import INPUT, OUTPUT, folded_conv_weight, read_bundle

__all__ = ["bundle_to_onnx", "bundle_to_onnx_model"]


def bundle_to_onnx_model(bundle, opset: int = 17):
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    pm1 = {}  # bits tensor name -> name of its +-1 float NCHW tensor

    def const(name, arr):
        inits.append(numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(op, ins, outs, **attrs):
        nodes.append(helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    def per_channel(name, v):
        return const(name, np.asarray(v, np.float32).reshape(1, -1, 1, 1))

    for rec in bundle.ops:
        a, ar, n = rec.attrs, rec.arrays, rec.name
        x, out = rec.inputs[0], rec.outputs[0]
        if rec.op == "conv2d":
            p = a["padding"]
            y = node("Conv", [x, const(n + "_w", folded_conv_weight(rec)), const(n + "_b", ar["bias"])], [out if a["activation"] == "none" else n + "_pre"],
                     kernel_shape=[a["kh"], a["kw"]], strides=[a["stride"]] * 2, pads=[p] * 4)
            if a["activation"] == "relu":
                node("Relu", [y], [out])
        elif rec.op == "sign_pack":
            d = node("Sub", [x, per_channel(n + "_t", ar["threshold"])], [n + "_d"])
            pm1[out] = node("Sign", [d], [out])
        elif rec.op == "bconv2d":
            cin, p = a["cin"], a["padding"]
            w = unpack_bits(ar["weight"], cin).transpose(0, 3, 1, 2)  # (Cout,KH,KW,Cin) -> OIHW, +-1
            xin = pm1[x]
            if p:
                pads = const(n + "_pads", np.array([0, 0, p, p, 0, 0, p, p], np.int64))
                xin = node("Pad", [xin, pads, const(n + "_one", np.array(1.0, np.float32))], [n + "_pad"],
                           mode="constant")
            if a["output"] == "bits":
                acc = node("Conv", [xin, const(n + "_w", w.astype(np.float32))], [n + "_acc"],
                           kernel_shape=[a["kh"], a["kw"]], strides=[a["stride"]] * 2)
                # bit 1 (-1) iff acc < thr:  Sign(acc - thr + 0.5) is -1 exactly then.
                shift = per_channel(n + "_shift", 0.5 - ar["threshold"].astype(np.float64))
                d = node("Add", [acc, shift], [n + "_d"])
                pm1[out] = node("Sign", [d], [out])
                continue
            m = ar["multiplier"] * ar.get("scale", 1.0)
            wf = (w * m[:, None, None, None]).astype(np.float32)
            y = node("Conv", [xin, const(n + "_w", wf), const(n + "_b", ar["bias"])], [n + "_y"],
                     kernel_shape=[a["kh"], a["kw"]], strides=[a["stride"]] * 2)
            if len(rec.inputs) > 1:
                res = rec.inputs[1]
                rep = a["cout"] // bundle.shapes[res][2]
                if rep > 1:
                    res = node("Concat", [res] * rep, [n + "_rep"], axis=1)
                y = node("Add", [y, res], [n + "_sum"])
            if a.get("rprelu"):
                t = node("Sub", [y, per_channel(n + "_g", ar["rprelu_gamma"])], [n + "_t"])
                t = node("PRelu", [t, per_channel(n + "_s", ar["rprelu_beta"])], [n + "_pr"])
                y = node("Add", [t, per_channel(n + "_z", ar["rprelu_zeta"])], [n + "_act"])
            node("Identity", [y], [out])
        elif rec.op in ("maxpool2d", "bmaxpool2d"):
            src = x if rec.op == "maxpool2d" else pm1[x]
            y = node("MaxPool", [src], [out], kernel_shape=[2, 2], strides=[2, 2])
            if rec.op == "bmaxpool2d":
                pm1[out] = y
        elif rec.op == "flatten":
            # bnnlite flattens NHWC; the ONNX tensors are NCHW.
            t = node("Transpose", [x], [n + "_nhwc"], perm=[0, 2, 3, 1])
            node("Flatten", [t], [out], axis=1)
        elif rec.op == "dense":
            node("Gemm", [x, const(n + "_w", ar["weight"]), const(n + "_b", ar["bias"])], [out], transB=1)
        else:  # pragma: no cover - read_bundle only lets known ops through
            raise ValueError(f"op {rec.op!r} has no ONNX translation")

    h, w, c = bundle.header["input_shape"]
    graph = helper.make_graph(
        nodes, f"bnnlite_{bundle.header['architecture']}",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", bundle.shapes[OUTPUT][0]])],
        initializer=inits)
    model = helper.make_model(graph, producer_name="bnnlite", opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


def bundle_to_onnx(bundle_path, onnx_path, opset: int = 17) -> None:
    """Read ``bundle_path`` and write the ONNX translation to ``onnx_path``."""
    import onnx
    onnx.save(bundle_to_onnx_model(read_bundle(bundle_path), opset), str(onnx_path))
