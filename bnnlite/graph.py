"""The runtime graph: ops built from a bundle, fused and planned once.

Public names: Graph; RuntimeOp and the op classes Conv2D, SignPack, BConv2D,
MaxPool2D, BMaxPool2D, Flatten, Dense (defined in bnnlite/ops/, one module
per op family, with the others: AvgPool2D, GlobalAvgPool, Add, Concat; the
graph builds each op from its registered kind).

Where tensors live
* Every tensor gets one buffer per planned batch size (``Graph.plan(n)``),
  allocated once and reused by every later call of that size.
* A bit-packed tensor that feeds a binary conv with padding p (the op's
  ``bits_border``) is stored with a p-pixel border of zero words -- zero
  words are +1, the padding convention of bitpack.py -- so the producer
  writes the interior view and the conv reads the whole padded buffer:
  padding costs no pass at all.
* ``flatten`` (an op with ``reshape_view``) is a reshape view of its input buffer.

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
from .ops import RuntimeOp, lookup
from .ops.binary import BConv2D, SignPack
from .ops.conv import Conv2D
from .ops.dense import Dense
from .ops.pool import BMaxPool2D, MaxPool2D
from .ops.shape import Flatten

SCRATCH_BYTES = 16 << 20

__all__ = ["Graph", "RuntimeOp", "Conv2D", "SignPack", "BConv2D", "MaxPool2D", "BMaxPool2D",
           "Flatten", "Dense"]


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
            sc = op.scratch(n)
            if sc is not None:
                self.scratch[op.name] = sc
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
        self.ops = [lookup(rec.op).runtime(rec, self.shapes, backend) for rec in bundle.ops]
        self._fuse_pool()
        self._fuse_sign_pack()
        self.pad_of = {}  # bits tensor -> the widest border a consumer wants
        for op in self.ops:
            if op.bits_border:
                src = op.inputs[0]
                self.pad_of[src] = max(self.pad_of.get(src, 0), op.bits_border)
        self.flatten_of = {op.outputs[0]: op.inputs[0] for op in self.ops if op.reshape_view}
        # Scratch (im2col of real convs) grows with width; keep it under SCRATCH_BYTES.
        per_image = max([op.scratch_bytes_per_image() for op in self.ops] or [0])
        self.max_chunk = max(1, SCRATCH_BYTES // per_image) if per_image else None
        self.ops = [op for op in self.ops if not op.reshape_view]
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
