"""Editing sealed bundles in tests: copy, change with h5py, re-seal.

A bundle edited with h5py fails its seal (the SHA-256 in the user block), so
every helper re-seals by default: the edit then reaches the validator.
Torch-free (used by the fuzz worker subprocesses too).
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np

from bnnlite.bundle import seal


def edit(src, dst, fn, *, reseal=True) -> Path:
    """Copy ``src`` to ``dst``, call ``fn(h5py_file)`` in "r+" mode, re-seal; return dst."""
    import h5py
    dst = Path(dst)
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        fn(f)
    if reseal:
        seal(dst)
    return dst


def get_graph(f) -> list:
    return json.loads(f.attrs["graph"])


def set_attr(f, key, value) -> None:
    """Set a root attribute as the writer would: text as a fixed-length string."""
    f.attrs[key] = np.bytes_(value.encode("utf-8")) if isinstance(value, str) else value


def set_graph(f, graph) -> None:
    set_attr(f, "graph", graph if isinstance(graph, str) else json.dumps(graph))


def edit_graph(f, fn) -> None:
    """``fn(graph_list)`` mutates the op list in place (or returns a replacement)."""
    g = get_graph(f)
    out = fn(g)
    set_graph(f, g if out is None else out)


def op_index(graph, name) -> int:
    return next(i for i, rec in enumerate(graph) if rec["name"] == name)


def replace_dataset(f, path, data=None, **kwargs) -> None:
    """Delete ``path`` and create it again from ``data`` (or kwargs: shape, dtype, chunks...)."""
    del f[path]
    if data is not None:
        f.create_dataset(path, data=data, **kwargs)
    else:
        f.create_dataset(path, **kwargs)


def dataset_paths(f) -> list[str]:
    """All /ops/<op>/<dataset> paths, sorted."""
    out = []
    for op in sorted(f["ops"]):
        for ds in sorted(f["ops"][op]):
            out.append(f"ops/{op}/{ds}")
    return out


def flip_byte(path, offset, mask=0xFF) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)[0]
        fh.seek(offset)
        fh.write(bytes([b ^ mask]))


def set_bits(a: np.ndarray, mask: int) -> np.ndarray:
    a = a.copy()
    a[..., -1] |= np.uint64(mask)
    return a
