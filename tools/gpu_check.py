#!/usr/bin/env python3
"""The GPU check: one command on a machine with one NVIDIA GPU (an H100 / H200 with 16 cores) and no network.
It builds antipasto_ext against the installed torch and writes the evidence to ONE results file (default
benchmarks/results/gpu_<gpu>_<date>.md), in at most 8 minutes, the build included:

  build       pip install --no-build-isolation --no-deps --no-index . for sm_90 only with 16 jobs, and beside
              it the ptxas register / spill report (tools/check_ptxas.py --arch 90)
  tests       the CUDA parity tests at real shapes (tests/test_cuda_shapes.py) and the CUDA cases of the op,
              layer-op and module suites; beside them compute-sanitizer memcheck, racecheck, initcheck and
              synccheck, one run per tool and kernel family, on the small test_sanitizer_* cases
  benchmarks  benchmarks/cost_report.py and benchmarks/cayley_gap.py in their quick GPU mode, one at a time

Every step has a time limit, printed at the start and written to the results file with the step's exit status
and the tail of its output. Every step runs even when an earlier one failed; a step whose tool is missing is
skipped with the reason. The steps of a phase share the machine (up to the phase's `parallel`), and the phase
ends at its limit; the phase limits add up to at most 8 minutes. The results file is rewritten as each step
ends, so a run cut short still leaves its evidence. Exit status 0 only when every step ran and passed.

    python3 tools/gpu_check.py [--out FILE] [--logs DIR] [--phases build,tests,benchmarks]
    bash tools/gpu_check.sh ...          (the same)
    python3 tools/gpu_check.py --dry-run (no GPU needed; CI runs it through tests/test_gpu_check.py)

The dry run checks the plan on any machine: every step's files exist, every pytest selection collects at
least one test, the benchmark flags parse, every tool a step needs is in the GPU image (the device tool's
KINDS.md), and the limits add up to at most 8 minutes. It prints the plan and exits non-zero on a problem.

compute-sanitizer runs with the CUDA caching allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1: every tensor is
its own cudaMalloc, so memcheck sees the allocation bounds and initcheck sees fresh memory instead of the
cache's stale bytes) and with no kernel filter: a name filter that matches nothing checks nothing, and under
initcheck the writes of filtered-out kernels (cuBLAS producing p, say) would not count as initialisation. Each
report is attributed instead: to our kernel (its access is in an antipasto_ext kernel), to a kernel our op
launched (cuBLAS, torch; a host frame in our library), or to something else. A report in our kernel fails the
step, whatever the tool; so does any memcheck report in another kernel (a wrong argument of ours can make cuBLAS
read out of bounds). Racecheck, synccheck and initcheck reports in other kernels (a vendor kernel's own shared
memory and barriers, torch's and cuBLAS's own reads of memory they never wrote), CUDA API errors outside our
library and racecheck warnings are listed, not failed.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
LIMIT_S = 480  # the whole check, the build included
RESERVE_S = 20  # start-up (the environment probes) and writing the results, outside every phase
MIN_START_S = 15  # a step is not started with less than this (or its own limit, if smaller) left in its phase

# What the GPU image holds (the device tool's KINDS.md, kind nvidia-h200): a step needing anything else would
# be skipped there, so the dry run refuses it.
IMAGE_TOOLS = {"nvidia-smi", "nvcc", "compute-sanitizer", "ncu", "cuobjdump", "nvdisasm", "cmake", "ninja"}
IMAGE_MODULES = {"torch", "pytest", "setuptools", "wheel", "ninja", "numpy", "transformers", "peft", "matplotlib",
                 "safetensors", "pip"}

SANITIZER_TOOLS = ["memcheck", "racecheck", "initcheck", "synccheck"]
# kernel family -> the test_sanitizer_* cases of tests/test_cuda_shapes.py that run its kernels
SANITIZER_FAMILIES = {
    "block_cayley": "sanitizer and block_cayley",
    "gain core": "sanitizer and layer and cublas and gain",
    "dplr core": "sanitizer and layer and cublas and dplr",
    "rot core": "sanitizer and layer and cublas and rot",
    "ablate core": "sanitizer and layer and cublas and ablate",
    "fused projection, decode": "sanitizer and layer and decode",
    "fused projection, prefill": "sanitizer and layer and prefill",
}
# antipasto_ext's CUDA kernels (csrc/kernels/*.cuh): a sanitizer report whose access is in one of these is ours
OUR_KERNELS = re.compile(r"ax::cuda_impl|_ZN2ax9cuda_impl|\b(cayley_(forward|backward)_(small|cta)_kernel|"
                         r"diag_(forward|backward)_kernel|rot_(forward|backward)_kernel|dplr_(forward|backward)_kernel|"
                         r"ablate_(forward|backward)_kernel|reduce_partials_kernel|project_core_kernel|"
                         r"project_decode_kernel|project_finish_kernel|project_gemv_kernel)\b")
# a host frame in antipasto_ext's library (site-packages/antipasto_ext/_C...so): the kernel was launched by our op
OUR_LIBRARY = re.compile(r"antipasto_ext")
SANITIZER_EXIT = 86  # --error-exitcode: the sanitizer found something (told apart from a failing test)
# beyond --tool / --error-exitcode: a slow Python start (10 processes at once) must not time out the sanitizer's
# attach (default 10 s). Host backtraces stay on (the default): they tell a cuBLAS kernel launched by our op
# from one launched by torch for the test.
SANITIZER_OPTIONS = ["--launch-timeout", "120"]

BUILD_INFO = ('import sys, antipasto_ext as ax; i = ax.build_info(); print(i); '
              'sys.exit(0 if i["cuda"] and "9.0" in i["cuda_archs"] else '
              '"antipasto_ext was built without CUDA kernels for sm_90")')


@dataclasses.dataclass
class Step:
    name: str
    cmds: list  # argv lists, run one after another while each succeeds
    budget_s: int
    cwd: Path = ROOT
    env: dict = dataclasses.field(default_factory=dict)
    tools: tuple = ()  # executables it needs (names of IMAGE_TOOLS)
    modules: tuple = ()  # Python modules it needs
    files: tuple = ()  # files it needs, relative to the repository
    pytest: tuple | None = None  # (test files relative to tests/, -k expression): what it runs
    kind: str = "plain"  # plain | pytest | sanitizer | bench
    tool: str = ""  # the compute-sanitizer tool of a sanitizer step
    junit: Path | None = None
    report: Path | None = None  # a Markdown file the step writes, embedded in the results
    tail: int = 40
    # filled by the run
    status: str = "not run"
    rc: int | None = None
    wall_s: float | None = None
    detail: str = ""
    output: str = ""


@dataclasses.dataclass
class Phase:
    name: str
    budget_s: int
    parallel: int
    steps: list


# ------------------------------------------------------------------------------------------------ the plan


def pytest_cmd(py, files, kexpr, junit, verbose=False):
    return [py, "-m", "pytest", "-p", "no:cacheprovider", "-q", "--tb=short", "-rfEs", f"--junitxml={junit}",
            *(["-v"] if verbose else []), *files, "-k", kexpr]


def plan(py: str, cuda_home: str, sanitizer: list, logs: Path) -> list:
    """The phases of the check; `sanitizer` is the compute-sanitizer command before --tool (path, options)."""
    build_env = {"TORCH_CUDA_ARCH_LIST": "9.0", "MAX_JOBS": "16", "ANTIPASTO_EXT_CUDA": "1", "CUDA_HOME": cuda_home}
    build = Phase("build", 190, 2, [
        Step("build (sm_90, 16 jobs)",
             [[py, "-m", "pip", "install", "--no-build-isolation", "--no-deps", "--no-index",
               "--disable-pip-version-check", "-v", "."],
              [py, "-P", "-c", BUILD_INFO]],
             185, env=build_env, tools=("nvcc", "ninja"), modules=("pip", "setuptools", "wheel", "torch"),
             files=("setup.py", "pyproject.toml"), tail=25),
        Step("ptxas register / spill report (sm_90)",
             [[py, "tools/check_ptxas.py", "--arch", "90", "--out", str(logs / "ptxas_report.md")]],
             120, env={"CUDA_HOME": cuda_home}, tools=("nvcc",), files=("tools/check_ptxas.py", "csrc/cuda/kernels.cu"),
             report=logs / "ptxas_report.md", tail=15),
    ])

    def test_step(name, files, kexpr, budget, **kw):
        slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        junit = logs / f"{slug}.xml"
        return Step(name, [pytest_cmd(py, files, kexpr, junit, verbose=kw.pop("verbose", False))], budget, cwd=TESTS,
                    modules=("pytest", "torch"), files=tuple(f"tests/{f}" for f in files), pytest=(tuple(files), kexpr),
                    kind=kw.pop("kind", "pytest"), junit=junit, **kw)

    # three processes for the real shapes: side by side on the GPU, and a sticky CUDA error in one (an illegal
    # address poisons its context) leaves the others' evidence intact
    tests = [
        test_step(f"CUDA parity at real shapes: {name}", ["test_cuda_shapes.py"], kexpr, 140,
                  env={"OMP_NUM_THREADS": "4"}, tail=30)
        for name, kexpr in (("bf16", "real_shapes and bfloat16"), ("fp16", "real_shapes and float16 and not bfloat16"),
                            ("fp32, the kernels each setting launches, a decode step in a CUDA graph",
                             "real_shapes and float32 or paths or cuda_graph"))
    ] + [
        test_step("CUDA cases of the op, layer-op and module suites",
                  ["test_ops.py", "test_layer_ops.py", "test_modules.py", "test_steering.py"], "cuda and not cuda-emulated",
                  120,
                  env={"OMP_NUM_THREADS": "2"}, tail=30),
    ]
    for tool in SANITIZER_TOOLS:
        for family, kexpr in SANITIZER_FAMILIES.items():
            st = test_step(f"compute-sanitizer {tool}: {family}", ["test_cuda_shapes.py"], kexpr, 80,
                           kind="sanitizer", tool=tool, verbose=True, tools=("compute-sanitizer",),
                           env={"PYTORCH_NO_CUDA_MEMORY_CACHING": "1", "OMP_NUM_THREADS": "1"}, tail=40)
            st.cmds[0] = [*sanitizer, "--tool", tool, "--error-exitcode", str(SANITIZER_EXIT), *st.cmds[0]]
            tests.append(st)
    out = logs / "bench"
    benchmarks = Phase("benchmarks", 100, 1, [
        Step("benchmark: cost report (quick GPU mode)",
             [[py, "benchmarks/cost_report.py", "--device", "cuda", "--dtype", "bfloat16", "--quick", "--out", str(out)]],
             70, modules=("torch",), files=("benchmarks/cost_report.py", "benchmarks/_common.py"), kind="bench",
             report=out / "cost_report_cuda_quick.md", tail=150),
        Step("benchmark: Cayley gap (quick GPU mode)",
             [[py, "benchmarks/cayley_gap.py", "--device", "cuda", "--dtype", "bfloat16", "--quick", "--out", str(out)]],
             30, modules=("torch",), files=("benchmarks/cayley_gap.py", "benchmarks/_common.py"), kind="bench",
             report=out / "cayley_gap_cuda_quick.md", tail=150),
    ])
    return [build, Phase("tests", 170, 10, tests), benchmarks]


# ------------------------------------------------------------------------------------------------ environment


def find_cuda_home() -> str | None:
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    if Path("/usr/local/cuda").is_dir():
        return "/usr/local/cuda"
    nvcc = shutil.which("nvcc")
    return str(Path(nvcc).resolve().parent.parent) if nvcc else None


def find_tool(name: str, cuda_home: str | None, path: str | None = None) -> str | None:
    if cuda_home:
        for p in (Path(cuda_home, "bin", name), Path(cuda_home, name, name)):  # compute-sanitizer has its own folder
            if p.is_file() and os.access(p, os.X_OK):
                return str(p)
    return shutil.which(name, path=path)


def run_text(cmd, timeout=60, **kw) -> tuple[int, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)
        return p.returncode, (p.stdout + p.stderr).strip()
    except (OSError, subprocess.SubprocessError) as e:
        return -1, f"{type(e).__name__}: {e}"


GPU_PROBE = """
import json, torch
d = {"torch": torch.__version__, "torch_cuda": torch.version.cuda, "available": torch.cuda.is_available(),
     "count": torch.cuda.device_count() if torch.cuda.is_available() else 0}
