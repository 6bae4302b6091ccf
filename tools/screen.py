"""Recipe screening for the training issue: short runs on a cheap proxy, validation only.

    python tools/screen.py --data DATA --runs DIR [--only NAME ...] [--table]

Runs every screening config below in order through ``bnnlite-train`` (each in
DIR/NAME, resumed with --resume where an earlier call stopped, skipped when
finished), then prints the markdown table for docs/training.md: choice,
validation top-1 per epoch, images/s and the exact command.  The proxy is
VGG-small at half width (64-64-128-128-256-256), a few epochs on the 45,000
training images, measured on the 5,000 held-out validation images; the test
split is never looked at.  ``{runs}`` in a config is replaced by DIR (the
binary students start from, or distil from, the runs before them).
"""
from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

HALF = '{"widths": [64, 64, 128, 128, 256, 256]}'
FP32_EPOCHS = 2
BIN_EPOCHS = 2

# name: (what it tests, bnnlite-train arguments after --data/--out)
CONFIGS = {
    # fp32 VGG-small (half width): one change at a time
    "F0": ("fp32: first recipe (SGD one-cycle lr 0.05, classifier lr x0.01)", f"--model fp32 --epochs {FP32_EPOCHS}"),
    "F1": ("F0 + classifier BatchNorm1d (no classifier lr multiplier)",
           f"--model fp32 --epochs {FP32_EPOCHS} --classifier-norm bn"),
    "F1s": ("F0 + classifier BatchNorm1d times 8/sqrt(features) (no classifier lr multiplier)",
            f"--model fp32 --epochs {FP32_EPOCHS} --classifier-norm bn-scaled"),
    "F2": ("F1s + warm-up 0.5 epoch then linear decay to zero",
           f"--model fp32 --epochs {FP32_EPOCHS} --classifier-norm bn-scaled --schedule linear --warmup-epochs 0.5"),
    "F3": ("F2 + label smoothing 0.1", f"--model fp32 --epochs {FP32_EPOCHS} --classifier-norm bn-scaled "
           "--schedule linear --warmup-epochs 0.5 --label-smoothing 0.1"),
    "F4": ("F3 + EMA 0.999 (warm-up: decay min(0.999, (1+n)/(10+n)))", f"--model fp32 --epochs {FP32_EPOCHS} --classifier-norm bn-scaled "
           "--schedule linear --warmup-epochs 0.5 --label-smoothing 0.1 --ema 0.999"),
    "F5": ("F3 with lr 0.1", f"--model fp32 --epochs {FP32_EPOCHS} --classifier-norm bn-scaled "
           "--schedule linear --warmup-epochs 0.5 --label-smoothing 0.1 --lr 0.1"),
    "F6": ("F3 + KD from T, weight 0.9, T 2", f"--model fp32 --epochs {FP32_EPOCHS} --classifier-norm bn-scaled "
           "--schedule linear --warmup-epochs 0.5 --label-smoothing 0.1 "
           "--kd --teacher-path {runs}/T/model.pth --kd-weight 0.9 --temperature 2"),
    # the teacher itself, as the KD screens use it
    "T": ("fastres teacher, 30 epochs (the long run's recipe)", "--model fastres --epochs 30 --batch-size 512 "
          "--schedule linear --warmup-epochs 3 --label-smoothing 0.2 --lr 0.4"),
    # Bi-Real (half width), Adam
    "B0": ("birealnet: first recipe (Adam one-cycle lr 2e-3, classifier lr x0.1), random init",
           f"--model birealnet --epochs {BIN_EPOCHS}"),
    "B1": ("B0 + classifier BN + warm-up/linear decay",
           f"--model birealnet --epochs {BIN_EPOCHS} --classifier-norm bn-scaled --schedule linear --warmup-epochs 0.25"),
    "B2": ("B1 + init from the fp32 proxy F3", f"--model birealnet --epochs {BIN_EPOCHS} --classifier-norm bn-scaled "
           "--schedule linear --warmup-epochs 0.25 --init-from {runs}/F3/model.pth"),
    "B3": ("B2 with lr 1e-3", f"--model birealnet --epochs {BIN_EPOCHS} --classifier-norm bn-scaled --schedule linear "
           "--warmup-epochs 0.25 --init-from {runs}/F3/model.pth --lr 1e-3"),
    "B4": ("B2 with lr 5e-4", f"--model birealnet --epochs {BIN_EPOCHS} --classifier-norm bn-scaled --schedule linear "
           "--warmup-epochs 0.25 --init-from {runs}/F3/model.pth --lr 5e-4"),
    "B5": ("B2 with batch 128", f"--model birealnet --epochs {BIN_EPOCHS} --classifier-norm bn-scaled --schedule linear "
           "--warmup-epochs 0.25 --init-from {runs}/F3/model.pth --batch-size 128"),
    "B6": ("B2 + KD from T, weight 0.5, T 3 (the prototype's)", f"--model birealnet --epochs {BIN_EPOCHS} "
           "--classifier-norm bn-scaled --schedule linear --warmup-epochs 0.25 --init-from {runs}/F3/model.pth "
           "--kd --teacher-path {runs}/T/model.pth --kd-weight 0.5 --temperature 3"),
    "B7": ("B2 + KD weight 0.9, T 1", f"--model birealnet --epochs {BIN_EPOCHS} --classifier-norm bn-scaled "
           "--schedule linear --warmup-epochs 0.25 --init-from {runs}/F3/model.pth "
           "--kd --teacher-path {runs}/T/model.pth --kd-weight 0.9 --temperature 1"),
    "B8": ("B2 + KD weight 1.0, T 2", f"--model birealnet --epochs {BIN_EPOCHS} --classifier-norm bn-scaled "
           "--schedule linear --warmup-epochs 0.25 --init-from {runs}/F3/model.pth "
           "--kd --teacher-path {runs}/T/model.pth --kd-weight 1.0 --temperature 2"),
    # XNOR-Net (half width): the Bi-Real recipe as it stands (B6), with and without the fp32 init
    "X0": ("xnor with B6's recipe (init from F3, KD 0.5 / T 3)", f"--model xnor --epochs {BIN_EPOCHS} "
           "--classifier-norm bn-scaled --schedule linear --warmup-epochs 0.25 --init-from {runs}/F3/model.pth "
           "--kd --teacher-path {runs}/T/model.pth --kd-weight 0.5 --temperature 3"),
    "X1": ("X0 from random init", f"--model xnor --epochs {BIN_EPOCHS} --classifier-norm bn-scaled "
           "--schedule linear --warmup-epochs 0.25 "
           "--kd --teacher-path {runs}/T/model.pth --kd-weight 0.5 --temperature 3"),
}

