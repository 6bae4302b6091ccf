"""Fuzz the bundle loader: every mutant in its own forked process with memory, CPU and wall limits.

    python tools/fuzz_bundles.py [--cases 10000] [--jobs 2] [--seed 16] [--out results.jsonl]

Base bundles: the tiny fp32, xnor and birealnet bundles of the test suite and a
ResNet-style one with average pools, add and concat (made once with torch in a
subprocess, ``tests/_models.py``).  Families, in
the proportions of ``PLAN``: ``raw`` (byte damage, half re-sealed),
``semantic`` (attributes, graph JSON, dataset shapes/dtypes/values:
``tests/_fuzz_worker.py``), ``storage`` (external storage, virtual datasets,
links, filters, compact and chunked layouts) and ``values`` (huge finite
values, tiny std: ``tests/_fuzz_storage.py``).

The parent imports everything once and forks one child per case, so a case
costs a fork, not an interpreter start.  The child sets RLIMIT_AS and
RLIMIT_CPU, writes the mutant, loads it and, if it loads, runs four images
(two random, all 0, all 255).  It reports through a pipe; the parent kills
it after ``WALL_S``.  Outcomes: ``rejected`` (BundleError), ``loaded``
(finite logits of the right shape), ``skipped`` (h5py could not write the
mutation), and the failures: ``failure`` (another exception, a forbidden
storage feature accepted, wrong shape), ``nonfinite`` (a loaded model gave
inf or NaN), ``crash`` (the child died of a signal or exited without a
report) and ``hang`` (killed at the wall limit, or by SIGXCPU).
Exit status 1 if any case failed.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import resource
import select
import signal
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # no BLAS threads in the parent: fork-safe
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import _fuzz_storage  # noqa: E402
import _fuzz_worker  # noqa: E402
import bnnlite  # noqa: E402
from _bundle_edit import edit  # noqa: E402
from bnnlite.bundle import BundleError, read_bundle  # noqa: E402

PLAN = {"raw": 0.2, "semantic": 0.3, "storage": 0.25, "values": 0.25}
FAMILY_ID = {"raw": 0, "semantic": 1, "storage": 2, "values": 3}
ARCHS = ("fp32", "xnor", "birealnet", "mergenet")
MEM_BYTES = 2 << 30   # address space of one case
CPU_S = 20            # CPU seconds of one case (SIGXCPU)
WALL_S = 60           # wall seconds of one case (the machine may be shared)
FAILURES = ("failure", "nonfinite", "crash", "hang")


def make_bases(folder: Path) -> dict:
    """arch -> path of a tiny bundle with fixed bytes (torch, in a subprocess, once)."""
    paths = {a: folder / f"{a}.h5" for a in ARCHS}
    if not all(p.exists() for p in paths.values()):
        code = ("import sys; sys.path.insert(0, sys.argv[1]); import torch; torch.set_num_threads(1); "
                "import _models; from pathlib import Path\n"
                "for i, a in enumerate(_models.FUZZ_ARCHS):\n"
                "    _models.write_plain_bundle(_models.make_model(a, seed=i), Path(sys.argv[2]) / (a + '.h5'))")
        folder.mkdir(parents=True, exist_ok=True)
        import subprocess
        subprocess.run([sys.executable, "-c", code, str(ROOT / "tests"), str(folder)], check=True)
    return paths


def case_plan(n: int, seed: int) -> list[tuple]:
    """(family, arch, index) for n cases, families in PLAN's proportions, archs in turn."""
    cases, i = [], 0
    for fam, share in PLAN.items():
        k = round(n * share) if fam != list(PLAN)[-1] else n - len(cases)
        cases += [(fam, ARCHS[j % len(ARCHS)], j) for j in range(k)]
        i += k
    return cases


def _check(model, rng, forbidden) -> tuple[str, str | None]:
    if forbidden:
        return "failure", f"loaded despite: {forbidden}"
    shape = tuple(model.input_shape)
    if int(np.prod(shape)) > 1 << 20:
        return "loaded", None
    x = np.concatenate([rng.integers(0, 256, (2,) + shape, dtype=np.uint8),
                        np.zeros((1,) + shape, np.uint8), np.full((1,) + shape, 255, np.uint8)])
    with np.errstate(all="ignore"):
        z = model.logits(x)
    k = model.graph.shapes["logits"][0]
    if z.shape != (4, k) or z.dtype != np.float32:
        return "failure", f"logits shape {z.shape} dtype {z.dtype}"
    if not np.isfinite(z).all():
        return "nonfinite", f"non-finite logits {z.tolist()[:2]}"
    return "loaded", None


def run_case(bases, family, arch, i, seed, tmpdir: Path) -> dict:
    """The child's work: mutate, load, run.  Returns the result record."""
    base = bases[arch]
    out = tmpdir / f"mutant-{os.getpid()}.h5"
    res = {"family": family, "arch": arch, "i": i}
    rng = np.random.default_rng([seed, FAMILY_ID[family], ARCHS.index(arch), i])
    try:
        if family == "raw":
            res["desc"] = _fuzz_worker.raw_mutation(rng, base.read_bytes(), out)
        elif family == "semantic":
            res["desc"] = _fuzz_worker.semantic_mutation(rng, base, out)
        else:
            descs = []
            edit(base, out, lambda f: descs.append(_fuzz_storage.FAMILIES[family](f, rng)))
            res["desc"] = descs[0]
    except Exception as e:  # h5py refused to write this mutation: not a case
        res.update(outcome="skipped", error=f"{type(e).__name__}: {e}"[:300])
        return res
    forbidden = res["desc"] if res["desc"].startswith("FORBIDDEN") else None
    try:
        model = bnnlite.Model.load(out)
    except BundleError as e:
        res.update(outcome="rejected", error=str(e).replace(str(out), "<file>")[:300])
    except BaseException as e:
        res.update(outcome="failure", error=f"load raised {type(e).__name__}: {e}"[:300],
                   tb=traceback.format_exc()[-1500:])
    else:
        try:
            outcome, err = _check(model, rng, forbidden)
        except BaseException as e:
            outcome, err = "failure", f"predict raised {type(e).__name__}: {e}"[:300]
        res["outcome"] = outcome
        if err:
            res["error"] = err
    return res