if d["count"]:
    p = torch.cuda.get_device_properties(0)
    d.update(name=p.name, capability=f"{p.major}.{p.minor}", sms=p.multi_processor_count,
             memory_gib=round(p.total_memory / 2**30, 1))
print(json.dumps(d))
"""


def probe_gpu(py: str) -> dict:
    rc, out = run_text([py, "-c", GPU_PROBE], timeout=120, cwd=tempfile.gettempdir())
    try:
        return json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        return {"available": False, "error": out[-500:] or f"exit {rc}"}


MODULES_PROBE = """
import importlib.metadata as md, importlib.util as u, json, sys
def version(m):
    try:
        return md.version(m)
    except md.PackageNotFoundError:
        return "installed"
print(json.dumps({m: (version(m) if u.find_spec(m) else None) for m in sys.argv[1:]}))
"""


def probe_modules(py: str, names) -> dict:
    """{module: version, or None when it is not importable} without importing any of them."""
    rc, out = run_text([py, "-c", MODULES_PROBE, *names], timeout=60)
    try:
        return json.loads(out.splitlines()[-1])
    except (ValueError, IndexError):
        return {m: None for m in names}


# ------------------------------------------------------------------------------------------------ running


def run_step(step: Step, timeout: float, base_env: dict, log: Path):
    """Runs the step's commands in order (each while the previous succeeded) within `timeout` seconds; the
    whole process group is killed at the limit."""
    env = {**base_env, **step.env}
    t0 = time.monotonic()
    step.status, rc = "running", 0
    with open(log, "w") as f:
        for cmd in step.cmds:
            f.write(f"$ {shlex.join(cmd)}\n")
            f.flush()
            left = timeout - (time.monotonic() - t0)
            try:
                proc = subprocess.Popen(cmd, cwd=step.cwd, env=env, stdout=f, stderr=subprocess.STDOUT,
                                        start_new_session=True)
            except OSError as e:
                f.write(f"cannot start: {e}\n")
                rc = 127
                break
            try:
                rc = proc.wait(timeout=max(left, 1))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:  # it ended just now
                    pass
                proc.wait()
                rc = None
                break
            if rc != 0:
                break
    step.wall_s = time.monotonic() - t0
    step.rc = rc
    step.output = log.read_text(errors="replace")
    if rc is None:
        step.status = f"TIMEOUT ({timeout:.0f} s)"
    else:
        step.status = "ok" if rc == 0 else "FAILED"
    judge(step)


def junit_counts(path: Path) -> dict | None:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    c = {k: sum(int(s.get(k, 0)) for s in suites) for k in ("tests", "failures", "errors", "skipped")}
    c["passed"] = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
    c["skip_reasons"] = sorted({(e.get("message") or "").strip() for e in root.iter("skipped")})
    return c


def sanitizer_reports(text: str) -> list:
    """The reports of a compute-sanitizer log: [(where, block text)], where is
      'ours'      the access is in an antipasto_ext kernel,
      'launched'  in another kernel (cuBLAS, torch) that an antipasto_ext op launched (a host frame in our library),
      'api'       a CUDA API error outside our library,
      'warning'   a racecheck warning (not an error) outside our kernels,
      'other'     anything else (a kernel torch launched for the test itself)."""
    blocks, cur = [], None
    for line in text.splitlines():
        if not line.startswith("========="):
            continue
        body = line[9:]
        if body.strip() == "" or body.lstrip().startswith(("ERROR SUMMARY", "RACECHECK SUMMARY", "COMPUTE-SANITIZER",
                                                             "LEAK SUMMARY", "Target application")):
            cur = None
            continue
        if not body.startswith("  "):  # a report starts unindented; its details are indented
            cur = [body.strip()]
            blocks.append(cur)
        elif cur is not None:
            cur.append(body.strip())
    out = []
    for lines in blocks:
        cut = next((i for i, ln in enumerate(lines) if ln.startswith("Saved host backtrace")), len(lines))
        access, host = "\n".join(lines[:cut]), "\n".join(lines[cut:])
        if OUR_KERNELS.search(access):
            where = "ours"
        elif OUR_LIBRARY.search(host):
            where = "launched"
        elif lines[0].startswith("Program hit"):
            where = "api"
        elif lines[0].startswith("Warning"):
            where = "warning"
        else:
            where = "other"
        out.append((where, "\n".join(lines)))
    return out


def judge(step: Step):
    """Turns the step's exit status and output into its verdict (step.status, step.detail)."""
    if step.status.startswith("TIMEOUT") and step.kind not in ("pytest", "sanitizer"):
        return
    if step.kind in ("pytest", "sanitizer"):
        c = junit_counts(step.junit) if step.junit else None
        if c is None:
            step.detail = "no pytest report (pytest did not run to the end)"
            step.status = "FAILED" if step.status == "ok" else step.status
            return
        step.detail = f"{c['passed']} passed, {c['failures']} failed, {c['errors']} errors, {c['skipped']} skipped"
        no_cuda = [r for r in c["skip_reasons"] if "CUDA" in r]
        problems = []
        if c["failures"] or c["errors"]:
            problems.append("tests failed")
        if c["passed"] == 0 or no_cuda:
            problems.append("the CUDA tests did not run" + (f": {no_cuda[0]}" if no_cuda else ""))
        if step.kind == "sanitizer":
            reports = sanitizer_reports(step.output)
            n = {w: sum(1 for x, _ in reports if x == w) for w in ("ours", "launched", "other", "api", "warning")}
            summary = re.findall(r"^=========\s*((?:ERROR|RACECHECK) SUMMARY:.*)$", step.output, re.M)
            step.detail += "; reports: " + (", ".join(f"{v} {k}" for k, v in n.items() if v) or "none")
            step.detail += "".join(f"; {x}" for x in summary)
            # our arguments can make another kernel access out of bounds (memcheck), but not race on its shared
            # memory, misuse its barriers or read what it never wrote itself
            if n["ours"] + (n["launched"] + n["other"] if step.tool == "memcheck" else 0):
                problems.append("the sanitizer reports errors")
            if not summary and not step.status.startswith("TIMEOUT"):
                problems.append("the sanitizer printed no summary")
            if step.rc == SANITIZER_EXIT and not reports:
                problems.append("errors reported in a form this check does not parse (see the log)")
            ok_exit = (0, SANITIZER_EXIT)  # SANITIZER_EXIT alone: reports were found, and judged above
        else:
            ok_exit = (0,)
        if step.rc is not None and step.rc not in ok_exit and not problems:
            problems.append(f"exit {step.rc}")
        step.detail += "".join(f" — {p}" for p in problems)
        if not step.status.startswith("TIMEOUT"):
            step.status = "FAILED" if problems else "ok"
    if step.kind == "bench" and step.status == "ok" and step.report and not step.report.exists():
        step.status = "FAILED"
        step.detail = f"{step.report.name} was not written"


