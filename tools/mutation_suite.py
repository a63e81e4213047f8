#!/usr/bin/env python3
"""Mutation suite of the kernel tests: proof that the emulator's checks and the kernel tests bite.

Each mutant is a copy of the repository's kernel source with one realistic bug planted (a deleted barrier,
a race, a cp.async refill too early, a K-split finish in the same launch, an off-by-one bound, swapped mma
fragment registers, a missing cp_async_wait, a launch on the wrong stream, ...). For each, the kernel tests
of the family it changes (tests/cpp/test_{cores,cayley,project}.cpp) are built in the emulator's checked
build (emu/checker.h) from the mutated copy and run; the mutant is killed when they fail (a wrong value or
an emulator error). The unmutated source is built and run the same way, beside the mutants: it must pass, or
the kill count means nothing.

Usage: python tools/mutation_suite.py [--jobs 2] [--only ID ...] [--list] [--out report.md]
Exits non-zero if the baseline fails, a mutation no longer applies (the source changed: update its
snippet), or any mutant survives. Needs cmake, a C++17 compiler with -fsanitize=thread instrumentation
(GCC or Clang) and the CUDA headers ($CUDA_HOME/include).
"""
import argparse
import concurrent.futures as cf
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COPY = ["CMakeLists.txt", "emu", "csrc", "tests/cpp", "tools/kernel_metrics.cpp"]

