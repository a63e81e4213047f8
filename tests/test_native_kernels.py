"""Torch-free kernel tests and the CUDA resource check, run from pytest so the README's one test command
covers them: the ctest suite (emulator + kernels under AddressSanitizer and UBSan) and the ptxas report
of the CUDA build (no spills, no local-memory stack in the hot kernels)."""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CUDA_HOME = os.environ.get("CUDA_HOME", "/usr/local/cuda")


def run(cmd, **kw):
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{res.stdout[-6000:]}\n{res.stderr[-6000:]}"
    return res.stdout


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_ctest_kernels_under_asan_ubsan(tmp_path):
    build = tmp_path / "ctest"
    env = {**os.environ, "CUDA_HOME": CUDA_HOME}
    run(["cmake", "-S", ROOT, "-B", build, "-DCMAKE_BUILD_TYPE=Debug"], env=env)
    run(["cmake", "--build", build, "-j", os.environ.get("MAX_JOBS", "2")], env=env)
    out = run(["ctest", "--test-dir", build, "--output-on-failure"], env=env)
    assert "100% tests passed" in out, out[-3000:]


@pytest.mark.skipif(not Path(CUDA_HOME, "bin", "nvcc").exists(), reason="nvcc not installed")
def test_ptxas_no_spills_in_hot_kernels():
    out = run([sys.executable, ROOT / "tools" / "check_ptxas.py"], env={**os.environ, "CUDA_HOME": CUDA_HOME})
    print(out)
