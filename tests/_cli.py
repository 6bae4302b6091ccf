"""What a CLI test checks of a refused input (shared by the image CLI tests)."""
import re


def assert_error(r, *fragments, code=1):
    """Exit ``code`` through click (no traceback), the last line one ``Error:`` line holding every fragment."""
    assert r.exit_code == code, r.output
    assert isinstance(r.exception, SystemExit), r.exception  # a ClickException, not a crash
    last = r.output.strip().splitlines()[-1]
    assert last.startswith("Error: "), r.output
    for f in fragments:
        assert re.search(f, last), (f, last)
    assert "Traceback" not in r.output
