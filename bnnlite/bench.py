"""``bnnlite-bench``: bnnlite against PyTorch FP32 and ONNX Runtime, side by side.

Public names: ENGINES, main.

Every engine takes the same input (uint8 NHWC images; normalisation and any
layout change are part of its timed work), runs the same VGG-small topology
and is measured in a fresh subprocess of its own, so peak resident memory is
that engine's alone.  The subprocesses are all started first and then timed
in alternation, round by round (each engine's batch, then the next's), so
that the machine's drift in speed (on a shared machine, other tenants come
and go) falls on every engine alike instead of on whichever ran in a slow
minute; each figure is the median over the rounds.  Engines:

* ``bnnlite``        -- the bundle on the compiled (Cython) kernels.
* ``bnnlite-numba``  -- the same bundle on the numba fallback.
* ``torch-fp32``     -- PyTorch FP32 on the fp32 bundle's weights (BN folded),
  the faster of NCHW and channels_last.
* ``ort-fp32``       -- ONNX Runtime on the fp32 bundle translated to ONNX.
* ``ort-bnn``        -- ONNX Runtime on the BNN bundle as Sign + float Conv.

Columns: accuracy, batch-1 latency (median of ``--runs`` single-image calls),
batch-N throughput (median of the rounds' batches), peak RSS (after loading and
running batch N; accuracy is measured afterwards, so the data set is not
counted), weight storage.  ``--layers`` times each binary conv alone.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from importlib import resources
from importlib.util import find_spec
from pathlib import Path

import click
import numpy as np

__all__ = ["ENGINES", "main"]

ENGINES = ("bnnlite", "bnnlite-numba", "torch-fp32", "ort-fp32", "ort-bnn")
SAMPLE = "cifar10_test_sample.npz"
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")


def _data_file(name):
    p = resources.files("bnnlite") / "data" / name
    return Path(str(p)) if p.is_file() else None


def _missing(engine) -> str | None:
    """Why ``engine`` cannot run here, or None."""
    need = {"bnnlite-numba": ["numba"], "torch-fp32": ["torch"], "ort-fp32": ["onnx", "onnxruntime"],
            "ort-bnn": ["onnx", "onnxruntime"]}.get(engine, [])
    for mod in need:
        if find_spec(mod) is None:
            return f"{mod} is not installed (pip install bnnlite[bench])"
    if engine == "bnnlite":
        from .backend import available_backends
        if "cython" not in available_backends():
            return "the compiled extension is not built (pip install . with a C compiler)"
    return None


def _load_eval_set(data, limit):
    if data is None:
        path = _data_file(SAMPLE)
        if path is None:
            raise click.ClickException(f"no --data given and the package has no {SAMPLE}")
        with np.load(path) as z:
            images, labels = z["images"], z["labels"]
    else:
        images, labels = _read_test_split(data)
    if limit:
        images, labels = images[:limit], labels[:limit]
    return images, labels


def _read_test_split(data):
    """The test split of CIFAR-10 data in either official layout, without torch."""
    from .cifar import load_test_split
    return load_test_split(data)


# ------------------------------------------------------------------ engines
def _normalizer(bundle_header):
    mean = np.asarray(bundle_header["normalization_mean"], np.float32)
    std = np.asarray(bundle_header["normalization_std"], np.float32)

    def nchw(images):
        x = images.astype(np.float32) / np.float32(255.0)
        x -= mean
        x /= std
        return np.ascontiguousarray(x.transpose(0, 3, 1, 2))
    return nchw


def _torch_from_bundle(bundle):
    """A plain torch.nn.Sequential with the bundle's folded float weights (fp32 models)."""
    import torch
    from torch import nn

    from .bundle import folded_conv_weight
    layers = []
    for rec in bundle.ops:
        a, ar = rec.attrs, rec.arrays
        if rec.op == "conv2d":
            conv = nn.Conv2d(a["cin"], a["cout"], (a["kh"], a["kw"]), a["stride"], a["padding"])
            conv.weight.data = torch.from_numpy(folded_conv_weight(rec))
            conv.bias.data = torch.from_numpy(ar["bias"].copy())
            layers.append(conv)
            if a["activation"] == "relu":
                layers.append(nn.ReLU())
        elif rec.op == "maxpool2d":
            layers.append(nn.MaxPool2d(2))
        elif rec.op == "flatten":
            layers.append(nn.Flatten())
            h, w, c = bundle.shapes[rec.inputs[0]]
        elif rec.op == "dense":
            lin = nn.Linear(a["units_in"], a["units_out"])
            # bundle weights are in NHWC-flatten order; torch flattens NCHW.
            wt = ar["weight"].reshape(a["units_out"], h, w, c).transpose(0, 3, 1, 2).reshape(a["units_out"], -1)
            lin.weight.data = torch.from_numpy(wt.copy())
            lin.bias.data = torch.from_numpy(ar["bias"].copy())
            layers.append(lin)
        else:
            raise click.ClickException(f"torch-fp32 needs a real-valued bundle; op {rec.op!r} found")
    return nn.Sequential(*layers).eval()


