"""``bnnlite-export CKPT OUT.h5`` and ``export_model``: a trained network as a bundle.

Public names: export_model, export_checkpoint, main.

``lower.py`` turns the network into bundle ops (torch.fx tracing; fold.py has
the folding arithmetic).  Here the bundle is written with its header
(input shape, normalisation, class names, metrics), but only after the
bnnlite runtime has run it on a probe batch and agreed with the PyTorch model
in eval mode (FP32); a bundle that disagrees is refused.
"""
from __future__ import annotations

import signal
import sys
from pathlib import Path

import click
import numpy as np
import torch

from bnnlite import __version__
from bnnlite._atomic import temp_beside
from bnnlite.bundle import write_bundle
from bnnlite.datasets import load_dataset

from .checkpoint import load_checkpoint
from .data import normalize
from .lower import ExportError, lower
from .models import model_from_checkpoint

__all__ = ["export_model", "export_checkpoint", "main"]

# What "agrees with PyTorch" means.  On a CPU with FMA the runtime rounds every
# float op before the classifier as PyTorch does (docs/conventions.md), so the
# logits differ only by the classifier's BLAS summation order (~1e-6).  Where
# PyTorch rounds differently (another oneDNN kernel), an activation within
# ~1e-6 of its sign threshold can binarise differently, and in a bit-only
# (XNOR) stack that one flip moves logits by ~0.1: a fraction of a percent of
# images.  A real export bug touches most of them.
MIN_CLASS_AGREEMENT = 0.999
MIN_FRACTION_WITHIN_TOL = 0.99


def _torch_logits(model, images, mean, std, batch=100):
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch):
            out.append(model(normalize(torch.from_numpy(images[i:i + batch]), mean, std)).float().numpy())
    return np.concatenate(out)


def _compare(model_t, bundle_path, images, mean, std, threads, batch=100):
    """PyTorch's and bnnlite's logits on ``images``, a batch of each in turn, with a progress
    bar on a terminal (the test split takes minutes: PyTorch's FP32 forward is the slow side).
    Batches of 100 keep PyTorch's activations small: batches of 500 took about 0.9 GB more
    peak memory for Bi-Real, at the same speed."""
    import bnnlite
    from tqdm import tqdm
    runtime = bnnlite.Model.load(bundle_path, threads=threads)
    refs, gots = [], []
    with tqdm(total=len(images), desc="comparing with PyTorch", unit="img", disable=None, leave=False) as bar:
        for i in range(0, len(images), batch):
            part = images[i:i + batch]
            refs.append(_torch_logits(model_t, part, mean, std, batch))
            gots.append(runtime.logits(part))
            bar.update(len(part))
    ref, got = np.concatenate(refs), np.concatenate(gots)
    diff = np.abs(ref - got).max(axis=1)
    agree = float(np.mean(ref.argmax(1) == got.argmax(1)))
    return ref, got, agree, diff


def export_checkpoint(ckpt_path, out_path, *, data=None, probe=256, tol=1e-3, threads=1,
                      onnx_path=None, log=print) -> dict:
    """Export ``ckpt_path`` (a ``bnnlite-train`` checkpoint) to ``out_path``; returns the
    metrics written into the bundle."""
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    norm = ckpt["normalization"]
    cfg = ckpt["config"]
    input_shape = [cfg["image_size"], cfg["image_size"], cfg["in_channels"]]
    metrics = {k: v for k, v in ckpt["metrics"].items() if isinstance(v, (int, float, str))}
    if "test_acc" in metrics:
        metrics["pytorch_test_acc_training"] = metrics.pop("test_acc")
    if "optimizer" in ckpt:  # a resume checkpoint: training has not finished
        run = ckpt.get("run", {})
        metrics["training_in_progress"] = f"epoch {ckpt['epoch'] + 1} step {ckpt['step']} of {run.get('epochs', '?')}"
        if ckpt.get("history"):
            metrics["val_acc"] = ckpt["history"][-1]["val_acc"]
    header = {"producer": f"bnnlite-export {__version__}", "architecture": cfg["arch"],
              "input_shape": input_shape, "input_layout": "NHWC",
              "normalization_mean": norm["mean"], "normalization_std": norm["std"],
              "class_names": ckpt["class_names"], "config": cfg, "metrics": metrics}
    return _write_verified(model, header, out_path, data=data, probe=probe, tol=tol, threads=threads,
                           onnx_path=onnx_path, log=log)


