"""2-process DDP on CPU (gloo): ``torchrun --nproc_per_node 2 -m bnnlite.train``.

Run as ``sys.executable -m torch.distributed.run --standalone`` on a tiny
random-pixel data set with a tiny-width model (hidden ``--model-overrides``).
The engine's debug hook ``BNNLITE_DDP_DUMP=DIR`` makes every rank save its
final state dict as ``DIR/rank{r}.pth``; the ranks must agree on every tensor
(parameters *and* BN running statistics) and rank 0's model.pth must be that
same state.

Also: a DDP run interrupted after 2 steps and resumed with ``--resume`` ends
bitwise equal to the uninterrupted DDP run, with the same log (the running
train-loss sums of the interrupted epoch are the total over ranks).
"""
import json
import os
import subprocess
import sys

import pytest
import torch

from _cifar_files import write_tiny_training_set
from bnnlite.train import checkpoint as ckpt_io

TINY = '{"widths": [8, 8, 16, 16, 32, 32]}'
TIMEOUT_S = 300   # ~15 s of CPU on an idle core; generous for a loaded machine
TIMING = {"epoch_seconds", "images_per_s", "wall_seconds"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _torchrun(data, out, dump=None, *extra):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "bnnlite.train", "--model", "xnor", "--data", str(data), "--out", str(out),
           "--epochs", "1", "--no-compile", "--no-bf16", "--subset", "320", "--val-size", "32",
           "--batch-size", "32", "--no-progress", "--threads", "1", "--model-overrides", TINY, *extra]
    env = {k: v for k, v in os.environ.items()
           if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "BNNLITE_DDP_DUMP")}
    env["OMP_NUM_THREADS"] = "1"
    if dump is not None:
        env["BNNLITE_DDP_DUMP"] = str(dump)
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    return p


def _log(out):
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING}
            for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def ddp(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    data = write_tiny_training_set(root / "data", n_train=320, n_test=64, seed=1)
    res = {"root": root}
    res["A"] = _torchrun(data, root / "A", root / "dumpA")
    res["B1"] = _torchrun(data, root / "B", None, "--interrupt-after-steps", "2")
    res["B1_ckpt"] = ckpt_io.load_checkpoint(root / "B" / "checkpoint.pth") if res["B1"].returncode == 0 else None
    res["B2"] = _torchrun(data, root / "B", root / "dumpB", "--resume")
    return res


def _ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\n--- stdout\n{p.stdout[-3000:]}\n--- stderr\n{p.stderr[-6000:]}"


class TestDdpRun:
    def test_exit_code_and_outputs(self, ddp):
        _ok(ddp["A"])
        out = ddp["root"] / "A"
        assert "test top-1" in ddp["A"].stdout
        assert ddp["A"].stdout.count("epoch 1/1") == 1      # rank 0 prints, rank 1 does not
        metrics = json.loads((out / "metrics.json").read_text())
        assert metrics["run"]["world_size"] == 2 and metrics["epochs"] == 1
        assert len(_log(out)) == 1
        assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]

    def test_ranks_agree_on_every_tensor(self, ddp):
        _ok(ddp["A"])
        dump = ddp["root"] / "dumpA"
        assert sorted(p.name for p in dump.iterdir()) == ["rank0.pth", "rank1.pth"]
        r0 = torch.load(dump / "rank0.pth")
        r1 = torch.load(dump / "rank1.pth")
        assert r0.keys() == r1.keys()
        assert any(k.endswith("running_mean") for k in r0)
        assert [k for k in r0 if not torch.equal(r0[k], r1[k])] == []
        final = ckpt_io.load_checkpoint(ddp["root"] / "A" / "model.pth")["model"]
        assert [k for k in r0 if not torch.equal(r0[k], final[k])] == []

    def test_weights_were_trained(self, ddp):
        """The agreement above is not two untouched copies of the seeded initialisation."""
        _ok(ddp["A"])
        from bnnlite.train.models import build_model, default_config
        torch.manual_seed(0)
        init = build_model({**default_config("xnor"), **json.loads(TINY)}).state_dict()
        r0 = torch.load(ddp["root"] / "dumpA" / "rank0.pth")
        moved = [k for k in init if init[k].is_floating_point() and not torch.equal(init[k], r0[k])]
        assert len(moved) > len(init) // 2


class TestDdpResume:
    def test_interrupted_then_resumed(self, ddp):
        _ok(ddp["B1"])
        assert "interrupted" in ddp["B1"].stdout
        ck = ddp["B1_ckpt"]
        assert (ck["epoch"], ck["step"]) == (0, 2)
        # running sums of the interrupted epoch: both ranks' images (2 steps x 2 ranks x 16)
        assert ck["running"][2] == 2 * 32
        _ok(ddp["B2"])
        assert "resuming" in ddp["B2"].stdout

    def test_resumed_equals_uninterrupted(self, ddp):
        _ok(ddp["A"])
        _ok(ddp["B2"])
        fa = ckpt_io.load_checkpoint(ddp["root"] / "A" / "model.pth")["model"]
        fb = ckpt_io.load_checkpoint(ddp["root"] / "B" / "model.pth")["model"]
        assert [k for k in fa if not torch.equal(fa[k], fb[k])] == []
        assert _log(ddp["root"] / "A") == _log(ddp["root"] / "B")
        r0 = torch.load(ddp["root"] / "dumpB" / "rank0.pth")
        r1 = torch.load(ddp["root"] / "dumpB" / "rank1.pth")
        assert [k for k in r0 if not torch.equal(r0[k], r1[k])] == []
