"""The GPU check (tools/gpu_check.py) on the CI machine, which has no GPU: its dry run passes (every step's files
exist, every pytest selection collects, the benchmark flags parse, every tool is in the GPU image, the limits
fit in 8 minutes) and catches a broken plan; bad input gets one clear line and a non-zero exit; the verdict on
compute-sanitizer logs (in compute-sanitizer's report format) attributes each report to the right kernel."""
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import gpu_check as gc  # noqa: E402


def run_check(*args, **env):
    return subprocess.run([sys.executable, str(ROOT / "tools" / "gpu_check.py"), *args], capture_output=True,
                          text=True, env={**os.environ, **env}, timeout=600)


def test_dry_run_of_the_plan_passes():
    p = run_check("--dry-run")
    assert p.returncode == 0, p.stdout[-5000:] + p.stderr[-2000:]
    assert p.stdout.rstrip().endswith("dry run: OK")
    phases = gc.plan(sys.executable, "/usr/local/cuda", ["compute-sanitizer"], ROOT / "build")
    assert f"total: {gc.RESERVE_S + sum(ph.budget_s for ph in phases)} s of {gc.LIMIT_S} s" in p.stdout
    for ph in phases:
        assert f"phase {ph.name}: limit {ph.budget_s} s" in p.stdout  # each limit is printed
        for st in ph.steps:
            assert f"{st.budget_s} s  {st.name}" in p.stdout


def test_the_plan_fits_the_limit_and_covers_every_tool_and_family():
    phases = gc.plan(sys.executable, "/usr/local/cuda", ["compute-sanitizer"], ROOT / "build")
    assert gc.RESERVE_S + sum(ph.budget_s for ph in phases) <= gc.LIMIT_S
    names = {st.name for ph in phases for st in ph.steps}
    for tool in ("memcheck", "racecheck", "initcheck", "synccheck"):
        for family in ("block_cayley", "gain", "dplr", "rot", "ablate", "decode", "prefill"):
            assert any(tool in n and family in n for n in names), (tool, family)
    build = next(st for ph in phases for st in ph.steps if st.name.startswith("build"))
    assert build.env["TORCH_CUDA_ARCH_LIST"] == "9.0" and build.env["MAX_JOBS"] == "16"
    assert "--no-build-isolation" in build.cmds[0] and "--no-deps" in build.cmds[0]


def test_dry_run_catches_a_broken_plan(capsys):
    """A missing test file, a -k selection that collects nothing, a malformed one, a tool the GPU image lacks, a
    benchmark flag the script refuses and limits over 8 minutes each fail the dry run."""
    py = sys.executable
    steps = [
        gc.Step("good", [[py]], 10, pytest=(("test_cuda_shapes.py",), "sanitizer and block_cayley")),
        gc.Step("gone", [[py]], 10, files=("tests/test_projection.py",),
                pytest=(("test_projection.py",), "cuda")),
        gc.Step("empty", [[py]], 10, pytest=(("test_cuda_shapes.py",), "sanitizer and no_such_kernel")),
        gc.Step("malformed", [[py]], 10, pytest=(("test_cuda_shapes.py",), "sanitizer and (")),
        gc.Step("exotic", [[py]], 10, tools=("nsys",)),
        gc.Step("bad flag", [[py, "benchmarks/cayley_gap.py", "--no-such-flag"]], 10, kind="bench"),
    ]
    rc = gc.dry_run([gc.Phase("tests", gc.LIMIT_S, 2, steps)], py)
    out = capsys.readouterr().out
    assert rc == 1 and "dry run: FAILED" in out
    problems = out.split("dry run: FAILED")[1]
    assert "good" not in problems
    assert "gone: tests/test_projection.py does not exist" in problems
    assert "empty: -k 'sanitizer and no_such_kernel' collects no test (pytest exit 5)" in problems
    assert "malformed: bad -k expression" in problems
    assert "exotic: needs nsys, which the GPU image does not have" in problems
    assert "benchmark flags refused" in problems and "--no-such-flag" in problems
    assert "more than 480 s" in problems


def one_line(p):
    lines = (p.stdout + p.stderr).strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1, (p.returncode, p.stdout, p.stderr)
    return lines[0]


@pytest.mark.parametrize("parts", [(), ("bin/nvcc",), ("include/cuda_runtime.h",)])
def test_missing_cuda_toolkit_is_one_clear_line(tmp_path, parts):
    for part in parts:
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / part).write_text("")
    line = one_line(run_check("--out", str(tmp_path / "r.md"), CUDA_HOME=str(tmp_path)))
    assert line.startswith(f"gpu_check: no CUDA toolkit at CUDA_HOME={tmp_path}")
    assert not (tmp_path / "r.md").exists()


def test_no_gpu_is_one_clear_line(tmp_path):
    # a toolkit that passes the first check; CUDA_VISIBLE_DEVICES="" hides any GPU this machine has
    for part in ("bin/nvcc", "include/cuda_runtime.h"):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / part).write_text("")
    line = one_line(run_check("--out", str(tmp_path / "r.md"), CUDA_HOME=str(tmp_path), CUDA_VISIBLE_DEVICES=""))
    assert line.startswith("gpu_check: no CUDA GPU visible to") and "--dry-run" in line
    assert not (tmp_path / "r.md").exists()


