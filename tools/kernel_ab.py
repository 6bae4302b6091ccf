"""A/B of two builds of the compiled kernels, layer by layer, in one process.

Loads a second copy of the Cython extension from a file (say, a build of the
previous commit saved before rebuilding) next to the installed one, binds each
binary conv of the shipped model to both, checks that their outputs are
identical, and times them in alternation.  The median of the per-round ratios
is far steadier on a shared machine than comparing two separate runs.  Both
builds must read the same plane lists (bnnlite/backends/planes.py, plane_lists).
``--model`` times the whole model instead (Model.logits on a batch of 128
random images, ``--chunk`` at a time), each build with a graph made through
it, so with its own plane lists: builds whose lists differ (another
PLANES_SETS) compare too.  ``--backend cython-avx2`` (etc.) A/Bs that
variant's builds instead of the one this CPU would pick.  A build from
before kernels/bconv_select.h (it has no ``select_path``) is asked through
the installed build's ``select_path``: the same rule, which that build
applied inside bconv_raw to the data it was given; one whose ``select_path``
takes no kernel arguments (kh, kw, cw) is asked without them.

    cp bnnlite/_bconv_avx512.*.so /tmp/before.so  # before the change (the CPU's variant)
    python setup.py build_ext --inplace           # after it
    python tools/kernel_ab.py /tmp/before.so      # A = before, B = installed
    python tools/kernel_ab.py --model /tmp/before.so
    python tools/kernel_ab.py --bundle rn.h5 /tmp/before.so   # another model
"""
from __future__ import annotations

import copy
import importlib.util
import time
import types
from pathlib import Path

import click
import numpy as np

import bnnlite
from bnnlite.bitpack import pack_bits
from bnnlite.graph import BConv2D, Graph, _Context


def _bound(model, mod):
    """A copy of ``model.backend`` whose kernel module is ``mod`` (the
    module is looked up at each call, so the copy must carry its own)."""
    backend = copy.copy(model.backend)
    backend._impl = copy.copy(model.backend._impl)
    backend._impl.mod = mod
    return backend


def _with_select_path(mod, installed):
    """``mod`` as a namespace, given the installed build's path choice when
    it is older than it (no ``select_path``), or its own choice asked without
    the kernel arguments when its ``select_path`` predates them (it chose by
    the output's size alone)."""
    own = getattr(mod, "select_path", None)
    if own is not None:
        try:
            own(1, 1, 1, False, False, False, 1, 1, 1)
            return mod
        except TypeError:
            pass
    ns = types.SimpleNamespace(**{k: getattr(mod, k) for k in dir(mod) if not k.startswith("__")})
    if own is not None:
        ns.select_path = lambda n, ho, wo, pool, hp, hw, kh, kw, cw: own(n, ho, wo, pool, hp, hw)
    else:
        for k in ("select_path", "PATH_CORE", "PATH_PLANES", "PATH_WPLANES"):
            setattr(ns, k, getattr(installed, k))
    ns.__name__ = mod.__name__
    return ns


def _alternate(runs, rounds):
    """Seconds of each of ``rounds`` calls of runs["A"] and runs["B"], in
    alternation, and the median of the rounds' A/B ratios."""
    times = {"A": [], "B": []}
    for _ in range(rounds):
        for k, run in runs.items():
            t0 = time.perf_counter()
            run()
            times[k].append(time.perf_counter() - t0)
    return times, float(np.median([a / b for a, b in zip(times["A"], times["B"])]))


def _load_model(bundle, backend, **kw):
    return bnnlite.Model.load(bundle, backend=backend, **kw) if bundle else \
        bnnlite.Model.pretrained(backend=backend, **kw)


def _whole_model(mods, rounds, chunk, backend, bundle):
    """Model.logits of 128 random images, A and B in alternation, each on a
    model whose graph (so whose plane lists) was made through its build."""
    models = {}
    for k, mod in mods.items():
        m = _load_model(bundle, backend, threads=1, chunk=chunk)
        m.backend = _bound(m, mod)
        m.graph = Graph(m.bundle, m.backend)
        models[k] = m
    x = np.random.default_rng(0).integers(0, 256, (128, 32, 32, 3), dtype=np.uint8)
    same = np.array_equal(models["A"].logits(x), models["B"].logits(x))
    times, ratio = _alternate({k: (lambda m=m: m.logits(x)) for k, m in models.items()}, rounds)
    click.echo(f"model    logits {'identical' if same else 'DIFFER'}  "
               f"A {128 / np.median(times['A']):6.1f} img/s  B {128 / np.median(times['B']):6.1f} img/s  "
               f"median A/B {ratio:.3f}")


