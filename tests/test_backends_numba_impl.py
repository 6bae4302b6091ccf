"""Tests of bnnlite/backends/numba_impl.py and _numba_kernels.py beyond the
kernels' results (those are in test_backends_api.py, for every backend):
where numba caches its machine code, and its threading layer.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import bnnlite
from bnnlite import backends as B


class TestNumbaImpl:
    def test_numba_caches_outside_the_package(self, tmp_path):
        pytest.importorskip("numba")
        import subprocess
        code = ("import numba, bnnlite.backends._numba_kernels as k; "
                "print(k._pack._cache._cache_path); print(repr(numba.config.CACHE_DIR))")
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
        env.pop("NUMBA_CACHE_DIR", None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)
        path, user_dir = res.stdout.splitlines()
        assert Path(path).is_relative_to(tmp_path / "bnnlite" / "numba")
        assert not Path(path).is_relative_to(Path(bnnlite.__file__).parent)
        assert user_dir == "''"                                  # given back to the user

    def test_numba_workqueue_layer_is_never_called_concurrently(self):
        """numba's workqueue layer terminates the process on concurrent launches:
        with it, Model must keep to one calling thread, and still give the results."""
        pytest.importorskip("numba")
        code = ("import numpy as np, bnnlite, numba; from bnnlite.backends import get_backend; "
                "be = get_backend('numba'); print(numba.threading_layer(), be.concurrent_calls); "
                "m = bnnlite.Model.pretrained(backend='numba', threads=2); "
                "x = np.random.default_rng(0).integers(0, 256, (9, 32, 32, 3), dtype=np.uint8); "
                "m1 = bnnlite.Model.pretrained(backend='numba'); "
                "print(bool((m.logits(x) == m1.logits(x)).all()))")
        env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
        env.pop(B.ENV_VAR, None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
        assert res.returncode == 0, res.stderr[-2000:]
        assert res.stdout.split() == ["workqueue", "False", "True"]
        # The cython and numpy backends say what they are.
        assert B.get_backend("numpy").concurrent_calls is False
