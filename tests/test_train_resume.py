"""Exact resume of bnnlite.train.engine.train, and the checkpoint files.

On a tiny random-pixel data set (320 train + 64 test images, binary layout,
written by the test) and a tiny-width VGG-small (TrainConfig.model_overrides):

* run A: 2 epochs without a break;
* run B: the same config in three calls -- interrupted after 3 steps
  (simulated Ctrl-C mid-epoch 1), resumed and interrupted again 9 steps later
  (which must land mid-epoch 2: proof that the checkpoint was really used; a
  resume that silently started afresh would also reproduce A), resumed to the
  end.

A and B must end with bitwise-equal weights (every tensor of model.pth) and
equal histories / metrics (wall-clock fields aside).  Done for ``xnor``
(binary convs, Adam, latent clipping) and ``fp32`` (SGD + Nesterov momentum,
weight decay).  Plus: atomic checkpoint writes, load_checkpoint's refusals and
--resume without a checkpoint.
"""
import json

import numpy as np
import pytest
import torch

from _cifar_files import tiny_train_config
from bnnlite.train import checkpoint as ckpt_io
from bnnlite.train.engine import train

TINY = {"widths": [8, 8, 16, 16, 32, 32]}
STEPS_PER_EPOCH = (320 - 32) // 32   # 288 training images after the 32-image validation hold-out
TIMING = {"epoch_seconds", "images_per_s", "wall_seconds"}


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def _cfg(model, data, out, **kw):
    return tiny_train_config(model, data, out, **kw)


def _log(out):
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def _strip(recs):
    return [{k: v for k, v in r.items() if k not in TIMING} for r in recs]


@pytest.fixture(scope="module", params=["xnor", "fp32"])
def runs(request, data_dir, tmp_path_factory):
    torch.set_num_threads(1)
    model = request.param
    root = tmp_path_factory.mktemp(f"runs_{model}")
    a, b = root / "A", root / "B"
    res = {"model": model, "A": a, "B": b}
    res["A_metrics"] = train(_cfg(model, data_dir, a))
    res["B1"] = train(_cfg(model, data_dir, b, interrupt_after_steps=3))
    res["B1_ckpt"] = ckpt_io.load_checkpoint(b / "checkpoint.pth")
    res["B1_files"] = sorted(p.name for p in b.iterdir())
    res["B2"] = train(_cfg(model, data_dir, b, resume=True, interrupt_after_steps=STEPS_PER_EPOCH))
    res["B2_log"] = _log(b)
    res["B_metrics"] = train(_cfg(model, data_dir, b, resume=True))
    return res


