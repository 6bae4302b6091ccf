"""The engines the benchmark compares, each as a ``run(images_uint8) -> logits`` callable.

Public names: ENGINES, missing, make_engine, torch_from_bundle.

* ``bnnlite``        -- the bundle on the compiled (Cython) kernels.
* ``bnnlite-numba``  -- the same bundle on the numba fallback.
* ``torch-fp32``     -- PyTorch FP32 on the fp32 bundle's weights (BN folded),
  the faster of NCHW and channels_last.
* ``ort-fp32``       -- ONNX Runtime on the fp32 bundle translated to ONNX.
* ``ort-bnn``        -- ONNX Runtime on the BNN bundle as Sign + float Conv.

torch and onnxruntime are imported only by the engines that use them.
"""
from __future__ import annotations

import time
from importlib.util import find_spec

import click
import numpy as np

__all__ = ["ENGINES", "missing", "make_engine", "torch_from_bundle"]

ENGINES = ("bnnlite", "bnnlite-numba", "torch-fp32", "ort-fp32", "ort-bnn")

_NEEDS = {"bnnlite-numba": ["numba"], "torch-fp32": ["torch"], "ort-fp32": ["onnx", "onnxruntime"],
          "ort-bnn": ["onnx", "onnxruntime"]}


def missing(engine) -> str | None:
    """Why ``engine`` cannot run here, or None."""
    for mod in _NEEDS.get(engine, []):
        if find_spec(mod) is None:
            return f"{mod} is not installed (pip install bnnlite[bench])"
    if engine == "bnnlite":
        from ..backends import available_backends
        if "cython" not in available_backends():
            return "the compiled extension is not built (pip install . with a C compiler)"
    return None


def _normalizer(bundle_header):
    """uint8 NHWC -> float32 NCHW, normalised as the bundle says (the float engines' input)."""
    mean = np.asarray(bundle_header["normalization_mean"], np.float32)
    std = np.asarray(bundle_header["normalization_std"], np.float32)

    def nchw(images):
        x = images.astype(np.float32) / np.float32(255.0)
        x -= mean
        x /= std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return nchw


def torch_from_bundle(bundle):
    """A torch.nn.Module with the bundle's folded float weights: each op's PyTorch mirror
    (``OpKind.to_torch``, bnnlite/ops/), called on its input tensors by name.  Binary ops run
    as FP32 convs of +-1 values (what PyTorch does without bit kernels)."""
    from torch import nn

    from ..bundle import INPUT, OUTPUT
    from ..ops import lookup
    layers = []
    for rec in bundle.ops:
        to_torch = lookup(rec.op).to_torch
        if to_torch is None:
            raise click.ClickException(f"torch-fp32 has no PyTorch form of op {rec.op!r}")
        layers.append(to_torch(rec, bundle))
    wiring = [(list(rec.inputs), rec.outputs[0]) for rec in bundle.ops]
    last_read = {name: i for i, (ins, _) in enumerate(wiring) for name in ins}
    # Each tensor is dropped after its last reader, as nn.Sequential would: the same peak memory.
    drop_after = [[n for n in set(ins) if last_read[n] == i] for i, (ins, _) in enumerate(wiring)]

    class BundleNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(layers)

        def forward(self, x):
            t = {INPUT: x}
            for layer, (ins, out), dead in zip(self.layers, wiring, drop_after):
                t[out] = layer(*[t[n] for n in ins])
                for n in dead:
                    del t[n]
            return t[OUTPUT]
    return BundleNet().eval()


def _bnnlite(engine, model_path, threads):
    from ..model import Model
    m = Model.load(model_path, threads=threads, backend="cython" if engine == "bnnlite" else "numba")
    return m.logits, m.weight_bytes, f"backend {m.backend.name}/{getattr(m.backend, 'variant', '')}"


def _torch(fp32_path, threads):
    import torch

    from ..bundle import read_bundle
    torch.set_num_threads(threads)
    b = read_bundle(fp32_path)
    net = torch_from_bundle(b)
    norm = _normalizer(b.header)
    probe = torch.from_numpy(norm(np.zeros((32,) + tuple(b.header["input_shape"]), np.uint8)))
    timings = {}
    with torch.inference_mode():  # the faster memory format on this CPU, from one timed call each
        for fmt in (torch.contiguous_format, torch.channels_last):
            netf = net.to(memory_format=fmt)
            for _ in range(2):
                netf(probe.contiguous(memory_format=fmt))
            t = time.perf_counter()
            netf(probe.contiguous(memory_format=fmt))
            timings[fmt] = time.perf_counter() - t
    fmt = min(timings, key=timings.get)
    net = net.to(memory_format=fmt)

    def run(images):
        with torch.inference_mode():
            return net(torch.from_numpy(norm(images)).contiguous(memory_format=fmt)).numpy()
    nbytes = sum(p.numel() * p.element_size() for p in net.parameters())
    return run, nbytes, "channels_last" if fmt == torch.channels_last else "NCHW"


def _onnxruntime(bundle_path, threads):
    import onnxruntime as ort

    from ..bundle import read_bundle
    from ..onnx_export import bundle_to_onnx_model
    b = read_bundle(bundle_path)
    onnx_model = bundle_to_onnx_model(b)
    nbytes = sum(np.prod(t.dims, dtype=np.int64) * 4 for t in onnx_model.graph.initializer)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(onnx_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    del onnx_model
    norm = _normalizer(b.header)

    def run(images):
        return sess.run(None, {"input": norm(images)})[0]
    return run, int(nbytes), f"onnxruntime {ort.__version__}"


def make_engine(engine, model_path, fp32_path, threads):
    """(run(images_uint8) -> logits, weight_bytes, note) for ``engine`` (one of ENGINES)."""
    if engine in ("bnnlite", "bnnlite-numba"):
        return _bnnlite(engine, model_path, threads)
    if engine == "torch-fp32":
        return _torch(fp32_path, threads)
    if engine in ("ort-fp32", "ort-bnn"):
        return _onnxruntime(fp32_path if engine == "ort-fp32" else model_path, threads)
    raise click.ClickException(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")
