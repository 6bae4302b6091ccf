"""Fuzz mutations of HDF5 storage features and of values (issue 16), for tools/fuzz_bundles.py.

Each mutation edits an open h5py file (like those in ``_fuzz_worker.py``) and
returns a description; one that adds something the reader must refuse
(external storage, a virtual dataset, a link, a filter, compact layout)
starts its description with ``FORBIDDEN``, so the runner can count a load of
it as a failure.  ``TARGETS`` are files the runner creates first: a regular
file with known bytes and a FIFO (reading it would block).
"""
from __future__ import annotations

import h5py
import numpy as np

from _bundle_edit import dataset_paths

TARGETS: dict = {}  # "file" -> path of a regular file, "fifo" -> path of a FIFO (set by the runner)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _recreate(f, path, data, **kwargs):
    del f[path]
    return f.create_dataset(path, data=data, **kwargs)


def m_storage(f, rng):
    paths = dataset_paths(f)
    path = _pick(rng, paths)
    a = f[path][()]
    kind = _pick(rng, ["external", "external_fifo", "external_rel", "virtual_self", "virtual_other",
                       "virtual_fifo", "softlink", "hardlink", "extlink", "extlink_fifo", "group_softlink",
                       "ops_extlink", "compact", "filter", "chunked", "chunked_fill"])
    shape, dtype = a.shape, a.dtype
    if kind.startswith("external"):
        target = {"external": TARGETS["file"], "external_fifo": TARGETS["fifo"], "external_rel": "rel.bin"}[kind]
        del f[path]
        f.create_dataset(path, shape=shape, dtype=dtype,
                         external=[(str(target), int(_pick(rng, [0, 8, 512])), max(1, a.nbytes))])
        return f"FORBIDDEN external storage {path} -> {target}"
    if kind.startswith("virtual"):
        layout = h5py.VirtualLayout(shape=shape, dtype=dtype)
        if kind == "virtual_self":
            src = _pick(rng, [".", "x.h5", "mutant.h5"]), path
        elif kind == "virtual_other":
            src = ".", _pick(rng, paths)
        else:
            src = str(TARGETS["fifo"]), "/x"
        layout[...] = h5py.VirtualSource(src[0], "/" + src[1].lstrip("/"), shape=shape)
        del f[path]
        f.create_virtual_dataset(path, layout)
        return f"FORBIDDEN virtual dataset {path} <- {src}"
    if kind == "softlink":
        other = _pick(rng, paths)
        del f[path]
        f[path] = h5py.SoftLink("/" + other if other != path else "/nowhere")
        return f"FORBIDDEN soft link {path} -> {other}"
    if kind == "hardlink":
        other = _pick(rng, [p for p in paths if p != path] or paths)
        del f[path]
        f[path] = f[other]
        return f"FORBIDDEN hard link {path} = {other}"
    if kind.startswith("extlink"):
        del f[path]
        f[path] = h5py.ExternalLink(str(TARGETS["fifo" if kind == "extlink_fifo" else "file"]), "/x")
        return f"FORBIDDEN external link {path}"
    if kind == "group_softlink":
        group = path.rsplit("/", 1)[0]
        f.move(group, group + "_real")
        f[group] = h5py.SoftLink("/" + group + "_real")
        return f"FORBIDDEN soft link {group}"
    if kind == "ops_extlink":
        del f["ops"]
        f["ops"] = h5py.ExternalLink(str(TARGETS["fifo"]), "/ops")
        return "FORBIDDEN external link /ops"
    if kind == "compact":
        if a.nbytes > 60000 or a.size == 0:
            return "(compact not applicable)"
        del f[path]
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_layout(h5py.h5d.COMPACT)
        parent, name = path.rsplit("/", 1)
        h5py.h5d.create(f[parent].id, name.encode(), h5py.h5t.py_create(dtype), h5py.h5s.create_simple(shape),
                        dcpl=dcpl).write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(a))
        return f"FORBIDDEN compact {path}"
    if kind == "filter" and a.size:
        opts = _pick(rng, [dict(compression="gzip"), dict(compression="lzf"), dict(shuffle=True),
                           dict(fletcher32=True), dict(scaleoffset=0 if dtype.kind in "iu" else 3)])
        if "scaleoffset" in opts and dtype == np.uint64:
            opts = dict(shuffle=True)
        _recreate(f, path, a, chunks=True, **opts)
        return f"FORBIDDEN filter {opts} on {path}"
    if a.size:  # chunked, allowed: the same values in other chunk shapes (maybe a fill value)
        chunks = tuple(int(rng.integers(1, s + 1)) for s in shape) or None
        kw = {"fillvalue": np.asarray(7, dtype)[()]} if kind == "chunked_fill" else {}
        _recreate(f, path, a, chunks=chunks, **kw)
        return f"chunked {path} {chunks}"
    return "(storage not applicable)"


HUGE = [3.4e38, -3.4e38, 1e38, 1e36, 1e30, 1e20, 1e10, 65504.0, 1e-30, 1e-45]


def m_values(f, rng):
    paths = [p for p in dataset_paths(f) if f[p].dtype.kind == "f" and f[p].size]
    kind = _pick(rng, ["one_huge", "few_huge", "scale_all", "std", "mean", "near_limit"])
    if kind in ("std", "mean"):
        key = "normalization_std" if kind == "std" else "normalization_mean"
        v = np.asarray(f.attrs[key], np.float32).copy()
        v[int(rng.integers(len(v)))] = _pick(rng, [1e-45, 1e-40, 1e-38, 1e-30, 1e-10] if kind == "std"
                                             else [3.4e38, -3.4e38, 1e30, 1e10, -1e10])
        f.attrs[key] = v
        return f"{key} = {v.tolist()}"
    path = _pick(rng, paths)
    a = f[path][()].astype(np.float32)
    if kind == "one_huge":
        a.reshape(-1)[int(rng.integers(a.size))] = _pick(rng, HUGE)
    elif kind == "few_huge":
        idx = rng.integers(0, a.size, int(rng.integers(2, 6)))
        a.reshape(-1)[idx] = np.float32(_pick(rng, HUGE)) * rng.choice([-1, 1], len(idx)).astype(np.float32)
    elif kind == "scale_all":
        a = (a.astype(np.float64) * 10.0 ** int(rng.integers(1, 40))).clip(-3.4e38, 3.4e38).astype(np.float32)
    else:  # values just around the size where a sum of them could overflow
        a.reshape(-1)[int(rng.integers(a.size))] = np.float32(3.4e38 / 10 ** float(rng.uniform(0, 6)))
    f[path][...] = a
    return f"{kind} values in {path}"


FAMILIES = {"storage": m_storage, "values": m_values}