class TestExactResume:
    def test_interrupt_returns_and_saves_mid_epoch(self, runs):
        assert runs["B1"] == {"interrupted": True, "epoch": 0, "step": 3}
        ck = runs["B1_ckpt"]
        assert (ck["epoch"], ck["step"]) == (0, 3)
        assert ck["running"][2] == 3 * 32          # images seen so far this epoch
        assert {"optimizer", "scheduler", "history", "model"} <= set(ck)
        assert ck["scheduler"]["last_epoch"] == 3
        # nothing final was written by an interrupted call
        assert "model.pth" not in runs["B1_files"] and "log.jsonl" not in runs["B1_files"]

    def test_second_resume_continues_where_it_stopped(self, runs):
        # 6 steps finish epoch 1, 3 more in epoch 2: only possible if B2 started at step 3
        assert runs["B2"] == {"interrupted": True, "epoch": 1, "step": 3}
        assert len(runs["B2_log"]) == 1 and runs["B2_log"][0]["epoch"] == 1

    def test_final_weights_bitwise_equal(self, runs):
        fa = ckpt_io.load_checkpoint(runs["A"] / "model.pth")
        fb = ckpt_io.load_checkpoint(runs["B"] / "model.pth")
        assert fa["model"].keys() == fb["model"].keys()
        unequal = [k for k in fa["model"] if not torch.equal(fa["model"][k], fb["model"][k])]
        assert unequal == []
        assert fa["config"] == fb["config"]

    def test_training_did_change_the_weights(self, runs):
        """Guards the test above against comparing two untouched initialisations."""
        fa = ckpt_io.load_checkpoint(runs["A"] / "model.pth")["model"]
        b1 = runs["B1_ckpt"]["model"]
        moved = [k for k in fa if fa[k].is_floating_point() and not torch.equal(fa[k], b1[k])]
        assert len(moved) > len(fa) // 2

    def test_histories_and_metrics_match(self, runs):
        la, lb = _log(runs["A"]), _log(runs["B"])
        assert [r["epoch"] for r in la] == [1, 2] and [r["epoch"] for r in lb] == [1, 2]
        assert _strip(la) == _strip(lb)
        fa = ckpt_io.load_checkpoint(runs["A"] / "model.pth")
        fb = ckpt_io.load_checkpoint(runs["B"] / "model.pth")
        assert _strip(fa["history"]) == _strip(fb["history"]) == _strip(la)
        ma = {k: v for k, v in runs["A_metrics"].items() if k not in TIMING}
        mb = {k: v for k, v in runs["B_metrics"].items() if k not in TIMING}
        assert ma == mb
        assert ma["epochs"] == 2 and np.isfinite(ma["test_loss"])

    def test_final_checkpoint_header(self, runs):
        f = ckpt_io.load_checkpoint(runs["B"] / "model.pth")
        assert f["config"]["arch"] == runs["model"]
        assert f["config"]["widths"] == TINY["widths"]     # model_overrides recorded for export
        assert len(f["normalization"]["mean"]) == 3 and len(f["class_names"]) == 10
        assert "optimizer" not in f

    def test_no_temporary_files_left(self, runs):
        for d in (runs["A"], runs["B"]):
            names = sorted(p.name for p in d.iterdir())
            assert not [n for n in names if n.endswith(".tmp")], names
            assert {"checkpoint.pth", "model.pth", "log.jsonl", "metrics.json"} <= set(names)


class TestResumeWithoutCheckpoint:
    def test_starts_fresh(self, data_dir, tmp_path, capsys):
        """--resume on an empty folder = a fresh run: same first 3 steps as without --resume."""
        r = train(_cfg("xnor", data_dir, tmp_path / "resume", resume=True, interrupt_after_steps=3))
        assert r == {"interrupted": True, "epoch": 0, "step": 3}
        assert "starting fresh" in capsys.readouterr().out
        train(_cfg("xnor", data_dir, tmp_path / "plain", interrupt_after_steps=3))
        a = ckpt_io.load_checkpoint(tmp_path / "resume" / "checkpoint.pth")["model"]
        b = ckpt_io.load_checkpoint(tmp_path / "plain" / "checkpoint.pth")["model"]
        assert [k for k in b if not torch.equal(a[k], b[k])] == []


class TestLatentClipping:
    def test_engine_clips_binary_latent_weights_only(self, data_dir, tmp_path):
        """With a huge learning rate one Adam step moves every weight by ~lr: the binary convs'
        latent weights must come back clipped to exactly +-1, the real first conv must not."""
        r = train(_cfg("xnor", data_dir, tmp_path, epochs=1, lr=50.0, interrupt_after_steps=2))
        assert r["interrupted"]
        sd = ckpt_io.load_checkpoint(tmp_path / "checkpoint.pth")["model"]
        for i in range(1, 6):
            w = sd[f"blocks.{i}.conv.weight"]
            assert w.abs().max().item() == 1.0
            assert (w.abs() == 1.0).float().mean().item() > 0.5   # most were pushed out and clipped
        assert sd["blocks.0.conv.weight"].abs().max().item() > 1.0


class TestModelOverrides:
    def test_unknown_key_rejected(self, data_dir, tmp_path):
        with pytest.raises(ValueError, match="widthz"):
            train(_cfg("xnor", data_dir, tmp_path, model_overrides={"widthz": [8] * 6}))


