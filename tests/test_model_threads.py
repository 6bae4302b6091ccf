"""One Model shared by several threads: every call gives its serial result (issue 16).

The check runs in a torch-free subprocess: in a process that has imported
torch (as pytest has, for the tiny bundles), OpenMP regions of 2 threads cost
~60 ms each here (torch's OpenMP settings), which would make 800 calls slow.
"""
from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest

THREADS, CALLS = 4, 100


def check_shared(path, model_threads, seed=16) -> dict:
    import bnnlite
    model = bnnlite.Model.load(path, threads=model_threads)
    rng = np.random.default_rng(seed)
    # Different batch sizes per call: plans for several sizes are made, evicted and reused.
    sizes = rng.integers(1, 10, (THREADS, CALLS))
    images = rng.integers(0, 256, (40,) + model.input_shape, dtype=np.uint8)
    offsets = rng.integers(0, len(images) - 9, (THREADS, CALLS))
    jobs = [[images[o:o + n] for o, n in zip(offsets[t], sizes[t])] for t in range(THREADS)]
    serial = [[model.logits(x) for x in job] for job in jobs]
    got = [[None] * CALLS for _ in range(THREADS)]
    start = threading.Barrier(THREADS)

    def work(t):
        start.wait()
        for i, x in enumerate(jobs[t]):
            got[t][i] = model.logits(x)

    workers = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wrong = [(t, i) for t in range(THREADS) for i in range(CALLS)
             if got[t][i] is None or not np.array_equal(got[t][i], serial[t][i])]
    return {"calls": THREADS * CALLS, "wrong": len(wrong), "first": wrong[:5]}


@pytest.mark.parametrize("arch,model_threads", [("birealnet", 1), ("xnor", 2), ("fp32", 1)])
def test_shared_model_matches_serial(tiny_bundles, arch, model_threads):
    proc = subprocess.run([sys.executable, __file__, str(tiny_bundles[arch]), str(model_threads)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(proc.stdout.splitlines()[-1])
    assert res["wrong"] == 0, f"{res['wrong']} of {res['calls']} concurrent calls differ from serial: {res}"


if __name__ == "__main__":
    print(json.dumps(check_shared(sys.argv[1], int(sys.argv[2]))))
