"""Convert a checkpoint that bnnlite refuses (it pickles more than plain data) into one it loads.

    python tools/convert_checkpoint.py OLD.pth NEW.pth

bnnlite loads checkpoints with ``torch.load(weights_only=True)``: tensors,
numbers, strings, lists, tuples and dicts only, because unpickling any other
object can run code.  This tool loads OLD.pth with ``weights_only=False``, so
**it runs whatever code OLD.pth contains: use it only on a file you trust**
(one you made yourself with an older bnnlite, say).  NumPy arrays become
tensors, NumPy scalars Python numbers; any other object is an error naming
where it sits.  NEW.pth is checked to load with ``weights_only=True``.
"""
from __future__ import annotations

import sys

import numpy as np
import torch


def plain(obj, where="checkpoint"):
    """``obj`` with every value a tensor, number, string, None, list, tuple or dict."""
    if isinstance(obj, np.generic):  # before float: np.float64 is a float subclass
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str, bytes)):
        return obj
    if isinstance(obj, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(obj))
    if isinstance(obj, dict):
        return {plain(k, where): plain(v, f"{where}[{k!r}]") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v, f"{where}[{i}]") for i, v in enumerate(obj))
    raise TypeError(f"{where} is a {type(obj).__module__}.{type(obj).__qualname__}: no plain-data form known")


def main(argv):
    if len(argv) != 2:
        sys.exit(__doc__)
    src, dst = argv
    print(f"loading {src} with weights_only=False: this runs any code the file holds (trusted files only)")
    obj = torch.load(src, map_location="cpu", weights_only=False)
    try:
        out = plain(obj)
    except TypeError as e:
        sys.exit(f"Error: {e}")
    torch.save(out, dst)
    torch.load(dst, map_location="cpu", weights_only=True)
    print(f"wrote {dst} (loads with weights_only=True)")


if __name__ == "__main__":
    main(sys.argv[1:])