def _load(path: Path, tag: str, name: str):
    """The extension in ``path``, whatever the file is called; ``name`` is its
    module name (e.g. _bconv_avx2: the name its init function carries)."""
    spec = importlib.util.spec_from_file_location(f"{tag}.{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@click.command()
@click.argument("build_a", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("build_b", type=click.Path(exists=True, dir_okay=False, path_type=Path), required=False)
@click.option("--rounds", type=click.IntRange(min=3), default=10, show_default=True)
@click.option("--chunk", type=click.IntRange(min=1), default=4, show_default=True,
              help="Images per call (Model.chunk).")
@click.option("--calls", type=click.IntRange(min=1), default=32, show_default=True,
              help="Calls per timed round (32 x chunk 4 = batch 128).")
@click.option("--model", "whole", is_flag=True,
              help="Time the whole model (Model.logits, batch 128) instead of each layer.")
@click.option("--backend", type=click.Choice(["cython", "cython-avx512", "cython-avx2", "cython-neon",
                                         "cython-generic"]),
              default="cython", show_default=True,
              help="The compiled variant the builds are of (cython: the one this CPU picks).")
@click.option("--bundle", type=click.Path(exists=True, dir_okay=False), default=None,
              help="The model to time [default: the shipped birealnet].")
def main(build_a, build_b, rounds, chunk, calls, whole, backend, bundle):
    """Time BUILD_A against BUILD_B (default: the installed build)."""
    model = _load_model(bundle, backend, threads=1)
    installed = model.backend._impl.mod
    name = installed.__name__.rsplit(".", 1)[-1]
    mods = {"A": _load(build_a, "build_a", name),
            "B": _load(build_b, "build_b", name) if build_b else installed}
    mods = {k: _with_select_path(mod, installed) for k, mod in mods.items()}
    click.echo(f"variant {name}: A {build_a}, B {build_b or installed.__file__}")
    if whole:
        _whole_model(mods, rounds, chunk, backend, bundle)
        return
    sets = {k: getattr(mod, "PLANES_SETS", None) for k, mod in mods.items()}
    if sets["A"] != sets["B"]:
        raise click.UsageError(f"the builds' plane lists differ (PLANES_SETS {sets['A']} and {sets['B']}), "
                               f"so the layers cannot share them: compare with --model")
    plan = model.graph.plan(chunk)
    rng = np.random.default_rng(0)
    for t in plan.tensors.values():
        if t.dtype == np.float32:
            t[...] = rng.standard_normal(t.shape, dtype=np.float32)
    for name in plan.storage:          # random +-1 activations, the +1 padding kept
        inner = plan.tensors[name]
        inner[...] = pack_bits(rng.standard_normal(inner.shape[:3] + (model.graph.shapes[name][2],)), 0.0)
    total = {"A": 0.0, "B": 0.0}
    for op in model.graph.ops:
        if not isinstance(op, BConv2D):
            continue
        calls_, outs = {}, {}
        for k, mod in mods.items():
            calls_[k] = op.bind(plan.tensors, _Context(plan, _bound(model, mod), 1))
            calls_[k]()
            names = list(op.outputs) + ([op.fused_pack[0]] if op.fused_pack else [])
            outs[k] = [plan.tensors[n].copy() for n in names]
        same = all(np.array_equal(a, b) for a, b in zip(outs["A"], outs["B"]))
        def repeated(call):
            def run():
                for _ in range(calls):
                    call()
            return run
        times, ratio = _alternate({k: repeated(call) for k, call in calls_.items()}, rounds)
        for k in times:
            total[k] += float(np.median(times[k]))
        click.echo(f"{op.name:8s} outputs {'identical' if same else 'DIFFER'}  "
                   f"A {1e3 * np.median(times['A']):7.1f} ms  B {1e3 * np.median(times['B']):7.1f} ms  "
                   f"median A/B {ratio:.3f}")
    click.echo(f"all layers: A {1e3 * total['A']:.1f} ms, B {1e3 * total['B']:.1f} ms (medians), "
               f"A/B {total['A'] / total['B']:.3f}")


if __name__ == "__main__":
    main()
