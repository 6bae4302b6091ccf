"""``bnnlite-bench --layers``: each binary conv timed alone, against torch's FP32 conv.

Public names: time_layers.
"""
from __future__ import annotations

import time

import numpy as np

__all__ = ["time_layers"]


def _torch_conv(torch, batch, cin, h, w, cout, kh, kw, padding):
    """Median seconds of torch's FP32 conv of the same shape on the whole batch (channels_last)."""
    x = torch.randn(batch, cin, h, w).contiguous(memory_format=torch.channels_last)
    wt = torch.randn(cout, cin, kh, kw).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        torch.nn.functional.conv2d(x, wt, padding=padding)
        tt = []
        for _ in range(3):
            t0 = time.perf_counter()
            torch.nn.functional.conv2d(x, wt, padding=padding)
            tt.append(time.perf_counter() - t0)
    return float(np.median(tt))


def time_layers(model_path, threads, batch) -> list[dict]:
    """One row per binary conv: bnnlite's time for ``batch`` images and its binary GMAC/s,
    and (if torch is installed) torch's time for the same conv and the per-image speed-up.

    bnnlite runs the layer as the model does: chunk by chunk (``Model.chunk``
    images at a time, buffers planned once), output transform included, on the
    activations of a real batch.  Torch runs the same convolution on the whole
    batch at once (its fastest).
    """
    from ..graph import BConv2D
    from ..model import Model
    from .evalset import load_eval_set
    m = Model.load(model_path, threads=threads, backend="cython")
    step = min(m.chunk, m.graph.max_chunk or m.chunk, batch)
    images, _ = load_eval_set(None, step)
    m.logits(images)  # one chunk through the graph: its buffers now hold real activations
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    n_chunks = -(-batch // step)
    rows = []
    for op, call in m.graph.bound_ops(step, threads):
        if not isinstance(op, BConv2D):
            continue
        h, w, cin = op.in_shape
        ho, wo, cout = op.conv_out_shape  # before a fused max-pool
        kh, kw = op.attrs["kh"], op.attrs["kw"]
        per_image = ho * wo * cout * kh * kw * cin
        call()
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(n_chunks):
                call()
            ts.append(time.perf_counter() - t0)
        tb = float(np.median(ts))
        row = {"layer": op.name, "shape": f"{h}x{w}x{cin}->{cout}", "chunk": step,
               "kernel": f"{kh}x{kw}/{op.attrs['stride']}",
               "bnnlite_ms": 1e3 * tb, "binary_gmacs": n_chunks * step * per_image / tb / 1e9}
        if torch is not None:
            tf = _torch_conv(torch, batch, cin, h, w, cout, kh, kw, op.attrs["padding"])
            row.update(torch_ms=1e3 * tf, torch_gmacs=batch * per_image / tf / 1e9,
                       speedup=(tf / batch) / (tb / (n_chunks * step)))
        rows.append(row)
    return rows