def _make_engine(engine, model_path, fp32_path, threads):
    """Returns (run(images_uint8) -> logits, weight_bytes, note)."""
    from .bundle import read_bundle
    if engine in ("bnnlite", "bnnlite-numba"):
        from .model import Model
        m = Model.load(model_path, threads=threads, backend="cython" if engine == "bnnlite" else "numba")
        return m.logits, m.weight_bytes, f"backend {m.backend.name}/{getattr(m.backend, 'variant', '')}"
    if engine == "torch-fp32":
        import torch
        torch.set_num_threads(threads)
        b = read_bundle(fp32_path)
        net = _torch_from_bundle(b)
        norm = _normalizer(b.header)
        probe = torch.from_numpy(norm(np.zeros((32,) + tuple(b.header["input_shape"]), np.uint8)))
        timings = {}
        with torch.inference_mode():
            for fmt in (torch.contiguous_format, torch.channels_last):
                netf = net.to(memory_format=fmt)
                for _ in range(2):
                    netf(probe.contiguous(memory_format=fmt))
                t = time.perf_counter()
                netf(probe.contiguous(memory_format=fmt))
                timings[fmt] = time.perf_counter() - t
        fmt = min(timings, key=timings.get)
        net = net.to(memory_format=fmt)

        def run(images):
            with torch.inference_mode():
                return net(torch.from_numpy(norm(images)).contiguous(memory_format=fmt)).numpy()
        nbytes = sum(p.numel() * p.element_size() for p in net.parameters())
        return run, nbytes, "channels_last" if fmt == torch.channels_last else "NCHW"
    if engine in ("ort-fp32", "ort-bnn"):
        import onnxruntime as ort
        from .onnx_export import bundle_to_onnx_model
        b = read_bundle(fp32_path if engine == "ort-fp32" else model_path)
        onnx_model = bundle_to_onnx_model(b)
        nbytes = sum(np.prod(t.dims, dtype=np.int64) * 4 for t in onnx_model.graph.initializer)
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(onnx_model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        del onnx_model
        norm = _normalizer(b.header)

        def run(images):
            return sess.run(None, {"input": norm(images)})[0]
        return run, int(nbytes), f"onnxruntime {ort.__version__}"
    raise click.ClickException(f"unknown engine {engine!r}; known: {', '.join(ENGINES)}")


def _peak_rss_mb():
    """Peak resident memory of this process's own address space, in MiB.

    VmHWM, not getrusage: Linux carries ru_maxrss across fork + exec, so a
    worker would report its parent's peak.
    """
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux, bytes on macOS


class _Engine:
    """One engine as its worker holds it: loaded and warmed up once, then
    timed on request (``_serve``)."""

    def __init__(self, engine, model_path, fp32_path, data, limit, threads, batch, runs):
        self.engine, self.data, self.limit, self.batch, self.threads = engine, data, limit, batch, threads
        images, _ = _load_eval_set(data, limit)
        self.timing_batch = np.ascontiguousarray(np.resize(images, (batch,) + images.shape[1:]))
        self.singles = [np.ascontiguousarray(images[i % len(images)][None]) for i in range(runs)]
        del images  # not resident while memory is measured; reloaded by finish()
        self.run, self.nbytes, self.note = _make_engine(engine, model_path, fp32_path, threads)
        for x in self.singles[:5]:
            self.run(x)
        self.run(self.timing_batch)

    def single_times(self, lo, hi):
        """Seconds of each batch-1 call on singles[lo:hi]."""
        out = []
        for x in self.singles[lo:hi]:
            t = time.perf_counter()
            self.run(x)
            out.append(time.perf_counter() - t)
        return out

    def batch_time(self):
        t = time.perf_counter()
        self.run(self.timing_batch)
        return time.perf_counter() - t

    def finish(self):
        """Peak RSS so far (loading and timing), then accuracy."""
        rss = _peak_rss_mb()
        images, labels = _load_eval_set(self.data, self.limit)
        correct = 0
        for i in range(0, len(images), self.batch):
            correct += int((np.argmax(self.run(images[i:i + self.batch]), axis=1) ==
                            labels[i:i + self.batch]).sum())
        return {"engine": self.engine, "accuracy": correct / len(labels), "eval_images": int(len(labels)),
                "batch": self.batch, "peak_rss_mb": rss, "weight_bytes": int(self.nbytes),
                "threads": self.threads, "note": self.note}


def _serve(engine, model_path, fp32_path, data, limit, threads, batch, runs):
    """A worker: one JSON line per request read from stdin, one JSON line of
    answer on stdout ({"ready": ...} first, once the engine is loaded)."""
    eng = _Engine(engine, model_path, fp32_path, data, limit, threads, batch, runs)
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        if req["do"] == "singles":
            out = {"t": eng.single_times(req["lo"], req["hi"])}
        elif req["do"] == "batch":
            out = {"t": eng.batch_time()}
        else:  # "finish"
            print(json.dumps(eng.finish()), flush=True)
            return
        print(json.dumps(out), flush=True)


def _scaling_worker(model_path, data, limit, threads, scaling, batch, pairs=10):
    """bnnlite's batch throughput with ``threads`` and with ``scaling`` threads,
    timed in alternation in one process (pairs of runs under the same machine
    load, which on a shared machine drifts between subprocesses run minutes
    apart); the speed-up is the median of the pairs' ratios."""
    images, _ = _load_eval_set(data, limit)
    x = np.ascontiguousarray(np.resize(images, (batch,) + images.shape[1:]))
    runs = {n: _make_engine("bnnlite", model_path, None, n)[0] for n in (threads, scaling)}
    times = {n: [] for n in runs}
    for run in runs.values():
        run(x)
    for _ in range(pairs):
        for n, run in runs.items():
            t = time.perf_counter()
            run(x)
            times[n].append(time.perf_counter() - t)
    ratios = [a / b for a, b in zip(times[threads], times[scaling])]
    return {"threads": scaling, "base_threads": threads, "pairs": pairs,
            "throughput_ips": batch / float(np.median(times[scaling])),
            "base_ips": batch / float(np.median(times[threads])), "speedup": float(np.median(ratios))}


# Children start in the directory that holds *this* bnnlite package, so they
# import the same package as the parent.  Started from the caller's working
# directory, ``python -m``/``-c`` would put it first on sys.path, and a source
# checkout there (no compiled kernels) would shadow the installed package.
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent


def _abs(path) -> str:
    return str(Path(path).resolve())


def _worker_cmd(engine, args):
    env = dict(os.environ)
    for k in THREAD_VARS:
        env[k] = str(max(args["threads"], args.get("scaling", 0)))
    cmd = [sys.executable, "-m", "bnnlite.bench", "--worker", engine, "--model", _abs(args["model"]),
           "--threads", str(args["threads"]), "--batch", str(args["batch"]), "--runs", str(args["runs"]),
           "--scaling", str(args.get("scaling", 0))]
    if args["fp32"]:
        cmd += ["--fp32", _abs(args["fp32"])]
    if args["data"]:
        cmd += ["--data", _abs(args["data"])]
    if args["limit"]:
        cmd += ["--limit", str(args["limit"])]
    return cmd, env


def _spawn(engine, args) -> dict:
    """Run a one-shot worker (the thread-scaling one) and return its JSON answer."""
    cmd, env = _worker_cmd(engine, args)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=_PACKAGE_ROOT)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"engine": engine, "error": " | ".join(tail) or f"exit code {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


