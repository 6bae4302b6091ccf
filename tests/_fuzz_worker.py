"""Fuzz worker: mutate a bundle many times and load each mutant (run as a subprocess).

    python _fuzz_worker.py BASE.h5 FAMILY SEED FIRST COUNT TMPDIR

For mutation i in FIRST..FIRST+COUNT-1 (rng seeded by (SEED, i), so any
single case is reproducible), write a mutant of BASE.h5 to TMPDIR, then
``bnnlite.Model.load`` it; if it loads, ``predict`` two valid images.
Prints one JSON line before each case ({"start": i}) and one after it with
the outcome:

* ``rejected``: ``BundleError`` (the message is kept);
* ``loaded``:   the model loaded and predicted 2 images with the right shapes;
* ``failure``:  anything else -- another exception type from load, any
  exception or wrong output from predict, or an allocation/CPU-time blow-up.

A crash or hang of the interpreter is seen by the parent as a missing
result after the last ``start`` line.

FAMILY is ``raw`` (byte-level: truncation, bit flips, byte overwrites, with
the seal kept as is or recomputed so that HDF5 parses the damage) or
``semantic`` (h5py edits of attributes, graph JSON and datasets, re-sealed).
Torch-free.
"""
from __future__ import annotations

import json
import os
import resource
import sys
import time
import traceback
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))

import bnnlite  # noqa: E402
from bnnlite.bundle import OP_SPECS, USERBLOCK, BundleError, read_bundle, seal  # noqa: E402

from _bundle_edit import dataset_paths, edit, get_graph, set_graph  # noqa: E402

MAX_RSS_BYTES = 1536 << 20      # the whole worker; a tiny bundle needs ~200 MiB
MAX_CASE_CPU_S = 5.0
BASE_SHAPES: dict = {}          # tensor name -> per-image shape in the unmutated bundle
INTERESTING_U64 = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 1 << 32,
                   (1 << 63) - 1, 1 << 63, (1 << 64) - 1]


# ---------------------------------------------------------------- raw byte mutations
def _pos(rng, n, lo):
    """An offset >= lo, biased to the HDF5 metadata (the start after the user block and the end)."""
    r = rng.random()
    if r < 0.4:
        return int(rng.integers(max(lo, USERBLOCK), min(n, USERBLOCK + 4096)))
    if r < 0.6:
        return int(rng.integers(max(lo, n - 4096), n))
    return int(rng.integers(lo, n))


def raw_mutation(rng, data: bytes, out: Path) -> str:
    kind = ["truncate", "bitflip", "overwrite"][int(rng.integers(3))]
    reseal = bool(rng.random() < 0.5)
    lo = USERBLOCK if reseal else 0  # a re-seal rewrites the user block anyway
    b = bytearray(data)
    if kind == "truncate":
        if reseal:
            cut = int(rng.integers(USERBLOCK + 8, len(b)))
        else:
            cut = int(rng.integers(0, len(b)))
        del b[cut:]
        desc = f"truncate to {cut}"
    elif kind == "bitflip":
        k = int(rng.integers(1, 9))
        flips = [(_pos(rng, len(b), lo), int(rng.integers(8))) for _ in range(k)]
        for p, bit in flips:
            b[p] ^= 1 << bit
        desc = f"flip bits {flips}"
    else:
        p = _pos(rng, len(b), lo)
        r = rng.random()
        if r < 0.4:
            val = rng.integers(0, 256, int(rng.integers(1, 17)), dtype=np.uint8).tobytes()
        elif r < 0.7:
            val = bytes([int(rng.choice([0x00, 0xFF, 0x7F, 0x80]))]) * int(rng.integers(1, 9))
        else:
            val = _pick(rng, INTERESTING_U64).to_bytes(8, "little")
        val = val[:len(b) - p]
        b[p:p + len(val)] = val
        desc = f"overwrite {len(val)} bytes at {p} with {val.hex()}"
    out.write_bytes(bytes(b))
    if reseal and len(b) >= USERBLOCK:
        seal(out)
    return f"{kind}{' +reseal' if reseal else ''}: {desc}"


# ---------------------------------------------------------------- semantic mutations
WEIRD_VALUES = [-1, 0, 1, 2, 3, 63, 64, 65, 4096, 65536, 65537, 2 ** 31, 2 ** 63, 10 ** 30, 1.5, -0.0,
                float("nan"), float("inf"), "3", "", None, True, False, [], [3], {}, "bits", "float",
                "relu", "none"]


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _json_val(v):
    return json.loads(json.dumps(v))


