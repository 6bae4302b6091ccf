"""The bnnlite bundle: one HDF5 file per model (schema in docs/format.md).

Public names: FORMAT, FORMAT_VERSION, BundleError, OP_SPECS, Bundle, OpRecord,
write_bundle, read_bundle, seal, MAX_BUNDLE_BYTES.

Layout (all readable with plain h5py or h5dump):

* a 512-byte HDF5 *user block* holding the seal: magic ``BNNLITE-SEAL``,
  the byte length of the file and the SHA-256 of everything after the user
  block.  A truncated or bit-flipped file fails the seal before HDF5 parses
  a byte of it.
* root attributes: ``format``, ``format_version``, ``producer``,
  ``architecture``, ``config`` (JSON), ``input_shape`` (H, W, C),
  ``input_layout`` ("NHWC"), ``normalization_mean`` / ``normalization_std``,
  ``class_names`` (JSON), ``metrics`` (JSON), ``graph`` (JSON list of ops).
* ``/ops/<name>/<dataset>``: the arrays of each op.

``read_bundle`` checks everything before any allocation that the file
declares: sizes, dtypes, shapes against the op kinds' schemas (bnnlite/ops/)
and against the shapes flowing through the graph, op references,
finiteness.  Every problem is a :class:`BundleError` naming the op and the
dataset.
"""
from __future__ import annotations

import hashlib
import io
import json
import math
import stat
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ._atomic import atomic_path
from .bounds import FLOAT32_MAX, input_bound
from .ops import Inputs, SchemaError, lookup, registered
from .ops.conv import folded_conv_weight  # noqa: F401  (a public name of this module before bnnlite/ops/)

__all__ = ["FORMAT", "FORMAT_VERSION", "BundleError", "OP_SPECS", "Bundle", "OpRecord", "folded_conv_weight",
           "write_bundle", "read_bundle", "seal", "MAX_BUNDLE_BYTES"]

FORMAT = "bnnlite"
# 3: conv2d has a BN multiplier (y = fma(conv, multiplier, bias)) and float
#    bconv2d a scale (y = fma(acc * scale, multiplier, bias)): PyTorch's rounding;
# 2: strings are fixed-length (1 used variable-length).
FORMAT_VERSION = 3
USERBLOCK = 512
SEAL_MAGIC = b"BNNLITE-SEAL\x00\x01"
SEAL_STRUCT = struct.Struct("<14sQ32s")  # magic, total file bytes, sha256(file[USERBLOCK:])
MAX_BUNDLE_BYTES = 1 << 30               # refuse to read more than 1 GiB
MAX_DIM = 1 << 16                        # any declared channel count / side
MAX_OPS = 4096
MAX_JSON = 1 << 20
MAX_ATTR_ELEMENTS = 1 << 16               # numbers in one root attribute
INPUT = "input"                          # the normalised float32 NHWC image batch
OUTPUT = "logits"


class BundleError(ValueError):
    """The file is not a usable bnnlite bundle; the message says why."""


# The op kinds a bundle may name, a live read-only view of the registry
# (bnnlite/ops/: each kind's attributes, datasets, inputs and shape inference).
OP_SPECS = registered()


@dataclass
class OpRecord:
    """One op as stored: type, name, tensor names in and out, attributes, arrays."""
    op: str
    name: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict = field(default_factory=dict)
    arrays: dict = field(default_factory=dict)


@dataclass
class Bundle:
    """A validated bundle in memory; ``shapes`` maps each tensor to its per-image shape."""
    header: dict
    ops: list[OpRecord]
    shapes: dict
    kinds: dict  # tensor name -> "float" | "bits"


# ---------------------------------------------------------------- writing
def seal(path) -> None:
    """(Re)compute the user-block seal of an HDF5 file written with a 512-byte user block."""
    path = Path(path)
    with open(path, "r+b") as f:
        data = f.read()
        if len(data) < USERBLOCK:
            raise BundleError(f"{path}: {len(data)} bytes is too short for a bundle")
        digest = hashlib.sha256(data[USERBLOCK:]).digest()
        f.seek(0)
        f.write(SEAL_STRUCT.pack(SEAL_MAGIC, len(data), digest))