# id, what the bug models, [(file, snippet, replacement), ...]. Every snippet must occur exactly once. A mutant
# runs the checked kernel tests of the families of the files it changes (FAMILY_TARGETS).
MUTANTS = [
    ("deleted-barrier-write-read",
     "the barrier between the shared tile fill and its reads (rot forward)",
     [("csrc/kernels/cores.cuh",
       "  if (stage_params) stage_rows(Rs, R, r, bs, ld);\n  load_tile(P, r, p, row0, rows, r);\n  __syncthreads();\n",
       "  if (stage_params) stage_rows(Rs, R, r, bs, ld);\n  load_tile(P, r, p, row0, rows, r);\n")]),
    ("two-writers-one-slot",
     "8 warps write every s[j] in one barrier interval (same values: only a race check sees it)",
     [("csrc/kernels/cores.cuh",
       "  for (int j = threadIdx.x; j < r; j += blockDim.x) s[j] = diag_scale(mode, __ldg(S + j), __ldg(x + j), coeff, suppress_only);",
       "  for (int j = threadIdx.x % 32; j < r; j += 32) s[j] = diag_scale(mode, __ldg(S + j), __ldg(x + j), coeff, suppress_only);")]),
    ("cp-async-refill-before-barrier",
     "the projection's K loop refills a cp.async stage other warps may still read (end-of-step barrier gone)",
     [("csrc/kernels/project.cuh",
       "        mma16816<T>(acc[j], a, b, acc[j]);\n      }\n    }\n    __syncthreads();\n  }\n",
       "        mma16816<T>(acc[j], a, b, acc[j]);\n      }\n    }\n  }\n")]),
    ("missing-cp-async-wait",
     "the projection reads a stage without waiting for its cp.async group",
     [("csrc/kernels/project.cuh",
       "    ax::cp_async_commit();\n    ax::cp_async_wait<1>();\n    __syncthreads();\n",
       "    ax::cp_async_commit();\n    __syncthreads();\n")]),
    ("split-k-finish-in-same-launch",
     "the last decode CTA sums the other CTAs' partials in the same launch; the finish kernel reads only its slice",
     [("csrc/kernels/project.cuh",
       "      part[int64_t(row) * r + col] = ((q[0] + q[w]) + q[2 * w]) + q[3 * w];\n    }\n  }\n}\n",
       "      part[int64_t(row) * r + col] = ((q[0] + q[w]) + q[2 * w]) + q[3 * w];\n    }\n  }\n"
       "  if (blockIdx.x + 1 != gridDim.x) return;\n"
       "  __syncthreads();\n"
       "  for (int e = tid; e < n * kDecCols; e += kDecThreads) {\n"
       "    const int row = e / kDecCols, col = e % kDecCols;\n"
       "    if (col0 + col >= r) continue;\n"
       "    float tot = 0.f;\n"
       "    for (int k = 0; k < int(gridDim.x); ++k) tot += ws[(int64_t(k) * n + row) * r + col0 + col];\n"
       "    part[int64_t(row) * r + col] = tot;\n"
       "  }\n}\n"),
      ("csrc/kernels/project.cuh",
       "(floats + (stage ? proj_staged_floats(c, int(r)) : 0)) * sizeof(float), st, ws, int(splits), n, int(r),",
       "(floats + (stage ? proj_staged_floats(c, int(r)) : 0)) * sizeof(float), st, ws + (splits - 1) * n * r, 1, n, int(r),")]),
    ("off-by-one-ragged-rows",
     "the last row tile of a core call (forward or backward) runs one row past its group",
     [("csrc/kernels/cores.cuh",
       "  return RowRange{e, row0, row0 + m.cta_rows < end ? row0 + m.cta_rows : end};",
       "  return RowRange{e, row0, row0 + m.cta_rows < end ? row0 + m.cta_rows : end + 1};")]),
    ("off-by-one-split-k-partial",
     "a decode CTA writes its partials one column past its slice (into the next slice's or row's place)",
     [("csrc/kernels/project.cuh",
       "    if (col0 + col < r) {\n      const float* q = red + row * kDecRedLd + col;",
       "    if (col0 + col <= r) {\n      const float* q = red + row * kDecRedLd + col;")]),
    ("decode-warp-sum-before-barrier",
     "the decode kernel sums the four warps' fp32 tiles before all of them are written",
     [("csrc/kernels/project.cuh",
       "acc[j][2 * h2], acc[j][2 * h2 + 1]);\n    }\n  __syncthreads();\n  float* part = ws",
       "acc[j][2 * h2], acc[j][2 * h2 + 1]);\n    }\n  float* part = ws")]),
    ("decode-finish-drops-a-group",
     "the decode finish adds all but the last group of a column's split partials",
     [("csrc/kernels/project.cuh", "    for (int g = 1; g < groups; ++g) tot += sums[g * r + j];",
       "    for (int g = 1; g < groups - 1; ++g) tot += sums[g * r + j];")]),
    ("decode-finish-first-batch-only",
     "the decode finish sums only the first batch of a column's split partials (enough below 33 splits)",
     [("csrc/kernels/project.cuh", "    if (k0 >= splits) break;\n    load(k0);\n", "    break;\n")]),
    ("gemv-warp-sums-before-barrier",
     "the one-kernel decode adds the warps' sums before all of them are written",
     [("csrc/kernels/project.cuh",
       "      if (lane == 0) red[warp * N * C + i * C + j] = v;\n    }\n  __syncthreads();\n",
       "      if (lane == 0) red[warp * N * C + i * C + j] = v;\n    }\n")]),
    ("gemv-column-past-r",
     "the one-kernel decode's last CTA of an odd r loads a Vh row past r (its product is dropped)",
     [("csrc/kernels/project.cuh", "          if (j < cols) wv[b][j] = ld_vec(",
       "          if (j <= cols) wv[b][j] = ld_vec(")]),
    ("decode-tiles-overwritten-while-read",
     "the decode kernel's fp32 tiles overwrite the x / Vh tiles other warps may still read (barrier gone)",
     [("csrc/kernels/project.cuh",
       "  __syncthreads();  // the tiles' last reads before the warps' fp32 tiles overwrite them\n", "")]),
    ("swapped-mma-fragment-registers",
     "a[1] and a[2] of the A fragment exchanged",
     [("csrc/kernels/project.cuh",
       "    a[1] = ld_u32(arow + 8 * kProjLd);\n    a[2] = ld_u32(arow + 8);\n",
       "    a[1] = ld_u32(arow + 8);\n    a[2] = ld_u32(arow + 8 * kProjLd);\n")]),
    ("launch-on-default-stream",
     "the backward's reduction kernel launched on stream 0 instead of the op's stream",
     [("csrc/kernels/launch_cores.cuh",
       "dim3(blocks_for(n_out, kCoreThreads)), dim3(kCoreThreads), 0, st, ws,",
       "dim3(blocks_for(n_out, kCoreThreads)), dim3(kCoreThreads), 0, nullptr, ws,")]),
    ("dynamic-smem-above-48k-without-opt-in",
     "the kernels' shared-memory budget at 64 KiB (the core tiles grow past 48), no cudaFuncSetAttribute opt-in",
     [("csrc/kernels/kernel_ns.h", "constexpr size_t kSmemBudget = 48 * 1024;",
       "constexpr size_t kSmemBudget = 64 * 1024;")]),
    ("block-above-launch-bounds",
     "the diag forward launched with 512 threads, its __launch_bounds__ is 256 (values stay right)",
     [("csrc/kernels/cores.cuh",
       "AX_LAUNCH((diag_forward_kernel<T>), grid_of(c, m), dim3(kCoreThreads),",
       "AX_LAUNCH((diag_forward_kernel<T>), grid_of(c, m), dim3(2 * kCoreThreads),")]),
    ("deleted-end-of-tile-barrier",
     "the barrier after a row tile's partial sums in the rot backward (matters with several tiles per CTA)",
     [("csrc/kernels/cores.cuh",
       "          for (int row = 0; row < rows; ++row) acc += P[row * r + b0 + i] * s[b0 + i] * D[row * r + b0 + j];\n"
       "      }\n      part[o] = acc;\n    }\n    __syncthreads();\n",
       "          for (int row = 0; row < rows; ++row) acc += P[row * r + b0 + i] * s[b0 + i] * D[row * r + b0 + j];\n"
       "      }\n      part[o] = acc;\n    }\n")]),
    ("partial-read-before-write",
     "the rot backward adds to its workspace slice before the first tile wrote it",
     [("csrc/kernels/cores.cuh",
       "      acc_t acc = first ? acc_t(0) : part[o];\n      if (o < r) {\n        const int j = int(o);\n        if (side == kRotV)",
       "      acc_t acc = part[o];\n      if (o < r) {\n        const int j = int(o);\n        if (side == kRotV)")]),
    ("reduce-one-cta-too-many",
     "the second-stage reduction sums one CTA slice past the workspace",
     [("csrc/kernels/cores.cuh", "    for (int64_t c = e * per_entry; c < (e + 1) * per_entry; ++c) sum += ws[c * slice + j];",
       "    for (int64_t c = e * per_entry; c <= (e + 1) * per_entry; ++c) sum += ws[c * slice + j];")]),
    ("deleted-barrier-low-rank-epilogue",
     "the projection epilogue reads Q = (P u) L d before all of it is written",
     [("csrc/kernels/project.cuh", "      if (lane == 0) Q[e] = acc * (steered ? proj_weight(c, rc, j) : d[j]);\n    }\n    __syncthreads();\n",
       "      if (lane == 0) Q[e] = acc * (steered ? proj_weight(c, rc, j) : d[j]);\n    }\n")]),
    ("deleted-barrier-cayley-elimination",
     "the shared-memory Cayley solve starts a pivot step before the last one is written",
     [("csrc/kernels/cayley.cuh",
       "        if (f != acc_t(0)) v -= f * row[j];\n        M[i * ld + j] = v;\n      }\n    }\n    __syncthreads();\n",
       "        if (f != acc_t(0)) v -= f * row[j];\n        M[i * ld + j] = v;\n      }\n    }\n")]),
    ("cayley-minv-read-before-staged",
     "the shared-memory Cayley backward reads its staged Minv and G before the CTA has written them",
     [("csrc/kernels/cayley.cuh",
       "      Gs[(e / bs) * ld + e % bs] = __ldg(Gb + e);\n    }\n    __syncthreads();\n",
       "      Gs[(e / bs) * ld + e % bs] = __ldg(Gb + e);\n    }\n")]),
    ("cayley-copy-past-last-block",
     "the register-path Cayley forward copies one block past the CTA's last into R",
     [("csrc/kernels/cayley.cuh", "  cayley_stage_out<kNN>(R + b0 * kNN, Rs, count);",
       "  cayley_stage_out<kNN>(R + b0 * kNN, Rs, count + 1);")]),
    ("cayley-staged-t-read-before-barrier",
     "the register-path Cayley forward reads its staged generators before the CTA has written them",
     [("csrc/kernels/cayley.cuh", "  cayley_stage_in<kM>(ts, t + b0 * kM, count);\n  __syncthreads();\n  if (int(threadIdx.x) < count) {\n    const acc_t coeff = cf.at(b0 + threadIdx.x);\n    const CayleyRow<kM, acc_t> tb(ts, threadIdx.x);\n    const CayleyRow<kNN, acc_t> Rb(Rs, threadIdx.x);\n    acc_t M[BS][BS];",
       "  cayley_stage_in<kM>(ts, t + b0 * kM, count);\n  if (int(threadIdx.x) < count) {\n    const acc_t coeff = cf.at(b0 + threadIdx.x);\n    const CayleyRow<kM, acc_t> tb(ts, threadIdx.x);\n    const CayleyRow<kNN, acc_t> Rb(Rs, threadIdx.x);\n    acc_t M[BS][BS];")]),
    ("dplr-missing-barrier-before-t-reads",
     "the dplr forward reads t = p A^T rows other threads are still writing",
     [("csrc/kernels/cores.cuh",
       "    for (int j = 0; j < r; ++j) acc += pr[j] * Am[j];\n    Tt[e] = acc;\n  }\n  __syncthreads();\n",
       "    for (int j = 0; j < r; ++j) acc += pr[j] * Am[j];\n    Tt[e] = acc;\n  }\n")]),
    ("steering-group-zero-coefficient",
     "every steering group of a core call reads group 0's coefficient",
     [("csrc/kernels/cores.cuh", "  return m.coeffs ? __ldg(m.coeffs + e) : m.coeff;",
       "  return m.coeffs ? __ldg(m.coeffs) : m.coeff;")]),
    ("steering-shared-rotation",
     "the steered rot backward rotates every group by group 0's rotation set",
     [("csrc/kernels/cores.cuh",
       "  R += t.entry * R_stride;\n  const acc_t* Rsrc = stage_params ? Rs : R;\n  const int64_t c0",
       "  const acc_t* Rsrc = stage_params ? Rs : R;\n  const int64_t c0")]),
    ("bank-adapter-zero-parameters",
     "every group of a bank call reads adapter 0's dplr parameters in the backward",
     [("csrc/kernels/cores.cuh", "  B += ad * r * k;\n  const acc_t* Asrc = stage_params ? As : A;\n  const acc_t* Bsrc = stage_params ? Bs : B;\n  const int64_t c0",
       "  const acc_t* Asrc = stage_params ? As : A;\n  const acc_t* Bsrc = stage_params ? Bs : B;\n  const int64_t c0")]),
    ("projection-steering-group-zero",
     "the fused projection's epilogue gives every row group 0's coefficient and adapter",
     [("csrc/kernels/project.cuh", "  const int64_t e = unsigned(row) / unsigned(c.group_rows), ad = clamp_adapter(c.adapters, c.n_adapters, e);",
       "  const int64_t e = 0 * row, ad = clamp_adapter(c.adapters, c.n_adapters, e);")]),
    ("vector-fill-of-unaligned-rows",
     "the tile fills take 16-byte loads without checking that the rows start 16-byte aligned",
     [("csrc/kernels/cores.cuh", "ldd % int(16 / sizeof(acc_t)) == 0 && aligned16(x) && aligned16(dst);",
       "ldd % int(16 / sizeof(acc_t)) == 0 && aligned16(dst);")]),
    ("gain-backward-vectors-of-unaligned-rows",
     "the elementwise backward takes 16-byte vectors without checking that grad_h, p and dp are 16-byte aligned",
     [("csrc/kernels/cores.cuh",
       "    const bool vec = k.r % V == 0 && ((reinterpret_cast<uintptr_t>(c.grad_h) |",
       "    const bool vec = k.r % V == 0 && (0 * (reinterpret_cast<uintptr_t>(c.grad_h) |")]),
    ("gain-backward-scales-read-before-barrier",
     "the vector backward of the elementwise cores reads s from shared memory before the CTA has written it",
     [("csrc/kernels/cores.cuh",
       "      ss[diag_swz(j)] = diag_scale(mode, __ldg(S + j), __ldg(x + j), coeff, suppress_only);\n    __syncthreads();\n",
       "      ss[diag_swz(j)] = diag_scale(mode, __ldg(S + j), __ldg(x + j), coeff, suppress_only);\n")]),
    ("gain-backward-row-past-the-chunk",
     "the vector backward of the elementwise cores runs one row past its chunk",
     [("csrc/kernels/cores.cuh", "          if (i0 + b >= t.row1) break;", "          if (i0 + b > t.row1) break;")]),
    ("vector-fill-halves-swapped",
     "a lane stores the two 16-byte halves of its widened vector in each other's place",
     [("csrc/kernels/cores.cuh", "    P::store(dst + f * A, P::pick(f, lo, hi));\n    P::store(dst + (1 - f) * A, P::pick(f, hi, lo));",
       "    P::store(dst + f * A, P::pick(f, hi, lo));\n    P::store(dst + (1 - f) * A, P::pick(f, lo, hi));")]),
    ("cayley-coefficient-of-the-wrong-set",
     "a Cayley block takes the coefficient of set b % per instead of b / per",
     [("csrc/kernels/cayley.cuh", "return coeffs ? __ldg(coeffs + b / per) : value;",
       "return coeffs ? __ldg(coeffs + b % per) : value;")]),
]


