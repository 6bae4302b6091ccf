# Extension bnnlite._bconv_neon: the shared kernels of _bconv.pxi compiled
# with the neon flags chosen in setup.py (directives are set there too).
include "_bconv.pxi"