def _fixed_str(text: str) -> np.bytes_:
    """UTF-8 text as a fixed-length HDF5 string (its size sits in the type: no heap to follow)."""
    return np.bytes_(text.encode("utf-8"))


def write_bundle(path, header: dict, ops: list[OpRecord], *, atomic: bool = True) -> None:
    """Write ``ops`` and ``header`` to ``path`` atomically (temp file, seal, rename), or in
    place with ``atomic=False`` (for a path that is itself a temporary file)."""
    if atomic:
        with atomic_path(path) as tmp:
            _write(tmp, header, ops)
    else:
        _write(Path(path), header, ops)


def _write(tmp: Path, header: dict, ops: list[OpRecord]) -> None:
    import h5py
    # libver v110: dense attribute storage, so a root attribute may exceed 64 KiB.
    # locking=False: the temporary file is already flock-ed by its writer (_atomic.py).
    with h5py.File(tmp, "w", userblock_size=USERBLOCK, libver="v110", locking=False) as f:
        f.attrs["format"] = _fixed_str(FORMAT)
        f.attrs["format_version"] = FORMAT_VERSION
        for key in ("producer", "architecture", "input_layout"):
            f.attrs[key] = _fixed_str(str(header[key]))
        f.attrs["input_shape"] = np.asarray(header["input_shape"], np.int64)
        f.attrs["normalization_mean"] = np.asarray(header["normalization_mean"], np.float32)
        f.attrs["normalization_std"] = np.asarray(header["normalization_std"], np.float32)
        for key in ("config", "class_names", "metrics"):
            f.attrs[key] = _fixed_str(json.dumps(header[key]))
        graph = [{"op": o.op, "name": o.name, "inputs": o.inputs, "outputs": o.outputs,
                  "attrs": o.attrs} for o in ops]
        f.attrs["graph"] = _fixed_str(json.dumps(graph))
        g_ops = f.create_group("ops")
        for o in ops:
            g = g_ops.create_group(o.name)
            for k, v in o.arrays.items():
                g.create_dataset(k, data=np.ascontiguousarray(v))
    seal(tmp)


# ---------------------------------------------------------------- reading
def _read_sealed(path) -> bytes:
    path = Path(path)
    try:
        st = path.stat()
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):  # a directory fails to read, a FIFO would block forever
        raise BundleError(f"{path}: not a regular file, so not a bnnlite bundle")
    if st.st_size > MAX_BUNDLE_BYTES:
        raise BundleError(f"{path}: {st.st_size} bytes is larger than the {MAX_BUNDLE_BYTES}-byte limit")
    try:
        with open(path, "rb") as fh:
            # Bounded even if the file grew since stat(): a changed size then fails the seal.
            data = fh.read(st.st_size + 1)
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror or e})") from e
    if len(data) < USERBLOCK + 8 or data[USERBLOCK:USERBLOCK + 8] != b"\x89HDF\r\n\x1a\n":
        if data[:8] == b"\x89HDF\r\n\x1a\n":
            raise BundleError(f"{path}: an HDF5 file, but not a bnnlite bundle (no bnnlite user block)")
        raise BundleError(f"{path}: not an HDF5 file, so not a bnnlite bundle")
    magic, declared, digest = SEAL_STRUCT.unpack_from(data, 0)
    if magic != SEAL_MAGIC:
        raise BundleError(f"{path}: an HDF5 file, but not a bnnlite bundle (no bnnlite seal)")
    if declared != len(data):
        raise BundleError(f"{path}: truncated or extended: {len(data)} bytes, the seal says {declared}")
    if hashlib.sha256(data[USERBLOCK:]).digest() != digest:
        raise BundleError(f"{path}: corrupt: its SHA-256 does not match the seal")
    return data