class _Worker:
    """The parent's handle on one engine's serving subprocess (``_serve``).
    A worker that fails keeps its error; later requests to it return None."""

    def __init__(self, engine, cmd, env=None):
        self.engine, self.error = engine, None
        self._stderr = tempfile.TemporaryFile(mode="w+")   # a file, not a pipe: it never fills up
        self._p = subprocess.Popen(cmd, env=env, cwd=_PACKAGE_ROOT, stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=self._stderr, text=True)
        self._answer()

    def _answer(self):
        """The worker's next JSON line (lines that are not JSON, printed by
        some library, are skipped), or None once it has exited."""
        for line in self._p.stdout:
            try:
                return json.loads(line)
            except ValueError:
                continue
        self._p.wait()
        self._stderr.seek(0)
        tail = self._stderr.read().strip().splitlines()[-3:]
        self.error = " | ".join(tail) or f"exit code {self._p.returncode}"
        return None

    def ask(self, do, **kw):
        if self.error:
            return None
        try:
            self._p.stdin.write(json.dumps({"do": do, **kw}) + "\n")
            self._p.stdin.flush()
        except OSError:
            pass  # it died: _answer reads the reason
        return self._answer()

    def close(self):
        if self._p.poll() is None:
            self._p.kill()
        self._p.wait()
        self._stderr.close()


def _measure(engines, args, rounds_min=5, rounds_max=20, budget_s=20.0):
    """Rows for ``engines``: all workers started, then timed in alternation.
    Batch-1: ``rounds_min`` rounds, each of runs // rounds_min calls per
    engine.  Batch-N: rounds of one batch per engine, at least ``rounds_min``
    and then until ``budget_s`` has passed (at most ``rounds_max``)."""
    workers = []
    try:
        for e in engines:
            workers.append(_Worker(e, *_worker_cmd(e, args)))
        lat = {w.engine: [] for w in workers}
        tput = {w.engine: [] for w in workers}
        per = args["runs"] // rounds_min
        for r in range(rounds_min):
            hi = args["runs"] if r == rounds_min - 1 else (r + 1) * per
            for w in workers:
                a = w.ask("singles", lo=r * per, hi=hi)
                if a:
                    lat[w.engine] += a["t"]
        t_end = time.perf_counter() + budget_s
        rounds = 0
        while rounds < rounds_min or (time.perf_counter() < t_end and rounds < rounds_max):
            for w in workers:
                a = w.ask("batch")
                if a:
                    tput[w.engine].append(a["t"])
            rounds += 1
        rows = []
        for w in workers:
            a = w.ask("finish")
            if a is None:
                rows.append({"engine": w.engine, "error": w.error})
                continue
            a.update(latency_ms_b1=1e3 * float(np.median(lat[w.engine])),
                     throughput_ips=args["batch"] / float(np.median(tput[w.engine])), rounds=rounds)
            rows.append(a)
        return rows
    finally:
        for w in workers:
            w.close()


_IMPORT_PROBE = """
import json, sys, time
t0 = time.perf_counter()
import bnnlite
t1 = time.perf_counter()
bnnlite.Model.pretrained()
t2 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "load_s": t2 - t1, "numba": "numba" in sys.modules,
                  "torch": "torch" in sys.modules}))
"""


def _import_times(repeats=3) -> dict:
    """Fastest of ``repeats`` fresh interpreters: ``import bnnlite``, then loading the pretrained model."""
    best = None
    for _ in range(repeats):
        p = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True,
                           cwd=_PACKAGE_ROOT)
        if p.returncode != 0:
            return {"error": (p.stderr.strip().splitlines() or ["?"])[-1]}
        r = json.loads(p.stdout.strip().splitlines()[-1])
        best = r if best is None or r["import_s"] < best["import_s"] else best
    return best


def _table(rows, ref_engine="torch-fp32"):
    ref = next((r for r in rows if r["engine"] == ref_engine and "error" not in r), None)
    ort = next((r for r in rows if r["engine"] == "ort-fp32" and "error" not in r), None)
    head = (f"{'engine':<14} {'accuracy':>9} {'b1 ms':>8} {'img/s':>9} {'x torch':>8} {'x ort-fp32':>10} "
            f"{'b1 x torch':>10} {'peak MB':>8} {'weights B':>12}  note")
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r or "skipped" in r:
            lines.append(f"{r['engine']:<14} {'skipped: ' + r['skipped'] if 'skipped' in r else 'failed: ' + r['error']}")
            continue
        xt = f"{r['throughput_ips'] / ref['throughput_ips']:.1f}x" if ref else "-"
        xo = f"{r['throughput_ips'] / ort['throughput_ips']:.1f}x" if ort else "-"
        lt = f"{ref['latency_ms_b1'] / r['latency_ms_b1']:.1f}x" if ref else "-"
        lines.append(f"{r['engine']:<14} {100 * r['accuracy']:>8.2f}% {r['latency_ms_b1']:>8.2f} "
                     f"{r['throughput_ips']:>9.1f} {xt:>8} {xo:>10} {lt:>10} {r['peak_rss_mb']:>8.1f} "
                     f"{r['weight_bytes']:>12,}  {r['note']}")
    return "\n".join(lines)


def _layers(model_path, threads, batch):
    """Each binary conv alone vs torch's FP32 conv, over ``batch`` images.

    bnnlite runs the layer as the model does: chunk by chunk (``Model.chunk``
    images at a time, buffers planned once), output transform included.
    Torch runs the same convolution on the whole batch at once (its fastest).
    """
    from .bitpack import pack_bits
    from .graph import BConv2D, _Context
    from .model import Model
    m = Model.load(model_path, threads=threads, backend="cython")
    step = min(m.chunk, m.graph.max_chunk or m.chunk, batch)
    plan = m.graph.plan(step)
    rng = np.random.default_rng(0)
    for t in plan.tensors.values():
        if t.dtype == np.float32:
            t[...] = rng.standard_normal(t.shape, dtype=np.float32)
    for name in plan.storage:  # random +-1 activations in the packed layout, padding kept +1
        interior = plan.tensors[name]
        interior[...] = pack_bits(rng.standard_normal(interior.shape[:3] + (m.graph.shapes[name][2],)), 0.0)
    ctx = _Context(plan, m.backend, threads)
    try:
        import torch
        torch.set_num_threads(threads)
    except ImportError:
        torch = None
    n_chunks = -(-batch // step)
    rows = []
    for op in m.graph.ops:
        if not isinstance(op, BConv2D):
            continue
        h, w, cin = op.in_shape
        ho, wo, cout = op.conv_out_shape  # before a fused max-pool
        per_image = ho * wo * cout * op.attrs["kh"] * op.attrs["kw"] * cin
        macs = n_chunks * step * per_image
        call = op.bind(plan.tensors, ctx)  # as Model.predict runs it: checked once
        call()
        ts = []
        for _ in range(7):
            t0 = time.perf_counter()
            for _ in range(n_chunks):
                call()
            ts.append(time.perf_counter() - t0)
        tb = float(np.median(ts))
        row = {"layer": op.name, "shape": f"{h}x{w}x{cin}->{cout}", "chunk": step,
               "bnnlite_ms": 1e3 * tb, "binary_gmacs": macs / tb / 1e9}
        if torch is not None:
            x = torch.randn(batch, cin, h, w).contiguous(memory_format=torch.channels_last)
            wt = torch.randn(cout, cin, op.attrs["kh"], op.attrs["kw"]).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                torch.nn.functional.conv2d(x, wt, padding=op.attrs["padding"])
                tt = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    torch.nn.functional.conv2d(x, wt, padding=op.attrs["padding"])
                    tt.append(time.perf_counter() - t0)
            tf = float(np.median(tt))
            row.update(torch_ms=1e3 * tf, torch_gmacs=batch * per_image / tf / 1e9,
                       speedup=(tf / batch) / (tb / (n_chunks * step)))
        rows.append(row)
    return rows


def _layers_table(rows, batch):
    chunk = rows[0]["chunk"] if rows else "-"
    lines = [f"batch {batch}; bnnlite runs each layer {chunk} images at a time, as Model.predict does; "
             "torch runs the whole batch"]
    head = f"{'layer':<8} {'shape':<18} {'bnnlite ms':>10} {'binary GMAC/s':>14} {'torch ms':>9} {'torch GMAC/s':>13} {'speedup':>8}"
    lines += [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['layer']:<8} {r['shape']:<18} {r['bnnlite_ms']:>10.2f} {r['binary_gmacs']:>14.1f} "
                     f"{r.get('torch_ms', float('nan')):>9.2f} {r.get('torch_gmacs', float('nan')):>13.1f} "
                     f"{r.get('speedup', float('nan')):>7.1f}x")
    return "\n".join(lines)


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
    from .bundle import BundleError
    model = model or _data_file("birealnet.h5")
    fp32 = fp32 or _data_file("fp32.h5")
    if model is None:
        raise click.ClickException("no --model given and the package has no pretrained birealnet.h5")
    try:
        if worker == "scaling":
            print(json.dumps(_scaling_worker(model, data, limit, threads, scaling, batch)))
            return
        if worker:
            _serve(worker, model, fp32, data, limit, threads, batch, runs)
            return
        if layers:
            rows = _layers(model, threads, batch)
            click.echo(json.dumps(rows, indent=2) if as_json else _layers_table(rows, batch))
            return
    except BundleError as e:
        raise click.ClickException(str(e)) from e
    _check_paths(model, fp32, data)
    wanted = [e.strip() for e in engines.split(",") if e.strip()]
    bad = [e for e in wanted if e not in ENGINES]
    if bad:
        raise click.BadParameter(f"unknown engine(s) {', '.join(bad)}; known: {', '.join(ENGINES)}",
                                 param_hint="--engines")
    args = {"model": model, "fp32": fp32, "data": data, "limit": limit, "threads": threads, "batch": batch,
            "runs": runs}
    skipped = {}
    for e in wanted:
        why = _missing(e) or (None if fp32 or e not in ("torch-fp32", "ort-fp32") else "no FP32 bundle (--fp32)")
        if why:
            skipped[e] = {"engine": e, "skipped": why}
    runnable = [e for e in wanted if e not in skipped]
    if runnable and not as_json:
        click.echo(f"running {', '.join(runnable)} in alternation ...", err=True)
    measured = {r["engine"]: r for r in _measure(runnable, args)}
    rows = [skipped.get(e) or measured[e] for e in wanted]
    extra = {"import": _import_times()}
    base = next((r for r in rows if r["engine"] == "bnnlite" and "error" not in r and "skipped" not in r), None)
    if scaling and base and scaling != threads:
        if not as_json:
            click.echo(f"running bnnlite with {scaling} threads ...", err=True)
        r = _spawn("scaling", {**args, "scaling": scaling})
        extra["scaling"] = {"threads": scaling, "error": r["error"]} if "error" in r else r
    if as_json:
        click.echo(json.dumps({"threads": threads, "batch": batch, "model": str(model), "results": rows, **extra},
                              indent=2))
        return
    click.echo(f"model {model}; {threads} thread(s); batch {batch}; "
               f"accuracy on {'--data ' + str(data) if data else 'the shipped test sample'}")
    click.echo(_table(rows))
    imp = extra["import"]
    if "error" in imp:
        click.echo(f"import bnnlite: failed ({imp['error']})")
    else:
        click.echo(f"import bnnlite: {imp['import_s']:.3f} s (then Model.pretrained(): {imp['load_s']:.3f} s); "
                   f"numba imported: {'yes' if imp['numba'] else 'no'}, torch imported: "
                   f"{'yes' if imp['torch'] else 'no'}")
    sc = extra.get("scaling")
    if sc:
        click.echo(f"bnnlite with {sc['threads']} threads: " + (f"failed ({sc['error']})" if "error" in sc else
                   f"{sc['throughput_ips']:.1f} img/s against {sc['base_ips']:.1f} with {threads}: "
                   f"{sc['speedup']:.2f}x (median of {sc['pairs']} alternating pairs in one process)"))


if __name__ == "__main__":
    main()