def _child(bases, case, seed, tmpdir, wfd):
    try:
        resource.setrlimit(resource.RLIMIT_AS, (MEM_BYTES, MEM_BYTES))
        resource.setrlimit(resource.RLIMIT_CPU, (CPU_S, CPU_S + 5))
        os.chdir(tmpdir)  # relative external names resolve here
        res = run_case(bases, *case, seed, tmpdir)
        os.write(wfd, (json.dumps(res) + "\n").encode())
    finally:
        (tmpdir / f"mutant-{os.getpid()}.h5").unlink(missing_ok=True)
        os._exit(0)


def run_cases(bases, cases, seed, tmpdir: Path, jobs=2, on_result=None) -> list[dict]:
    """Run every case in its own forked child, ``jobs`` at a time."""
    tmpdir.mkdir(parents=True, exist_ok=True)
    _fuzz_storage.TARGETS.update(file=tmpdir / "target.bin", fifo=tmpdir / "target.fifo")
    (tmpdir / "target.bin").write_bytes(b"SECRET-" * 4096)
    (tmpdir / "rel.bin").write_bytes(b"RELATIVE" * 4096)
    if not (tmpdir / "target.fifo").exists():
        os.mkfifo(tmpdir / "target.fifo")
    _fuzz_worker.BASE_SHAPES.update(read_bundle(bases["birealnet"]).shapes)
    todo, running, results = list(cases), {}, []
    while todo or running:
        while todo and len(running) < jobs:
            case = todo.pop(0)
            rfd, wfd = os.pipe()
            pid = os.fork()
            if pid == 0:
                os.close(rfd)
                _child(bases, case, seed, tmpdir, wfd)
            os.close(wfd)
            running[rfd] = (pid, case, time.monotonic(), bytearray())
        ready, _, _ = select.select(list(running), [], [], 0.5)
        now = time.monotonic()
        for fd in list(running):
            pid, case, t0, buf = running[fd]
            eof = False
            if fd in ready:
                chunk = os.read(fd, 65536)
                buf += chunk
                eof = not chunk
            timed_out = not eof and now - t0 > WALL_S
            if not (eof or timed_out):
                continue
            if timed_out:
                os.kill(pid, signal.SIGKILL)
            _, status, usage = os.wait4(pid, 0)
            os.close(fd)
            del running[fd]
            res = {"family": case[0], "arch": case[1], "i": case[2]}
            try:
                res = json.loads(buf.decode())
            except ValueError:
                if timed_out:
                    res.update(outcome="hang", error=f"killed after {WALL_S} s")
                elif os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGXCPU:
                    res.update(outcome="hang", error=f"over {CPU_S} s of CPU (SIGXCPU)")
                elif os.WIFSIGNALED(status):
                    res.update(outcome="crash", error=f"killed by signal {os.WTERMSIG(status)}")
                else:
                    res.update(outcome="crash", error=f"exited {os.waitstatus_to_exitcode(status)} without a report")
            res["max_rss_mb"] = usage.ru_maxrss // 1024
            res["seconds"] = round(now - t0, 3)
            results.append(res)
            if on_result:
                on_result(res)
    return results


def summarize(results) -> dict:
    by_family = collections.defaultdict(collections.Counter)
    for r in results:
        by_family[r["family"]][r["outcome"]] += 1
    total = collections.Counter(r["outcome"] for r in results)
    return {"cases": len(results), "outcomes": dict(total), "by_family": {k: dict(v) for k, v in by_family.items()},
            "failures": sum(total[k] for k in FAILURES), "crashes": total["crash"], "hangs": total["hang"],
            "nonfinite_loads": total["nonfinite"],
            "max_rss_mb": max((r.get("max_rss_mb", 0) for r in results), default=0),
            "slowest_case_s": max((r.get("seconds", 0) for r in results), default=0)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10000)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--seed", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None, help="JSON line per case")
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bnnlite-fuzz-"))
    bases = make_bases(work / "bases")
    out = open(args.out, "w") if args.out else None
    t0, done = time.time(), [0]

    def report(res):
        done[0] += 1
        if out:
            out.write(json.dumps(res) + "\n")
        if res["outcome"] in FAILURES:
            print(f"{res['outcome'].upper()}: {json.dumps(res)[:600]}", flush=True)
        if done[0] % 1000 == 0:
            print(f"{done[0]} cases, {time.time() - t0:.0f} s", flush=True)

    results = run_cases(bases, case_plan(args.cases, args.seed), args.seed, work / "cases", args.jobs, report)
    summary = summarize(results)
    summary["seconds"] = round(time.time() - t0, 1)
    print(json.dumps(summary, indent=1))
    return 1 if summary["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
