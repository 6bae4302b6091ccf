"""The runtime graph: ops built from a bundle, fused and planned once.

Public names: Graph, RuntimeOp (and the op classes Conv2D, SignPack, BConv2D,
MaxPool2D, BMaxPool2D, Flatten, Dense).

Where tensors live
* Every tensor gets one buffer per planned batch size (``Graph.plan(n)``),
  allocated once and reused by every later call of that size.
* A bit-packed tensor that feeds a binary conv with padding p is stored with
  a p-pixel border of zero words -- zero words are +1, the padding convention
  of bitpack.py -- so the producer writes the interior view and the conv
  reads the whole padded buffer: padding costs no pass at all.
* ``flatten`` is a reshape view of its input buffer.

Fusion at load time (in this order):
* a float-output binary conv whose output is read only by a ``maxpool2d``
  pools in its epilogue (``bconv_float(..., pool=True)``): it writes the
  pooled tensor directly, and the unpooled one is never stored;
* a float-output binary conv (pooled or not), or a direct (small-Cin) real
  conv, whose output feeds a ``sign_pack`` directly writes the packed bits
  for that sign_pack in the same loop (``out_bits`` of the kernel), and the
  sign_pack disappears.
"""
from __future__ import annotations

import numpy as np

from .bitpack import WORD_DTYPE, words_for
from .bundle import INPUT, OUTPUT, Bundle
from .floatmath import fma32

SCRATCH_BYTES = 16 << 20

__all__ = ["Graph", "RuntimeOp", "Conv2D", "SignPack", "BConv2D", "MaxPool2D", "BMaxPool2D",
           "Flatten", "Dense"]


class RuntimeOp:
    """One op: names of its tensors, its arrays, and ``run(tensors, ctx)``."""
    kind = "?"
    bits = 32

    def __init__(self, rec, shapes):
        self.name, self.inputs, self.outputs = rec.name, rec.inputs, rec.outputs
        self.attrs, self.arrays = rec.attrs, rec.arrays
        self.in_shape = shapes[rec.inputs[0]]
        self.out_shape = shapes[rec.outputs[0]]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    def describe(self) -> str:
        return ""

    def bind(self, t, ctx):
        """This op on the plan's buffers ``t`` as a zero-argument callable.
        Kernel ops check their arguments here, once per plan, not per call."""
        raise NotImplementedError

    def run(self, t, ctx):
        """Bind and call once."""
        self.bind(t, ctx)()

    def __repr__(self):
        extra = self.describe()
        return (f"{type(self).__name__}({self.name!r}, {self.in_shape} -> {self.out_shape}"
                f"{', ' + extra if extra else ''}, {self.bits}-bit, {self.nbytes} B)")


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

    def __init__(self, rec, shapes):
        super().__init__(rec, shapes)
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

    def scratch_bytes_per_image(self):
        a, (ho, wo, _) = self.attrs, self.out_shape
        if self.direct:
            return 0
        return 4 * ho * wo * a["kh"] * a["kw"] * a["cin"]

    def scratch(self, n):
        a, (h, w, c) = self.attrs, self.in_shape
        ho, wo, _ = self.out_shape
        p = a["padding"]
        sc = {"pad": np.zeros((n, h + 2 * p, w + 2 * p, c), np.float32)}
        if not self.direct:
            sc["cols"] = np.empty((n, ho, wo, a["kh"], a["kw"], c), np.float32)
        return sc

    def bind(self, t, ctx):
        if not self.direct:
            return lambda: self._run_im2col(t, ctx)
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

    def _run_im2col(self, t, ctx):
        a, (h, w, _) = self.attrs, self.in_shape
        p, s = a["padding"], a["stride"]
        ho, wo, cout = self.out_shape
        pad = ctx.scratch[self.name]["pad"]
        pad[:, p:p + h, p:p + w] = t[self.inputs[0]]
        cols = ctx.scratch[self.name]["cols"]
        for i in range(a["kh"]):
            for j in range(a["kw"]):
                cols[:, :, :, i, j] = pad[:, i:i + s * (ho - 1) + 1:s, j:j + s * (wo - 1) + 1:s]
        out = t[self.outputs[0]]
        n = out.shape[0]
        # One (Ho*Wo, K) @ (K, Cout) product per image, so an image's result does not
        # depend on the batch it came in (BLAS picks different kernels for other M).
        np.matmul(cols.reshape(n, ho * wo, -1), self.w2d, out=out.reshape(n, ho * wo, cout))
        out2d = out.reshape(-1, cout)
        if self.mult is None:
            out2d += self.bias
        else:
            out2d[...] = fma32(out2d, self.mult, self.bias)
        if a["activation"] == "relu":
            np.maximum(out2d, 0, out=out2d)


