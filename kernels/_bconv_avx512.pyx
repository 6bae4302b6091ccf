# Extension bnnlite._bconv_avx512: the shared kernels of _bconv.pxi compiled
# with the avx512 flags chosen in setup.py (directives are set there too).
include "_bconv.pxi"