def test_unknown_phase_is_one_clear_line():
    assert "unknown phase 'bench'" in one_line(run_check("--phases", "build,bench", "--dry-run"))


# compute-sanitizer's report format (the CUDA 13 documentation's examples, with our kernel names)
OURS_MEMCHECK = """\
========= COMPUTE-SANITIZER
========= Invalid __global__ write of size 2 bytes
=========     at void ax::cuda_impl::kern::project_finish_kernel<__nv_bfloat16>(const float *, int, long, int, ax::cuda_impl::kern::ProjCoreArgs, T1 *, T1 *)+0x4d0 in project.cuh:250
=========     by thread (5,0,0) in block (0,0,0)
=========     Address 0x7f1c2e000200 is out of bounds
=========     Saved host backtrace up to driver entry point at kernel launch time
=========         Host Frame: [0x2f1d1] in /usr/lib/python3/site-packages/antipasto_ext/_C.cpython-312-x86_64-linux-gnu.so
=========
========= ERROR SUMMARY: 1 error
"""
CUBLAS_FROM_OUR_OP = """\
========= COMPUTE-SANITIZER
========= Uninitialized __global__ memory read of size 16 bytes
=========     at sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize64x64x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas+0x1c30
=========     by thread (12,0,0) in block (3,0,0)
=========     Address 0x7f1c2e100000
=========     Saved host backtrace up to driver entry point at kernel launch time
=========         Host Frame: [0x9a1f2] in /opt/torch/lib/libcublasLt.so.13
=========         Host Frame: ax::project::layer_output(...) [0x31ab2] in /opt/site/antipasto_ext/_C.cpython-312-x86_64-linux-gnu.so
=========
========= ERROR SUMMARY: 1 error
"""
TORCH_ONLY = """\
========= COMPUTE-SANITIZER
========= Uninitialized __global__ memory read of size 4 bytes
=========     at void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>(int, T2, T3)+0x90
=========     by thread (0,0,0) in block (0,0,0)
=========     Saved host backtrace up to driver entry point at kernel launch time
=========         Host Frame: [0x1d2e0] in /opt/torch/lib/libtorch_cuda.so
=========
========= ERROR SUMMARY: 1 error
"""
RACE_IN_OURS = """\
========= COMPUTE-SANITIZER
========= Error: Race reported between Write access at void ax::cuda_impl::kern::rot_backward_kernel<float>(...)+0x3a0 in cores.cuh:230
=========     and Read access at void ax::cuda_impl::kern::rot_backward_kernel<float>(...)+0x410 in cores.cuh:236 [512 hazards]
=========
========= RACECHECK SUMMARY: 1 hazard displayed (1 error, 0 warnings)
"""
CLEAN = "========= COMPUTE-SANITIZER\n========= ERROR SUMMARY: 0 errors\n"


def judged(tool, log, rc, tmp_path, passed=3):
    junit = tmp_path / "j.xml"
    junit.write_text(f'<testsuites><testsuite tests="{passed}" failures="0" errors="0" skipped="0"/></testsuites>')
    st = gc.Step(f"compute-sanitizer {tool}", [["x"]], 10, kind="sanitizer", tool=tool, junit=junit)
    st.status, st.rc, st.output = ("ok" if rc == 0 else "FAILED"), rc, log
    gc.judge(st)
    return st


@pytest.mark.parametrize("tool,log,rc,verdict", [
    ("memcheck", CLEAN, 0, "ok"),
    ("memcheck", OURS_MEMCHECK, gc.SANITIZER_EXIT, "FAILED"),
    ("initcheck", OURS_MEMCHECK, gc.SANITIZER_EXIT, "FAILED"),  # in our kernel: fails every tool
    ("initcheck", CUBLAS_FROM_OUR_OP, gc.SANITIZER_EXIT, "ok"),  # listed as 'launched', not failed
    ("memcheck", CUBLAS_FROM_OUR_OP, gc.SANITIZER_EXIT, "FAILED"),  # our op's cuBLAS call read out of bounds
    ("initcheck", TORCH_ONLY, gc.SANITIZER_EXIT, "ok"),
    ("memcheck", TORCH_ONLY, gc.SANITIZER_EXIT, "FAILED"),
    ("synccheck", TORCH_ONLY, gc.SANITIZER_EXIT, "ok"),
    ("racecheck", RACE_IN_OURS, gc.SANITIZER_EXIT, "FAILED"),
    ("memcheck", "Segmentation fault\n", -11, "FAILED"),  # no summary: the sanitizer did not finish
    ("memcheck", "========= ERROR SUMMARY: 2 errors\n", gc.SANITIZER_EXIT, "FAILED"),  # errors it cannot parse
])
def test_sanitizer_verdict(tool, log, rc, verdict, tmp_path):
    st = judged(tool, log, rc, tmp_path)
    assert st.status == verdict, st.detail