def m_root_attr(f, rng):
    key = _pick(rng, ["format_version", "input_shape", "normalization_mean", "normalization_std",
                      "format", "producer", "architecture", "input_layout"])
    choices = {
        "format_version": [0, 2, -1, 1 << 40, "1", 1.5, np.array([1, 1]), np.float32(1.0), np.uint8(1)],
        "input_shape": [np.array(s) for s in ([16, 8, 3], [8, 8, 3], [32, 32, 3], [16, 16, 1], [1, 1, 3],
                                              [16, 16], [16, 16, 3, 1], [0, 16, 3], [-16, 16, 3],
                                              [70000, 16, 3], [65536, 65536, 3])]
                       + [np.array([16.0, 16.0, 3.0]), "16,16,3", np.array([16, 16, 3], np.uint64)],
        "normalization_mean": [np.zeros(2, np.float32), np.full(3, np.nan, np.float32),
                               np.array([1e38, -1e38, 0], np.float32), np.zeros((3, 1)), "0.5",
                               np.array([1, 2, 3], np.int8), np.array([1 + 1j, 0, 0])],
        "normalization_std": [np.zeros(3, np.float32), np.array([-1, 1, 1], np.float32),
                              np.array([1e-45, 1, 1], np.float32), np.full(3, np.inf), np.ones(4),
                              np.array([True, True, True])],
        "format": ["bnnlite2", "", np.array([1, 2])],
        "producer": [np.arange(3), ""], "architecture": [np.arange(3), "x" * 1000],
        "input_layout": ["NCHW", "", np.arange(2)],
    }
    v = _pick(rng, choices[key])
    f.attrs[key] = v
    return f"root attr {key} = {v!r}"


def m_delete_root_attr(f, rng):
    key = _pick(rng, sorted(f.attrs.keys()))
    del f.attrs[key]
    return f"delete root attr {key}"


def m_json_attr(f, rng):
    key = _pick(rng, ["class_names", "config", "metrics", "graph"])
    raw = f.attrs[key]
    r = rng.random()
    if r < 0.3:
        cut = int(rng.integers(0, len(raw) + 1))
        v = raw[:cut]
        desc = f"truncated at {cut}"
    elif r < 0.5:
        p = int(rng.integers(0, len(raw) + 1))
        v = raw[:p] + _pick(rng, ["{", "]", ",", '"', "\\", "\x00", "NaN", "-", "9" * 400]) + raw[p:]
        desc = f"insert at {p}"
    else:
        v = _pick(rng, ["null", "[]", "{}", "1e999", '"x"', "[1, 2, 3]", '["a"]', json.dumps(["c"] * 7),
                        json.dumps(list(range(7))), "[" * 5000 + "]" * 5000, "NaN", "true"])
        desc = f"= {v[:40]!r}"
    f.attrs[key] = v
    return f"json attr {key} {desc}"


def _tensor_names(graph):
    names = ["input"]
    for rec in graph:
        if isinstance(rec, dict):
            names += [o for o in rec.get("outputs", []) if isinstance(o, str)]
    return names


def m_graph(f, rng):
    g = get_graph(f)
    n = len(g)
    i, j = int(rng.integers(n)), int(rng.integers(n))
    kind = _pick(rng, ["drop", "dup", "dup_renamed", "swap", "reverse", "move", "attr", "attr", "attr",
                       "del_attr", "input", "input", "add_input", "drop_input", "output", "optype",
                       "attrs_type", "junk_key", "rprelu"])
    rec = g[i]
    if kind == "drop":
        del g[i]
    elif kind == "dup":
        g.insert(j, json.loads(json.dumps(rec)))
    elif kind == "dup_renamed":  # a dangling copy: usually valid, must then load and run
        c = json.loads(json.dumps(rec))
        c["name"] = c["name"] + "_copy"
        c["outputs"] = [c["outputs"][0] + "_copy"]
        g.insert(i + 1, c)
        src = f"ops/{rec['name']}"
        if src in f:
            f.copy(src, f"ops/{c['name']}")
    elif kind == "swap":
        g[i], g[j] = g[j], g[i]
    elif kind == "reverse":
        g.reverse()
    elif kind == "move":
        g.insert(j, g.pop(i))
    elif kind == "attr":
        key = _pick(rng, sorted(rec["attrs"]) + ["cin", "cout", "channels", "units_in", "units_out", "size",
                                                  "padding", "stride"])
        cur = rec["attrs"].get(key)
        if rng.random() < 0.7 or not isinstance(cur, int) or isinstance(cur, bool):
            v = _json_val(_pick(rng, WEIRD_VALUES))
        else:
            v = cur + int(rng.choice([-2, -1, 1, 2, 64]))
        rec["attrs"][key] = v
        kind = f"attr {key}={v!r}"
    elif kind == "del_attr":
        if rec["attrs"]:
            key = _pick(rng, sorted(rec["attrs"]))
            del rec["attrs"][key]
            kind = f"del attr {key}"
    elif kind == "input":
        if rec["inputs"]:
            k = int(rng.integers(len(rec["inputs"])))
            rec["inputs"][k] = _pick(rng, _tensor_names(g) + ["nope", "logits", ""])
            kind = f"input {k} = {rec['inputs'][k]!r}"
    elif kind == "add_input":
        rec["inputs"].append(_pick(rng, _tensor_names(g)))
    elif kind == "drop_input":
        rec["inputs"] = rec["inputs"][:-1]
    elif kind == "output":
        rec["outputs"] = _pick(rng, [[_pick(rng, _tensor_names(g))], ["fresh"], ["logits"], [], ["a", "b"], "x",
                                     [3]])
    elif kind == "optype":
        rec["op"] = _pick(rng, sorted(OP_SPECS) + ["bogus", None, 3])
        kind = f"op type {rec['op']!r}"
    elif kind == "attrs_type":
        rec["attrs"] = _pick(rng, [[], "x", None, 3])
    elif kind == "junk_key":
        rec["junk"] = {"a": [1, 2]}
    elif kind == "rprelu":
        rec["attrs"]["rprelu"] = _pick(rng, [True, False, 1, "yes", None])
    set_graph(f, g)
    return f"graph {kind} at op {i} ({rec.get('name') if isinstance(rec, dict) else rec!r}), j={j}"


