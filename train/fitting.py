"""``fit``: train your own ``nn.Module`` on your own data, through the same loop as bnnlite-train.

Public names: fit.

::

    from bnnlite.train import fit
    from bnnlite.train.export import export_model
    result = fit(model, "photos", out="runs/mine", epochs=10)   # or fit(model, (x, y), ...)
    export_model(model, "mine.h5", **result["export"])

What it does: loads the data (anything ``load_dataset`` takes, or arrays
``(x, y)``: uint8 N x H x W x C and integer labels), holds out a validation
split, computes the normalisation on the training split, checks with one
forward pass that the model takes the images and gives one logit per class
(a ValueError before any training), then runs engine.train on the model, in
place: augmentation (random crop + flip), the optimiser's parameter groups (no
weight decay on latent binary weights), the one-cycle schedule, latent
weights clipped to [-1, 1] after every step, checkpoints, Ctrl-C handling.
The model ends in eval mode on the CPU, ready for ``export_model``.

Resume: with ``out`` given, ``out/checkpoint.pth`` is rewritten after every
epoch and when the run is interrupted (Ctrl-C, SIGTERM), and ``resume=True``
continues from it exactly (bit-identical weights to a run that never
stopped).  It needs a model of the same class built the same way (its
weights are replaced by the checkpoint's), the same data and the same
settings (epochs, batch size, seed, optimiser).  ``out`` also gets
``model.pth``, ``log.jsonl`` (one line per epoch), ``metrics.json`` and
``curves.png``, as with bnnlite-train.
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import fields
from pathlib import Path

import torch

from bnnlite.datasets import dataset_from_arrays, load_dataset

from .engine import LOG, TrainConfig, prepare_data, resolve_device, train
from .nn import BINARY_LAYERS

__all__ = ["fit"]

# TrainConfig fields that fit() sets itself or that belong to the built-in models.
_NOT_OPTIONS = {"model", "data", "out", "epochs", "batch_size", "optimizer", "lr", "weight_decay", "val_size",
                "seed", "resume", "progress", "device", "model_overrides", "init_from", "classifier_norm", "extra"}


def _recipe(model, optimizer, lr, weight_decay):
    """"auto": Adam at 2e-3 without weight decay for a network with binary layers (the
    binary models' recipe), else SGD (Nesterov) at 0.05 with weight decay 5e-4 (fp32's)."""
    if optimizer == "auto":
        optimizer = "adam" if any(isinstance(m, BINARY_LAYERS) for m in model.modules()) else "sgd"
    if optimizer not in ("sgd", "adam"):
        raise ValueError(f"optimizer must be 'auto', 'sgd' or 'adam', got {optimizer!r}")
    if lr is None:
        lr = 2e-3 if optimizer == "adam" else 0.05
    if weight_decay is None:
        weight_decay = 0.0 if optimizer == "adam" else 5e-4
    return optimizer, float(lr), float(weight_decay)


def _dataset(data, test, class_names):
    if isinstance(data, (tuple, list)):
        if len(data) != 2:
            raise ValueError("data must be a path or a pair of arrays (x, y)")
        return dataset_from_arrays(data[0], data[1], test=test, class_names=class_names)
    if test is not None or class_names is not None:
        raise ValueError("test and class_names go with arrays; a data set path brings its own")
    return load_dataset(data)


def fit(model: torch.nn.Module, data, *, out=None, epochs: int = 10, batch_size: int = 64,
        optimizer: str = "auto", lr: float | None = None, weight_decay: float | None = None,
        val_size: int = 5000, seed: int = 0, resume: bool = False, progress: bool = True,
        device: str = "auto", test=None, class_names=None, **options) -> dict:
    """Train ``model`` (in place) on ``data``; returns the metrics and what export needs.

    ``data``: a path ``load_dataset`` reads (CIFAR-10, ``.npz``, image folder) or ``(x, y)``
    arrays, with ``test=(x_test, y_test)`` and ``class_names`` optional for arrays.
    ``out``: run folder (checkpoints, log, metrics; needed to resume); None: a temporary one.
    ``val_size``: training images held out (at most a tenth).  ``options``: other
    ``TrainConfig`` fields (label_smoothing, schedule, warmup_epochs, ema, bf16, threads, ...).

    Returns a dict: ``val_acc``, ``test_acc`` (None without a test split), ``test_loss``,
    ``epochs``, ``wall_seconds``, ``images_per_s``, ``history`` (one dict per epoch),
    ``out``, and ``export``: the ``mean``, ``std``, ``class_names`` and ``input_size`` for
    ``export_model(model, path, **result["export"])``.  An interrupted run (Ctrl-C) returns
    ``{"interrupted": True, "epoch", "step", ...}``; call again with ``resume=True``.
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    known = {f.name for f in fields(TrainConfig)} - _NOT_OPTIONS
    unknown = sorted(set(options) - known)
    if unknown:
        raise TypeError(f"fit() got unknown option(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    if resume and out is None:
        raise ValueError("resume=True needs the out folder of the run to continue")
    opt, lr, weight_decay = _recipe(model, optimizer, lr, weight_decay)
    options.setdefault("compile", False)
    with tempfile.TemporaryDirectory(prefix="bnnlite-fit-") as tmp:
        run_dir = Path(out) if out is not None else Path(tmp)
        cfg = TrainConfig(model=type(model).__name__, data=str(data) if isinstance(data, (str, Path)) else "arrays",
                          out=str(run_dir), epochs=epochs, batch_size=batch_size, optimizer=opt, lr=lr,
                          weight_decay=weight_decay, val_size=val_size, seed=seed, resume=resume,
                          progress=progress, device=device, **options)
        prepared = prepare_data(cfg, _dataset(data, test, class_names))
        resolve_device(device)  # a bad device name is an error before any work
        try:
            metrics = train(cfg, model=model, data=prepared)
        finally:  # also after an interrupt or an error: a CPU model in eval mode
            model.to("cpu", memory_format=torch.contiguous_format).eval()
        log = run_dir / LOG
        history = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    h, w, c = prepared.input_size
    return {**metrics, "history": history, "out": str(out) if out is not None else None,
            "export": {"mean": prepared.mean, "std": prepared.std, "class_names": list(prepared.classes),
                       "input_size": (h, w, c)}}
