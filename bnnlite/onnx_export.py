"""Translate a bundle into standard ONNX ops (needs the ``onnx`` package).

Public names: bundle_to_onnx, bundle_to_onnx_model.

The ONNX graph takes the *normalised* float32 NCHW batch ``input`` and gives
``logits``.  Each op kind's translation lives in its module under
bnnlite/ops/ (``OpKind.to_onnx``) and writes into an :class:`OnnxGraph`.
Binary layers become what a generic engine can run -- the prototype's "ONNX
BNN": each bits tensor has a +-1 float stand-in (``Sign`` of the thresholded
activations) and a binary conv is a float ``Conv`` on it (bnnlite/ops/binary.py).

ONNX ``Sign(0)`` is 0 where bnnlite's is +1; it only matters for an
activation exactly equal to its threshold, which float data practically
never hits.  Use it for benchmarks and ONNX tools; bnnlite is the exact path.
"""
from __future__ import annotations

import numpy as np

from .bundle import INPUT, OUTPUT, read_bundle
from .ops import lookup

__all__ = ["bundle_to_onnx", "bundle_to_onnx_model"]


class OnnxGraph:
    """What the op kinds' ``to_onnx(g, rec)`` write into: nodes and initialisers (named
    after the op), the bundle's tensor shapes, and ``pm1``: bits tensor name -> the
    name of its +-1 float NCHW stand-in."""

    def __init__(self, shapes):
        from onnx import helper, numpy_helper
        self._helper, self._numpy_helper = helper, numpy_helper
        self.shapes, self.nodes, self.inits, self.pm1 = shapes, [], [], {}

    def const(self, name, arr):
        self.inits.append(self._numpy_helper.from_array(np.asarray(arr), name))
        return name

    def node(self, op, ins, outs, **attrs):
        self.nodes.append(self._helper.make_node(op, ins, outs, **attrs))
        return outs[0]

    def per_channel(self, name, v):
        """A per-channel constant shaped to broadcast over NCHW."""
        return self.const(name, np.asarray(v, np.float32).reshape(1, -1, 1, 1))


def bundle_to_onnx_model(bundle, opset: int = 17):
    import onnx
    from onnx import TensorProto, helper

    g = OnnxGraph(bundle.shapes)
    for rec in bundle.ops:
        to_onnx = lookup(rec.op).to_onnx
        if to_onnx is None:
            raise ValueError(f"op {rec.op!r} has no ONNX translation")
        to_onnx(g, rec)

    h, w, c = bundle.header["input_shape"]
    graph = helper.make_graph(
        g.nodes, f"bnnlite_{bundle.header['architecture']}",
        [helper.make_tensor_value_info(INPUT, TensorProto.FLOAT, ["N", c, h, w])],
        [helper.make_tensor_value_info(OUTPUT, TensorProto.FLOAT, ["N", bundle.shapes[OUTPUT][0]])],
        initializer=g.inits)
    model = helper.make_model(graph, producer_name="bnnlite", opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 9)
    onnx.checker.check_model(model)
    return model


def bundle_to_onnx(bundle_path, onnx_path, opset: int = 17) -> None:
    """Read ``bundle_path`` and write the ONNX translation to ``onnx_path``."""
    import onnx
    onnx.save(bundle_to_onnx_model(read_bundle(bundle_path), opset), str(onnx_path))
