"""Build of bnnlite's compiled kernels (package metadata is in pyproject.toml).

Two extensions come from the same source (kernels/_bconv.pxi +
kernels/_bconv_kernels.h):

* ``bnnlite._bconv_avx512``: -mavx512f/bw/vl/dq/vpopcntdq, used at run time
  only when the CPU reports AVX512F + AVX512BW + AVX512VPOPCNTDQ;
* ``bnnlite._bconv_generic``: portable (``__builtin_popcountll``).

Both are ``optional=True``: a compiler that lacks a flag (or no compiler)
only warns, the package still installs, and ``bnnlite.backend`` then falls
back to numba with a one-line warning.  If Cython itself is missing the
extensions are skipped with a warning.

Environment: ``BNNLITE_CYTHON_DEBUG=1`` re-enables bounds/wraparound checks.
"""
import os
import sys
import warnings

from setuptools import setup

try:
    import numpy as np
    from Cython.Build import cythonize
except ImportError as exc:  # pragma: no cover - depends on the build env
    warnings.warn(f"bnnlite: {exc}; building without the Cython kernels "
                  "(the numba/numpy backends will be used)")
    ext_modules = []
else:
    from setuptools import Extension

    debug = os.environ.get("BNNLITE_CYTHON_DEBUG", "") not in ("", "0")
    directives = {
        "boundscheck": debug,
        "wraparound": debug,
        "cdivision": True,
        "language_level": 3,
        "initializedcheck": debug,
    }
    # -ffp-contract=off: the float epilogue must round exactly like the
    # NumPy reference and the numba backend (no mul+add fused into an FMA).
    common = ["-O3", "-ffp-contract=off", "-fopenmp"]
    if sys.platform == "win32":  # MSVC spelling; no AVX-512 build there
        common, link = ["/O2", "/fp:precise", "/openmp"], []
    else:
        link = ["-fopenmp"]
    avx512 = ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq",
              "-mavx512vpopcntdq"]

    def _ext(name, flags):
        return Extension(
            f"bnnlite.{name}",
            sources=[f"kernels/{name}.pyx"],
            include_dirs=[np.get_include(), "kernels"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            extra_compile_args=flags,
            extra_link_args=link,
            optional=True,
        )

    exts = [_ext("_bconv_generic", common)]
    if sys.platform != "win32":
        exts.insert(0, _ext("_bconv_avx512", common + avx512))
    ext_modules = cythonize(exts, include_path=["kernels"],
                            compiler_directives=directives, quiet=True)
    for ext in ext_modules:  # cythonize() rebuilds the objects and drops it
        ext.optional = True

setup(ext_modules=ext_modules)