# The long runs behind the shipped rows: full width, schedules fixed before they start
# (docs/training.md says why each piece is in).  Run with --only L-fp32 ...; not in the table.
LONG = {
    "L-fp32": ("fp32 VGG-small, 60 epochs: F6's recipe (F3 + KD from the teacher T)",
               "--model fp32 --epochs 60 --classifier-norm bn-scaled --schedule linear --warmup-epochs 1 "
               "--label-smoothing 0.1 --kd --teacher-path {runs}/T/model.pth --kd-weight 0.9 --temperature 2 "
               "--seed 0"),
    "L-birealnet": ("birealnet VGG-small, 60 epochs: B6's recipe (B2 + KD 0.5 / T 3), initialised from L-fp32",
                    "--model birealnet --epochs 60 --classifier-norm bn-scaled --schedule linear --warmup-epochs 1 "
                    "--init-from {runs}/L-fp32/model.pth --kd --teacher-path {runs}/T/model.pth --kd-weight 0.5 "
                    "--temperature 3 --seed 0"),
    "L-xnor": ("xnor VGG-small, 40 epochs: X0's recipe (B6's, init from L-fp32)",
               "--model xnor --epochs 40 --classifier-norm bn-scaled --schedule linear --warmup-epochs 1 "
               "--init-from {runs}/L-fp32/model.pth --kd --teacher-path {runs}/T/model.pth --kd-weight 0.5 "
               "--temperature 3 --seed 0"),
}


def _args(name, runs):
    args = shlex.split({**CONFIGS, **LONG}[name][1].replace("{runs}", str(runs)))
    if args[1] != "fastres" and name not in LONG:
        args += ["--model-overrides", HALF]
    return args


def command(name, data, runs) -> list[str]:
    return ["bnnlite-train", "--data", str(data), "--out", str(Path(runs) / name)] + _args(name, runs)


def _log(run_dir):
    p = Path(run_dir) / "log.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def run(name, data, runs, threads=None):
    out = Path(runs) / name
    if (out / "model.pth").exists():
        return
    cmd = command(name, data, runs) + (["--resume"] if (out / "checkpoint.pth").exists() else [])
    if threads:  # a machine setting, not part of the recipe (the table's commands leave it out)
        cmd += ["--threads", str(threads)]
    print("+", shlex.join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def table(runs, data) -> str:
    rows = ["| run | choice | val top-1 by epoch | img/s | command |", "|---|---|---|---|---|"]
    for name, (what, _) in CONFIGS.items():
        log = _log(Path(runs) / name)
        if not log:
            continue
        accs = " / ".join(f"{100 * r['val_acc']:.2f}" for r in log)
        ips = sum(r["images_per_s"] for r in log) / len(log)
        cmd = shlex.join(command(name, "DATA", "RUNS")).replace(str(runs), "RUNS")
        rows.append(f"| {name} | {what} | {accs} | {ips:.0f} | `{cmd}` |")
    return "\n".join(rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--only", nargs="*", help="run these configs only (default: all screens, in order; "
                    "the long runs L-* only when named)")
    ap.add_argument("--table", action="store_true", help="print the table only")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch threads per run (1 keeps a shared 2-core machine from stalling both threads)")
    a = ap.parse_args(argv)
    if not a.table:
        for name in a.only or CONFIGS:
            run(name, a.data, a.runs, a.threads)
    print(table(a.runs, a.data))


if __name__ == "__main__":
    sys.exit(main())
