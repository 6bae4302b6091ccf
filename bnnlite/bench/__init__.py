"""``bnnlite-bench``: bnnlite against PyTorch FP32 and ONNX Runtime, side by side.

Public names: ENGINES, SAMPLE, data_file, main.

Every engine takes the same input (uint8 NHWC images; normalisation and any
layout change are part of its timed work), runs the same VGG-small topology
and is measured in a fresh subprocess of its own, so peak resident memory is
that engine's alone.  The subprocesses are all started first and then timed
in alternation, round by round (each engine's batch, then the next's), so
that the machine's drift in speed (on a shared machine, other tenants come
and go) falls on every engine alike instead of on whichever ran in a slow
minute; each figure is the median over the rounds.

Modules, in the order a run uses them:

* ``cli``      -- the ``bnnlite-bench`` command: options, which engines run, output.
* ``evalset``  -- the images every engine sees (the shipped sample or ``--data``).
* ``engines``  -- each engine as a ``run(images) -> logits`` callable (bnnlite,
  PyTorch FP32 rebuilt from a bundle, ONNX Runtime).
* ``workers``  -- the engine subprocesses, the alternating timing rounds, the
  thread-scaling pairs and the import probe.
* ``layers``   -- ``--layers``: each binary conv timed alone.
* ``report``   -- the tables and lines printed.
"""
from .cli import main
from .engines import ENGINES
from .evalset import SAMPLE, data_file

__all__ = ["ENGINES", "SAMPLE", "data_file", "main"]

