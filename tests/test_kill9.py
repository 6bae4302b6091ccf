"""kill -9 and leftovers (issue 16): temporaries of dead writers are removed by the next
write; an export or a training run killed while a temporary exists leaves nothing after
the next run, and --resume still gives the uninterrupted run's weights and log.

The kills here are the fast version (one of each kind) of ``tools/kill9.py``, whose
20 + 20 run is in docs/benchmarks.md.
"""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))

import kill9  # noqa: E402

HOLDER = r"""
import sys, time
from bnnlite._atomic import temp_beside
with temp_beside(sys.argv[1]) as tmp:
    tmp.write_bytes(b"partial")
    print(tmp, flush=True)
    time.sleep(60)
"""


class TestStaleTemporaries:
    def test_dead_writers_temporary_is_removed_by_the_next_write(self, tmp_path):
        from bnnlite._atomic import atomic_path, remove_stale
        target = tmp_path / "x.h5"
        proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(target)], stdout=subprocess.PIPE, text=True)
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.exists()
        assert remove_stale(target) == []  # its writer lives: kept
        proc.kill()
        proc.wait()
        assert tmp.exists()                # kill -9: nothing could remove it
        with atomic_path(target) as t:
            t.write_bytes(b"new")
        assert not tmp.exists() and target.read_bytes() == b"new"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["x.h5"]

    def test_only_its_own_pattern_and_no_symlinks(self, tmp_path):
        from bnnlite._atomic import remove_stale
        keep = [tmp_path / "y.h5.abc.tmp", tmp_path / "x.h5.tmp", tmp_path / "other.tmp"]
        for p in keep:
            p.write_bytes(b"")
        victim = tmp_path / "victim"
        victim.write_bytes(b"precious")
        (tmp_path / "x.h5.link.tmp").symlink_to(victim)
        (tmp_path / "x.h5.dead.tmp").write_bytes(b"")
        assert [p.name for p in remove_stale(tmp_path / "x.h5")] == ["x.h5.dead.tmp"]
        assert all(p.exists() for p in keep) and victim.read_bytes() == b"precious"

    def test_temp_beside_removes_on_exception(self, tmp_path):
        from bnnlite._atomic import temp_beside
        with pytest.raises(KeyboardInterrupt):
            with temp_beside(tmp_path / "z") as t:
                t.write_bytes(b"x")
                raise KeyboardInterrupt
        assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    work = tmp_path_factory.mktemp("kill9")
    data, ref = kill9.setup(work)
    return work, data, ref


def test_export_killed_while_writing(reference, tmp_path):
    work, _, ref = reference
    sub = tmp_path / "w"
    sub.mkdir()
    [res] = kill9.export_kills(1, sub, ref / "model.pth", random.Random(1))
    assert res["killed"] and res["left_after_next_run"] == [], res


def test_sigterm_during_export_leaves_nothing(reference, tmp_path):
    _, _, ref = reference
    out = tmp_path / "model.h5"
    cmd = kill9.EXPORT + [str(ref / "model.pth"), str(out), "--probe", "16"]
    res = kill9.kill_during(cmd, tmp_path, "model.h5.*.tmp", 1, random.Random(3), sig=signal.SIGTERM)
    assert res["killed"] and res["temps_at_kill"], res
    assert kill9.leftovers(tmp_path) == [] and not out.exists()


def test_training_killed_during_a_checkpoint(reference, tmp_path):
    _, data, ref = reference
    sub = tmp_path / "w"
    sub.mkdir()
    [res] = kill9.train_kills(1, sub, data, ref, random.Random(2))
    assert res["ok"], res


def test_resume_deduplicates_the_log(reference, tmp_path):
    # What a kill between the log line and the checkpoint left before (the line came
    # first): the log is ahead of the checkpoint.  --resume must give each epoch once.
    _, data, ref = reference
    out = tmp_path / "run"
    kill9.run(kill9.TRAIN + ["--data", str(data), "--out", str(out), "--interrupt-after-steps", "12"])
    log = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in log] == [1]
    fake = dict(json.loads(log[0]), epoch=2)
    (out / "log.jsonl").write_text("\n".join(log + log + [json.dumps(fake)]) + "\n")
    kill9.run(kill9.TRAIN + ["--data", str(data), "--out", str(out), "--resume"])
    assert kill9._log(out) == kill9._log(ref)