def m_dataset(f, rng):
    paths = dataset_paths(f)
    path = _pick(rng, paths)
    ds = f[path]
    a = ds[()]
    kind = _pick(rng, ["shape", "dtype", "nonfinite", "extreme", "bits", "bits_valid", "int_extreme",
                       "delete", "group", "scalar", "empty", "huge", "sparse", "softlink", "extlink",
                       "zeros"])
    if kind == "shape":
        r = rng.random()
        if r < 0.3 and a.ndim:
            shape = a.shape[:-1]
        elif r < 0.6:
            shape = a.shape + (1,)
        else:
            shape = list(a.shape) or [1]
            k = int(rng.integers(len(shape)))
            shape[k] = max(0, shape[k] + int(rng.choice([-1, 1, 64])))
            shape = tuple(shape)
        new = np.resize(a, shape).astype(a.dtype)
        del f[path]
        f.create_dataset(path, data=new)
        return f"dataset {path} shape {a.shape} -> {shape}"
    if kind == "dtype":
        dt = _pick(rng, [np.float64, np.float16, np.int32, np.int64, np.uint64, np.float32, ">f4", ">u8",
                         np.bool_, np.complex64, "S4", np.uint32])
        del f[path]
        f.create_dataset(path, data=a.astype(dt))
        return f"dataset {path} dtype {a.dtype} -> {np.dtype(dt)}"
    if kind == "nonfinite" and a.dtype.kind == "f" and a.size:
        a = a.copy()
        a.reshape(-1)[int(rng.integers(a.size))] = _pick(rng, [np.nan, np.inf, -np.inf])
        ds[...] = a
        return f"dataset {path} non-finite element"
    if kind == "extreme" and a.dtype.kind == "f" and a.size:
        a = a.copy()
        idx = rng.integers(0, a.size, int(rng.integers(1, 4)))
        a.reshape(-1)[idx] = _pick(rng, [3e38, -3e38, 1e-45, 0.0, -0.0, 1e20])
        ds[...] = a
        return f"dataset {path} extreme values at {idx.tolist()}"
    if kind in ("bits", "bits_valid") and a.dtype == np.uint64 and a.size:
        new = rng.integers(0, 1 << 63, a.shape, dtype=np.uint64) * np.uint64(2) + \
            rng.integers(0, 2, a.shape, dtype=np.uint64)
        op = path.split("/")[1]
        cin = next((r["attrs"].get("cin") for r in get_graph(f) if r.get("name") == op), None)
        if kind == "bits_valid" and isinstance(cin, int) and cin % 64:
            new[..., -1] &= np.uint64((1 << (cin % 64)) - 1)
        ds[...] = new
        return f"dataset {path} random words ({kind})"
    if kind == "int_extreme" and a.dtype == np.int32 and a.size:
        a = a.copy()
        a.reshape(-1)[int(rng.integers(a.size))] = _pick(rng, [2 ** 31 - 1, -2 ** 31, 0])
        ds[...] = a
        return f"dataset {path} int extreme"
    if kind == "delete":
        del f[path]
        return f"delete {path}"
    if kind == "group":
        del f[path]
        f.create_group(path)
        return f"group instead of {path}"
    if kind == "scalar":
        del f[path]
        f.create_dataset(path, data=np.asarray(1, a.dtype))
        return f"scalar {path}"
    if kind == "empty":
        del f[path]
        f.create_dataset(path, shape=(0,), dtype=a.dtype)
        return f"empty {path}"
    if kind == "sparse":  # same shape, chunked and never written (reads as zeros)
        del f[path]
        f.create_dataset(path, shape=a.shape, dtype=a.dtype, chunks=tuple(1 for _ in a.shape) or None)
        return f"unwritten {path} {a.shape}"
    if kind == "huge":
        del f[path]
        shape = _pick(rng, [(1 << 40,), (1 << 20, 1 << 20), tuple(s * 1024 for s in a.shape) or (1 << 30,)])
        f.create_dataset(path, shape=shape, dtype=a.dtype, chunks=tuple(1 for _ in shape))
        return f"huge unwritten {path} {shape}"
    if kind == "softlink":
        import h5py
        del f[path]
        f[path] = h5py.SoftLink(_pick(rng, ["/nowhere", "/ops/" + _pick(rng, paths).split("/", 1)[1]]))
        return f"soft link at {path}"
    if kind == "extlink":
        import h5py
        del f[path]
        f[path] = h5py.ExternalLink("/nonexistent/file.h5", "/x")
        return f"external link at {path}"
    ds[...] = np.zeros_like(a)
    return f"dataset {path} zeros"


