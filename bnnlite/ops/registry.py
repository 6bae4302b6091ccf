"""The op registry: what each op kind of the bundle is, in one record.

Public names: OpKind, Inputs, Inferred, SchemaError, register, unregister, lookup, registered.

An :class:`OpKind` names everything the rest of bnnlite needs of one op kind:
its bundle schema (attributes, datasets, input count, shape inference, value
bounds, checks of the read arrays), its runtime class, and optionally its
ONNX translation and its PyTorch mirror (for the bench).  ``bundle.py``
(validation and the value-bound walk), ``graph.py``, ``onnx_export.py`` and
the bench look op kinds up here; nothing else lists them.

Only code registers op kinds: a bundle can name registered kinds and nothing
else (an unknown name is a BundleError), so a file cannot add behaviour.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Callable, Mapping, NamedTuple

__all__ = ["OpKind", "Inputs", "Inferred", "SchemaError", "register", "unregister", "lookup", "registered"]


class SchemaError(ValueError):
    """An op does not fit its schema; the bundle reader prefixes the file and op to the message."""


@dataclass(frozen=True)
class Inputs:
    """What :attr:`OpKind.infer` checks an op against: its input tensors as they flow in."""
    op: str
    names: list      # tensor names, for messages
    shapes: list     # per-image shapes: (H, W, C) maps, (N,) vectors
    kinds: list      # "float" | "bits"
    raw_attrs: dict  # the attributes as the file has them: optional ones are read from here
    version: int     # the file's format_version

    def need(self, kind: str, i: int = 0) -> None:
        """Refuse input ``i`` unless it is a ``kind`` ("float" | "bits") tensor."""
        if self.kinds[i] != kind:
            raise SchemaError(f"input {self.names[i]!r} is {self.kinds[i]}, {self.op} needs {kind}")


class Inferred(NamedTuple):
    """What :attr:`OpKind.infer` returns: the output's per-image shape and kind, and the
    datasets this op needs beyond :attr:`OpKind.datasets` (those that depend on attributes)."""
    shape: tuple
    kind: str
    datasets: Mapping = MappingProxyType({})


@dataclass(frozen=True)
class OpKind:
    """One op kind.  Datasets are ``{name: (dtype name, shape as attribute names)}``;
    every function raises :class:`SchemaError` for an op that does not fit.

    * ``infer(attrs, inputs: Inputs) -> Inferred``: check the op against its inputs
      (``attrs`` are the checked attributes; it may add derived ones that dataset
      shapes use, as bconv2d's ``cw``).
    * ``bounds(attrs, arrays, in_bounds) -> {quantity: bound}``: upper bounds of |value|
      (bnnlite/bounds.py); ``"out"`` bounds the float output, absent for bits.
    * ``check_arrays(attrs, arrays)``: checks of the read arrays beyond dtype, shape
      and finiteness (bconv2d's zero tail bits).
    * ``runtime(rec, shapes, backend)``: the :class:`~bnnlite.ops.runtime.RuntimeOp`.
    * ``to_onnx(g, rec)``: append the op's ONNX nodes to ``g`` (onnx_export.py).
    * ``to_torch(rec, bundle) -> torch.nn.Module``: the float mirror (bench/engines.py),
      called on the op's input tensors (NCHW) in order; import torch inside it, so
      that ``import bnnlite`` stays torch-free.
    """
    name: str
    runtime: type
    infer: Callable
    bounds: Callable
    inputs: tuple = (1, 1)                                  # least and most input tensors
    int_attrs: Mapping = field(default_factory=dict)        # name -> least value (most: bundle.MAX_DIM)
    str_attrs: Mapping = field(default_factory=dict)        # name -> allowed values
    datasets: Mapping = field(default_factory=dict)         # always present
    check_arrays: Callable | None = None
    to_onnx: Callable | None = None
    to_torch: Callable | None = None


_KINDS: dict[str, OpKind] = {}


def register(kind: OpKind, *, replace: bool = False) -> OpKind:
    """Add ``kind`` under ``kind.name``; a name already taken needs ``replace=True``."""
    if not isinstance(kind, OpKind):
        raise TypeError(f"register takes an OpKind, not {type(kind).__name__}")
    if not kind.name or not kind.name.isidentifier():
        raise ValueError(f"op kind name {kind.name!r} should be a non-empty identifier")
    if kind.name in _KINDS and not replace:
        raise ValueError(f"op kind {kind.name!r} is already registered (replace=True to replace it)")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> OpKind:
    """Remove and return the op kind ``name`` (KeyError if it is not registered)."""
    return _KINDS.pop(name)


def lookup(name: str) -> OpKind:
    """The registered op kind ``name`` (KeyError if none)."""
    return _KINDS[name]


def registered() -> Mapping[str, OpKind]:
    """A read-only, live view: op kind name -> OpKind, in registration order."""
    return _VIEW


_VIEW = MappingProxyType(_KINDS)