def test_sanitizer_report_attribution():
    where = [w for w, _ in gc.sanitizer_reports(OURS_MEMCHECK + CUBLAS_FROM_OUR_OP + TORCH_ONLY + RACE_IN_OURS)]
    assert where == ["ours", "launched", "other", "ours"]


def test_a_clean_sanitizer_run_that_ran_no_test_fails(tmp_path):
    st = judged("memcheck", CLEAN, 0, tmp_path, passed=0)
    assert st.status == "FAILED" and "did not run" in st.detail


FAKE_SANITIZER = '''\
"""Stands in for compute-sanitizer: runs the command after its options, then prints a summary (and, with
--report, one report in an antipasto_ext kernel and exits with --error-exitcode)."""
import subprocess, sys
args = sys.argv[1:]
report = args[0] == "--report"
args = args[1:] if report else args
opts = dict(zip(args[:4:2], args[1:4:2]))  # --tool T --error-exitcode N
print("========= COMPUTE-SANITIZER", flush=True)
rc = subprocess.call(args[4:])
if report:
    print("========= Invalid __global__ read of size 4 bytes")
    print("=========     at void ax::cuda_impl::kern::dplr_backward_kernel<float>(...)+0x90 in cores.cuh:330")
    print("=========")
print(f"========= ERROR SUMMARY: {int(report)} error{'' if report else 's'}")
sys.exit(int(opts["--error-exitcode"]) if report else rc)
'''


def test_the_runner_records_every_step_in_one_results_file(tmp_path):
    """run_phase and render on CPU stand-ins for the steps: passing, failing, a second command after a failure,
    a timeout, a step the phase had no time left for, pytest steps (passed; skipped for want of CUDA) and sanitizer
    steps (clean; a report in our kernel). Each gets its status, exit status and output tail in the file."""
    py = sys.executable
    (tmp_path / "test_tiny.py").write_text(
        "import pytest\n\ndef test_ok():\n    pass\n\n"
        "@pytest.mark.skipif(True, reason='no CUDA device')\ndef test_needs_cuda():\n    pass\n")
    (tmp_path / "fake_cs.py").write_text(FAKE_SANITIZER)

    def pytest_step(name, k, kind="pytest", report=False, tool="memcheck"):
        cmd = gc.pytest_cmd(py, ["test_tiny.py"], k, tmp_path / f"{name}.xml")
        if kind == "sanitizer":
            cmd = [py, str(tmp_path / "fake_cs.py"), *(["--report"] if report else []), "--tool", tool,
                   "--error-exitcode", str(gc.SANITIZER_EXIT), *cmd]
        return gc.Step(name, [cmd], 60, cwd=tmp_path, kind=kind, tool=tool, junit=tmp_path / f"{name}.xml")

    fast = gc.Phase("fast", 120, 4, [
        gc.Step("passes", [[py, "-c", "print('all good')"]], 30),
        gc.Step("fails", [[py, "-c", "import sys; print('boom'); sys.exit(3)"]], 30),
        gc.Step("stops after a failing command", [[py, "-c", "import sys; sys.exit(1)"], [py, "-c", "print('never')"]],
                30),
        pytest_step("pytest ok", "test_ok"),
        pytest_step("pytest without CUDA", "test_needs_cuda"),
        pytest_step("sanitizer clean", "test_ok", kind="sanitizer"),
        pytest_step("sanitizer report", "test_ok", kind="sanitizer", report=True),
    ])
    slow = gc.Phase("slow", 3, 1, [
        gc.Step("hangs", [[py, "-c", "import time; print('waiting', flush=True); time.sleep(60)"]], 2),
        gc.Step("no time left", [[py, "-c", "pass"]], 30),
    ])
    started = time.monotonic()
    for ph in (fast, slow):
        gc.run_phase(ph, dict(os.environ), tmp_path, started + 300, lambda s: None)
    assert time.monotonic() - started < 60
    status = {s.name: s.status for ph in (fast, slow) for s in ph.steps}
    assert status == {"passes": "ok", "fails": "FAILED", "stops after a failing command": "FAILED",
                      "pytest ok": "ok", "pytest without CUDA": "FAILED", "sanitizer clean": "ok",
                      "sanitizer report": "FAILED", "hangs": "TIMEOUT (2 s)",
                      "no time left": "not run: the slow phase's 3 s were spent"}, status
    md = gc.render(["- header"], [fast, slow], started, True)
    step_md = {part.split("\n")[0]: part for part in md.split("\n### ")[1:]}
    assert "exit 3" in step_md["fails"] and "boom" in step_md["fails"]
    assert "never" not in step_md["stops after a failing command"].split("```")[1]
    assert "1 passed, 0 failed, 0 errors, 0 skipped" in step_md["pytest ok"]
    assert "the CUDA tests did not run: no CUDA device" in step_md["pytest without CUDA"]
    assert "[ours] Invalid __global__ read" in step_md["sanitizer report"]
    assert "waiting" in step_md["hangs"] and "TIMEOUT" in step_md["hangs"]
    assert "| slow | no time left | 30 |" in md
