"""Smoke test of the benchmark scripts (run with `python -m pytest benchmarks/test_smoke.py`): both
scripts run with --quick, once as installed and once with peft and matplotlib hidden (they must skip
those parts with a note, not fail). Nothing about speed is asserted."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.mark.parametrize("script", ["cost_report.py", "cayley_gap.py"])
@pytest.mark.parametrize("hide", ["", "peft,matplotlib"])
def test_quick(script, hide, tmp_path):
    env = dict(os.environ, ANTIPASTO_BENCH_HIDE=hide)
    proc = subprocess.run([sys.executable, str(HERE / script), "--quick", "--out", str(tmp_path)], env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    md = list(tmp_path.glob("*_quick.md"))
    assert md and md[0].read_text().startswith("# ")
    assert list(tmp_path.glob("*_quick.csv"))
    if script == "cost_report.py":
        if hide:
            assert "peft not available" in proc.stdout and "plot skipped" in proc.stdout
            assert not list(tmp_path.glob("*.png"))
        else:
            assert list(tmp_path.glob("*.png"))
