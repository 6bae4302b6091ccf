"""The images the benchmark feeds every engine: the shipped test sample or ``--data``.

Public names: SAMPLE, data_file, load_eval_set.
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path

import click
import numpy as np

__all__ = ["SAMPLE", "data_file", "load_eval_set"]

#: 1,000 CIFAR-10 test images shipped in bnnlite/data/ (accuracy without --data).
SAMPLE = "cifar10_test_sample.npz"


def data_file(name) -> Path | None:
    """``bnnlite/data/<name>`` if the package ships it, else None."""
    p = resources.files("bnnlite") / "data" / name
    return Path(str(p)) if p.is_file() else None


def load_eval_set(data, limit) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 NHWC images, labels): the test split of ``data`` (either official
    CIFAR-10 layout, read without torch), or the shipped sample when ``data`` is
    None; only the first ``limit`` images if ``limit`` is set."""
    if data is None:
        path = data_file(SAMPLE)
        if path is None:
            raise click.ClickException(f"no --data given and the package has no {SAMPLE}")
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    else:
        from ..cifar import load_test_split
        images, labels = load_test_split(data)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels
