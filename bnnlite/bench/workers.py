"""The engine subprocesses and the alternating timing rounds.

Public names: Worker, measure, thread_scaling, import_times, serve, scaling_worker.

Each engine runs in a worker subprocess of its own (``python -m bnnlite.bench
--worker ENGINE ...``), so that its peak resident memory is its own.  The
parent (``measure``) starts every worker first, then asks them in turn, round
by round, to time a batch: the machine's drift in speed falls on every engine
alike.  The protocol is one JSON line per request on the worker's stdin and
one JSON line of answer on its stdout (``{"ready": true}`` first, once the
engine is loaded and warmed up):

    {"do": "singles", "lo": i, "hi": j} -> {"t": [seconds of each batch-1 call]}
    {"do": "batch"}                     -> {"t": seconds of one batch-N call}
    {"do": "finish"}                    -> the engine's row (peak RSS, accuracy, ...); it exits
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from .engines import make_engine
from .evalset import load_eval_set

__all__ = ["Worker", "measure", "thread_scaling", "import_times", "serve", "scaling_worker"]

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS")

# Children start in the directory that holds *this* bnnlite package, so they
# import the same package as the parent.  Started from the caller's working
# directory, ``python -m``/``-c`` would put it first on sys.path, and a source
# checkout there (no compiled kernels) would shadow the installed package.
_PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent


# ------------------------------------------------------------------ in the worker
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


class _LoadedEngine:
    """One engine as its worker holds it: loaded and warmed up once, then timed on request."""

    def __init__(self, engine, model_path, fp32_path, data, limit, threads, batch, runs):
        self.engine, self.data, self.limit, self.batch, self.threads = engine, data, limit, batch, threads
        images, _ = load_eval_set(data, limit)
        self.timing_batch = np.ascontiguousarray(np.resize(images, (batch,) + images.shape[1:]))
        self.singles = [np.ascontiguousarray(images[i % len(images)][None]) for i in range(runs)]
        del images  # not resident while memory is measured; reloaded by finish()
        self.run, self.nbytes, self.note = make_engine(engine, model_path, fp32_path, threads)
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
        images, labels = load_eval_set(self.data, self.limit)
        correct = 0
        for i in range(0, len(images), self.batch):
            correct += int((np.argmax(self.run(images[i:i + self.batch]), axis=1) ==
                            labels[i:i + self.batch]).sum())
        return {"engine": self.engine, "accuracy": correct / len(labels), "eval_images": int(len(labels)),
                "batch": self.batch, "peak_rss_mb": rss, "weight_bytes": int(self.nbytes),
                "threads": self.threads, "note": self.note}


def serve(engine, model_path, fp32_path, data, limit, threads, batch, runs):
    """A worker: answers the parent's requests (module docstring) until "finish"."""
    eng = _LoadedEngine(engine, model_path, fp32_path, data, limit, threads, batch, runs)
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


def scaling_worker(model_path, data, limit, threads, scaling, batch, pairs=10):
    """bnnlite's batch throughput with ``threads`` and with ``scaling`` threads,
    timed in alternation in one process (pairs of runs under the same machine
    load, which on a shared machine drifts between subprocesses run minutes
    apart).  Each rate is the batch over the median time of its side of the
    pairs; ``speedup`` is the median of the pairs' own time ratios, which a
    slow stretch of the machine moves less than it moves the rates."""
    images, _ = load_eval_set(data, limit)
    x = np.ascontiguousarray(np.resize(images, (batch,) + images.shape[1:]))
    runs = {n: make_engine("bnnlite", model_path, None, n)[0] for n in (threads, scaling)}
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
            "base_ips": batch / float(np.median(times[threads])), "speedup": float(np.median(ratios)),
            "pair_ratios": ratios}


# ------------------------------------------------------------------ in the parent
def _abs(path) -> str:
    return str(Path(path).resolve())


def _worker_cmd(engine, args):
    """The command line and environment of ``engine``'s worker (``args``: the CLI's options)."""
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


class Worker:
    """The parent's handle on one engine's serving subprocess (``serve``).
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


def measure(engines, args, rounds_min=5, rounds_max=20, budget_s=20.0):
    """Rows for ``engines``: all workers started, then timed in alternation.
    Batch-1: ``rounds_min`` rounds, each of runs // rounds_min calls per
    engine.  Batch-N: rounds of one batch per engine, at least ``rounds_min``
    and then until ``budget_s`` has passed (at most ``rounds_max``)."""
    workers = []
    try:
        for e in engines:
            workers.append(Worker(e, *_worker_cmd(e, args)))
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


def thread_scaling(args) -> dict:
    """The scaling worker's answer (``scaling_worker``), run as a one-shot subprocess."""
    cmd, env = _worker_cmd("scaling", args)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=_PACKAGE_ROOT)
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return {"threads": args["scaling"], "error": " | ".join(tail) or f"exit code {p.returncode}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


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


def import_times(repeats=3) -> dict:
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
