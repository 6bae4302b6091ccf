"""Time the Python side of ``Model.predict``: every kernel call is a no-op.

What is left is everything around the kernels: input checks, chunking,
the graph loop and the calls into the extension (and their argument
checks).  The normalisation of uint8 images is a kernel too (a table
lookup, ``Backend.lookup_u8``), so it is not counted.  Useful to see
what a change to the graph or the backend layer costs or saves, apart from
the (noisy) kernel time.

    python tools/python_overhead.py                  # the shipped model, batch 1 and 128
    python tools/python_overhead.py --batch 1 --batch 16 --repeat 1000
"""
from __future__ import annotations

import time

import click
import numpy as np

import bnnlite
from bnnlite.backends import Backend
from bnnlite.backends.api import Kernels


def _no_op(self, *args):
    pass


class _NoKernels(Kernels):
    """Stands in for a backend's kernels: same layout, every kernel a no-op
    (and the default call_path: the popcount core's, no scratch)."""

    pack = bconv_float = bconv_bits = conv_float = bmaxpool2 = maxpool2 = lookup_u8 = _no_op

    def __init__(self, impl):
        self.layout, self.variant = impl.layout, impl.variant
        self.concurrent_calls = impl.concurrent_calls


@click.command()
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True, default=(1, 128),
              show_default=True, help="Batch sizes to time (repeatable).")
@click.option("--repeat", type=click.IntRange(min=1), default=300, show_default=True,
              help="Predictions per batch size; the median is printed.")
@click.option("--threads", type=click.IntRange(min=1), default=1, show_default=True)
def main(batches, repeat, threads):
    m = bnnlite.Model.pretrained(threads=threads)
    # A Backend of our own (get_backend's are shared): same checks, no kernels.
    m.backend = m.graph.backend = Backend(m.backend.name, _NoKernels(m.backend._impl))
    click.echo(f"{m.architecture}, backend {m.backend.name}, threads {threads}, chunk {m.chunk}")
    rng = np.random.default_rng(0)
    for b in batches:
        x = rng.integers(0, 256, (b,) + m.input_shape, dtype=np.uint8)
        ts = []
        with np.errstate(invalid="ignore"):  # the dense layer multiplies never-written buffers
            for _ in range(5):
                m.predict(x)
            for _ in range(repeat):
                t0 = time.perf_counter()
                m.predict(x)
                ts.append(time.perf_counter() - t0)
        click.echo(f"batch {b:4d}: {1e3 * np.median(ts):8.3f} ms of Python per predict (median of {repeat})")


if __name__ == "__main__":
    main()