def _attr(attrs, key, path, default=None):
    """``attrs[key]`` (``default`` if absent), read only once its type and size are known safe.

    Checked before the value is read: the class (fixed-length string or plain
    numbers; no bnnlite attribute is anything else), and the size. Reading some
    corrupt types makes libhdf5 itself crash, allocate gigabytes or loop: a
    variable-length *sequence* (a two-byte change turns a string into one) and
    variable-length strings, whose heap references a file can point anywhere.
    Format version 1 stored strings that way; such bundles must be re-exported.
    """
    import h5py
    if key not in attrs:
        return default
    aid = attrs.get_id(key)
    tid = aid.get_type()
    cls = tid.get_class()
    if cls not in (h5py.h5t.STRING, h5py.h5t.INTEGER, h5py.h5t.FLOAT):
        raise BundleError(f"{path}: root attribute {key!r} is not stored as a string or numbers")
    if cls == h5py.h5t.STRING:
        if tid.is_variable_str():
            raise BundleError(f"{path}: root attribute {key!r} is a variable-length string (format version 1?); "
                              f"this bnnlite reads fixed-length strings only: re-export the bundle")
        if aid.shape != () or tid.get_size() > MAX_JSON:
            raise BundleError(f"{path}: root attribute {key!r} should be one string of at most {MAX_JSON} bytes")
    elif len(aid.shape) > 1 or int(np.prod(aid.shape)) > MAX_ATTR_ELEMENTS or tid.get_size() > 8:
        raise BundleError(f"{path}: root attribute {key!r} should be at most {MAX_ATTR_ELEMENTS} plain numbers")
    return attrs[key]


def _json_attr(attrs, key, path, kind):
    if key not in attrs:
        raise BundleError(f"{path}: root attribute {key!r} is missing")
    raw = _attr(attrs, key, path)
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    if not isinstance(raw, str) or len(raw) > MAX_JSON:
        raise BundleError(f"{path}: root attribute {key!r} is not a JSON string of at most {MAX_JSON} chars")
    try:
        val = json.loads(raw)
    except (ValueError, RecursionError) as e:
        raise BundleError(f"{path}: root attribute {key!r} is not valid JSON ({e})") from e
    if not isinstance(val, kind):
        raise BundleError(f"{path}: root attribute {key!r} should be a JSON {kind.__name__}")
    return val


def _str_attr(attrs, key, path):
    if key not in attrs:
        raise BundleError(f"{path}: root attribute {key!r} is missing")
    v = _attr(attrs, key, path)
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        raise BundleError(f"{path}: root attribute {key!r} should be a string")
    return v


def _vec_attr(attrs, key, path, n, dtype):
    if key not in attrs:
        raise BundleError(f"{path}: root attribute {key!r} is missing")
    v = np.asarray(_attr(attrs, key, path))
    if v.shape != (n,) or not np.issubdtype(v.dtype, np.number):
        raise BundleError(f"{path}: root attribute {key!r} should be {n} numbers, got shape {v.shape}")
    v = v.astype(dtype)
    if not np.all(np.isfinite(v)):
        raise BundleError(f"{path}: root attribute {key!r} holds NaN or infinity")
    return v


