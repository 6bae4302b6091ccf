"""``bnnlite``: run a bundle from the shell (torch-free).

    bnnlite info [model.h5]                  # summary of a bundle (default: the shipped one)
    bnnlite evaluate [--data cifar-10-...]   # top-1 on the CIFAR-10 test split or the shipped sample
    bnnlite predict images.npy               # class per image of a uint8 (N, H, W, C) array
"""
from __future__ import annotations

import math
import os
import stat
import time
from contextlib import contextmanager

import click
import numpy as np

MODEL_HELP = "Bundle to run [default: the shipped pretrained birealnet]."


@contextmanager
def _library_errors():
    from .bundle import BundleError
    try:
        yield
    except (BundleError, ValueError, OSError, EOFError) as e:
        raise click.ClickException(str(e) or type(e).__name__) from e
    except MemoryError as e:
        raise click.ClickException(f"out of memory ({e})") from e


def _load_npy(path) -> np.ndarray:
    """A .npy array, its header checked before anything is allocated (ValueError if bad)."""
    st = os.stat(path)
    if not stat.S_ISREG(st.st_mode):  # np.load would block on a FIFO
        raise ValueError(f"{path}: not a regular file")
    from .datasets import read_npy_header
    with open(path, "rb") as fh:
        read_npy_header(fh, path, st.st_size)
    return np.load(path, allow_pickle=False)


def _model(path, threads, backend=None):
    from .model import Model
    return Model.load(path, threads=threads, backend=backend) if path else Model.pretrained(threads=threads)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.version_option(package_name="bnnlite")
def main():
    """bnnlite: binary neural networks on ordinary CPUs."""


@main.command()
@click.argument("bundle", type=click.Path(exists=True, dir_okay=False), required=False)
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None, help=MODEL_HELP)
def info(bundle, model):
    """Print the ops, shapes, bits and bytes of BUNDLE (or --model; default: the shipped one)."""
    if bundle and model and bundle != model:
        raise click.UsageError("give the bundle once: as BUNDLE or as --model")
    with _library_errors():
        click.echo(_model(bundle or model, 1).summary())


@main.command()
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None, help=MODEL_HELP)
@click.option("--data", type=click.Path(exists=True), default=None,
              help="CIFAR-10 (either official layout, tarball or folder) [default: the shipped 1,000-image sample].")
@click.option("--threads", type=click.IntRange(1), default=1)
@click.option("--backend", type=click.Choice(["cython", "numba", "numpy"]), default=None)
@click.option("--batch", type=click.IntRange(1), default=128)
def evaluate(model, data, threads, backend, batch):
    """Top-1 accuracy and throughput on the test split."""
    from tqdm import tqdm
    with _library_errors():
        m = _model(model, threads, backend)
        if data:
            from .cifar import load_test_split
            images, labels = load_test_split(data)
        else:
            from .bench import SAMPLE, data_file
            with np.load(data_file(SAMPLE)) as z:
                images, labels = z["images"], z["labels"]
        correct, t0 = 0, time.perf_counter()
        for i in tqdm(range(0, len(images), batch), unit="batch", disable=None, leave=False):
            correct += int((m.predict(images[i:i + batch]) == labels[i:i + batch]).sum())
        dt = time.perf_counter() - t0
    click.echo(f"{m!r}")
    click.echo(f"top-1 {100 * correct / len(labels):.2f}% on {len(labels):,} images "
               f"({len(labels) / dt:,.0f} images/s, {threads} thread(s), backend {m.backend.name})")


@main.command()
@click.argument("images", type=click.Path(exists=True, dir_okay=False))
@click.option("--model", type=click.Path(exists=True, dir_okay=False), default=None, help=MODEL_HELP)
@click.option("--threads", type=click.IntRange(1), default=1)
def predict(images, model, threads):
    """Print the predicted class of each image in IMAGES (.npy, uint8 NHWC)."""
    with _library_errors():
        x = _load_npy(images)
        m = _model(model, threads)
        pred = np.atleast_1d(m.predict(x))
    names = m.class_names
    for i, p in enumerate(pred):
        click.echo(f"{i}\t{p}\t{names[p] if p < len(names) else ''}")


if __name__ == "__main__":
    main()
