"""Graph.bound_ops: each op alone, bound as Graph.run calls it."""
import numpy as np

import bnnlite


def test_bound_ops_called_in_order_compute_what_run_does():
    m = bnnlite.Model.pretrained()
    rng = np.random.default_rng(0)
    x, y = (rng.standard_normal((2,) + m.input_shape).astype(np.float32) for _ in range(2))
    want = m.graph.run(x, 1).copy()
    out = m.graph.run(y, 1)  # the output buffer, now holding y's logits
    pairs = m.graph.bound_ops(2, 1)
    assert [op for op, _ in pairs] == m.graph.ops
    m.graph.input_buffer(2)[...] = x
    for _, call in pairs:
        call()
    np.testing.assert_array_equal(out, want)