class SignPack(RuntimeOp):
    """bits = x < threshold, packed along channels."""
    kind = "bits"
    bits = 1

    def bind(self, t, ctx):
        return ctx.backend.pack(t[self.inputs[0]], self.arrays["threshold"], t[self.outputs[0]],
                                ctx.threads, bind=True)


class BConv2D(RuntimeOp):
    """XNOR-popcount conv: acc = K - 2*popcount(x XOR w), then the folded output transform
    (float: y = fma(acc * scale, multiplier, bias) [+ residual] [-> RPReLU];
    bits: acc < threshold)."""
    kind = "?"
    bits = 1

    def __init__(self, rec, shapes, backend):
        super().__init__(rec, shapes)
        a = self.attrs
        self.kind = "bits" if a["output"] == "bits" else "float"
        self.k_bits = a["kh"] * a["kw"] * a["cin"]
        self.prepared = backend.prepare_weights(self.arrays["weight"], cin=a["cin"])
        if self.kind == "float" and "scale" not in self.arrays:
            # Format 2: y = acc * multiplier + bias, two roundings; the same floats
            # as fma(acc * scale, 1, bias) with scale = that multiplier.
            self.arrays = {**self.arrays, "scale": self.arrays["multiplier"],
                           "multiplier": np.ones_like(self.arrays["multiplier"])}
        self.rprelu = None
        if a.get("rprelu"):
            self.rprelu = (self.arrays["rprelu_gamma"], self.arrays["rprelu_beta"], self.arrays["rprelu_zeta"])
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


class Flatten(RuntimeOp):
    """NHWC flatten: a view, no copy (its buffer is planned as a reshape)."""
    kind = "float"

    def bind(self, t, ctx):
        return lambda: None


class Dense(RuntimeOp):
    kind = "float"

    def bind(self, t, ctx):
        out = t[self.outputs[0]]
        # Per image (a stack of 1 x units_in rows): batch-size independent, as in Conv2D.
        rows, out_rows = t[self.inputs[0]][:, None, :], out[:, None, :]
        wt, bias = self.arrays["weight"].T, self.arrays["bias"]

        def call():
            np.matmul(rows, wt, out=out_rows)
            np.add(out, bias, out=out)
        return call


_OP_CLASSES = {"conv2d": Conv2D, "sign_pack": SignPack, "bconv2d": BConv2D, "maxpool2d": MaxPool2D,
               "bmaxpool2d": BMaxPool2D, "flatten": Flatten, "dense": Dense}


class _Plan:
    """Buffers for one batch size: tensor views, padded storage, per-op scratch."""

    def __init__(self, graph: "Graph", n: int):
        self.n = n
        self.tensors: dict[str, np.ndarray] = {}
        self.storage: dict[str, tuple[np.ndarray, int]] = {}
        self.scratch = {}
        for name, shape in graph.shapes.items():
            if name in graph.flatten_of:
                continue
            if graph.kinds[name] == "bits":
                h, w, c = shape
                p = graph.pad_of.get(name, 0)
                store = np.zeros((n, h + 2 * p, w + 2 * p, words_for(c)), WORD_DTYPE)
                self.storage[name] = (store, p)
                self.tensors[name] = store[:, p:p + h, p:p + w] if p else store
            else:
                self.tensors[name] = np.empty((n,) + tuple(shape), np.float32)
        for out_name, in_name in graph.flatten_of.items():
            self.tensors[out_name] = self.tensors[in_name].reshape(n, -1)
        for op in graph.ops:
            if isinstance(op, Conv2D):
                self.scratch[op.name] = op.scratch(n)
        self._calls: dict[int, list] = {}

    def calls(self, graph: "Graph", threads: int) -> list:
        """Every op bound to these buffers (checked once), per thread count."""
        calls = self._calls.get(threads)
        if calls is None:
            ctx = _Context(self, graph.backend, threads)
            calls = self._calls[threads] = [op.bind(self.tensors, ctx) for op in graph.ops]
        return calls