def export_model(model: torch.nn.Module, path, *, mean=None, std=None, class_names=None, input_size=None,
                 data=None, probe=256, tol=1e-3, threads=1, onnx_path=None, log=print) -> dict:
    """Export any network built from standard PyTorch layers and ``bnnlite.train.nn`` layers.

    ``input_size``: (H, W), (H, W, C) or one int for square images (default: the model's
    ``config["image_size"]`` if it has one); C defaults to the first conv's input channels.
    ``mean`` / ``std``: the per-channel normalisation of ``x / 255`` the model was trained
    with (default 0 / 1).  ``class_names``: one per logit (default "0", "1", ...).
    ``data``: a data set for ``load_dataset`` whose test split is the agreement probe
    (else ``probe`` random images).  Raises ExportError naming what has no bundle form.
    Returns the metrics written into the bundle.
    """
    cfg = getattr(model, "config", None) or {}
    if input_size is None:
        if "image_size" not in cfg:
            raise ValueError("input_size is needed: the model has no config['image_size']")
        input_size = cfg["image_size"]
    size = [input_size, input_size] if isinstance(input_size, int) else list(input_size)
    if len(size) == 2:
        first = next((m for m in model.modules() if hasattr(m, "weight") and getattr(m.weight, "dim", None)
                      and m.weight.dim() == 4), None)
        if first is None:
            raise ValueError("input_size needs the channel count (H, W, C): the model has no conv")
        size.append(int(first.weight.shape[1]))
    if len(size) != 3 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ValueError(f"input_size must be an int, (H, W) or (H, W, C) of positive ints, got {input_size!r}")
    c = size[2]
    mean = [0.0] * c if mean is None else [float(v) for v in mean]
    std = [1.0] * c if std is None else [float(v) for v in std]
    if len(mean) != c or len(std) != c:
        raise ValueError(f"mean and std need {c} values (one per input channel)")
    header = {"producer": f"bnnlite-export {__version__}", "architecture": cfg.get("arch", type(model).__name__),
              "input_shape": size, "input_layout": "NHWC", "normalization_mean": mean,
              "normalization_std": std, "class_names": list(class_names) if class_names is not None else None,
              "config": {k: v for k, v in cfg.items() if isinstance(v, (int, float, str, list, bool))},
              "metrics": {}}
    return _write_verified(model, header, path, data=data, probe=probe, tol=tol, threads=threads,
                           onnx_path=onnx_path, log=log)


def _write_verified(model, header, out_path, *, data, probe, tol, threads, onnx_path, log) -> dict:
    """Lower ``model``, write the bundle beside ``out_path``, compare it with PyTorch, then
    move it into place (or refuse).  Returns the metrics written."""
    model = model.eval()
    ops = lower(model, header["input_shape"], log)
    if header["class_names"] is None:
        header["class_names"] = [str(i) for i in range(ops[-1].attrs.get("units_out", 0))] or []
    mean, std = header["normalization_mean"], header["normalization_std"]
    out_path = Path(out_path)
    # The draft is a temporary of out_path's own pattern (<out>.*.tmp): removed on every
    # exit, and by the next export of out_path after a kill -9.
    with temp_beside(out_path) as draft:
        write_bundle(draft, header, ops, atomic=False)
        # The probe: real test images when --data has a test split, else seeded random images.
        test = load_dataset(data)[1] if data is not None else None
        if test is not None and len(test.labels):
            images, labels = test.images, test.labels
        else:
            if data is not None:
                log(f"{data} has no test split: probing with {probe} random images")
            rng = np.random.default_rng(0)
            images = rng.integers(0, 256, (probe,) + tuple(header["input_shape"]), dtype=np.uint8)
            labels = None
        ref, got, agree, diff = _compare(model, draft, images, mean, std, threads)
        frac_close = float(np.mean(diff <= tol))
        log(f"probe of {len(images)} images: class agreement {100 * agree:.3f}%, "
            f"max |logit diff| {diff.max():.2e}, within {tol:g}: {100 * frac_close:.3f}%")
        if agree < MIN_CLASS_AGREEMENT or frac_close < MIN_FRACTION_WITHIN_TOL:
            raise click.ClickException(
                f"refusing to write {out_path}: the bnnlite runtime disagrees with PyTorch "
                f"(class agreement {100 * agree:.3f}%, {100 * frac_close:.3f}% of images within {tol:g})")
        header["metrics"].update(export_agreement=agree, export_max_logit_diff=float(diff.max()),
                                 export_fraction_within_tol=frac_close, export_tol=tol,
                                 export_probe_images=len(images))
        if labels is not None:
            header["metrics"].update(pytorch_test_acc=float(np.mean(ref.argmax(1) == labels)),
                                     bnnlite_test_acc=float(np.mean(got.argmax(1) == labels)))
            log(f"test top-1: PyTorch {100 * header['metrics']['pytorch_test_acc']:.2f}%, "
                f"bnnlite {100 * header['metrics']['bnnlite_test_acc']:.2f}%")
        write_bundle(out_path, header, ops)
    if onnx_path is not None:
        from bnnlite.onnx_export import bundle_to_onnx
        bundle_to_onnx(out_path, onnx_path)
        log(f"wrote {onnx_path}")
    log(f"wrote {out_path} ({out_path.stat().st_size:,} bytes)")
    return header["metrics"]


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("ckpt", type=click.Path(exists=True, dir_okay=False))
@click.argument("out", type=click.Path(dir_okay=False))
@click.option("--data", type=click.Path(exists=True), default=None,
              help="CIFAR-10 data: check on the whole test split and record both accuracies.")
@click.option("--probe", type=click.IntRange(1), default=256, help="Random probe images when --data is not given.")
@click.option("--tol", type=float, default=1e-3, help="Largest accepted |logit difference| vs PyTorch.")
@click.option("--onnx", "onnx_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the network as standard ONNX ops (Sign + float Conv for binary layers).")
@click.option("--threads", type=click.IntRange(1), default=1)
def main(ckpt, out, data, probe, tol, onnx_path, threads):
    """Fold checkpoint CKPT into the bnnlite bundle OUT (HDF5), verified against PyTorch."""
    torch.set_num_threads(threads)
    # SIGTERM as an exception, so the temporaries are removed on the way out (as on Ctrl-C).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        export_checkpoint(ckpt, out, data=data, probe=probe, tol=tol, threads=threads, onnx_path=onnx_path)
    except ValueError as e:
        raise click.ClickException(str(e)) from e


if __name__ == "__main__":
    sys.exit(main())
