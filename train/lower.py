"""Lowering a PyTorch network to bundle ops, by tracing it with torch.fx.

Public names: ExportError, lower, LEAF_TYPES.

``lower(model, input_shape)`` traces ``model`` (eval mode) with torch.fx,
keeping ``bnnlite.train.nn`` layers and standard ``torch.nn`` layers whole,
runs the traced graph once on a probe batch so every shape and every Python
value (``x.shape[1] // 2`` and the like) is known, and then walks the graph
in order, turning each node, or a chain of nodes, into bundle ops:

* Conv2d [-> BatchNorm2d] [-> ReLU]              -> ``conv2d`` (BN as one FMA)
* BinaryConv2d [-> BatchNorm2d] [-> + shortcut] [-> RPReLU | PReLU]
                                                  -> ``sign_pack`` + ``bconv2d`` (float out)
* BinaryConv2d [-> BatchNorm2d] [-> MaxPool2d 2] read only by binary convs
                                                  -> ``bconv2d`` with bits out (XNOR-Net)
* MaxPool2d 2 -> ``maxpool2d``; AvgPool2d 2 -> ``avgpool2d``; AdaptiveAvgPool2d(1) or
  ``x.mean((2, 3))`` -> ``global_avgpool`` [+ ``flatten``]; flatten -> ``flatten``;
* BinaryLinear [-> BatchNorm1d] [-> RPReLU | PReLU] -> ``sign_pack`` + ``bconv2d`` whose
  kernel covers the whole (H, W, C) map it reads (a dense product), output (1, 1, F)
* ``a + b`` (not fused into a binary conv) -> ``add``; ``torch.cat(dim=1)`` -> ``concat``;
  [BatchNorm1d [-> * c]] -> Linear               -> ``dense`` (normalisation folded in,
  columns permuted from NCHW- to NHWC-flatten order)

The folding arithmetic (BN as fma, integer thresholds) is in fold.py.  A
module or function with no rule raises ExportError naming it and where it
is called.  Ops the runtime does not know yet (``bnnlite.ops.registered()``)
are refused the same way, so a bundle is never written that cannot load.
"""
from __future__ import annotations

import operator
import os
import re
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn

from bnnlite.bundle import INPUT, OUTPUT, OpRecord
from bnnlite.ops.binary import pack_conv_weight
from bnnlite.ops.merge import MAX_CONCAT

from .fold import bn_as_fma, f32, int_threshold
from .nn import BinaryConv2d, BinaryLinear, RPReLU

__all__ = ["ExportError", "lower", "LEAF_TYPES"]


class ExportError(ValueError):
    """The network has a module, function or pattern with no bundle form; the message names it."""


# Modules kept whole by the tracer (their insides are the op's business).
LEAF_TYPES = (BinaryConv2d, BinaryLinear, RPReLU, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.PReLU,
              nn.Hardtanh, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Linear,
              nn.Identity, nn.Dropout)
_PASS = (nn.Identity, nn.Dropout)


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m, qualname):
        return isinstance(m, LEAF_TYPES) or super().is_leaf_module(m, qualname)


@dataclass
class _Node:
    """One traced node with its concrete value on the probe batch."""
    node: fx.Node
    kind: str                     # "input", "module", "function", "method", "output", "const"
    target: object                # the module, function or method name
    value: object                 # tensor (probe result) or a plain Python value
    args: tuple = ()
    users: list = field(default_factory=list)

    @property
    def name(self):
        return self.node.name

    def where(self) -> str:
        """' (node NAME, FILE:LINE: CODE)': the user's line that called it (torch.fx's own frames skipped)."""
        lines = (self.node.meta.get("stack_trace") or "").splitlines()
        for head, code in reversed(list(zip(lines[::2], lines[1::2]))):  # innermost first
            m = re.match(r'\s*File "(.+)", line (\d+)', head)
            if m and f"{os.sep}torch{os.sep}" not in m.group(1):
                return f" (node {self.name}, {os.path.basename(m.group(1))}:{m.group(2)}: {code.strip()})"
        return f" (node {self.name})"


