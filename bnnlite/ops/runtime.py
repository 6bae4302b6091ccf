"""The base class of the runtime ops, and what the graph planner asks of each.

Public names: RuntimeOp.
"""
from __future__ import annotations

__all__ = ["RuntimeOp"]


class RuntimeOp:
    """One op: names of its tensors, its arrays, and ``bind(tensors, ctx)``.

    What ``Graph`` asks of an op besides ``bind`` (the defaults here fit most):

    * ``scratch(n)``: a dict of buffers for a batch of n, kept in the plan as
      ``ctx.scratch[op.name]`` (None: no scratch); ``scratch_bytes_per_image()``
      caps the chunk size so that scratch stays small;
    * ``bits_border``: the border of zero words (+1) that the op's first input,
      a bits tensor, should be stored with (a binary conv's padding);
    * ``reshape_view``: True for an op whose output is a reshape view of its
      input buffer, planned as such and never run (``flatten``).
    """
    kind = "?"           # what it writes: "float" | "bits"
    bits = 32            # precision of its arithmetic, for summaries
    bits_border = 0
    reshape_view = False

    def __init__(self, rec, shapes, backend):
        self.name, self.inputs, self.outputs = rec.name, rec.inputs, rec.outputs
        self.attrs, self.arrays = rec.attrs, rec.arrays
        self.in_shape = shapes[rec.inputs[0]]
        self.out_shape = shapes[rec.outputs[0]]

    @property
    def nbytes(self) -> int:
        return int(sum(a.nbytes for a in self.arrays.values()))

    def describe(self) -> str:
        return ""

    def scratch(self, n):
        return None

    def scratch_bytes_per_image(self) -> int:
        return 0

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
