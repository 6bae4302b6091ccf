"""bnnlite/bench/workers.py: the worker protocol and the thread-scaling pairs."""
import sys

import pytest

from bnnlite.backends import available_backends
from bnnlite.bench.evalset import data_file
from bnnlite.bench.workers import Worker, scaling_worker


def test_worker_skips_what_libraries_print_and_reports_its_exit():
    script = ("import json, sys\n"
              "print('a library talking'); print(json.dumps({'ready': True}), flush=True)\n"
              "for line in sys.stdin:\n"
              "    print('more talk'); print(json.dumps({'t': 0.5}), flush=True)\n"
              "sys.exit('worker gave up')\n")
    w = Worker("fake", [sys.executable, "-c", script])
    try:
        assert w.error is None
        assert w.ask("batch") == {"t": 0.5}
        w._p.stdin.close()                      # the worker leaves its loop and fails
        assert w._answer() is None and w.error == "worker gave up"
        assert w.ask("batch") is None
    finally:
        w.close()


@pytest.mark.skipif("cython" not in available_backends(), reason="the compiled extension is not built")
def test_thread_scaling_is_timed_in_pairs():
    sc = scaling_worker(data_file("birealnet.h5"), None, 8, 1, 2, 4, pairs=5)
    assert sc["threads"] == 2 and sc["base_threads"] == 1 and sc["pairs"] == 5
    assert sc["throughput_ips"] > 0 and sc["base_ips"] > 0 and sc["speedup"] > 0
    assert len(sc["pair_ratios"]) == 5 and min(sc["pair_ratios"]) <= sc["speedup"] <= max(sc["pair_ratios"])
