"""Which kernels run: one Backend API, three kernel families.

``get_backend(name=None)`` returns a :class:`Backend` (``api``) whose
methods have the same signatures for every family:

* ``"cython"``: the compiled extension (adapter ``native``).
  ``bnnlite._bconv_avx512`` when the CPU has AVX512F/BW/VL/DQ +
  AVX512VPOPCNTDQ + FMA, else ``bnnlite._bconv_avx2`` when it has AVX2 +
  POPCNT + FMA, else ``bnnlite._bconv_neon`` on ARM64, else
  ``bnnlite._bconv_generic`` (a variant that is not built is skipped;
  setup.py builds the x86 ones on x86-64 only, the NEON one on aarch64
  only).  The CPU is asked through the compiled probe ``bnnlite._cpu``.
  ``"cython-avx512"`` / ``"cython-avx2"`` / ``"cython-neon"`` /
  ``"cython-generic"`` force one build.  Inside a build, the path of each
  binary conv (bit planes, weight planes or popcount core) is the kernels'
  choice (kernels/bconv_select.h; ``planes`` prepares its data).
* ``"numba"``: ``_numba_kernels`` through ``numba_impl`` (numba, the
  optional extra ``bnnlite[numba]``, is imported only then).
* ``"numpy"``: the NumPy oracle ``reference`` through ``numpy_impl`` (slow).

Default: cython, else numba (with a one-line warning when the extension is
missing), else an ImportError that names the extra to install.
``BNNLITE_BACKEND=cython|numba|numpy`` forces one; forcing an unavailable
one raises ImportError.  Backends are made once and cached.

The modules, from the contract down to the kernels:

    api.py        Backend (formulas, shapes, dtypes, bind) and the Kernels an adapter fills in
    _checks.py    argument checks: ValueError naming the value and what is accepted
    prepared.py   PreparedWeights and the aligned, blocked weight layouts
    planes.py     the bit-plane paths' data and the choice of path per call (call_path)
    native.py     adapter of the compiled extension (kernels/)
    numba_impl.py adapter of _numba_kernels.py (the bnnlite[numba] extra)
    numpy_impl.py adapter of reference.py (the NumPy oracle of every kernel)

Importing this package is cheap: no extension, no numba, no compilation.

Public names: get_backend, available_backends, Backend, PreparedWeights,
BACKEND_NAMES, ENV_VAR, NUMBA_EXTRA.
"""
from __future__ import annotations

import importlib
import os
import warnings

from . import native, numba_impl, numpy_impl
from .api import Backend
from .prepared import PreparedWeights

__all__ = ["get_backend", "available_backends", "Backend", "PreparedWeights",
           "BACKEND_NAMES", "ENV_VAR", "NUMBA_EXTRA"]

ENV_VAR = "BNNLITE_BACKEND"
#: Names accepted by get_backend / $BNNLITE_BACKEND.
BACKEND_NAMES = ("cython", "numba", "numpy", "cython-avx512", "cython-avx2",
                 "cython-neon", "cython-generic")
#: The pip extra that installs numba (pyproject.toml).
NUMBA_EXTRA = "numba"

_CACHE: dict[str, Backend] = {}
_warned_fallback = False

#: Compiled variants, fastest first, with the CPU features each needs (the
#: -m flags setup.py builds it with, in GCC's names).
_CYTHON_VARIANTS = {"avx512": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512vpopcntdq",
                               "fma"),
                    "avx2": ("avx2", "popcnt", "fma"),
                    "neon": ("neon",),       # aarch64 (setup.py builds it there only)
                    "generic": ()}
#: The compiled package the extensions live in (bnnlite._bconv_*, bnnlite._cpu).
_EXT_PACKAGE = __package__.rpartition(".")[0]


def _cpu_has(features) -> bool:
    """All of ``features``, as the compiled probe bnnlite._cpu (built
    without -m flags, kernels/cpu_features.h) sees this CPU; False when the
    probe is not built or cannot tell (then only the generic build runs)."""
    if not features:
        return True
    try:
        cpu = importlib.import_module(f"{_EXT_PACKAGE}._cpu")
    except ImportError:
        return False
    return all(cpu.has(f) for f in features)


def _cpu_has_avx512() -> bool:
    return _cpu_has(_CYTHON_VARIANTS["avx512"])


