"""Torch-free kernel tests and the CUDA resource check, run from pytest so the README's one test command
covers them: the ctest suite (emulator + kernels under AddressSanitizer and UBSan, the emulator's checked
build, the memory-metrics tool), the mutation suite (every planted kernel bug caught) and the ptxas report
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


@pytest.mark.skipif(shutil.which("cmake") is None, reason="cmake not installed")
def test_mutation_suite_kills_every_mutant(tmp_path):
    """tools/mutation_suite.py: realistic bugs planted one at a time in copies of csrc/kernels, each built into
    the checked kernel tests, all of which must fail (report in the test output). The unmutated source's checked
    kernel tests are test_ctest_kernels_under_asan_ubsan's (run just before), so the suite skips its own baseline."""
    report = tmp_path / "mutation_report.md"
    res = subprocess.run([sys.executable, ROOT / "tools" / "mutation_suite.py", "--no-baseline", "--out", report],
                         capture_output=True, text=True, env={**os.environ, "CUDA_HOME": CUDA_HOME})
    print(res.stdout[-6000:])
    assert res.returncode == 0, f"mutation suite failed:\n{res.stdout[-6000:]}\n{res.stderr[-3000:]}"
    text = report.read_text()
    killed, total = map(int, __import__("re").search(r"Kill rate: (\d+)/(\d+)", text).groups())
    assert killed == total and total >= 7, text


def test_mutation_suite_refuses_unknown_mutants():
    res = subprocess.run([sys.executable, ROOT / "tools" / "mutation_suite.py", "--only", "no-such-bug"],
                         capture_output=True, text=True)
    assert res.returncode == 2 and "unknown mutant(s): no-such-bug" in res.stderr, res.stderr


@pytest.mark.skipif(not Path(CUDA_HOME, "bin", "nvcc").exists(), reason="nvcc not installed")
def test_ptxas_no_spills_in_hot_kernels():
    out = run([sys.executable, ROOT / "tools" / "check_ptxas.py"], env={**os.environ, "CUDA_HOME": CUDA_HOME})
    print(out)