def _read_header(f, path) -> dict:
    fmt = _str_attr(f.attrs, "format", path) if "format" in f.attrs else None
    if fmt != FORMAT:
        raise BundleError(f"{path}: format attribute is {fmt!r}, not {FORMAT!r}: not a bnnlite bundle")
    try:
        version = int(np.asarray(_attr(f.attrs, "format_version", path)).item())
    except (TypeError, ValueError) as e:
        raise BundleError(f"{path}: format_version is missing or not an integer") from e
    if version > FORMAT_VERSION:
        raise BundleError(f"{path}: format version {version} is newer than this bnnlite reads "
                          f"({FORMAT_VERSION}); upgrade bnnlite")
    if version < 1:
        raise BundleError(f"{path}: format version {version} is not valid")
    shape = np.asarray(_attr(f.attrs, "input_shape", path, []))
    if shape.shape != (3,) or not np.issubdtype(shape.dtype, np.integer) or shape.min() < 1 or shape.max() > MAX_DIM:
        raise BundleError(f"{path}: input_shape should be three integers (H, W, C) in 1..{MAX_DIM}")
    layout = _str_attr(f.attrs, "input_layout", path)
    if layout != "NHWC":
        raise BundleError(f"{path}: input_layout {layout!r} is not supported (only 'NHWC')")
    c = int(shape[2])
    std = _vec_attr(f.attrs, "normalization_std", path, c, np.float32)
    if np.any(std <= 0):
        raise BundleError(f"{path}: normalization_std must be positive")
    header = {
        "format": fmt, "format_version": version,
        "producer": _str_attr(f.attrs, "producer", path),
        "architecture": _str_attr(f.attrs, "architecture", path),
        "input_shape": tuple(int(s) for s in shape), "input_layout": layout,
        "normalization_mean": _vec_attr(f.attrs, "normalization_mean", path, c, np.float32),
        "normalization_std": std,
        "config": _json_attr(f.attrs, "config", path, dict),
        "class_names": _json_attr(f.attrs, "class_names", path, list),
        "metrics": _json_attr(f.attrs, "metrics", path, dict),
    }
    if not all(isinstance(s, str) for s in header["class_names"]):
        raise BundleError(f"{path}: class_names should be a JSON list of strings")
    return header


def _int_attr(rec, key, where, lo=0, hi=MAX_DIM):
    v = rec["attrs"].get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise BundleError(f"{where}: attribute {key!r} = {v!r} should be an integer in {lo}..{hi}")
    return v


def _hard_member(group, name, where, what):
    """``group[name]`` if it is reached by its one hard link, else None if absent.

    The link is inspected before it is followed: a soft or external link, or a
    second hard link to one object, is something the writer never makes (an
    external link would open another file)."""
    import h5py
    if group is None:
        return None
    link = group.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        kind = {h5py.SoftLink: "a soft link", h5py.ExternalLink: "an external link"}.get(type(link), "a link")
        raise BundleError(f"{where}: {what} is {kind}; bundles hold no links")
    obj = group[name]
    if h5py.h5o.get_info(obj.id).rc != 1:
        raise BundleError(f"{where}: {what} is hard-linked under more than one name; bundles hold no links")
    return obj


def _check_storage(ds, name, where):
    """Refuse any storage the writer does not make, before a byte of data is read.

    Allowed: contiguous or chunked layout, data inside the file, no filters.
    External raw storage reads other files (or blocks on a FIFO); a virtual
    dataset reads other datasets or files (one mapped onto the bundle itself
    recursed in libhdf5 until SIGSEGV); filters are never written, so they
    would only decompress an attacker's stream."""
    import h5py
    dcpl = ds.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.CHUNKED):
        kind = {h5py.h5d.VIRTUAL: "virtual", h5py.h5d.COMPACT: "compact"}.get(layout, f"layout {layout}")
        raise BundleError(f"{where}: dataset {name!r} has {kind} storage; bundles store datasets "
                          f"contiguous or chunked only")
    if dcpl.get_external_count():
        raise BundleError(f"{where}: dataset {name!r} keeps its data in external files; "
                          f"bundles store every array inside the file")
    if dcpl.get_nfilters():
        raise BundleError(f"{where}: dataset {name!r} uses HDF5 filters (compression or others); "
                          f"bundles store arrays unfiltered")


