"""Which kernels bnnlite runs: the CPU probe of the compiled extension, the
path choice of a binary conv (one function in C, asked from Python), the
optional numba extra and where numba caches.  The kernels' results are
tested in test_kernels.py."""
from __future__ import annotations

import inspect
import os
import sys
from pathlib import Path

import numpy as np
import pytest

import bnnlite
from bnnlite import _planes
from bnnlite import backend as B
from bnnlite.bitpack import WORD_DTYPE


def _module(variant):
    try:
        return B.get_backend(f"cython-{variant}")._impl.mod
    except (ImportError, RuntimeError):
        pytest.skip(f"the {variant} build does not run here")


class TestCpuProbe:
    def test_probe_is_the_compiled_extension(self):
        cpu = pytest.importorskip("bnnlite._cpu")
        assert "__cpu_features__" not in inspect.getsource(B)
        assert cpu.has("avx2") in (True, False, None)

    @pytest.mark.skipif(not Path("/proc/cpuinfo").exists(), reason="Linux only")
    def test_probe_agrees_with_the_kernel(self):
        cpu = pytest.importorskip("bnnlite._cpu")
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("flags")).split()
        # GCC's names -> /proc/cpuinfo's (the OS may hide what the CPU has, never the reverse)
        for gcc, linux in (("avx2", "avx2"), ("popcnt", "popcnt"), ("fma", "fma"),
                           ("avx512f", "avx512f"), ("avx512vpopcntdq", "avx512_vpopcntdq")):
            if cpu.has(gcc) is not None:
                assert cpu.has(gcc) == (linux in flags), gcc

    def test_missing_probe_means_generic_only(self, monkeypatch):
        monkeypatch.setitem(sys.modules, "bnnlite._cpu", None)     # import fails
        assert B._cpu_has(()) is True
        assert B._cpu_has(("avx2",)) is False


class TestNumbaExtra:
    def test_no_kernels_names_the_extra(self, monkeypatch):
        def missing(*a, **k):
            raise ImportError("No module named 'numba'")

        monkeypatch.delenv(B.ENV_VAR, raising=False)
        monkeypatch.setattr(B, "_CythonImpl", missing)
        monkeypatch.setattr(B, "_NumbaImpl", missing)
        monkeypatch.setattr(B, "_CACHE", {})
        with pytest.raises(ImportError, match=r"pip install 'bnnlite\[numba\]'"):
            B.get_backend()
        with pytest.raises(ImportError, match=r"bnnlite\[numba\]"):
            B.get_backend("numba")
        assert B.get_backend("numpy").name == "numpy"           # still there when asked for

    def test_numba_is_not_a_required_dependency(self):
        import tomllib
        meta = tomllib.loads((Path(__file__).parent.parent / "pyproject.toml").read_text())
        required = {d.split(">")[0].split("=")[0].strip() for d in meta["project"]["dependencies"]}
        assert "numba" not in required and {"numpy", "h5py", "threadpoolctl", "click"} <= required
        assert any(d.startswith("numba") for d in meta["project"]["optional-dependencies"]["numba"])

    def test_numba_caches_outside_the_package(self, tmp_path):
        pytest.importorskip("numba")
        import subprocess
        code = ("import numba, bnnlite._numba_kernels as k; "
                "print(k._pack._cache._cache_path); print(repr(numba.config.CACHE_DIR))")
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp_path))
        env.pop("NUMBA_CACHE_DIR", None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)
        path, user_dir = res.stdout.splitlines()
        assert Path(path).is_relative_to(tmp_path / "bnnlite" / "numba")
        assert not Path(path).is_relative_to(Path(bnnlite.__file__).parent)
        assert user_dir == "''"                                  # given back to the user


class TestPathChoice:
    """bnn_sel_choose (kernels/bconv_select.h), through select_path."""

    def test_the_three_paths(self):
        mod = _module("avx2")
        if not mod.HAVE_PLANES:
            pytest.skip("this build has no bit-plane conv")
        choose = mod.select_path
        assert choose(4, 16, 16, False, True, True) == mod.PATH_PLANES     # 1024 pixels
        assert choose(1, 8, 8, False, True, True) == mod.PATH_WPLANES      # 64 pixels
        assert choose(1, 8, 8, False, False, True) == mod.PATH_WPLANES
        assert choose(4, 16, 16, False, False, True) == mod.PATH_WPLANES
        assert choose(1, 8, 8, False, True, False) == mod.PATH_CORE
        assert choose(1, 8, 300, False, True, True) == mod.PATH_CORE        # rows too wide
        assert choose(4, 16, 16, True, True, True) == mod.PATH_PLANES

    def test_builds_without_planes_take_the_core(self):
        mod = _module("generic")
        assert mod.PATH_CORE == mod.select_path(4, 16, 16, False, True, True)

    def test_call_path_hands_over_that_paths_data(self):
        be = B.get_backend("cython-avx2") if "cython-avx2" in B.available_backends() else None
        if be is None or not be._impl.mod.HAVE_PLANES:
            pytest.skip("no AVX2 build with the bit-plane conv here")
        mod = be._impl.mod
        w = np.random.default_rng(0).integers(0, 2**63, (64, 3, 3, 2), dtype=np.uint64).astype(WORD_DTYPE)
        wp = be.prepare_weights(w)
        assert isinstance(wp.planes, _planes.PlaneLists) and isinstance(wp.wplanes, _planes.WeightPlanes)
        planes, ws, wplanes = _planes.call_path(mod, wp, (4, 18, 18, 2), 1, 2, False)
        assert planes is wp.planes and wplanes is None
        assert ws.nbytes == 2 * mod.planes_workspace_bytes(wp.planes.nplanes) and ws.ctypes.data % 64 == 0
        planes, ws, wplanes = _planes.call_path(mod, wp, (1, 10, 10, 2), 1, 1, False)
        assert planes is None and wplanes is wp.wplanes
        assert ws.nbytes == mod.wplanes_workspace_bytes(wp.wplanes.nplanes, 64)
        wp.planes = wp.wplanes = None
        assert _planes.call_path(mod, wp, (4, 18, 18, 2), 1, 1, False) == (None, None, None)
