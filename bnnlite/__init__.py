"""bnnlite: binary neural networks on ordinary CPUs.

The runtime is torch-free: NumPy, h5py and the XNOR-popcount kernels.

    >>> import bnnlite
    >>> model = bnnlite.Model.load("model.h5")      # or bnnlite.Model.pretrained()
    >>> model.predict(images)                       # uint8 (N, 32, 32, 3) -> class indices

Public names: Model, BundleError, __version__.  Submodules: bitpack (bit
layout conventions), bundle (the HDF5 file: read, validate, write), ops (each
op kind: schema, runtime class, ONNX and PyTorch forms), graph (the ops of a
bundle, fused and planned), model, backends (which kernels run, and the one
API over them), floatmath (fma32).
``bnnlite.train`` (needs torch) is never imported from here.
"""
__version__ = "0.1.0"
__all__ = ["Model", "BundleError", "__version__"]


def __getattr__(name):
    # Lazy: `import bnnlite` stays cheap (no h5py, no kernels) until a model is used.
    if name == "Model":
        from .model import Model
        return Model
    if name == "BundleError":
        from .bundle import BundleError
        return BundleError
    raise AttributeError(f"module 'bnnlite' has no attribute {name!r}")
