# Extension bnnlite._bconv_avx2: the shared kernels of _bconv.pxi compiled
# with the avx2 flags chosen in setup.py (directives are set there too).
include "_bconv.pxi"
