"""``bnnlite-export CKPT OUT.h5``: fold a trained model into a bundle.

Public names: checkpoint_to_ops, export_checkpoint, main.

Folding (done once here so the runtime does no algebra per call), per output
channel co.  Batch-norm in eval mode becomes one multiplier and one bias,
computed in float32 exactly as PyTorch's CPU kernel does, which then applies
it as one FMA:  a = gamma * (1 / sqrt(var + eps)),  b = fma(-mean, a, beta),
BN(y) = fma(y, a, b).  Keeping that form (instead of folding a into the
weights) makes the runtime round like PyTorch, bit for bit:

* real conv + BN:   y = fma(conv(x, W), a, b)      (weight W, multiplier a, bias b)
* binary conv + BN: y = fma(acc * alpha, a, b)      (scale alpha, multiplier a, bias b),
  acc = K - 2 * popcount(x XOR w) the +-1 dot product, alpha PyTorch's own
  float32 value (learned, or mean|W| as PyTorch computes it).
* binary output (XNOR-Net: the next layer only needs sign(y - t)): flip the
  weights of channels with m = a * alpha < 0 (acc -> -acc) so every m >= 0 and
  max-pool commutes with the transform; then sign(y) = -1 iff
  acc < ceil((t - c) / m): an integer threshold, and max-pool on bits is AND.
* classifier: weights permuted from NCHW-flatten to NHWC-flatten order; a
  classifier normalisation (BatchNorm1d) folded into its weights and bias.

Before writing, the bundle is run through the bnnlite runtime on a probe
batch and compared with the PyTorch model in eval mode (FP32); a bundle that
disagrees is refused.
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
from bnnlite.bitpack import pack_bits
from bnnlite.bundle import INPUT, OUTPUT, OpRecord, write_bundle
from bnnlite.datasets import load_dataset
from bnnlite.floatmath import fma32

from .checkpoint import load_checkpoint
from .data import normalize
from .models import BinaryBlock, RealBlock, VGGSmall, model_from_checkpoint

__all__ = ["checkpoint_to_ops", "export_checkpoint", "main"]

# What "agrees with PyTorch" means.  On a CPU with FMA the runtime rounds every
# float op before the classifier as PyTorch does (docs/conventions.md), so the
# logits differ only by the classifier's BLAS summation order (~1e-6).  Where
# PyTorch rounds differently (another oneDNN kernel), an activation within
# ~1e-6 of its sign threshold can binarise differently, and in a bit-only
# (XNOR) stack that one flip moves logits by ~0.1: a fraction of a percent of
# images.  A real export bug touches most of them.
MIN_CLASS_AGREEMENT = 0.999
MIN_FRACTION_WITHIN_TOL = 0.99


def _np(t):
    return t.detach().to(torch.float64).cpu().numpy()


def _f32(t):
    """PyTorch's own float32 values (what its eval forward computes with)."""
    return t.detach().to(torch.float32).cpu().numpy()


@torch.no_grad()
def _bn_as_fma(bn, log=None):
    """float32 (a, b) with PyTorch's eval BatchNorm == fma(y, a, b) (its CPU kernel's own
    arithmetic); checked on a probe, with a note if this PyTorch build rounds otherwise."""
    inv = (np.float32(1) / np.sqrt(_f32(bn.running_var) + np.float32(bn.eps))).astype(np.float32)
    a = (_f32(bn.weight) * inv).astype(np.float32)
    b = fma32(-_f32(bn.running_mean), a, _f32(bn.bias))
    probe = torch.randn(2, a.size, 8, 8, generator=torch.Generator().manual_seed(0)) * 4
    got = bn(probe).numpy()
    want = fma32(probe.numpy(), a.reshape(1, -1, 1, 1), b.reshape(1, -1, 1, 1))
    if log is not None and not np.array_equal(got, want):
        log(f"note: this PyTorch's BatchNorm rounds differently from fma(y, a, b) on "
            f"{np.mean(got != want):.1%} of a probe; expect last-bit differences")
    return a, b


def _pack_weight(w, flip=None):
    """(Cout, Cin, KH, KW) latent weights -> packed (Cout, KH, KW, Cw); bit = (w < 0) XOR flip."""
    neg = (w < 0).transpose(0, 2, 3, 1)
    if flip is not None:
        neg = neg != flip[:, None, None, None]
    return pack_bits(np.where(neg, -1.0, 1.0), 0.0)