# Optimisation of the mutants' checked builds (emu/emu.cmake's AX_CHECKED_OPT): -O1 -g1 compiles a kernel test in
# about half the time of the default -O2 -g; the checks are the same instrumentation.
CHECKED_OPT = "-O1;-g1"

# Tests a mutant runs first (by target) before the rest of its targets' tests: the ones written for its bug, which
# otherwise run after every other test of the binary.
_STEERED = {"test_cores_checked": ["cores_steered_groups_equal_unsteered_calls",
                                   "cores_bank_groups_equal_unsteered_calls_of_their_adapter"]}
FIRST_TESTS = {"steering-group-zero-coefficient": _STEERED, "steering-shared-rotation": _STEERED,
               "bank-adapter-zero-parameters": _STEERED,
               "projection-steering-group-zero": {"test_project_checked": ["project_steered_groups_equal_unsteered_calls"]}}

# The checked test target that exercises each kernel file.
FAMILY_TARGETS = {"csrc/kernels/cores.cuh": "test_cores_checked", "csrc/kernels/launch_cores.cuh": "test_cores_checked",
                  "csrc/kernels/cayley.cuh": "test_cayley_checked", "csrc/kernels/launch_cayley.cuh": "test_cayley_checked",
                  "csrc/kernels/project.cuh": "test_project_checked",
                  "csrc/kernels/launch_project.cuh": "test_project_checked",
                  # the budget every kernel sizes to: the core tiles are the ones that grow past it
                  "csrc/kernels/kernel_ns.h": "test_cores_checked"}
