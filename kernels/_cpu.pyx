# Extension bnnlite._cpu: the CPU's features, from the compiler's probe
# (kernels/cpu_features.h), built without -m flags so that it loads on any
# CPU.  bnnlite.backends asks it which kernel build to load.
#
# Public names: has.

cdef extern from "cpu_features.h" nogil:
    int bnn_cpu_has(const char *name)


def has(str name):
    """True / False: whether this CPU runs instructions of ``name`` (a GCC
    feature name such as "avx2" or "avx512vpopcntdq"; "neon", always there
    on aarch64); None when the build could not ask (no GCC-compatible
    compiler, neither x86 nor aarch64)."""
    cdef bytes b = name.encode("ascii")
    cdef int r = bnn_cpu_has(b)
    return None if r < 0 else bool(r)
