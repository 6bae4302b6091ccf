"""Build of bnnlite's compiled kernels (package metadata is in pyproject.toml).

The kernel extensions come from the same source (kernels/_bconv.pxi and
the headers kernels/bconv_select.h includes, included by one tiny .pyx file
per build; the selector picks the instruction set's code from the flags).
On x86-64:

* ``bnnlite._bconv_avx512``: -mavx512f/bw/vl/dq/vpopcntdq -mfma, used at run
  time only when the CPU reports AVX512F + AVX512BW + AVX512VPOPCNTDQ + FMA3;
* ``bnnlite._bconv_avx2``: -mavx2 -mpopcnt -mfma (vpshufb nibble-lookup
  popcount), used when the CPU has AVX2 + POPCNT + FMA3 but not the AVX-512
  set above;
* ``bnnlite._bconv_generic``: portable (``__builtin_popcountll``).

On aarch64 (ARM64), where Advanced SIMD is always there:

* ``bnnlite._bconv_neon``: no -m flags (kernels/bconv_neon.h, vcntq_u8);
* ``bnnlite._bconv_generic``: portable, with -DBNN_NO_NEON.

Elsewhere only ``bnnlite._bconv_generic``.

A fourth, ``bnnlite._cpu`` (kernels/_cpu.pyx, no -m flags), tells
``bnnlite.backends`` which of them this CPU runs.

All are ``optional=True``: a compiler that lacks a flag (or no compiler)
only warns, the package still installs, and ``bnnlite.backends`` then falls
back to numba (the ``bnnlite[numba]`` extra) with a one-line warning.  Without Cython the extensions are
built from already generated kernels/*.c if present (an sdist), else skipped
with a warning.

Environment: ``BNNLITE_CYTHON_DEBUG=1`` re-enables bounds/wraparound checks.
"""
import os
import platform
import sys
import warnings

from setuptools import Extension, setup

DEPENDS = ["kernels/_bconv.pxi", "kernels/_bitpack.pxd", "kernels/bnn_common.h",
           "kernels/bconv_select.h", "kernels/bconv_portable.h", "kernels/bconv_avx2.h",
           "kernels/bconv_avx512.h", "kernels/bconv_neon.h", "kernels/planes_avx2.h",
           "kernels/wplanes_avx2.h", "kernels/fconv.h", "kernels/pack.h", "kernels/cpu_features.h"]


def _target_names(machine, win32=False):
    """The extensions this machine builds (platform.machine()'s spelling)."""
    m = machine.lower()
    if m in ("x86_64", "amd64") and not win32:
        return ["_bconv_avx512", "_bconv_avx2", "_bconv_generic", "_cpu"]
    if m in ("aarch64", "arm64"):
        return ["_bconv_neon", "_bconv_generic", "_cpu"]
    return ["_bconv_generic", "_cpu"]


def _extensions():
    try:
        import numpy as np
    except ImportError as exc:  # pragma: no cover - pyproject requires numpy
        warnings.warn(f"bnnlite: {exc}; building without the compiled kernels")
        return []
    try:
        from Cython.Build import cythonize
    except ImportError:
        cythonize = None
    names = _target_names(platform.machine(), sys.platform == "win32")
    use_pyx = cythonize is not None and all(os.path.exists(f"kernels/{n}.pyx") for n in names)
    if not use_pyx and not all(os.path.exists(f"kernels/{n}.c") for n in names):
        warnings.warn("bnnlite: Cython is not available and kernels/*.c are missing; "
                      "building without the compiled kernels (the numba/numpy "
                      "backends will be used)")
        return []

    # -ffp-contract=off: the float epilogue must round exactly like the
    # NumPy reference, the numba backend and PyTorch, so only the explicit
    # fma() / _mm*_fmadd_ps of the kernels are fused, never a mul + add the
    # compiler happens to find.
    common = ["-O3", "-ffp-contract=off", "-fopenmp"]
    link = ["-fopenmp"]
    if sys.platform == "win32":  # MSVC spelling; no AVX-512/AVX2 build there
        common, link = ["/O2", "/fp:precise", "/openmp"], []
    avx512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
              "-mavx512vpopcntdq", "-mfma"]
    # -mfma for the explicit fused multiply-adds (no -march=native: the
    # build must run on any CPU that has the listed features).
    avx2 = ["-mavx2", "-mpopcnt", "-mfma"]
    # The portable build's row loops ran 10% slower or faster with where the
    # linker placed the function, the instructions being the same (the old
    # source with -falign-functions=64: 0.85-0.93x; tools/kernel_ab.py):
    # loop heads on cache lines make its speed independent of that.
    portable = [] if sys.platform == "win32" else ["-falign-loops=64"]
    # NEON needs no flag on aarch64; its generic build is portable C only.
    if "_bconv_neon" in names:
        portable = portable + ["-DBNN_NO_NEON"]
    flags = {"_bconv_avx512": common + avx512, "_bconv_avx2": common + avx2,
             "_bconv_neon": common, "_bconv_generic": common + portable, "_cpu": common}

    exts = [Extension(f"bnnlite.{n}",
                      sources=[f"kernels/{n}.{'pyx' if use_pyx else 'c'}"],
                      depends=DEPENDS,  # rebuild when the shared source changes
                      include_dirs=[np.get_include(), "kernels"],
                      define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
                      extra_compile_args=flags[n], extra_link_args=link, optional=True)
            for n in names]
    if use_pyx:
        debug = os.environ.get("BNNLITE_CYTHON_DEBUG", "") not in ("", "0")
        directives = {"boundscheck": debug, "wraparound": debug,
                      "initializedcheck": debug, "cdivision": True,
                      "language_level": 3}
        exts = cythonize(exts, include_path=["kernels"], compiler_directives=directives,
                         quiet=True)
    for ext in exts:  # cythonize() rebuilds the objects and drops it
        ext.optional = True
    return exts


setup(ext_modules=_extensions())
