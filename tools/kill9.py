"""kill -9 during export and during training checkpoints, then check what the next run leaves.

    python tools/kill9.py [--kills 20] [--work DIR]

Export: ``bnnlite-export`` of a tiny checkpoint is killed (SIGKILL) while one of
its temporaries exists (the draft, or the final file before its rename), at a
random moment of that window; then an export runs to the end.  Checked: the
output loads, and no ``*.tmp`` file (nor a ``tmp*`` folder) is left.

Training: a tiny ``bnnlite-train`` run (3 epochs) is killed while
``checkpoint.pth.*.tmp`` exists at its 1st, 2nd or 3rd epoch checkpoint (or
its final model.pth write), then ``--resume`` finishes it.  Checked against
one uninterrupted run: ``model.pth`` has bit-identical weights, ``log.jsonl``
holds each epoch once (the same records, timings aside), no temporary is left.

Prints one line per kill and a summary; exits 1 if any check failed.  The
test suite runs the same code with two kills of each kind (tests/test_kill9.py).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

TRAIN = [sys.executable, "-m", "bnnlite.train", "--model", "xnor", "--epochs", "3", "--batch-size", "32",
         "--val-size", "32", "--subset", "320", "--no-compile", "--no-bf16", "--threads", "1", "--no-progress",
         "--model-overrides", '{"widths": [8, 8, 16, 16, 32, 32]}']
EXPORT = [sys.executable, "-m", "bnnlite.train.export"]
TIMING = {"epoch_seconds", "images_per_s", "wall_seconds"}
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp") or
                  (p.is_dir() and p.name.startswith("tmp")))


def kill_during(cmd, folder: Path, pattern: str, nth: int, rng: random.Random, timeout=300.0,
                sig=signal.SIGKILL) -> dict:
    """Start ``cmd``; send ``sig`` while a file matching ``pattern`` exists for the ``nth`` time
    (counting distinct temporaries), after a random 0-4 ms of that window."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    seen, t0, delay = set(), time.monotonic(), rng.uniform(0, 0.004)
    try:
        while proc.poll() is None and time.monotonic() - t0 < timeout:
            names = {p.name for p in folder.glob(pattern)}
            new = names - seen
            if new:
                seen |= new
                if len(seen) >= nth:
                    time.sleep(delay)
                    present = sorted(p.name for p in folder.glob(pattern))
                    proc.send_signal(sig)
                    proc.wait(timeout=60)
                    return {"killed": True, "temps_at_kill": present}
            time.sleep(0.0005)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return {"killed": False, "rc": proc.returncode}


def run(cmd, timeout=600):
    p = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)
    if p.returncode:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {p.stderr[-1500:]}")
    return p


def _log(folder):
    recs = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


def _weights(path):
    import torch
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def setup(work: Path):
    from _cifar_files import write_tiny_training_set
    data = write_tiny_training_set(work / "data", n_train=320, n_test=64, seed=0)
    ref = work / "reference"
    run(TRAIN + ["--data", str(data), "--out", str(ref)])
    return data, ref


def export_kills(n, work: Path, ckpt: Path, rng: random.Random) -> list[dict]:
    import bnnlite
    out_dir = work / "export"
    out_dir.mkdir()
    out = out_dir / "model.h5"
    cmd = EXPORT + [str(ckpt), str(out), "--probe", "16"]
    results = []
    for i in range(n):
        # The draft is the 1st temporary, the final write's the 2nd: alternate.
        res = kill_during(cmd, out_dir, "model.h5.*.tmp", 1 + i % 2, rng)
        res["left_after_kill"] = leftovers(out_dir)
        run(cmd)
        res["left_after_next_run"] = leftovers(out_dir)
        bnnlite.Model.load(out)  # the finished export loads
        res["ok"] = res["killed"] and not res["left_after_next_run"]
        results.append(res)
        print(f"export kill {i + 1}: {json.dumps(res)}", flush=True)
    return results


def train_kills(n, work: Path, data: Path, ref: Path, rng: random.Random) -> list[dict]:
    import torch
    want_w, want_log = _weights(ref / "model.pth"), _log(ref)
    results = []
    for i in range(n):
        out = work / f"train{i}"
        out.mkdir()
        cmd = TRAIN + ["--data", str(data), "--out", str(out)]
        which = i % 4  # epoch 1, 2, 3 checkpoint, or the final model.pth
        if which < 3:
            res = kill_during(cmd, out, "checkpoint.pth.*.tmp", which + 1, rng)
        else:
            res = kill_during(cmd, out, "model.pth.*.tmp", 1, rng)
        res["at"] = ["checkpoint 1", "checkpoint 2", "checkpoint 3", "model.pth"][which]
        res["left_after_kill"] = leftovers(out)
        run(cmd + ["--resume"])
        got_w = _weights(out / "model.pth")
        res["left_after_next_run"] = leftovers(out)
        res["log_epochs"] = [r["epoch"] for r in _log(out)]
        res["same_log"] = _log(out) == want_log
        res["same_weights"] = set(got_w) == set(want_w) and all(torch.equal(got_w[k], want_w[k]) for k in want_w)
        res["ok"] = (res["killed"] and not res["left_after_next_run"] and res["same_log"] and res["same_weights"]
                     and res["log_epochs"] == [1, 2, 3])
        results.append(res)
        print(f"train kill {i + 1}: {json.dumps(res)}", flush=True)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=16)
    args = ap.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.work or Path(tempfile.mkdtemp(prefix="bnnlite-kill9-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    data, ref = setup(work)
    ex = export_kills(args.kills, work, ref / "model.pth", rng)
    tr = train_kills(args.kills, work, data, ref, rng)
    summary = {
        "export": {"kills": sum(r["killed"] for r in ex), "temps_left_after_kill": sum(bool(r["left_after_kill"]) for r in ex),
                   "temps_left_after_next_run": sum(bool(r["left_after_next_run"]) for r in ex),
                   "ok": sum(r["ok"] for r in ex)},
        "train": {"kills": sum(r["killed"] for r in tr), "temps_left_after_kill": sum(bool(r["left_after_kill"]) for r in tr),
                  "temps_left_after_next_run": sum(bool(r["left_after_next_run"]) for r in tr),
                  "log_each_epoch_once": sum(r["log_epochs"] == [1, 2, 3] for r in tr),
                  "same_weights": sum(r["same_weights"] for r in tr), "ok": sum(r["ok"] for r in tr)},
        "seconds": round(time.time() - t0, 1), "work": str(work)}
    print(json.dumps(summary, indent=1))
    return 0 if summary["export"]["ok"] == args.kills and summary["train"]["ok"] == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