ALL_TARGETS = sorted(set(FAMILY_TARGETS.values()))


def targets_of(edits):
    return sorted({FAMILY_TARGETS[rel] for rel, _, _ in edits}) if edits else ALL_TARGETS


def say(msg):
    print(msg, flush=True)


def run(cmd, cwd, timeout):
    t0 = time.time()
    try:
        res = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
        return res.returncode, res.stdout + res.stderr, time.time() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out + "\n(timed out)", time.time() - t0


def prepare(workdir, edits):
    """A copy of the sources with the edits applied; raises ValueError if a snippet does not occur once."""
    for rel in COPY:
        src, dst = ROOT / rel, workdir / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    for rel, old, new in edits:
        f = workdir / rel
        text = f.read_text()
        n = text.count(old)
        if n != 1:
            raise ValueError(f"{rel}: the snippet occurs {n} times (expected once):\n{old}")
        f.write_text(text.replace(old, new))


def build_and_test(workdir, cuda_home, timeout, targets, first=None):
    build = workdir / "build"
    rc, out, _ = run(["cmake", "-S", str(workdir), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug",
                      f"-DAX_CUDA_HOME={cuda_home}", f"-DAX_CHECKED_OPT={CHECKED_OPT}"], workdir, timeout)
    if rc:
        return "build", out
    rc, out, _ = run(["cmake", "--build", str(build), "--target", *targets], workdir, timeout)
    if rc:
        return "build", out
    outputs = []
    runs = [[str(build / t), "--fail-fast", *names] for t, names in (first or {}).items() if t in targets]
    runs += [[str(build / target), "--fail-fast"] for target in targets]
    for cmd in runs:  # a mutant is killed by its first failing test: the rest need not run
        rc, out, _ = run(cmd, workdir, timeout)
        outputs.append(out)
        if rc:
            return "fail", out
    return "pass", "\n".join(outputs)