@torch.no_grad()
def _int_threshold(blk, t_next, flip, k_bits):
    """Integer thresholds that reproduce PyTorch's own sign decisions bit for bit.

    PyTorch computes the next layer's input bit of channel co as
    ``bn(acc * alpha)[co] < t_next[co]`` in float32 (acc = the exact integer conv
    sum). Solving that in float64 disagrees with float32 rounding whenever the
    boundary falls within an ulp of an integer, and then every pixel with that
    acc flips. So the decisions are taken from PyTorch itself, for every
    possible acc in [-k_bits-1, k_bits+1]: float32 rounding is monotone, so
    they form one run per channel, and the runtime's rule
    ``acc' < thr[co]`` (acc' = -acc where the weights were flipped) reproduces it.
    """
    accs = torch.arange(-k_bits - 1, k_bits + 2, dtype=torch.float32)
    y = accs.view(1, 1, -1, 1) * blk.conv.scale().float().view(1, -1, 1, 1)
    neg = (blk.bn(y) < torch.as_tensor(t_next, dtype=torch.float32).view(1, -1, 1, 1))[0, :, :, 0].numpy()
    n_neg = neg.sum(axis=1)  # how many acc values give bit 1 (-1)
    # Not flipped: bit 1 for the n_neg smallest acc -> thr = lowest acc + n_neg.
    # Flipped (acc' = -acc): bit 1 for the n_neg largest acc -> the same count from the other end.
    thr = -(k_bits + 1) + n_neg
    runs = np.where(flip[:, None], neg[:, ::-1], neg)
    if not np.array_equal(runs, np.arange(neg.shape[1])[None, :] < n_neg[:, None]):
        raise RuntimeError("PyTorch's sign decisions are not monotone in the conv sum: cannot fold "
                           "them into integer thresholds")
    return np.clip(thr, -(k_bits + 1), k_bits + 1).astype(np.int32)


def _classifier_folded(model):
    """Classifier weight and bias (float64, NCHW-flatten order) with its input normalisation folded in.

    norm(x) = (x - mean) * r with r = scale / sqrt(var + eps), so
    W norm(x) + b = (W * r) x + (b - W @ (mean * r)).
    """
    w, b = _np(model.classifier.weight), _np(model.classifier.bias)
    norm = getattr(model, "classifier_norm", None)
    if norm is not None:
        r = model.classifier_scale / np.sqrt(_np(norm.running_var) + norm.eps)
        b = b - w @ (_np(norm.running_mean) * r)
        w = w * r[None, :]
    return w, b