class _Context:
    def __init__(self, plan, backend, threads):
        self.scratch, self.backend, self.threads, self._plan = plan.scratch, backend, threads, plan

    def padded(self, name, p):
        store, have = self._plan.storage[name]
        if have == p:
            return store
        d = have - p  # stored with a wider border than this consumer needs
        return store[:, d:store.shape[1] - d, d:store.shape[2] - d]


class Graph:
    """Ops in execution order plus what the planner needs; ``run(x, threads)``."""

    def __init__(self, bundle: Bundle, backend):
        self.backend = backend
        self.shapes, self.kinds = dict(bundle.shapes), dict(bundle.kinds)
        self.ops = []
        for rec in bundle.ops:
            cls = _OP_CLASSES[rec.op]
            self.ops.append(cls(rec, self.shapes, backend) if cls is BConv2D else cls(rec, self.shapes))
        self._fuse_pool()
        self._fuse_sign_pack()
        self.pad_of = {}
        for op in self.ops:
            if isinstance(op, BConv2D):
                src = op.inputs[0]
                self.pad_of[src] = max(self.pad_of.get(src, 0), op.attrs["padding"])
        self.flatten_of = {op.outputs[0]: op.inputs[0] for op in self.ops if isinstance(op, Flatten)}
        # im2col scratch of real convs grows with width; keep it under SCRATCH_BYTES.
        per_image = max([op.scratch_bytes_per_image() for op in self.ops if isinstance(op, Conv2D)] or [0])
        self.max_chunk = max(1, SCRATCH_BYTES // per_image) if per_image else None
        self.ops = [op for op in self.ops if not isinstance(op, Flatten)]
        self._plans: dict[int, dict[int, _Plan]] = {}  # slot -> batch size -> plan

    def _fuse_pool(self):
        readers = {}
        for op in self.ops:
            for name in op.inputs:
                readers[name] = readers.get(name, 0) + 1
        producer = {op.outputs[0]: op for op in self.ops}
        kept = []
        for op in self.ops:
            src = producer.get(op.inputs[0])
            if (isinstance(op, MaxPool2D) and isinstance(src, BConv2D) and src.kind == "float"
                    and not src.pool and src.fused_pack is None and op.inputs[0] != OUTPUT
                    and readers[op.inputs[0]] == 1):
                dead = src.outputs[0]
                src.outputs = [op.outputs[0]] + list(src.outputs[1:])
                src.out_shape = op.out_shape
                src.pool = True
                del self.shapes[dead], self.kinds[dead]  # never stored
                continue
            kept.append(op)
        self.ops = kept

    def _fuse_sign_pack(self):
        producer = {op.outputs[0]: op for op in self.ops}
        kept = []
        for op in self.ops:
            src = producer.get(op.inputs[0])
            fusable = ((isinstance(src, BConv2D) and src.kind == "float")
                       or (isinstance(src, Conv2D) and src.direct))
            if isinstance(op, SignPack) and fusable and src.fused_pack is None:
                src.fused_pack = (op.outputs[0], op.arrays["threshold"])
                continue
            kept.append(op)
        self.ops = kept

    def plan(self, n: int, slot: int = 0) -> _Plan:
        """Buffers for batch size n, made on first use and kept (the two most recent
        sizes per slot).  Each slot has buffers of its own, so callers running the
        graph at the same time from several threads use one slot each."""
        plans = self._plans.setdefault(slot, {})
        p = plans.get(n)
        if p is None:
            if len(plans) >= 2:
                plans.pop(next(iter(plans)))
            p = plans[n] = _Plan(self, n)
        return p

    def run(self, x: np.ndarray, threads: int, slot: int = 0) -> np.ndarray:
        """x: normalised float32 (n, H, W, C) -> logits (n, K), a view into the plan's buffer."""
        plan = self.plan(len(x), slot)
        if x is not plan.tensors[INPUT]:
            plan.tensors[INPUT][...] = x
        for call in plan.calls(self, threads):
            call()
        return plan.tensors[OUTPUT]

    def input_buffer(self, n: int, slot: int = 0) -> np.ndarray:
        return self.plan(n, slot).tensors[INPUT]

    def bound_ops(self, n: int, threads: int, slot: int = 0) -> list[tuple[RuntimeOp, object]]:
        """``(op, call)`` for each op in execution order: ``call()`` runs that op alone
        on the buffers for batch size n, bound (checked) exactly as :meth:`run` calls it.
        For timing one layer at a time (``bnnlite-bench --layers``); run the graph once
        on a batch of n first, so that the buffers hold real activations."""
        return list(zip(self.ops, self.plan(n, slot).calls(self, threads)))