def first_failure(out):
    for pat in (r"ax_emu: .*", r".*CHECK FAILED.*", r"unexpected exception.*", r".*\(timed out\)"):
        m = re.search(pat, out)
        if m:
            line = m.group(0)
            return line if len(line) < 400 else line[:400] + " ..."
    return out.strip().splitlines()[-1] if out.strip() else "(no output)"


def one(mid, what, edits, cuda_home, timeout, keep):
    with tempfile.TemporaryDirectory(prefix=f"mutant-{mid}-") as d:
        work = Path(d)
        try:
            prepare(work, edits)
        except ValueError as e:
            return mid, what, "stale", str(e), 0.0
        t0 = time.time()
        status, out = build_and_test(work, cuda_home, timeout, targets_of(edits), FIRST_TESTS.get(mid))
        if keep:
            shutil.copytree(work, Path(keep) / mid, dirs_exist_ok=True)
        return mid, what, status, out, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=int(os.environ.get("MAX_JOBS", "2")))
    ap.add_argument("--only", nargs="*", help="mutant ids to run (default: all)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("--out", help="write the report (markdown) here too")
    ap.add_argument("--timeout", type=int, default=900, help="seconds per build or run")
    ap.add_argument("--keep", help="keep each mutant's tree and build under this folder")
    ap.add_argument("--no-baseline", action="store_true",
                    help="skip the run of the unmutated source (for a caller that has just run the same checked "
                         "kernel tests, as tests/test_native_kernels.py does through ctest)")
    args = ap.parse_args()
    if args.list:
        for mid, what, _ in MUTANTS:
            print(f"{mid}: {what}")
        return 0
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if not Path(cuda_home, "include", "cuda_bf16.h").exists():
        print(f"mutation_suite: no CUDA headers at {cuda_home}/include (set CUDA_HOME)", file=sys.stderr)
        return 2
    if shutil.which("cmake") is None:
        print("mutation_suite: cmake not found", file=sys.stderr)
        return 2
    mutants = MUTANTS
    if args.only:
        unknown = set(args.only) - {m[0] for m in MUTANTS}
        if unknown:
            print(f"mutation_suite: unknown mutant(s): {', '.join(sorted(unknown))} (see --list)", file=sys.stderr)
            return 2
        mutants = [m for m in MUTANTS if m[0] in args.only]

    t0 = time.time()
    # The baseline runs in the pool beside the mutants (first in the queue); the suite fails if it does not pass.
    results, baseline = [], ("pass", "") if args.no_baseline else None
    if not args.no_baseline:
        say(f"baseline: building {', '.join(ALL_TARGETS)} from the unmutated source, beside the mutants ...")
    with cf.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futs = [] if args.no_baseline else [pool.submit(one, "baseline", "", [], cuda_home, args.timeout, args.keep)]
        futs += [pool.submit(one, mid, what, edits, cuda_home, args.timeout, args.keep) for mid, what, edits in mutants]
        for f in cf.as_completed(futs):
            mid, what, status, out, secs = f.result()
            if mid == "baseline":
                baseline = (status, out)
                say(f"baseline: {'passes' if status == 'pass' else 'FAILS'} ({secs:.0f} s)")
                continue
            verdict = {"fail": "killed", "pass": "SURVIVED", "build": "BUILD FAILED", "stale": "STALE"}[status]
            detail = first_failure(out) if status == "fail" else (out[-1500:] if status != "pass" else "tests passed")
            results.append((mid, what, verdict, detail, secs))
            say(f"{mid}: {verdict} ({secs:.0f} s): {detail.splitlines()[0] if detail else ''}")

    if baseline is None or baseline[0] != "pass":
        print(f"mutation_suite: the unmutated kernel tests do not pass ({baseline[0] if baseline else 'not run'}):\n"
              f"{baseline[1][-4000:] if baseline else ''}", file=sys.stderr)
        return 1
    order = {m[0]: i for i, m in enumerate(MUTANTS)}
    results.sort(key=lambda r: order[r[0]])
    killed = sum(r[2] == "killed" for r in results)
    lines = ["# Mutation suite of the kernel tests", "",
             f"`python tools/mutation_suite.py`: {len(results)} mutants of csrc/kernels, each built into the "
             "checked kernel tests of its family (the emulator's checked build) and run; killed = the tests fail.", "",
             f"**Kill rate: {killed}/{len(results)}** ({100.0 * killed / max(1, len(results)):.0f}%), "
             f"{time.time() - t0:.0f} s with {args.jobs} jobs.", "",
             "| mutant | bug | verdict | first failure |", "|---|---|---|---|"]
    for mid, what, verdict, detail, _ in results:
        d = (detail.splitlines()[0] if detail else "").replace("|", "\\|")
        lines.append(f"| {mid} | {what} | {verdict} | {d} |")
    report = "\n".join(lines) + "\n"
    print()
    print(report)
    if args.out:
        Path(args.out).write_text(report)
    return 0 if killed == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
