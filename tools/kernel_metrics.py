#!/usr/bin/env python3
"""Memory metrics of every kernel (shared-memory bank-conflict factor and global sector efficiency per
source line) at the training shape (8192 rows, d 4096, r 256, bf16) and the decode shapes (1 and 16 rows),
counted by the CUDA emulator's checked build (emu/checker.h, tools/kernel_metrics.cpp). A model of
the GPU's memory pipeline counted on the CPU, not a measurement.

Usage: python tools/kernel_metrics.py [--out benchmarks/results/kernel_metrics.md] [--blocks 3] [case ...]
       python tools/kernel_metrics.py --list
Builds the `kernel_metrics` target with cmake (in build/metrics), runs it and writes the markdown report.
Needs cmake, a C++17 compiler with -fsanitize=thread instrumentation (GCC or Clang) and the CUDA headers.
"""
import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def fail(msg):
    print(f"kernel_metrics: {msg}", file=sys.stderr)
    return 2


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("cases", nargs="*", help="case names or prefixes (default: all; --list shows them)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--blocks", type=int, default=3, help="CTAs emulated per launch, evenly spaced (default 3)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "kernel_metrics.md"))
    ap.add_argument("--build-dir", default=str(ROOT / "build" / "metrics"))
    args = ap.parse_args()
    cuda_home = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    if not Path(cuda_home, "include", "cuda_bf16.h").exists():
        return fail(f"no CUDA headers at {cuda_home}/include (set CUDA_HOME)")
    if shutil.which("cmake") is None:
        return fail("cmake not found")
    build = Path(args.build_dir)
    for cmd in (["cmake", "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=Debug", f"-DAX_CUDA_HOME={cuda_home}"],
                ["cmake", "--build", str(build), "--target", "kernel_metrics"]):
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:
            return fail(f"{' '.join(cmd)} failed:\n{res.stdout[-3000:]}{res.stderr[-3000:]}")
    exe = [str(build / "kernel_metrics"), "--blocks", str(args.blocks), *args.cases]
    if args.list:
        return subprocess.run([exe[0], "--list"]).returncode
    t0 = time.time()
    res = subprocess.run(exe, capture_output=True, text=True)
    if res.returncode:
        sys.stderr.write(res.stderr)
        return res.returncode
    header = [
        "# Memory metrics of the kernels (emulator model, not a GPU measurement)", "",
        f"- {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
        f"`python tools/kernel_metrics.py{' ' + ' '.join(args.cases) if args.cases else ''}`, "
        f"{platform.machine()} CPU, {time.time() - t0:.0f} s",
        f"- Every access of kernel code seen by the emulator's checked build; {args.blocks} CTAs per launch "
        "(evenly spaced over the grid). A warp-wide access is the k-th execution of one instruction by the lanes "
        "of a warp.",
        "- **bank-conflict factor**: shared-memory wavefronts over the conflict-free count (32 banks x 4 bytes; "
        "8- and 16-byte accesses in half- and quarter-warp phases); 1.00 is conflict-free.",
        "- **sector efficiency**: the minimum number of 32-byte sectors for the bytes a warp-wide access requests "
        "over the sectors it touches; 100% is fully coalesced. **bytes/lane** is the access width "
        "(16 = 128-bit loads).",
        "- **line**: `file:line in function` of the access, then the line it was inlined into (`<-`).", "", "",
    ]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(header) + res.stdout)
    print(res.stdout)
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
