"""``bnnlite info``: the bundle as a positional argument or --model; the shipped one by default."""
import shutil

from click.testing import CliRunner

from bnnlite.cli import main


def _run(args):
    return CliRunner().invoke(main, args)


def test_info_takes_the_bundle_positionally_or_as_model(tmp_path):
    path = tmp_path / "copy.h5"
    default = _run(["info"])
    assert default.exit_code == 0, default.output
    src = default.output.splitlines()[0].split(" from ", 1)[1].strip()
    shutil.copy(src, path)
    pos, opt = _run(["info", str(path)]), _run(["info", "--model", str(path)])
    assert pos.exit_code == 0 and opt.exit_code == 0, pos.output + opt.output
    assert str(path) in pos.output and pos.output == opt.output


def test_info_refuses_two_different_bundles(tmp_path):
    a, b = tmp_path / "a.h5", tmp_path / "b.h5"
    a.write_bytes(b"x")
    b.write_bytes(b"y")
    r = _run(["info", str(a), "--model", str(b)])
    assert r.exit_code == 2 and "give the bundle once" in r.output
