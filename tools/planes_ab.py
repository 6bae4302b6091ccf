"""A/B of the AVX2 bit-plane conv against the popcount core, end to end.

Batch throughput: times ``Model.predict`` on the shipped model at batch 128,
alternating the two paths in one process (the best of ``--repeat`` runs
each), for several chunk sizes.  Batch 1: the median latency of single
images with and without the weight-plane path (the bit-plane conv's path for
outputs too small to fill its blocks: bconv4 and bconv5 of one 32x32 image),
alternating five images at a time.  A path is switched off by clearing its
prepared data (``PreparedWeights.planes`` / ``.wplanes``) before the model's
first call, so its plans never bind it.

    python tools/planes_ab.py                    # chunks 2, 4 and 8, then batch 1
    python tools/planes_ab.py --chunk 4 --repeat 9 --singles 0
"""
from __future__ import annotations

import time

import click
import numpy as np

import bnnlite
from bnnlite.graph import BConv2D


def _model(chunk=None, planes=True, wplanes=True):
    m = bnnlite.Model.pretrained(chunk=chunk)
    for op in m.graph.ops:
        if isinstance(op, BConv2D):
            if not planes:
                op.prepared.planes = None
            if not wplanes:
                op.prepared.wplanes = None
    return m


@click.command()
@click.option("--chunk", "chunks", type=click.IntRange(min=1), multiple=True, default=(2, 4, 8),
              show_default=True, help="Model.chunk values to time (repeatable).")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed predictions per path and chunk; the best is kept.")
@click.option("--batch", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--singles", type=click.IntRange(min=0), default=100, show_default=True,
              help="Batch-1 predictions per path (0: skip the batch-1 line).")
def main(chunks, repeat, batch, singles):
    rng = np.random.default_rng(0)
    probe = bnnlite.Model.pretrained()
    mod = getattr(probe.backend._impl, "mod", None)
    if mod is None or not getattr(mod, "HAVE_PLANES", False):
        raise click.ClickException(f"backend {probe.backend.name} ({probe.backend.variant}) "
                                   "has no bit-plane conv")
    x = rng.integers(0, 256, (batch,) + probe.input_shape, dtype=np.uint8)
    click.echo(f"{probe.architecture}, backend {probe.backend.name}/{probe.backend.variant}, "
               f"batch {batch}, best of {repeat}")
    for chunk in chunks:
        models = {"planes": _model(chunk), "core": _model(chunk, planes=False, wplanes=False)}
        times = {k: [] for k in models}
        for m in models.values():
            m.predict(x)                        # binds the plans
        for _ in range(repeat):
            for path, m in models.items():
                t0 = time.perf_counter()
                m.predict(x)
                times[path].append(time.perf_counter() - t0)
        p, c = (batch / min(times[k]) for k in ("planes", "core"))
        click.echo(f"chunk {chunk}: bit planes {p:7.1f} img/s, popcount core {c:7.1f} img/s, "
                   f"ratio {p / c:.2f}")
    if singles:
        models = {"with": _model(), "without": _model(wplanes=False)}
        times = {k: [] for k in models}
        images = [x[i % batch][None] for i in range(singles)]
        for m in models.values():
            m.predict(images[0])
        for i in range(0, singles, 5):
            for path, m in models.items():
                for one in images[i:i + 5]:
                    t0 = time.perf_counter()
                    m.predict(one)
                    times[path].append(time.perf_counter() - t0)
        w, wo = (1e3 * float(np.median(times[k])) for k in ("with", "without"))
        click.echo(f"batch 1 (median of {singles}): with the weight planes {w:.3f} ms, "
                   f"without {wo:.3f} ms, ratio {wo / w:.2f}")


if __name__ == "__main__":
    main()