def _trace(model: nn.Module, input_shape) -> tuple[list[_Node], dict]:
    try:
        tracer = _Tracer()
        tracer.record_stack_traces = True  # error messages name the line of the forward
        graph = tracer.trace(model)
    except Exception as e:  # fx raises TraceError, TypeError, ... for data-dependent Python
        raise ExportError(f"cannot trace {type(model).__name__} with torch.fx: {e}") from e
    gm = fx.GraphModule(model, graph)
    mods = dict(gm.named_modules())
    h, w, c = input_shape
    probe = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    env: dict[str, object] = {}
    nodes: list[_Node] = []
    by_name: dict[str, _Node] = {}

    def val(a):
        return fx.node.map_arg(a, lambda n: env[n.name])

    with torch.no_grad():
        for n in graph.nodes:
            args, kwargs = val(n.args), val(n.kwargs)
            if n.op == "placeholder":
                v, kind, target = probe, "input", None
            elif n.op == "get_attr":
                v = gm
                for part in n.target.split("."):
                    v = getattr(v, part)
                kind, target = "const", n.target
            elif n.op == "call_module":
                target = mods[n.target]
                v, kind = target(*args, **kwargs), "module"
            elif n.op == "call_function":
                v, kind, target = n.target(*args, **kwargs), "function", n.target
            elif n.op == "call_method":
                v, kind, target = getattr(args[0], n.target)(*args[1:], **kwargs), "method", n.target
            else:  # output
                v, kind, target = args[0], "output", None
            env[n.name] = v
            rec = _Node(n, kind, target, v, tuple(n.args))
            if kwargs:
                rec.args = rec.args + (dict(n.kwargs),)
            nodes.append(rec)
            by_name[n.name] = rec
    for rec in nodes:
        for u in rec.node.users:
            rec.users.append(by_name[u.name])
    return nodes, by_name


def _is_tensor(rec):
    return isinstance(rec.value, torch.Tensor)


def _what(rec) -> str:
    if rec.kind == "module":
        return type(rec.target).__name__
    if rec.kind == "method":
        return f"Tensor.{rec.target}"
    return getattr(rec.target, "__name__", str(rec.target))


def _match(rec, *kinds) -> bool:
    """Is ``rec`` one of the layer kinds: module classes, functions or method names."""
    for k in kinds:
        if isinstance(k, type) and rec.kind == "module" and isinstance(rec.target, k):
            return True
        if callable(k) and not isinstance(k, type) and rec.kind == "function" and rec.target is k:
            return True
        if isinstance(k, str) and rec.kind == "method" and rec.target == k:
            return True
    return False


_RELU = (nn.ReLU, F.relu, torch.relu, "relu")
_ADD = (operator.add, torch.add, "add")
_FLATTEN = (nn.Flatten, torch.flatten, "flatten")
_GAP = (nn.AdaptiveAvgPool2d, F.adaptive_avg_pool2d, torch.mean, "mean")
_CAT = tuple(f for f in (torch.cat, getattr(torch, "concat", None), getattr(torch, "concatenate", None)) if f)
# The parameters of the pool functions, in their positional order (after the input).
_MAX_ARGS = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG_ARGS = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad", "divisor_override")