def checkpoint_to_ops(model, log=None) -> list[OpRecord]:
    """The op list for a VGGSmall in eval mode (see module docstring for the maths)."""
    if not isinstance(model, VGGSmall):
        raise ValueError(f"{type(model).__name__} ({model.config.get('arch')}) has no bundle form: only the "
                         f"VGG-small models (fp32, xnor, birealnet) export")
    cfg = model.config
    ops: list[OpRecord] = []
    x = INPUT
    blocks = list(model.blocks)
    for i, blk in enumerate(blocks):
        last = i == len(blocks) - 1
        if isinstance(blk, RealBlock):
            w = _f32(blk.conv.weight)
            a, b = _bn_as_fma(blk.bn, log)
            cout, cin, kh, kw = w.shape
            ops.append(OpRecord("conv2d", f"conv{i}", [x], [f"conv{i}"],
                                {"cin": cin, "cout": cout, "kh": kh, "kw": kw, "stride": 1, "padding": 1,
                                 "activation": "relu" if blk.relu else "none"},
                                {"weight": np.ascontiguousarray(w.transpose(2, 3, 1, 0)),
                                 "multiplier": a, "bias": b}))
            x = f"conv{i}"
        else:
            assert isinstance(blk, BinaryBlock)
            conv = blk.conv
            w = _np(conv.weight)
            cout, cin, kh, kw = w.shape
            k_bits = kh * kw * cin
            a, b = _bn_as_fma(blk.bn, log)
            alpha = _f32(conv.scale())
            thr_in = _np(conv.threshold) if conv.threshold is not None else np.zeros(cin)
            if not ops or ops[-1].outputs[0] != f"bits{i}":
                ops.append(OpRecord("sign_pack", f"sign{i}", [x], [f"bits{i}"], {"channels": cin},
                                    {"threshold": thr_in.astype(np.float32)}))
            attrs = {"cin": cin, "cout": cout, "kh": kh, "kw": kw, "stride": 1, "padding": 1}
            nxt = blocks[i + 1] if not last else None
            bits_out = (not blk.shortcut and blk.act is None and isinstance(nxt, BinaryBlock)
                        and not nxt.shortcut)
            if bits_out:
                # XNOR-Net path: bits straight out of the conv, pooled as bits.
                t_next = (_np(nxt.conv.threshold) if nxt.conv.threshold is not None else np.zeros(cout))
                flip = a * alpha < 0
                ops.append(OpRecord("bconv2d", f"bconv{i}", [f"bits{i}"], [f"bconv{i}"],
                                    {**attrs, "output": "bits"},
                                    {"weight": _pack_weight(w, flip),
                                     "threshold": _int_threshold(blk, t_next, flip, k_bits)}))
                x = f"bconv{i}"
                if blk.pool:
                    ops.append(OpRecord("bmaxpool2d", f"pool{i}", [x], [f"bits{i + 1}"], {"size": 2, "stride": 2}))
                else:
                    ops[-1].outputs = [f"bits{i + 1}"]
                x = f"bits{i + 1}"
                continue
            arrays = {"weight": _pack_weight(w), "scale": alpha, "multiplier": a, "bias": b}
            inputs = [f"bits{i}"]
            if blk.shortcut:
                inputs.append(x)
            if blk.act is not None:
                attrs["rprelu"] = True
                arrays.update(rprelu_gamma=_np(blk.act.gamma).astype(np.float32),
                              rprelu_beta=_np(blk.act.beta).astype(np.float32),
                              rprelu_zeta=_np(blk.act.zeta).astype(np.float32))
            ops.append(OpRecord("bconv2d", f"bconv{i}", inputs, [f"bconv{i}"], {**attrs, "output": "float"}, arrays))
            x = f"bconv{i}"
        if blk.pool:
            ops.append(OpRecord("maxpool2d", f"pool{i}", [x], [f"pool{i}"], {"size": 2, "stride": 2}))
            x = f"pool{i}"
    side = cfg["image_size"] // 2 ** len(cfg["pool_after"])
    c_last = cfg["widths"][-1]
    ops.append(OpRecord("flatten", "flatten", [x], ["flat"]))
    w, bias = _classifier_folded(model)
    n_out = w.shape[0]
    w_nhwc = w.reshape(n_out, c_last, side, side).transpose(0, 2, 3, 1).reshape(n_out, -1)
    ops.append(OpRecord("dense", "classifier", ["flat"], [OUTPUT],
                        {"units_in": w_nhwc.shape[1], "units_out": n_out},
                        {"weight": w_nhwc.astype(np.float32), "bias": bias.astype(np.float32)}))
    return ops


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
    """Export ``ckpt_path`` to ``out_path``; returns the metrics written into the bundle."""
    ckpt = load_checkpoint(ckpt_path)
    model = model_from_checkpoint(ckpt)
    norm = ckpt["normalization"]
    cfg = ckpt["config"]
    ops = checkpoint_to_ops(model, log)
    metrics = {k: v for k, v in ckpt["metrics"].items() if isinstance(v, (int, float, str))}
    if "test_acc" in metrics:
        metrics["pytorch_test_acc_training"] = metrics.pop("test_acc")
    if "optimizer" in ckpt:  # a resume checkpoint: training has not finished
        run = ckpt.get("run", {})
        metrics["training_in_progress"] = f"epoch {ckpt['epoch'] + 1} step {ckpt['step']} of {run.get('epochs', '?')}"
        if ckpt.get("history"):
            metrics["val_acc"] = ckpt["history"][-1]["val_acc"]
    header = {"producer": f"bnnlite-export {__version__}", "architecture": cfg["arch"],
              "input_shape": [cfg["image_size"], cfg["image_size"], cfg["in_channels"]], "input_layout": "NHWC",
              "normalization_mean": norm["mean"], "normalization_std": norm["std"],
              "class_names": ckpt["class_names"], "config": cfg, "metrics": metrics}

    out_path = Path(out_path)
    # The draft is a temporary of out_path's own pattern (<out>.*.tmp): removed on every
    # exit, and by the next export of out_path after a kill -9.
    with temp_beside(out_path) as draft:
        write_bundle(draft, header, ops, atomic=False)
        # The probe: real test images when --data is given, else seeded random images.
        if data is not None:
            _, test, _ = load_dataset(data)
            images, labels = test.images, test.labels
        else:
            rng = np.random.default_rng(0)
            images = rng.integers(0, 256, (probe,) + tuple(header["input_shape"]), dtype=np.uint8)
            labels = None
        ref, got, agree, diff = _compare(model, draft, images, norm["mean"], norm["std"], threads)
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
