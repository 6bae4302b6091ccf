# Extension bnnlite._bconv_generic: the shared kernels of _bconv.pxi compiled
# with the generic flags chosen in setup.py (directives are set there too).
include "_bconv.pxi"
