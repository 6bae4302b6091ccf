"""bnnlite/bench/report.py: printed lines say what each figure is, and agree with each other."""
import re

from bnnlite.bench.report import scaling_line


def test_scaling_line_gives_each_ratio_with_what_it_is_of():
    """The rates printed and the ratio printed beside them agree (issue 18: "438.8 img/s against
    387.7 with 1: 1.01x" put a median of pair ratios next to rates whose ratio is 1.13x)."""
    sc = {"threads": 2, "base_threads": 1, "pairs": 10, "throughput_ips": 438.8, "base_ips": 387.7,
          "speedup": 1.01}
    line = scaling_line(sc)
    assert line.startswith("bnnlite with 2 threads: 438.8 img/s against 387.7 with 1: 1.13x (")
    assert re.search(r"10 alternating pairs .*median of the pairs' own ratios 1\.01x\)$", line)


def test_scaling_line_reports_a_failure():
    assert scaling_line({"threads": 2, "error": "boom"}) == "bnnlite with 2 threads: failed (boom)"
