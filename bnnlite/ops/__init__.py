"""The op kinds of a bundle: one module per op family, and the registry they enter.

Public names (from registry.py): OpKind, Inputs, Inferred, SchemaError, register,
unregister, lookup, registered; RuntimeOp (runtime.py).

Each module holds, for its op kinds, the bundle schema (attributes, datasets,
shape inference, value bounds), the runtime class (bind, run), the ONNX
translation and the PyTorch mirror, and registers them as one :class:`OpKind`:

* conv.py    ``conv2d``: the real conv (first layer, fp32 models)
* binary.py  ``sign_pack``, ``bconv2d``: floats -> bits, the XNOR-popcount conv
* pool.py    ``maxpool2d``, ``bmaxpool2d``, ``avgpool2d``, ``global_avgpool``
* merge.py   ``add``, ``concat``: branches of a network joined
* shape.py   ``flatten``
* dense.py   ``dense``: the classifier

A new op kind is a module like these: ``infer`` (checks and output shape),
``bounds``, a RuntimeOp subclass whose ``bind`` calls its kernel, optionally
``to_onnx`` and ``to_torch``, and one ``register(OpKind(...))``; a built-in
one is also imported below (tests/test_ops_registry.py adds a toy op from a
test).  bundle.py (also for the value-bound walk), graph.py, onnx_export.py
and the bench find it in the registry.
"""
from .registry import Inferred, Inputs, OpKind, SchemaError, lookup, register, registered, unregister
from .runtime import RuntimeOp
# Each registers its op kinds, in this order (the order BundleError lists them in).
from . import conv, binary, pool, merge, shape, dense  # noqa: E402,F401,I001

__all__ = ["OpKind", "Inputs", "Inferred", "SchemaError", "register", "unregister", "lookup", "registered",
           "RuntimeOp"]
