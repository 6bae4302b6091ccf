"""bnnlite/bench/layers.py (``bnnlite-bench --layers``): each binary conv, chunk by chunk."""
import json

from click.testing import CliRunner

from bnnlite.bench import main


def test_layers_run_per_chunk():
    res = CliRunner().invoke(main, ["--layers", "--batch", "4", "--json"])
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert [r["layer"] for r in rows] == ["bconv1", "bconv2", "bconv3", "bconv4", "bconv5"]
    assert rows[0]["shape"] == "32x32x128->128" and rows[0]["kernel"] == "3x3/1"
    assert all(r["chunk"] >= 1 and r["binary_gmacs"] > 0 for r in rows)


def test_layers_table():
    res = CliRunner().invoke(main, ["--layers", "--batch", "4"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].startswith("batch 4; bnnlite runs each layer 4 images at a time")
    assert [line.split()[0] for line in lines[3:]] == ["bconv1", "bconv2", "bconv3", "bconv4", "bconv5"]
