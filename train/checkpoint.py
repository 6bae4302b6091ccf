"""Checkpoints: atomic writes, the self-describing header, slim copies.

Public names: FORMAT, FORMAT_VERSION, save_atomic, load_checkpoint, slim_state.

A checkpoint is a ``torch.save`` dict.  Every checkpoint holds what export
needs: ``format``, ``format_version``, ``config`` (models.default_config),
``normalization`` ({"mean", "std"} on the 0-1 scale), ``class_names``,
``metrics`` and ``model`` (the state dict).  Resume checkpoints add
``optimizer``, ``scheduler``, ``epoch``, ``step``, ``running`` and ``history``.
Everything in it is a tensor, number, string, list or dict, so it loads with
``torch.load(weights_only=True)``; an older file that needs more is refused
(``tools/convert_checkpoint.py`` converts one you trust).
"""
from __future__ import annotations

import os
import pickle
import re
import stat

import torch

from bnnlite._atomic import atomic_path

__all__ = ["FORMAT", "FORMAT_VERSION", "save_atomic", "load_checkpoint", "slim_state"]

FORMAT = "bnnlite-checkpoint"
FORMAT_VERSION = 1
HEADER_KEYS = ("format", "format_version", "config", "normalization", "class_names", "metrics")


def save_atomic(obj, path) -> None:
    """torch.save to a temporary file beside ``path``, then rename over it."""
    with atomic_path(path) as tmp:
        torch.save(obj, tmp)


def load_checkpoint(path) -> dict:
    """Load a bnnlite checkpoint and check its header; ValueError if it is not one.

    Loaded with ``weights_only=True``: a checkpoint is data (tensors, numbers,
    strings, lists, dicts), and unpickling anything else could run code."""
    try:
        st = os.stat(path)
    except OSError as e:
        raise ValueError(f"{path}: cannot read ({e.strerror or e})") from e
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block torch.load forever
        raise ValueError(f"{path}: not a regular file, so not a checkpoint")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's message also advises weights_only=False: quote only what it found.
        found = re.search(r"[Uu]nsupported (?:global: )?GLOBAL [\w.]+", str(e))
        if found is None:  # damaged or not a pickle at all
            raise ValueError(f"{path}: not a readable PyTorch checkpoint (its pickle is damaged or "
                             f"not one: {type(e).__name__})") from e
        raise ValueError(
            f"{path}: refused: this checkpoint holds objects other than tensors, numbers, strings, "
            f"lists and dicts, and unpickling them could run code ({found.group(0)}). "
            f"If you trust the file, convert it once with: python tools/convert_checkpoint.py "
            f"{path} converted.pth") from e
    except Exception as e:  # torch raises many types for a bad file
        raise ValueError(f"{path}: not a readable PyTorch checkpoint ({e})") from e
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise ValueError(f"{path}: not a bnnlite checkpoint (no format={FORMAT!r})")
    if int(ckpt.get("format_version", 0)) > FORMAT_VERSION:
        raise ValueError(f"{path}: checkpoint format version {ckpt['format_version']} is newer "
                         f"than this bnnlite reads ({FORMAT_VERSION})")
    missing = [k for k in HEADER_KEYS + ("model",) if k not in ckpt]
    if missing:
        raise ValueError(f"{path}: checkpoint lacks {', '.join(missing)}")
    return ckpt


def slim_state(ckpt: dict, half: bool = True) -> dict:
    """The header and model weights only (no optimiser), floats in fp16 if ``half``."""
    def conv(t):
        return t.half() if half and t.is_floating_point() else t
    out = {k: ckpt[k] for k in HEADER_KEYS}
    out["model"] = {k: conv(v) for k, v in ckpt["model"].items()}
    out["stored_dtype"] = "float16" if half else "float32"
    return out