class TestCheckpointFiles:
    def _header(self):
        return {"format": ckpt_io.FORMAT, "format_version": ckpt_io.FORMAT_VERSION, "config": {},
                "normalization": {}, "class_names": [], "metrics": {}, "model": {"w": torch.ones(2)}}

    def test_save_atomic_roundtrip_no_tmp(self, tmp_path):
        p = tmp_path / "sub" / "c.pth"
        ckpt_io.save_atomic(self._header(), p)
        assert torch.equal(ckpt_io.load_checkpoint(p)["model"]["w"], torch.ones(2))
        assert sorted(x.name for x in p.parent.iterdir()) == ["c.pth"]

    def test_failed_save_keeps_old_file_and_leaves_no_tmp(self, tmp_path):
        p = tmp_path / "c.pth"
        ckpt_io.save_atomic(self._header(), p)
        before = p.read_bytes()
        bad = {**self._header(), "model": {"w": torch.zeros(2)}, "oops": lambda: 0}  # not picklable
        with pytest.raises(Exception):
            ckpt_io.save_atomic(bad, p)
        assert p.read_bytes() == before
        assert sorted(x.name for x in tmp_path.iterdir()) == ["c.pth"]

    def test_rejects_garbage_file(self, tmp_path):
        p = tmp_path / "x.pth"
        p.write_bytes(b"definitely not a checkpoint" * 20)
        with pytest.raises(ValueError, match="not a readable PyTorch checkpoint"):
            ckpt_io.load_checkpoint(p)

    def test_rejects_torch_file_without_header(self, tmp_path):
        p = tmp_path / "sd.pth"
        torch.save({"model": {"w": torch.ones(1)}}, p)
        with pytest.raises(ValueError, match="not a bnnlite checkpoint"):
            ckpt_io.load_checkpoint(p)
        torch.save([1, 2, 3], p)
        with pytest.raises(ValueError, match="not a bnnlite checkpoint"):
            ckpt_io.load_checkpoint(p)

    def test_rejects_newer_format_and_missing_keys(self, tmp_path):
        p = tmp_path / "c.pth"
        torch.save({**self._header(), "format_version": ckpt_io.FORMAT_VERSION + 1}, p)
        with pytest.raises(ValueError, match="newer"):
            ckpt_io.load_checkpoint(p)
        h = self._header()
        del h["normalization"]
        torch.save(h, p)
        with pytest.raises(ValueError, match="normalization"):
            ckpt_io.load_checkpoint(p)

    def test_slim_state(self):
        s = ckpt_io.slim_state({**self._header(), "optimizer": {}, "model": {
            "w": torch.ones(2), "n": torch.tensor(3)}})
        assert "optimizer" not in s and s["stored_dtype"] == "float16"
        assert s["model"]["w"].dtype == torch.float16 and s["model"]["n"].dtype == torch.int64


def test_resume_with_other_epochs_refits_the_schedule():
    """--resume with a different --epochs keeps the step and follows the new curve."""
    from bnnlite.train.optim import load_schedule as _load_schedule

    def make(total):
        opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        return opt, torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-3, total_steps=total)

    old_opt, old = make(100)
    for _ in range(40):
        old_opt.step()
        old.step()
    fresh_opt, fresh = make(60)      # the curve the re-fitted run must follow from step 40
    for _ in range(41):
        fresh_opt.step()
        fresh.step()
    opt, sched = make(60)
    _load_schedule(sched, old.state_dict(), rank=0)
    assert sched.last_epoch == 40 and sched.total_steps == 60
    opt.step()
    sched.step()
    assert sched.get_last_lr() == pytest.approx(fresh.get_last_lr())
    assert sched.get_last_lr() != pytest.approx(old.get_last_lr())

    _, short = make(30)
    with pytest.raises(ValueError, match="shorter"):
        _load_schedule(short, old.state_dict(), rank=0)
