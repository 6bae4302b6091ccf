"""bnnlite: binary neural networks on ordinary CPUs (torch-free runtime)."""
__version__ = "0.1.0"
