"""Load-time fusion of the runtime graph (bnnlite.graph), on the shipped
Bi-Real bundle: fused and unfused graphs give bit-identical logits on every
backend, and the fused ops are the expected ones."""
import numpy as np
import pytest

import bnnlite
from bnnlite import graph as G

BACKENDS = ["cython", "numba", "numpy"]


def _images(model, n, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n,) + model.input_shape, dtype=np.uint8)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_pool_and_pack_equal_unfused(backend, monkeypatch):
    try:
        fused = bnnlite.Model.pretrained(backend=backend)
    except ImportError as exc:
        pytest.skip(f"backend {backend} not available: {exc}")
    pooled = [op for op in fused.graph.ops if isinstance(op, G.BConv2D) and op.pool]
    assert pooled, "expected at least one bconv2d -> maxpool2d fusion"
    assert not any(isinstance(op, G.MaxPool2D) for op in fused.graph.ops)
    for op in pooled:
        assert op.out_shape[:2] == (op.conv_out_shape[0] // 2, op.conv_out_shape[1] // 2)
        assert "fused maxpool2d" in op.describe()
    monkeypatch.setattr(G.Graph, "_fuse_pool", lambda self: None)
    monkeypatch.setattr(G.Graph, "_fuse_sign_pack", lambda self: None)
    plain = bnnlite.Model.pretrained(backend=backend)
    x = _images(fused, 7)
    np.testing.assert_array_equal(fused.logits(x), plain.logits(x))
    np.testing.assert_array_equal(fused.logits(x[3]), plain.logits(x)[3])


def test_fused_outputs_are_planned():
    g = bnnlite.Model.pretrained().graph
    # A fused conv writes the pooled tensor, which is planned; the unpooled
    # one is gone from the plan.
    for op in g.ops:
        if isinstance(op, G.BConv2D) and op.pool:
            assert op.outputs[0] in g.shapes
            assert tuple(g.shapes[op.outputs[0]]) == tuple(op.out_shape)