def _read_dataset(group, name, dtype, shape, where):
    import h5py
    ds = _hard_member(group, name, where, f"dataset {name!r}")
    if ds is None:
        raise BundleError(f"{where}: dataset {name!r} is missing")
    if not isinstance(ds, h5py.Dataset):
        raise BundleError(f"{where}: {name!r} is not a dataset")
    _check_storage(ds, name, where)
    if ds.dtype != np.dtype(dtype):
        raise BundleError(f"{where}: dataset {name!r} has dtype {ds.dtype}, expected {dtype}")
    if tuple(ds.shape) != tuple(shape):
        raise BundleError(f"{where}: dataset {name!r} has shape {tuple(ds.shape)}, expected {tuple(shape)}")
    arr = np.empty(shape, dtype)  # size already bounded by the op's checked attributes
    if arr.size:
        ds.read_direct(arr)
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise BundleError(f"{where}: dataset {name!r} holds NaN or infinity")
    return arr


def _infer(kind, rec: dict, inputs: list, shapes, kinds, where, version=FORMAT_VERSION):
    """Check one op of ``kind`` against the tensors flowing in (names ``inputs``);
    return (attrs, out_shape, out_kind, datasets)."""
    attrs = {k: _int_attr(rec, k, where, lo=lo) for k, lo in kind.int_attrs.items()}
    for k, allowed in kind.str_attrs.items():
        v = rec["attrs"].get(k)
        if v not in allowed:
            raise BundleError(f"{where}: attribute {k!r} = {v!r} should be one of {', '.join(allowed)}")
        attrs[k] = v
    try:
        out = kind.infer(attrs, Inputs(kind.name, inputs, [shapes[s] for s in inputs], [kinds[s] for s in inputs],
                                       rec["attrs"], version))
    except SchemaError as e:
        raise BundleError(f"{where}: {e}") from None
    return attrs, out.shape, out.kind, {**kind.datasets, **out.datasets}


def _read_ops(f, header, path, file_bytes) -> tuple[list[OpRecord], dict, dict]:
    import h5py
    graph = _json_attr(f.attrs, "graph", path, list)
    if not 1 <= len(graph) <= MAX_OPS:
        raise BundleError(f"{path}: graph has {len(graph)} ops (1..{MAX_OPS} allowed)")
    shapes = {INPUT: header["input_shape"]}
    kinds = {INPUT: "float"}
    ops, names = [], set()
    g_ops = _hard_member(f, "ops", path, "/ops")
    if g_ops is not None and not isinstance(g_ops, h5py.Group):
        raise BundleError(f"{path}: /ops is not a group")
    budget = file_bytes  # arrays are stored uncompressed: they cannot outgrow the file
    for i, rec in enumerate(graph):
        if not isinstance(rec, dict) or not isinstance(rec.get("attrs", {}), dict):
            raise BundleError(f"{path}: graph entry {i} is not an op object")
        rec.setdefault("attrs", {})
        op, name = rec.get("op"), rec.get("name")
        where = f"{path}: op {i} ({name!r})"
        kind = OP_SPECS.get(op) if isinstance(op, str) else None
        if kind is None:
            raise BundleError(f"{where}: unknown op type {op!r}; known: {', '.join(OP_SPECS)}")
        if not isinstance(name, str) or not name or "/" in name or name in names:
            raise BundleError(f"{where}: op names must be unique non-empty strings without '/'")
        names.add(name)
        ins, outs = rec.get("inputs"), rec.get("outputs")
        lo, hi = kind.inputs
        if (not isinstance(ins, list) or not lo <= len(ins) <= hi or not all(isinstance(s, str) for s in ins)
                or not isinstance(outs, list) or len(outs) != 1 or not isinstance(outs[0], str)):
            raise BundleError(f"{where}: needs {lo}..{hi} input names and one output name")
        for s in ins:
            if s not in shapes:
                raise BundleError(f"{where}: input {s!r} is not produced by an earlier op")
        if outs[0] in shapes:
            raise BundleError(f"{where}: output {outs[0]!r} is produced twice")
        attrs, out_shape, out_kind, datasets = _infer(kind, rec, ins, shapes, kinds, where, header["format_version"])
        if np.prod(out_shape, dtype=np.int64) > (1 << 26):
            raise BundleError(f"{where}: output of shape {out_shape} is implausibly large")
        group = _hard_member(g_ops, name, where, f"group /ops/{name}")
        if group is not None and not isinstance(group, h5py.Group):
            raise BundleError(f"{where}: /ops/{name} is not a group")
        arrays = {}
        for ds_name, (dtype, shape_keys) in datasets.items():
            shp = tuple(attrs[k] for k in shape_keys)
            nbytes = math.prod(shp) * np.dtype(dtype).itemsize  # Python ints: no overflow
            if nbytes > MAX_BUNDLE_BYTES:
                raise BundleError(f"{where}: dataset {ds_name!r} declares {shp}: too large")
            # A chunked dataset whose chunks were never written declares any size in a tiny
            # file; reading it would allocate (and fill) all of it.
            budget -= nbytes
            if budget < 0:
                raise BundleError(f"{where}: dataset {ds_name!r} {shp} brings the arrays to more than "
                                  f"the file's {file_bytes} bytes (arrays are stored uncompressed)")
            arrays[ds_name] = _read_dataset(group, ds_name, dtype, shp, where)
        if kind.check_arrays is not None:
            try:
                kind.check_arrays(attrs, arrays)
            except SchemaError as e:
                raise BundleError(f"{where}: {e}") from None
        shapes[outs[0]] = tuple(int(s) for s in out_shape)
        kinds[outs[0]] = out_kind
        ops.append(OpRecord(op, name, list(ins), list(outs), attrs, arrays))
    if OUTPUT not in shapes or kinds[OUTPUT] != "float" or len(shapes[OUTPUT]) != 1:
        raise BundleError(f"{path}: no op produces the float vector {OUTPUT!r}")
    n_classes = shapes[OUTPUT][0]
    if header["class_names"] and len(header["class_names"]) != n_classes:
        raise BundleError(f"{path}: {len(header['class_names'])} class names for {n_classes} logits")
    return ops, shapes, kinds


