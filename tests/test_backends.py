"""Tests of bnnlite/backends/__init__.py: which kernels run.  The CPU probe
of the compiled extension, the choice among the builds, the environment
variable, the cache, the numba fallback and the optional extra that
installs it, and the cost of importing the package.
"""
import importlib.util
import inspect
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from bnnlite import backends as B
from bnnlite.backends import native, numba_impl


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
        monkeypatch.setattr(native, "CythonKernels", missing)
        monkeypatch.setattr(numba_impl, "NumbaKernels", missing)
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


class TestSelector:
    def test_unknown_name(self):
        with pytest.raises(ValueError, match="cython, numba, numpy"):
            B.get_backend("fortran")

    def test_env_var_forces_backend(self, monkeypatch):
        monkeypatch.setenv(B.ENV_VAR, "numpy")
        assert B.get_backend().name == "numpy"
        monkeypatch.setenv(B.ENV_VAR, "nope")
        with pytest.raises(ValueError, match="unknown name 'nope'"):
            B.get_backend()

    def test_default_prefers_cython(self, monkeypatch):
        monkeypatch.delenv(B.ENV_VAR, raising=False)
        try:
            B.get_backend("cython")
        except ImportError:
            pytest.skip("Cython extension not built")
        be = B.get_backend()
        assert be.name == "cython"
        # The best variant this CPU runs, among those that are built.
        want = "generic"
        for variant, has in (("avx512", B._cpu_has_avx512), ("avx2", B._cpu_has_avx2)):
            if has() and importlib.util.find_spec(f"bnnlite._bconv_{variant}") is not None:
                want = variant
                break
        assert be.variant == want

    @pytest.mark.parametrize("has512, has2, built, want", [
        (True, True, ("avx512", "avx2", "generic"), "avx512"),
        (False, True, ("avx512", "avx2", "generic"), "avx2"),
        (False, True, ("avx512", "generic"), "generic"),      # avx2 not built
        (False, False, ("avx512", "avx2", "generic"), "generic"),
        (True, True, ("avx2", "generic"), "avx2"),            # avx512 not built
    ])
    def test_cython_picks_best_built_variant(self, monkeypatch, has512, has2, built, want):
        class Fake:
            def __init__(self, module_name, variant):
                if variant not in built:
                    raise ImportError(f"No module named {module_name!r}")
                self.variant = variant

        monkeypatch.setattr(native, "CythonKernels", Fake)
        monkeypatch.setattr(B, "_CACHE", {})
        monkeypatch.setattr(B, "_cpu_has_avx512", lambda: has512)
        monkeypatch.setattr(B, "_cpu_has_avx2", lambda: has2)
        be = B.get_backend("cython")
        assert (be.name, be.variant) == ("cython", want)
        if not has2:
            with pytest.raises(RuntimeError, match="cython-avx2 needs a CPU with AVX2"):
                B.get_backend("cython-avx2")
        elif "avx2" not in built:
            with pytest.raises(ImportError, match="_bconv_avx2 is not built"):
                B.get_backend("cython-avx2")
        else:
            assert B.get_backend("cython-avx2").variant == "avx2"

    def test_fallback_to_numba_warns_once(self, monkeypatch):
        pytest.importorskip("numba")
        monkeypatch.delenv(B.ENV_VAR, raising=False)

        def missing(*a, **k):
            raise ImportError("No module named 'bnnlite._bconv_generic'")

        monkeypatch.setattr(native, "CythonKernels", missing)
        monkeypatch.setattr(B, "_CACHE", {})
        monkeypatch.setattr(B, "_warned_fallback", False)
        with pytest.warns(RuntimeWarning, match="Cython kernels unavailable"):
            assert B.get_backend().name == "numba"
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert B.get_backend().name == "numba"
        with pytest.raises(ImportError, match="not built"):
            B.get_backend("cython")

    def test_import_is_cheap(self):
        # numpy is imported first: the time measured is bnnlite's own.
        code = ("import sys, time, numpy; t = time.perf_counter(); import bnnlite.backends; "
                "dt = time.perf_counter() - t; "
                "bad = [m for m in ('numba', 'bnnlite.backends._numba_kernels', "
                "'bnnlite._bconv_avx512', 'bnnlite._bconv_avx2') if m in sys.modules]; "
                "print(dt, bad)")
        env = dict(os.environ)
        env.pop(B.ENV_VAR, None)
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)
        dt, bad = res.stdout.split(" ", 1)
        assert bad.strip() == "[]"
        assert float(dt) < 0.5  # own cost is ~10 ms; generous for a busy machine