def m_structure(f, rng):
    kind = _pick(rng, ["del_op_group", "del_ops", "ops_dataset", "extra_group", "extra_attr"])
    if kind == "del_op_group":
        op = _pick(rng, sorted(f["ops"]))
        del f[f"ops/{op}"]
        return f"delete group ops/{op}"
    if kind == "del_ops":
        del f["ops"]
        return "delete /ops"
    if kind == "ops_dataset":
        del f["ops"]
        f.create_dataset("ops", data=np.arange(10))
        return "/ops is a dataset"
    if kind == "extra_group":
        f.create_group("ops/unused").create_dataset("weight", data=np.zeros(10))
        return "unused extra op group"
    f.attrs["unexpected"] = np.arange(5)
    return "extra root attr"


def m_add_op(f, rng):
    """Append a valid or nearly valid dangling op (the loader must then run it)."""
    g = get_graph(f)
    kind = _pick(rng, ["maxpool2d", "sign_pack", "dense", "flatten"])
    src_float3 = [r["outputs"][0] for r in g if r["op"] in ("conv2d", "maxpool2d")
                  or (r["op"] == "bconv2d" and r["attrs"].get("output") == "float")]
    name = f"extra{int(rng.integers(1000))}"
    if kind == "maxpool2d":
        rec = {"op": kind, "name": name, "inputs": [_pick(rng, src_float3)], "outputs": [name],
               "attrs": {"size": 2, "stride": 2}}
    elif kind == "flatten":
        rec = {"op": kind, "name": name, "inputs": [_pick(rng, src_float3 + ["flat", "input"])],
               "outputs": [name], "attrs": {}}
    elif kind == "sign_pack":
        src = _pick(rng, src_float3 + ["flat"])
        # mostly the channel count of the source, so the check of its *shape* is reached
        c = BASE_SHAPES.get(src, (7,))[-1] if rng.random() < 0.7 else int(rng.choice([8, 20, 72, 288]))
        rec = {"op": kind, "name": name, "inputs": [src], "outputs": [name], "attrs": {"channels": c}}
        f.create_dataset(f"ops/{name}/threshold", data=np.zeros(c, np.float32))
    else:
        units_in = BASE_SHAPES["flat"][0] if rng.random() < 0.8 else int(rng.choice([288, 576]))
        units_out = int(rng.choice([1, 5, 1000, 65536]))
        rec = {"op": kind, "name": name, "inputs": ["flat"], "outputs": [name],
               "attrs": {"units_in": units_in, "units_out": units_out}}
        if units_out < 65536:
            f.create_dataset(f"ops/{name}/weight", data=np.ones((units_out, units_in), np.float32))
        else:  # declared, never written: a few KiB of file for a 75+ MB array
            f.create_dataset(f"ops/{name}/weight", shape=(units_out, units_in), dtype=np.float32,
                             chunks=(256, 16))
        f.create_dataset(f"ops/{name}/bias", data=np.zeros(units_out, np.float32))
    g.insert(int(rng.integers(len(g) + 1)) if rng.random() < 0.3 else len(g), rec)
    set_graph(f, g)
    return f"add op {rec}"