def read_bundle(path) -> Bundle:
    """Read and fully validate a bundle; raises BundleError on any problem."""
    import h5py
    data = _read_sealed(path)
    try:
        with h5py.File(io.BytesIO(data), "r") as f:
            header = _read_header(f, path)
            ops, shapes, kinds = _read_ops(f, header, path, len(data))
        check_bounds(header, ops, BundleError, path)
    except BundleError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, AttributeError, IndexError,
            OverflowError, UnicodeError, MemoryError) as e:
        raise BundleError(f"{path}: unreadable bundle ({type(e).__name__}: {e})") from e
    return Bundle(header, ops, shapes, kinds)


def check_bounds(header: dict, ops, error, path) -> dict:
    """Walk ``ops`` (OpRecords in order) from the input bound (bounds.py says why), each op's
    bound formula from its OpKind; raise ``error`` naming the op and the quantity whose bound
    passes FLOAT32_MAX.  Returns {tensor: bound}."""
    x = input_bound(header["normalization_mean"], header["normalization_std"])
    if not x <= FLOAT32_MAX:
        raise error(f"{path}: normalization_mean/std let the normalised input reach {x:.3g}, "
                    f"beyond float32 ({FLOAT32_MAX:.4g}): std too small")
    bounds = {"input": x}
    for i, rec in enumerate(ops):
        got = lookup(rec.op).bounds(rec.attrs, rec.arrays, [bounds.get(s) for s in rec.inputs])
        for what, b in got.items():
            if b is not None and not b <= FLOAT32_MAX:
                raise error(f"{path}: op {i} ({rec.name!r}): its values can reach {b:.3g} in "
                            f"{'the output' if what == 'out' else what!r}, beyond float32 "
                            f"({FLOAT32_MAX:.4g}) for inputs in the legal range; parameters too large")
        if "out" in got:
            bounds[rec.outputs[0]] = got["out"]
    return bounds
