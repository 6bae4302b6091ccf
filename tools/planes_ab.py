"""A/B of the AVX2 bit-plane conv against the popcount core, end to end.

Times ``Model.predict`` on the shipped model at batch 128, alternating the
two paths in one process (the best of ``--repeat`` runs each), for several
chunk sizes.  The popcount core is forced by raising the kernel module's
PLANES_MIN_PIXELS, which makes every layer's plan skip the bit-plane conv.

    python tools/planes_ab.py                    # chunks 2, 4 and 8
    python tools/planes_ab.py --chunk 4 --repeat 9
"""
from __future__ import annotations

import time

import click
import numpy as np

import bnnlite


@click.command()
@click.option("--chunk", "chunks", type=click.IntRange(min=1), multiple=True, default=(2, 4, 8),
              show_default=True, help="Model.chunk values to time (repeatable).")
@click.option("--repeat", type=click.IntRange(min=1), default=5, show_default=True,
              help="Timed predictions per path and chunk; the best is kept.")
@click.option("--batch", type=click.IntRange(min=1), default=128, show_default=True)
def main(chunks, repeat, batch):
    rng = np.random.default_rng(0)
    probe = bnnlite.Model.pretrained()
    mod = getattr(probe.backend._impl, "mod", None)
    if mod is None or not getattr(mod, "HAVE_PLANES", False):
        raise click.ClickException(f"backend {probe.backend.name} ({probe.backend.variant}) "
                                   "has no bit-plane conv")
    x = rng.integers(0, 256, (batch,) + probe.input_shape, dtype=np.uint8)
    on = mod.PLANES_MIN_PIXELS
    click.echo(f"{probe.architecture}, backend {probe.backend.name}/{probe.backend.variant}, "
               f"batch {batch}, best of {repeat}")
    try:
        for chunk in chunks:
            times = {"planes": [], "core": []}
            models = {}
            for path, limit in (("planes", on), ("core", 1 << 30)):
                mod.PLANES_MIN_PIXELS = limit   # read when a plan is bound
                models[path] = bnnlite.Model.pretrained(chunk=chunk)
                models[path].predict(x)         # binds the plans with this limit
            for _ in range(repeat):
                for path, m in models.items():
                    t0 = time.perf_counter()
                    m.predict(x)
                    times[path].append(time.perf_counter() - t0)
            p, c = (batch / min(times[k]) for k in ("planes", "core"))
            click.echo(f"chunk {chunk}: bit planes {p:7.1f} img/s, popcount core {c:7.1f} img/s, "
                       f"ratio {p / c:.2f}")
    finally:
        mod.PLANES_MIN_PIXELS = on


if __name__ == "__main__":
    main()