SEMANTIC = [(m_root_attr, 3), (m_delete_root_attr, 1), (m_json_attr, 2), (m_graph, 6), (m_dataset, 6),
            (m_structure, 1), (m_add_op, 2)]


def semantic_mutation(rng, base: Path, out: Path) -> str:
    fns = [fn for fn, w in SEMANTIC for _ in range(w)]
    picked = [_pick(rng, fns) for _ in range(int(rng.choice([1, 1, 1, 2, 3])))]
    descs = []

    def apply(f):
        for fn in picked:
            try:
                descs.append(fn(f, rng))
            except Exception as e:  # e.g. an earlier mutation broke the graph JSON this one edits
                descs.append(f"({fn.__name__} not applicable: {type(e).__name__})")
    edit(base, out, apply)
    if all(d.startswith("(") for d in descs):
        raise RuntimeError("no mutation applied: " + "; ".join(descs))
    return "; ".join(descs)


# ---------------------------------------------------------------- the loop
def reset_peak_rss():
    """Reset the kernel's peak-RSS mark (VmHWM) so each case is measured on its own (Linux)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def peak_rss() -> int:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def check_loaded(model, rng, file_bytes) -> str | None:
    """None if the model predicts two valid images correctly shaped, else the problem."""
    held = sum(a.nbytes for rec in model.bundle.ops for a in rec.arrays.values())
    if held > file_bytes:
        return f"the loader holds {held} bytes of arrays from a {file_bytes}-byte file"
    shape = tuple(model.input_shape)
    if int(np.prod(shape)) > 1 << 20:
        return None  # a valid but enormous input: not worth building here
    x = rng.integers(0, 256, (2,) + shape, dtype=np.uint8)
    z = model.logits(x)
    k = model.graph.shapes["logits"][0]
    if z.shape != (2, k) or z.dtype != np.float32:
        return f"logits shape {z.shape} dtype {z.dtype}, expected (2, {k}) float32"
    p = model.predict(x)
    if p.shape != (2,) or p.min() < 0 or p.max() >= k:
        return f"predict gave {p!r} for {k} classes"
    return None


def main(argv):
    base, family, seed, first, count, tmpdir = argv
    base, seed, first, count, tmpdir = Path(base), int(seed), int(first), int(count), Path(tmpdir)
    data = base.read_bytes()
    BASE_SHAPES.update(read_bundle(base).shapes)
    out = tmpdir / f"mutant-{family}-{first}.h5"
    for i in range(first, first + count):
        print(json.dumps({"start": i}), flush=True)
        reset_peak_rss()
        rng = np.random.default_rng([seed, i])
        t0 = time.process_time()
        res = {"i": i}
        try:
            res["desc"] = raw_mutation(rng, data, out) if family == "raw" else semantic_mutation(rng, base, out)
        except Exception as e:  # the mutation itself could not be written (h5py refused): not a case
            res.update(outcome="skipped", error=f"{type(e).__name__}: {e}")
            print(json.dumps(res), flush=True)
            continue
        try:
            model = bnnlite.Model.load(out)
        except BundleError as e:
            res.update(outcome="rejected", error=str(e).replace(str(out), "<file>")[:300])
        except BaseException as e:
            res.update(outcome="failure", error=f"load raised {type(e).__name__}: {e}",
                       tb=traceback.format_exc()[-2000:])
        else:
            try:
                problem = check_loaded(model, rng, out.stat().st_size)
                res.update(outcome="failure", error=problem) if problem else res.update(outcome="loaded")
            except BaseException as e:
                res.update(outcome="failure", error=f"predict raised {type(e).__name__}: {e}",
                           tb=traceback.format_exc()[-2000:])
            del model
        cpu = time.process_time() - t0
        rss = peak_rss()
        if cpu > MAX_CASE_CPU_S and res["outcome"] != "failure":
            res.update(outcome="failure", error=f"took {cpu:.1f} s of CPU")
        if rss > MAX_RSS_BYTES and res["outcome"] != "failure":
            res.update(outcome="failure", error=f"peak RSS {rss >> 20} MiB")
        print(json.dumps(res), flush=True)
    out.unlink(missing_ok=True)


if __name__ == "__main__":
    # Safety nets: a runaway allocation fails instead of swapping the machine, a spinning
    # hang is killed by SIGXCPU (the parent also has a wall-clock timeout).
    resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    cpu_limit = int(os.environ.get("BNNLITE_FUZZ_CPU_LIMIT", "120"))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_limit, cpu_limit))
    main(sys.argv[1:])