class _Lowering:
    def __init__(self, nodes, by_name, log):
        self.nodes, self.by_name, self.log = nodes, by_name, log
        self.ops: list[OpRecord] = []
        self.tensor: dict[str, str] = {}      # fx node name -> bundle tensor name
        self.nchw_flat: dict[str, tuple] = {}  # bundle flatten output -> (C, H, W) of its input
        self.bits: dict[tuple, str] = {}       # (float tensor, thresholds) -> its sign_pack output
        self.done: set[str] = set()
        self.op_names: set[str] = set()
        # Names as the hand-written exporter gave them (conv0, sign1 -> bits1, bconv1, pool1, ...,
        # flatten -> flat, classifier): layers numbered in order, the rest after the layer before.
        self.layer = {r.name: i for i, r in enumerate(r for r in nodes if _match(r, nn.Conv2d, BinaryConv2d))}
        self.last_layer = 0
        self.dense_count = 0
        self.vector_maps: set[str] = set()     # (1, 1, F) maps that PyTorch holds as (N, F) vectors

    # ---------------------------------------------------------------- helpers
    def _arg(self, rec, i=0):
        a = rec.args[i]
        return self.by_name[a.name] if isinstance(a, fx.Node) else a

    def _val(self, rec, i):
        """The concrete value of argument i (a traced shape computation, or a literal)."""
        a = self._arg(rec, i)
        return a.value if isinstance(a, _Node) else a

    def _only_user(self, rec, *kinds):
        """The single user of ``rec`` if it is one of ``kinds`` (a chain to fuse), else None."""
        users = self._tensor_users(rec)
        if len(users) == 1 and _match(users[0], *kinds):
            return users[0]
        return None

    @staticmethod
    def _tensor_users(rec):
        """Users that compute tensors (``x.shape[1]`` and friends read no values)."""
        return [u for u in rec.users if _is_tensor(u) or u.kind == "output"]

    def _src(self, rec) -> str:
        """The bundle tensor that holds the value of node ``rec`` (through pass-through nodes)."""
        while rec.name not in self.tensor and _match(rec, *_PASS):
            rec = self._arg(rec)
        if rec.name not in self.tensor:
            raise ExportError(f"{_what(rec)}{rec.where()} has no bundle form here")
        return self.tensor[rec.name]

    def _kwargs(self, rec) -> dict:
        return rec.args[-1] if rec.args and isinstance(rec.args[-1], dict) else {}

    def _emit(self, op, name, inputs, attrs=None, arrays=None, out=None) -> str:
        """Append one op; a name already taken (two pools after one layer) gets a suffix."""
        k, base = 1, name
        while name in self.op_names:
            k += 1
            name = f"{base}_{k}"
        self.op_names.add(name)
        out = (f"{out}_{k}" if k > 1 else out) if out else name
        self.ops.append(OpRecord(op, name, inputs, [out], attrs or {}, arrays or {}))
        return out

    def _bits_of(self, rec_in, conv, reader) -> str:
        """Packed bits of a float tensor for a binary layer (its sign threshold), shared."""
        src = self._src(rec_in)
        c = conv.weight.shape[1]
        t = f32(conv.threshold) if conv.threshold is not None else np.zeros(c, np.float32)
        key = (src, t.tobytes())
        if key not in self.bits:
            i = self.layer[reader.name]
            self.bits[key] = self._emit("sign_pack", f"sign{i}", [src], {"channels": c}, {"threshold": t},
                                        out=f"bits{i}")
        return self.bits[key]

    # ---------------------------------------------------------------- rules
    def run(self):
        for rec in self.nodes:
            self._ensure(rec)
        return self.ops

    def _ensure(self, rec):
        """Lower ``rec`` after everything it reads (a fused chain may need a branch that the
        traced order puts later, such as a Bi-Real unit's downsampling shortcut)."""
        if rec.name in self.done:
            return
        for a in rec.node.all_input_nodes:
            self._ensure(self.by_name[a.name])
        if rec.name in self.done:
            return  # fused into the op of a node it reads (a conv's BN reached from a later node)
        self.done.add(rec.name)
        if rec.kind == "input":
            self.tensor[rec.name] = INPUT
        elif rec.kind == "output":
            self._output(rec)
        elif rec.kind == "const" or not _is_tensor(rec) or _match(rec, *_PASS):
            return  # shapes, Python arithmetic on them, pass-through layers
        elif _match(rec, nn.Conv2d):
            self._conv(rec)
        elif _match(rec, BinaryConv2d):
            self._bconv(rec)
        elif _match(rec, nn.MaxPool2d, F.max_pool2d):
            self._maxpool(rec)
        elif _match(rec, *_FLATTEN):
            self._flatten(rec)
        elif _match(rec, BinaryLinear):
            self._blinear(rec)
        elif _match(rec, nn.BatchNorm1d, nn.Linear):
            self._dense(rec)
        elif _match(rec, "repeat") and all(_match(u, *_ADD) for u in self._tensor_users(rec)):
            return  # a Bi-Real channel-doubling shortcut: the add consumes it
        elif _match(rec, nn.AvgPool2d, F.avg_pool2d):
            self._avgpool(rec)
        elif _match(rec, *_GAP):
            self._global_pool(rec)
        elif _match(rec, *_ADD):
            self._add(rec)
        elif _match(rec, *_CAT):
            self._concat(rec)
        else:
            raise ExportError(f"{_what(rec)}{rec.where()} cannot be exported to a bnnlite bundle: "
                              f"no runtime op for it in this position")

    def _output(self, rec):
        src = self._arg(rec)
        if not isinstance(src, _Node) or not _is_tensor(src):
            raise ExportError("the network must return one tensor of logits")
        name = self._src(src)
        producer = next(op for op in self.ops if op.outputs[0] == name)
        if name == INPUT or sum(name in op.inputs for op in self.ops):
            raise ExportError("the logits must be the output of the last layer")
        producer.outputs = [OUTPUT]

    def _conv(self, rec):
        m = rec.target
        if m.groups != 1 or m.dilation != (1, 1) or m.padding_mode != "zeros" or isinstance(m.padding, str) \
                or m.padding[0] != m.padding[1] or m.stride[0] != m.stride[1]:
            raise ExportError(f"Conv2d{rec.where()}: only groups=1, dilation 1, zero padding and square "
                              f"padding/stride export")
        w = f32(m.weight)
        cout, cin, kh, kw = w.shape
        last, a, b = rec, np.ones(cout, np.float32), np.zeros(cout, np.float32)
        if m.bias is not None:
            b = f32(m.bias)
        bn = self._only_user(rec, nn.BatchNorm2d)
        if bn is not None:
            if m.bias is not None:
                raise ExportError(f"Conv2d{rec.where()}: a conv bias before BatchNorm does not fold bit-exactly; "
                                  f"use bias=False")
            a, b = bn_as_fma(bn.target, self.log)
            last = bn
        relu = self._only_user(last, *_RELU)
        if relu is not None:
            last = relu
        for r in (bn, relu):
            if r is not None:
                self.done.add(r.name)
        i = self.last_layer = self.layer[rec.name]
        self.tensor[last.name] = self._emit(
            "conv2d", f"conv{i}", [self._src(self._arg(rec))],
            {"cin": cin, "cout": cout, "kh": kh, "kw": kw, "stride": m.stride[0], "padding": m.padding[0],
             "activation": "relu" if relu is not None else "none"},
            {"weight": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "multiplier": a, "bias": b})

    def _bconv(self, rec):
        conv = rec.target
        w = conv.weight.detach().double().cpu().numpy()
        cout, cin, kh, kw = w.shape
        bits_in = self._bits_of(self._arg(rec), conv, rec)
        i = self.last_layer = self.layer[rec.name]
        alpha = f32(conv.scale())
        bn = self._only_user(rec, nn.BatchNorm2d)
        last = bn or rec
        attrs = {"cin": cin, "cout": cout, "kh": kh, "kw": kw, "stride": conv.stride, "padding": conv.padding}
        if bn is not None:
            self.done.add(bn.name)
            a, b = bn_as_fma(bn.target, self.log)
        else:
            a, b = np.ones(cout, np.float32), np.zeros(cout, np.float32)
        if self._bits_readers(last) is not None:
            return self._bconv_bits(rec, conv, bn, last, w, a, alpha, bits_in, attrs)
        inputs = [bits_in]
        arrays = {"weight": pack_conv_weight(w), "scale": alpha, "multiplier": a, "bias": b}
        add = self._only_user(last, *_ADD)
        if add is not None and add.name not in self.done:  # (not the other summand of a fused add)
            self.done.add(add.name)
            other = [self._arg(add, i) for i in (0, 1)]
            other = other[1] if other[0] is last else other[0]
            if not isinstance(other, _Node) or not _is_tensor(other) or other.value.shape[2:] != last.value.shape[2:]:
                raise ExportError(f"add{add.where()}: the shortcut must be a tensor of the conv's output size")
            if _match(other, "repeat"):  # channel doubling: x.repeat(1, k, 1, 1) == x[c % cin]
                reps = [self._val(other, i) for i in range(1, len(other.args))]
                reps = list(reps[0]) if len(reps) == 1 else reps
                if len(reps) != 4 or reps[0] != 1 or reps[2:] != [1, 1]:
                    raise ExportError(f"Tensor.repeat{other.where()}: only a channel repeat (1, k, 1, 1) exports")
                other = self._arg(other)
            self._ensure(other)
            inputs.append(self._src(other))
            last = add
        last = self._fuse_activation(last, attrs, arrays, cout)
        attrs["output"] = "float"
        self.tensor[last.name] = self._emit("bconv2d", f"bconv{i}", inputs, attrs, arrays)

    def _bits_readers(self, last):
        """The binary convs that read ``last`` (through an optional 2x2 max-pool), when nothing
        else does and they share one threshold: then only sign(last) is ever needed."""
        pool = self._only_user(last, nn.MaxPool2d, F.max_pool2d)
        if pool is not None:
            if not self._is_pool2(pool, _MAX_ARGS):
                return None
            last = pool
        readers = self._tensor_users(last)
        if not readers or not all(_match(u, BinaryConv2d) for u in readers):
            return None
        ts = {None if u.target.threshold is None else f32(u.target.threshold).tobytes() for u in readers}
        return (pool, readers) if len(ts) == 1 else None

    def _bconv_bits(self, rec, conv, bn, last, w, a, alpha, bits_in, attrs):
        pool, readers = self._bits_readers(last)
        nxt = readers[0].target
        cout = w.shape[0]
        k_bits = w.shape[1] * w.shape[2] * w.shape[3]
        t_next = f32(nxt.threshold) if nxt.threshold is not None else np.zeros(cout, np.float32)
        flip = a * alpha < 0  # make every m = a * alpha >= 0: max-pool then commutes with sign
        i = self.layer[rec.name]
        bits_name = f"bits{self.layer[readers[0].name]}"
        out = self._emit("bconv2d", f"bconv{i}", [bits_in], {**attrs, "output": "bits"},
                         {"weight": pack_conv_weight(w, flip),
                          "threshold": int_threshold(conv.scale(), bn.target if bn else None, t_next, flip, k_bits)},
                         out=bits_name if pool is None else f"bconv{i}")
        if pool is not None:
            self.done.add(pool.name)
            out = self._emit("bmaxpool2d", f"pool{i}", [out], {"size": 2, "stride": 2}, out=bits_name)
            last = pool
        self.tensor[last.name] = out
        # The readers' sign_pack of this tensor is the tensor itself.
        self.bits[(out, t_next.tobytes())] = out

    def _is_pool2(self, rec, names):
        """Is the pool module or call ``rec`` (parameters ``names``) a plain 2x2 one of stride 2?"""
        if rec.kind == "module":
            a = {n: getattr(rec.target, n) for n in names}
        else:
            pos = [self._arg(rec, i) for i in range(1, len(rec.args)) if not isinstance(rec.args[i], dict)]
            a = {**dict(zip(names, pos)), **self._kwargs(rec)}
        k, s = a.get("kernel_size"), a.get("stride")
        s = k if s in (None, []) else s
        return (k in (2, (2, 2)) and s in (2, (2, 2)) and a.get("padding", 0) in (0, (0, 0))
                and not a.get("ceil_mode") and a.get("dilation", 1) in (1, (1, 1))
                and a.get("divisor_override") is None)

    def _pool(self, rec, op, prefix, names, what):
        if not self._is_pool2(rec, names):
            raise ExportError(f"{_what(rec)}{rec.where()}: only 2x2 {what} with stride 2 exports")
        self.tensor[rec.name] = self._emit(op, f"{prefix}{self.last_layer}", [self._src(self._arg(rec))],
                                           {"size": 2, "stride": 2})

    def _maxpool(self, rec):
        self._pool(rec, "maxpool2d", "pool", _MAX_ARGS, "max-pooling")

    def _avgpool(self, rec):
        self._pool(rec, "avgpool2d", "avgpool", _AVG_ARGS, "average pooling")

    def _global_pool(self, rec):
        """AdaptiveAvgPool2d(1), adaptive_avg_pool2d(x, 1), x.mean((2, 3)) -> ``global_avgpool``
        (N, C, 1, 1); a mean without keepdim is (N, C): a ``flatten`` follows."""
        x, kw = self._arg(rec), self._kwargs(rec)
        pos = [self._val(rec, i) for i in range(1, len(rec.args)) if not isinstance(rec.args[i], dict)]
        if _match(rec, nn.AdaptiveAvgPool2d):
            ok = rec.target.output_size in (1, (1, 1), [1, 1])
        elif _match(rec, F.adaptive_avg_pool2d):
            ok = (pos[0] if pos else kw.get("output_size")) in (1, (1, 1), [1, 1])
        else:
            dims = pos[0] if pos else kw.get("dim")
            dims = [dims] if isinstance(dims, int) else list(dims or [])
            ok = (isinstance(x, _Node) and x.value.dim() == 4 and sorted(d % 4 for d in dims) == [2, 3]
                  and kw.get("dtype") is None)
        if not ok or not isinstance(x, _Node) or x.value.dim() != 4:
            raise ExportError(f"{_what(rec)}{rec.where()}: only global average pooling (output size 1, "
                              f"or the mean over dims (2, 3)) exports")
        out = self._emit("global_avgpool", f"gap{self.last_layer}", [self._src(x)])
        if rec.value.dim() == 2:
            out = self._emit("flatten", "flatten", [out], out="flat")
            self.nchw_flat[out] = (x.value.shape[1], 1, 1)
        self.tensor[rec.name] = out

    def _add(self, rec):
        a, b = self._arg(rec, 0), self._arg(rec, 1)
        tensors = all(isinstance(v, _Node) and _is_tensor(v) for v in (a, b))
        if not tensors or a.value.shape != b.value.shape or self._kwargs(rec).get("alpha", 1) != 1 \
                or len([v for v in rec.args if not isinstance(v, dict)]) != 2:
            raise ExportError(f"{_what(rec)}{rec.where()}: only the sum of two tensors of one shape exports")
        self.tensor[rec.name] = self._emit("add", f"add{self.last_layer}", [self._src(a), self._src(b)])

    def _concat(self, rec):
        parts = rec.args[0]
        pos = [v for v in rec.args[1:] if not isinstance(v, dict)]
        dim = pos[0] if pos else self._kwargs(rec).get("dim", 0)
        parts = [self.by_name[p.name] if isinstance(p, fx.Node) else p for p in parts] \
            if isinstance(parts, (list, tuple)) else [parts]
        if not all(isinstance(p, _Node) and _is_tensor(p) and p.value.dim() == 4 for p in parts) or dim not in (1, -3):
            raise ExportError(f"{_what(rec)}{rec.where()}: only concatenating (N, C, H, W) tensors along "
                              f"dim 1 exports")
        srcs = [self._src(p) for p in parts]
        if len(srcs) > MAX_CONCAT:
            raise ExportError(f"{_what(rec)}{rec.where()}: at most {MAX_CONCAT} tensors concatenate in one op")
        self.tensor[rec.name] = srcs[0] if len(srcs) == 1 else self._emit("concat", f"concat{self.last_layer}", srcs)

    def _flatten(self, rec):
        src = self._arg(rec)
        if src.value.dim() != 4 or rec.value.dim() != 2:
            raise ExportError(f"{_what(rec)}{rec.where()}: only flattening (N, C, H, W) to (N, C*H*W) exports")
        out = self._emit("flatten", "flatten", [self._src(src)], out="flat")
        self.nchw_flat[out] = tuple(src.value.shape[1:])
        self.tensor[rec.name] = out

    def _fuse_activation(self, last, attrs, arrays, cout):
        """An RPReLU or PReLU reading only ``last`` goes into the binary op's epilogue (a PReLU
        is an RPReLU with no shifts); returns the node whose value the op now computes."""
        act = self._only_user(last, RPReLU, nn.PReLU)
        if act is None:
            return last
        m = act.target
        if isinstance(m, RPReLU):
            g, be, z = f32(m.gamma), f32(m.beta), f32(m.zeta)
        else:
            be = np.broadcast_to(f32(m.weight), (cout,)).astype(np.float32)
            g, z = np.zeros(cout, np.float32), np.zeros(cout, np.float32)
        attrs["rprelu"] = True
        arrays.update(rprelu_gamma=g, rprelu_beta=be, rprelu_zeta=z)
        self.done.add(act.name)
        return act

    def _blinear(self, rec):
        """BinaryLinear [-> BatchNorm1d] [-> RPReLU | PReLU] as a binary conv whose kernel covers the
        whole map: on flatten(x) of a (C, H, W) map, an HxW conv of x is the same dense product
        (weights reordered from NCHW-flatten order), on a vector a 1x1 conv of its (1, 1, F) map.
        Its output is a (1, 1, out) map, flattened where a Linear reads it."""
        lin = rec.target
        src = self._src(self._arg(rec))
        producer = next((op for op in self.ops if op.outputs[0] == src), None)
        if producer is not None and producer.op == "flatten" and src in self.nchw_flat:
            x, (c, h, w) = producer.inputs[0], self.nchw_flat[src]
        elif src in self.vector_maps:
            x, (c, h, w) = src, (lin.weight.shape[1], 1, 1)
        else:
            raise ExportError(f"BinaryLinear{rec.where()}: only on a flattened map or another binary "
                              f"layer's output exports")
        t = np.zeros(c, np.float32)
        if lin.threshold is not None:
            t_full = f32(lin.threshold).reshape(c, h * w)
            if not np.all(t_full == t_full[:, :1]):
                raise ExportError(f"BinaryLinear{rec.where()}: its thresholds differ within a channel of the "
                                  f"flattened map: no per-channel sign_pack form")
            t = np.ascontiguousarray(t_full[:, 0])
        key = (x, t.tobytes())
        if key not in self.bits:
            self.bits[key] = self._emit("sign_pack", f"sign_{rec.name}", [x], {"channels": c}, {"threshold": t},
                                        out=f"bits_{rec.name}")
        cout = lin.weight.shape[0]
        wgt = lin.weight.detach().double().cpu().numpy().reshape(cout, c, h, w)
        a, b, last = np.ones(cout, np.float32), np.zeros(cout, np.float32), rec
        bn = self._only_user(rec, nn.BatchNorm1d)
        if bn is not None:
            a, b = bn_as_fma(bn.target, self.log)
            self.done.add(bn.name)
            last = bn
        attrs = {"cin": c, "cout": cout, "kh": h, "kw": w, "stride": 1, "padding": 0}
        arrays = {"weight": pack_conv_weight(wgt), "scale": f32(lin.scale()), "multiplier": a, "bias": b}
        last = self._fuse_activation(last, attrs, arrays, cout)
        attrs["output"] = "float"
        out = self._emit("bconv2d", f"bdense_{rec.name}", [self.bits[key]], attrs, arrays)
        self.vector_maps.add(out)
        self.tensor[last.name] = out

    def _dense(self, rec):
        """[BatchNorm1d [-> * c]] -> Linear as one dense op."""
        first, norm, scale = rec, None, 1.0
        if _match(rec, nn.BatchNorm1d):
            norm = rec.target
            if norm.affine:
                raise ExportError(f"BatchNorm1d{rec.where()}: only affine=False before a Linear exports")
            nxt = self._only_user(rec, operator.mul, torch.mul, "mul")
            if nxt is not None:
                c = [self._arg(nxt, i) for i in (0, 1)]
                c = c[1] if c[0] is rec else c[0]
                if not isinstance(c, (int, float)):
                    raise ExportError(f"mul{nxt.where()}: only a constant scale after BatchNorm1d exports")
                scale = float(c)
                self.done.add(nxt.name)
                rec = nxt
            lin = self._only_user(rec, nn.Linear)
            if lin is None:
                raise ExportError(f"BatchNorm1d{first.where()}: only directly before a Linear exports")
            self.done.add(lin.name)
            rec = lin
        m = rec.target
        w = m.weight.detach().double().cpu().numpy()
        b = m.bias.detach().double().cpu().numpy() if m.bias is not None else np.zeros(w.shape[0])
        if norm is not None:  # norm(x) = (x - mean) * r: W norm(x) + b = (W r) x + (b - W (mean r))
            r = scale / np.sqrt(norm.running_var.double().cpu().numpy() + norm.eps)
            b = b - w @ (norm.running_mean.double().cpu().numpy() * r)
            w = w * r[None, :]
        src = self._src(self._arg(first))
        if src in self.vector_maps:  # a binary dense's (1, 1, F) output
            src = self._emit("flatten", "flatten", [src], out="flat")
        if src in self.nchw_flat:  # PyTorch flattens NCHW, the runtime NHWC
            c, h, wd = self.nchw_flat[src]
            w = w.reshape(-1, c, h, wd).transpose(0, 2, 3, 1).reshape(w.shape[0], -1)
        name = "classifier" if any(u.kind == "output" for u in rec.users) else f"dense{self.dense_count}"
        self.dense_count += 1
        self.tensor[rec.name] = self._emit("dense", name, [src],
                                           {"units_in": w.shape[1], "units_out": w.shape[0]},
                                           {"weight": w.astype(np.float32), "bias": b.astype(np.float32)})


def lower(model: nn.Module, input_shape, log=None) -> list[OpRecord]:
    """Bundle ops for ``model`` (put in eval mode) on NHWC inputs of ``input_shape`` = (H, W, C)."""
    model.eval()
    nodes, by_name = _trace(model, input_shape)
    ops = _Lowering(nodes, by_name, log).run()
    from bnnlite.ops import registered
    for op in ops:
        if op.op not in registered():
            raise ExportError(f"{op.name}: the runtime has no {op.op!r} op")
    return ops