def _cpu_has_avx2() -> bool:
    return _cpu_has(_CYTHON_VARIANTS["avx2"])


def _cpu_has_neon() -> bool:
    return _cpu_has(_CYTHON_VARIANTS["neon"])


def _cpu_supports(variant) -> bool:
    # Through the module-level names, so tests can pretend to be another CPU.
    return {"avx512": _cpu_has_avx512, "avx2": _cpu_has_avx2,
            "neon": _cpu_has_neon}.get(variant, lambda: True)()


def _cython_variant(variant):
    return native.CythonKernels(f"{_EXT_PACKAGE}._bconv_{variant}", variant)


def _load(name: str) -> Backend:
    if name in _CACHE:
        return _CACHE[name]
    if name == "cython":
        impl = None
        for variant in _CYTHON_VARIANTS:  # the fastest one the CPU runs and the build has
            if impl is None and _cpu_supports(variant):
                try:
                    impl = _cython_variant(variant)
                except ImportError as exc:
                    missing = exc
        if impl is None:
            raise ImportError(
                "bnnlite: the Cython kernels (bnnlite._bconv_generic / _bconv_avx2 "
                "/ _bconv_avx512 / _bconv_neon) are not built; run `pip install -e .` or "
                "`python setup.py build_ext --inplace` with a C compiler, "
                f"or use BNNLITE_BACKEND=numba ({missing})") from missing
    elif name.startswith("cython-"):
        variant = name[len("cython-"):]
        if not _cpu_supports(variant):
            feats = [f.upper() for f in _CYTHON_VARIANTS[variant]]
            need = " and ".join(filter(None, (", ".join(feats[:-1]), feats[-1])))
            raise RuntimeError(f"bnnlite: {name} needs a CPU with {need}; "
                               "use 'cython'")
        try:
            impl = _cython_variant(variant)
        except ImportError as exc:
            raise ImportError(f"bnnlite: bnnlite._bconv_{variant} is not built ({exc})") from exc
    elif name == "numba":
        try:
            impl = numba_impl.NumbaKernels()
        except ImportError as exc:
            raise ImportError(f"bnnlite: the numba backend needs numba: pip install "
                              f"'bnnlite[{NUMBA_EXTRA}]' ({exc})") from exc
    else:
        impl = numpy_impl.NumpyKernels()
    be = Backend("cython" if name.startswith("cython") else name, impl)
    _CACHE[name] = be
    return be


def _check_name(name) -> str:
    if not isinstance(name, str) or name.strip().lower() not in BACKEND_NAMES:
        raise ValueError(f"bnnlite backend: unknown name {name!r}; expected one of "
                         f"{', '.join(BACKEND_NAMES)}")
    return name.strip().lower()


def get_backend(name: str | None = None) -> Backend:
    """Return the kernel backend ``name`` (or the best available one).

    name: None (cython, else numba, unless $BNNLITE_BACKEND names one), or
    one of BACKEND_NAMES.  Raises ValueError for an unknown name and
    ImportError/RuntimeError when a forced backend is not available, or
    when neither cython nor numba is (the message names the extra).
    Backends are cached, so repeated calls are cheap.
    """
    global _warned_fallback
    if name is None:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            return _load(_check_name(env))
        try:
            return _load("cython")
        except ImportError as exc:
            why = str(exc).splitlines()[0]
        try:
            be = _load("numba")
        except ImportError as exc:
            raise ImportError(
                f"bnnlite: no kernels to run: the compiled ones are missing ({why}) and numba "
                f"is not installed.  Install the numba fallback with pip install "
                f"'bnnlite[{NUMBA_EXTRA}]', or build the compiled kernels (pip install . with "
                f"a C compiler), or set {ENV_VAR}=numpy for the slow NumPy reference") from exc
        if not _warned_fallback:
            _warned_fallback = True
            warnings.warn(f"bnnlite: Cython kernels unavailable, using numba (slower): {why}",
                          RuntimeWarning, stacklevel=2)
        return be
    return _load(_check_name(name))


def available_backends() -> list[str]:
    """Names in BACKEND_NAMES that load on this machine (imports them)."""
    ok = []
    for name in BACKEND_NAMES:
        try:
            _load(name)
        except (ImportError, RuntimeError):
            continue
        ok.append(name)
    return ok
