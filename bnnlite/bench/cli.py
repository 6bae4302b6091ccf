"""The ``bnnlite-bench`` command (also ``python -m bnnlite.bench``).

Public names: main.

Columns: accuracy, batch-1 latency (median of ``--runs`` single-image calls),
batch-N throughput (median of the rounds' batches), peak RSS (after loading and
running batch N; accuracy is measured afterwards, so the data set is not
counted), weight storage.  ``--layers`` times each binary conv alone.  The
hidden ``--worker ENGINE`` runs one engine's subprocess (bnnlite.bench.workers).
"""
from __future__ import annotations

import json

import click

from . import report
from .engines import ENGINES, missing
from .evalset import data_file

__all__ = ["main"]


def _run_worker(worker, model, fp32, data, limit, threads, batch, runs, scaling):
    from .workers import scaling_worker, serve
    if worker == "scaling":
        print(json.dumps(scaling_worker(model, data, limit, threads, scaling, batch)))
    else:
        serve(worker, model, fp32, data, limit, threads, batch, runs)


def _layers(model, threads, batch, as_json):
    from .layers import time_layers
    rows = time_layers(model, threads, batch)
    click.echo(json.dumps(rows, indent=2) if as_json else report.layers_table(rows, batch))


def _engines(engines) -> list[str]:
    wanted = [e.strip() for e in engines.split(",") if e.strip()]
    bad = [e for e in wanted if e not in ENGINES]
    if bad:
        raise click.BadParameter(f"unknown engine(s) {', '.join(bad)}; known: {', '.join(ENGINES)}",
                                 param_hint="--engines")
    return wanted


def _check_paths(model, fp32, data):
    """One clear error before any worker starts (a FIFO would block a worker, a bad file fail each row)."""
    import os
    import stat
    for opt, p, dir_ok in (("--model", model, False), ("--fp32", fp32, False), ("--data", data, True)):
        if p is None:
            continue
        mode = os.stat(p).st_mode
        if not (stat.S_ISREG(mode) or (dir_ok and stat.S_ISDIR(mode))):
            raise click.ClickException(f"{opt} {p}: not a regular file{' or a folder' if dir_ok else ''}")


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--model", "model", type=click.Path(exists=True, dir_okay=False), default=None,
              help="BNN bundle [default: the shipped pretrained birealnet].")
@click.option("--fp32", "fp32", type=click.Path(exists=True, dir_okay=False), default=None,
              help="FP32 bundle for the torch/ONNX FP32 engines [default: the shipped fp32 reference].")
@click.option("--data", type=click.Path(exists=True), default=None,
              help="CIFAR-10 data for accuracy on the full test split [default: the shipped sample].")
@click.option("--limit", type=click.IntRange(1), default=None, help="Use only the first N evaluation images.")
@click.option("--threads", type=click.IntRange(1), default=1)
@click.option("--batch", type=click.IntRange(1), default=128, help="Throughput batch size.")
@click.option("--runs", type=click.IntRange(50), default=50, help="Batch-1 calls (the median is reported).")
@click.option("--engines", default=",".join(ENGINES), help="Comma-separated subset of engines.")
@click.option("--scaling", type=click.IntRange(0), default=2,
              help="Also time bnnlite with this many threads, in alternation with --threads in one "
                   "process, and report the speed-up (0: skip).")
@click.option("--layers", is_flag=True, help="Time each binary conv layer alone instead.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.option("--worker", default=None, hidden=True)
def main(model, fp32, data, limit, threads, batch, runs, engines, scaling, layers, as_json, worker):
    """Benchmark bnnlite against PyTorch FP32 and ONNX Runtime on the same topology."""
    from ..bundle import BundleError
    from .workers import import_times, measure, thread_scaling
    model = model or data_file("birealnet.h5")
    fp32 = fp32 or data_file("fp32.h5")
    if model is None:
        raise click.ClickException("no --model given and the package has no pretrained birealnet.h5")
    try:
        if worker:
            return _run_worker(worker, model, fp32, data, limit, threads, batch, runs, scaling)
        if layers:
            return _layers(model, threads, batch, as_json)
    except BundleError as e:
        raise click.ClickException(str(e)) from e
    _check_paths(model, fp32, data)
    wanted = _engines(engines)
    args = {"model": model, "fp32": fp32, "data": data, "limit": limit, "threads": threads, "batch": batch,
            "runs": runs}
    skipped = {}
    for e in wanted:
        why = missing(e) or (None if fp32 or e not in ("torch-fp32", "ort-fp32") else "no FP32 bundle (--fp32)")
        if why:
            skipped[e] = {"engine": e, "skipped": why}
    runnable = [e for e in wanted if e not in skipped]
    if runnable and not as_json:
        click.echo(f"running {', '.join(runnable)} in alternation ...", err=True)
    measured = {r["engine"]: r for r in measure(runnable, args)}
    rows = [skipped.get(e) or measured[e] for e in wanted]
    extra = {"import": import_times()}
    base = next((r for r in rows if r["engine"] == "bnnlite" and "error" not in r and "skipped" not in r), None)
    if scaling and base and scaling != threads:
        if not as_json:
            click.echo(f"running bnnlite with {scaling} threads ...", err=True)
        extra["scaling"] = thread_scaling({**args, "scaling": scaling})
    if as_json:
        click.echo(json.dumps({"threads": threads, "batch": batch, "model": str(model), "results": rows, **extra},
                              indent=2))
        return
    click.echo(f"model {model}; {threads} thread(s); batch {batch}; "
               f"accuracy on {'--data ' + str(data) if data else 'the shipped test sample'}")
    click.echo(report.engines_table(rows))
    click.echo(report.import_line(extra["import"]))
    if "scaling" in extra:
        click.echo(report.scaling_line(extra["scaling"]))