def run_phase(phase: Phase, base_env: dict, logs: Path, deadline: float, on_done):
    queue = list(phase.steps)
    lock = threading.Lock()
    phase_end = min(time.monotonic() + phase.budget_s, deadline)

    def worker():
        while True:
            with lock:
                if not queue:
                    return
                step = queue.pop(0)
            if step.status.startswith("skipped"):
                on_done(step)
                continue
            left = min(step.budget_s, phase_end - time.monotonic())
            if left < min(MIN_START_S, step.budget_s):
                step.status = f"not run: the {phase.name} phase's {phase.budget_s} s were spent"
                on_done(step)
                continue
            slug = re.sub(r"[^A-Za-z0-9]+", "_", step.name).strip("_")
            say(f"  start  {step.name} (limit {left:.0f} s)")
            run_step(step, left, base_env, logs / f"{slug}.log")
            say(f"  {step.status:<8} {step.name} ({step.wall_s:.0f} s){': ' + step.detail if step.detail else ''}")
            on_done(step)

    threads = [threading.Thread(target=worker) for _ in range(max(1, phase.parallel))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def say(msg):
    print(msg, flush=True)


# ------------------------------------------------------------------------------------------------ results file


def tail(text: str, n: int) -> str:
    lines = text.rstrip().splitlines()
    return "\n".join((["[...]"] if len(lines) > n else []) + lines[-n:])


def render(header: list, phases: list, started: float, finished: bool) -> str:
    md = ["# antipasto_ext GPU check", ""] + header + [""]
    md += ["## Steps", "", "| phase | step | limit s | wall s | exit | status | detail |", "|---|---|---|---|---|---|---|"]
    for ph in phases:
        for s in ph.steps:
            wall = f"{s.wall_s:.0f}" if s.wall_s is not None else ""
            rc = "" if s.rc is None else str(s.rc)
            md.append(f"| {ph.name} | {s.name} | {s.budget_s} | {wall} | {rc} | {s.status} | {s.detail} |")
    total = time.monotonic() - started
    md += ["", f"{'Finished' if finished else 'Still running'} after {total:.0f} s (limit {LIMIT_S} s).", ""]
    for ph in phases:
        md += [f"## {ph.name} (limit {ph.budget_s} s, up to {ph.parallel} steps at a time)", ""]
        for s in ph.steps:
            md += [f"### {s.name}", "", f"status **{s.status}**, exit {'—' if s.rc is None else s.rc}, "
                   f"limit {s.budget_s} s"
                   + (f", {s.wall_s:.0f} s" if s.wall_s is not None else "") + (f"; {s.detail}" if s.detail else ""), ""]
            env = " ".join(f"{k}={shlex.quote(v)}" for k, v in s.env.items())
            where = os.path.relpath(s.cwd, ROOT) if s.cwd.is_relative_to(ROOT) else str(s.cwd)
            for cmd in s.cmds:
                md.append(f"    (cd {shlex.quote(where)} && {env + ' ' if env else ''}{shlex.join(cmd)})")
            md.append("")
            if s.report and s.report.exists() and s.status == "ok":
                md += [s.report.read_text().rstrip(), ""]
            elif s.report and s.report.exists():
                md += ["<details><summary>report</summary>", "", s.report.read_text().rstrip(), "", "</details>", ""]
            if s.kind == "sanitizer" and s.output:
                reports = sanitizer_reports(s.output)
                if reports:
                    md += [f"Reports ({min(len(reports), 10)} of {len(reports)}; host frames cut):", "", "```"]
                    for where, body in reports[:10]:
                        md.append(f"[{where}] " + body.split("\nSaved host backtrace")[0])
                    md += ["```", ""]
            if s.output and (s.status != "ok" or not s.report):
                md += ["```", tail(s.output, s.tail), "```", ""]
    return "\n".join(md) + "\n"


# ------------------------------------------------------------------------------------------------ dry run


def worst_case(ph: Phase) -> int:
    """The phase's length were every step to use its whole limit (steps start in order as slots free up)."""
    slots = [0] * max(1, ph.parallel)
    for st in ph.steps:
        slots.sort()
        slots[0] += st.budget_s
    return max(slots)


def dry_run(phases: list, py: str) -> int:
    problems = []
    say(f"dry run: the GPU check's plan ({len([s for p in phases for s in p.steps])} steps), limit {LIMIT_S} s")
    total = RESERVE_S
    for ph in phases:
        say(f"\nphase {ph.name}: limit {ph.budget_s} s, {len(ph.steps)} steps, up to {ph.parallel} at a time")
        total += ph.budget_s
        for s in ph.steps:
            say(f"  {s.budget_s:>4} s  {s.name}")
            if s.budget_s > ph.budget_s:
                problems.append(f"{s.name}: its limit {s.budget_s} s exceeds its phase's {ph.budget_s} s")
            for f in s.files:
                if not (ROOT / f).is_file():
                    problems.append(f"{s.name}: {f} does not exist")
            for t in s.tools:
                if t not in IMAGE_TOOLS:
                    problems.append(f"{s.name}: needs {t}, which the GPU image does not have (KINDS.md)")
            for m in s.modules:
                if m not in IMAGE_MODULES:
                    problems.append(f"{s.name}: needs the Python module {m}, which the GPU image does not have")
        worst = worst_case(ph)
        if worst > ph.budget_s:
            say(f"  (were every step to use its whole limit, {worst} s: the phase ends at its {ph.budget_s} s and "
                "reports the steps it cut or did not start)")
    say(f"\ntotal: {total} s of {LIMIT_S} s ({RESERVE_S} s start-up and results, then the phase limits)")
    if total > LIMIT_S:
        problems.append(f"the phase limits add up to {total} s, more than {LIMIT_S} s")

    # every pytest selection collects at least one test: one collection run, the -k expressions evaluated by pytest
    sels = [s for p in phases for s in p.steps if s.pytest]
    files = sorted({f for s in sels for f in s.pytest[0] if (TESTS / f).is_file()})
    with tempfile.TemporaryDirectory() as tmp:
        counts_path = Path(tmp, "counts.json")
        env = dict(os.environ, GPU_CHECK_SELECTIONS=json.dumps([[list(s.pytest[0]), s.pytest[1]] for s in sels]),
                   GPU_CHECK_COUNTS=str(counts_path),
                   PYTHONPATH=os.pathsep.join([str(ROOT / "tools"), os.environ.get("PYTHONPATH", "")]))
        collect = subprocess.Popen([py, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", "-p",
                                    "gpu_check_collect", *files], cwd=TESTS, env=env, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        bench = subprocess.Popen([py, "-c", BENCH_ARGS_CHECK, json.dumps(
            [[s.cmds[0][1], s.cmds[0][2:]] for p in phases for s in p.steps if s.kind == "bench"])], cwd=ROOT,
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        out, _ = collect.communicate()
        bench_out, _ = bench.communicate()
        if collect.returncode not in (0, 5) or not counts_path.exists():
            problems.append(f"pytest --collect-only failed (exit {collect.returncode}):\n{tail(out, 20)}")
        else:
            say("\npytest selections (tests collected, steps that run them):")
            shown = {}
            for s, n in zip(sels, json.loads(counts_path.read_text())):
                shown.setdefault((s.pytest, n if isinstance(n, int) else "?"), []).append(s.name)
            for ((fs, kexpr), n), names in shown.items():
                say(f"  {n:>5}  {' '.join(fs)} -k {kexpr!r}  ({len(names)} step{'s' if len(names) > 1 else ''})")
            for s, n in zip(sels, json.loads(counts_path.read_text())):
                missing = [f for f in s.pytest[0] if not (TESTS / f).is_file()]
                if missing:
                    problems.append(f"{s.name}: tests/{missing[0]} does not exist (pytest exit 4)")
                elif not isinstance(n, int):
                    problems.append(f"{s.name}: {n}")
                elif n == 0:
                    problems.append(f"{s.name}: -k {s.pytest[1]!r} collects no test (pytest exit 5)")
        say("\nbenchmark flags: " + ("parse" if bench.returncode == 0 else "REFUSED"))
        if bench.returncode != 0:
            problems.append(f"benchmark flags refused:\n{tail(bench_out, 10)}")
    if problems:
        say("\ndry run: FAILED")
        for p in problems:
            say(f"  - {p}")
        return 1
    say("\ndry run: OK")
    return 0


# each benchmark script's own parse_args on the flags the check passes (argparse exits 2 on an unknown flag)
BENCH_ARGS_CHECK = """
import importlib, json, sys
sys.path.insert(0, "benchmarks")
for script, argv in json.loads(sys.argv[1]):
    importlib.import_module(script.split("/")[-1][:-3]).parse_args(argv)
"""


# ------------------------------------------------------------------------------------------------ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="results file (default benchmarks/results/gpu_<gpu>_<date>.md)")
    ap.add_argument("--logs", type=Path, default=ROOT / "build" / "gpu_check", help="full logs of every step")
    ap.add_argument("--phases", default="build,tests,benchmarks", help="comma list of the phases to run")
    ap.add_argument("--python", default=sys.executable, help="the Python that holds torch (default: this one)")
    ap.add_argument("--dry-run", action="store_true", help="check the plan without a GPU, run nothing")
    args = ap.parse_args(argv)
    started = time.monotonic()  # the limit counts from here: the probes below are part of the 8 minutes
    py = args.python
    logs = args.logs.resolve()
    cuda_home = find_cuda_home()
    cs_path = find_tool("compute-sanitizer", cuda_home)
    names = [ph.name for ph in plan(py, "", [], logs)]
    wanted = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in wanted if p not in names]
    if unknown:
        say(f"gpu_check: unknown phase {unknown[0]!r}; the phases are {', '.join(names)}")
        return 2
    if args.dry_run:
        phases = plan(py, cuda_home or "/usr/local/cuda", [cs_path or "compute-sanitizer", *SANITIZER_OPTIONS], logs)
        return dry_run([ph for ph in phases if ph.name in wanted], py)

    # bad input first, one line each: no CUDA toolkit, no GPU
    if not cuda_home or not Path(cuda_home, "bin", "nvcc").is_file() or not Path(cuda_home, "include",
                                                                                 "cuda_runtime.h").is_file():
        say(f"gpu_check: no CUDA toolkit at CUDA_HOME={cuda_home or '(unset, no /usr/local/cuda, no nvcc on PATH)'}: "
            "bin/nvcc and include/cuda_runtime.h are needed (set CUDA_HOME to the toolkit of the GPU's torch)")
        return 2
    gpu = probe_gpu(py)
    if not gpu.get("count"):
        why = gpu.get("error", "").splitlines()[-1:] or [f"torch {gpu.get('torch')}: torch.cuda.is_available() is "
                                                         f"{gpu.get('available')}"]
        say(f"gpu_check: no CUDA GPU visible to {py} ({why[0]}); the GPU check needs one (try --dry-run)")
        return 2

    deadline = started + LIMIT_S
    phases = [ph for ph in plan(py, cuda_home, [cs_path or "compute-sanitizer", *SANITIZER_OPTIONS], logs)
              if ph.name in wanted]
    logs.mkdir(parents=True, exist_ok=True)
    for s in (s for ph in phases for s in ph.steps):
        for f in (s.junit, s.report):
            if f and f.exists():
                f.unlink()
    date = datetime.datetime.now(datetime.timezone.utc)
    out = args.out or ROOT / "benchmarks" / "results" / (
        f"gpu_{re.sub(r'[^A-Za-z0-9]+', '_', gpu['name']).strip('_')}_{date:%Y%m%d}.md")
    out.parent.mkdir(parents=True, exist_ok=True)

    # what each step needs, on this machine; the Python's own bin goes first on PATH: its console scripts (ninja
    # for the build) belong with it
    path = os.pathsep.join([str(Path(py).parent), os.environ.get("PATH", "")])
    mods = probe_modules(py, sorted({m for ph in phases for s in ph.steps for m in s.modules}
                                    | {"transformers", "peft", "matplotlib"}))
    for s in (s for ph in phases for s in ph.steps):
        miss = [t for t in s.tools if not find_tool(t, cuda_home, path)] + [m for m in s.modules if not mods.get(m)]
        if miss:
            s.status = f"skipped: {', '.join(miss)} not found on this machine"

    git = run_text(["git", "-C", str(ROOT), "describe", "--always", "--dirty"], timeout=10)
    smi = run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                    "--format=csv,noheader"], timeout=30)
    nvcc = run_text([str(Path(cuda_home, "bin", "nvcc")), "--version"], timeout=30)
    csv = run_text([cs_path, "--version"], timeout=30) if cs_path else (1, "")
    header = [
        f"- date: {date:%Y-%m-%d %H:%M} UTC; commit: {git[1] if git[0] == 0 else 'unknown (no git here)'}",
        f"- GPU: {gpu['name']} (compute capability {gpu['capability']}, {gpu['sms']} SMs, {gpu['memory_gib']} GiB); "
        f"nvidia-smi: {smi[1] if smi[0] == 0 else 'not available'}",
        f"- torch {gpu['torch']} (CUDA {gpu['torch_cuda']}); {run_text([py, '--version'])[1]} at {py}; "
        f"{os.cpu_count()} CPUs",
        f"- nvcc: {nvcc[1].splitlines()[-1] if nvcc[0] == 0 else 'not available'} (CUDA_HOME {cuda_home})",
        f"- compute-sanitizer: {csv[1].splitlines()[-1] if csv[0] == 0 and csv[1] else 'not found'} ({cs_path}); "
        f"PYTORCH_NO_CUDA_MEMORY_CACHING=1, no kernel filter, reports attributed by kernel (see tools/gpu_check.py)",
        "- Python modules: " + ", ".join(f"{m} {v or 'missing'}" for m, v in mods.items()),
        f"- command: {' '.join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])])}; "
        f"full logs: {logs}",
    ]
    say(f"gpu_check: {gpu['name']}, torch {gpu['torch']}; results: {out}; limit {LIMIT_S} s")
    for ph in phases:
        say(f"  phase {ph.name}: limit {ph.budget_s} s, up to {ph.parallel} steps at a time")
        for s in ph.steps:
            say(f"    {s.budget_s:>4} s  {s.name}" + (f"  [{s.status}]" if s.status.startswith("skipped") else ""))

    lock = threading.Lock()

    def write(finished=False):
        with lock:
            out.write_text(render(header, phases, started, finished))

    base_env = dict(os.environ, PYTHONUNBUFFERED="1", CUDA_HOME=cuda_home, PATH=path)
    write()
    for ph in phases:
        say(f"phase {ph.name} (limit {ph.budget_s} s)")
        run_phase(ph, base_env, logs, deadline, lambda s: write())
    write(finished=True)
    steps = [s for ph in phases for s in ph.steps]
    bad = [s for s in steps if s.status != "ok"]
    say(f"gpu_check: {len(steps) - len(bad)} of {len(steps)} steps ok in {time.monotonic() - started:.0f} s; "
        f"results: {out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
