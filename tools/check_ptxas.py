#!/usr/bin/env python3
"""Static resource check of the CUDA kernels (no GPU needed).

Compiles csrc/cuda/kernels.cu (torch-free: the repo root is its only include path) with nvcc for
sm_80 and sm_90 with `-Xptxas -v`, parses per kernel: registers, static shared memory, stack frame,
spill stores, spill loads, and prints (and writes) a table. Exits non-zero if any hot kernel spills
or has a stack frame > 0, or if the compile fails.

Hot kernels: every kernel that accumulates in float32 (the float32 / bfloat16 / float16 activation
paths and the float32 Cayley kernels). The float64 instantiations are the verification path: they
are reported (marked "f64") but do not fail the check unless --strict-f64 is given.

Vector loads: the tile kernels (VECTOR_KERNELS) must move their row tiles with 128-bit global loads. Where
cuobjdump exists (a full CUDA toolkit, the GPU machine) they are counted in the SASS of the same compile
(LDG.*.128, and LDGSTS.*.128 for cp.async); elsewhere (the CPU machines have no cuobjdump) in the PTX nvcc keeps
(ld.global[.nc].v4 of 32-bit elements, v2 of 64-bit, or cp.async of 16 bytes; ptxas keeps a PTX vector access a
vector access). The table counts each kernel's 128-bit global loads and says which code it counted.

Occupancy: resident warps per SM that registers allow (65536 registers, 64 warps, registers allocated in units
of 256 per warp; whole CTAs and shared memory, sized at launch, can lower it).

Dynamic shared memory is sized at launch by the host launchers (csrc/kernels/launchers.cuh), at most
48 KiB per CTA (kSmemBudget in csrc/kernels/kernel_ns.h, no opt-in needed); the table shows ptxas's static shared memory only.

Usage: python tools/check_ptxas.py [--arch 80 --arch 90] [--out build/ptxas_report.md] [--strict-f64]
Environment: CUDA_HOME (else `nvcc` on PATH, else /usr/local/cuda).
"""
import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "csrc" / "cuda" / "kernels.cu"

RE_ENTRY = re.compile(r"Compiling entry function '([^']+)' for '(sm_\d+)'")
RE_PROPS = re.compile(r"Function properties for (\S+)")
RE_FRAME = re.compile(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
RE_USED = re.compile(r"Used (\d+) registers")
RE_SMEM = re.compile(r"(\d+) bytes smem")
RE_PTX_ENTRY = re.compile(r"^\.(?:visible|weak) \.entry (\S+)\(", re.M)
RE_PTX_LOAD = re.compile(r"\bld\.global(?:\.nc)?(?:\.L\w+::\w+)*(?:\.v(\d))?\.[bfsu](\d+)")
RE_PTX_CP_ASYNC = re.compile(r"\bcp\.async\.c[ag]\.shared\.global \[[^]]+\], \[[^]]+\], (\d+)")
RE_SASS_ARCH = re.compile(r"code for (sm_\d+)")
RE_SASS_FUNCTION = re.compile(r"Function : (\S+)")
RE_SASS_WIDE = re.compile(r"\bLDG(?:STS)?(?:\.[A-Z0-9_]+)*\.128\b")

# Tile kernels whose row tiles must be filled with 128-bit loads (short-name prefixes; float64 instantiations
# are reported, not gated).
VECTOR_KERNELS = ("diag_forward_kernel", "diag_backward_kernel", "rot_forward_kernel", "rot_backward_kernel",
                  "dplr_forward_kernel", "dplr_backward_kernel", "ablate_forward_kernel", "ablate_backward_kernel",
                  "project_core_kernel", "project_decode_kernel", "project_gemv_kernel")


def wide_loads(ptx):
    """{mangled entry: number of 128-bit global loads} from PTX text."""
    out = {}
    starts = [(m.start(), m.group(1)) for m in RE_PTX_ENTRY.finditer(ptx)] + [(len(ptx), None)]
    for (a, name), (b, _) in zip(starts, starts[1:]):
        body = ptx[a:b]
        w = [int(v or 1) * int(bits) for v, bits in RE_PTX_LOAD.findall(body)]
        w += [8 * int(n) for n in RE_PTX_CP_ASYNC.findall(body)]
        out[name] = sum(1 for b in w if b >= 128)
    return out


def sass_wide_loads(sass):
    """{(mangled entry, arch): number of 128-bit global loads (LDG.*.128, LDGSTS.*.128)} from `cuobjdump -sass`."""
    out, arch, cur = {}, None, None
    for line in sass.splitlines():
        m = RE_SASS_ARCH.search(line)
        if m:
            arch, cur = m.group(1), None
            continue
        m = RE_SASS_FUNCTION.search(line)
        if m:
            cur = (m.group(1), arch)
            out[cur] = 0
            continue
        if cur is not None and RE_SASS_WIDE.search(line):
            out[cur] += 1
    return out


def find_tool(name):
    home = os.environ.get("CUDA_HOME")
    if home and Path(home, "bin", name).exists():
        return str(Path(home, "bin", name))
    return shutil.which(name)


def occupancy(regs):
    """Resident warps per SM that registers allow."""
    per_warp = -(-max(regs, 1) * 32 // 256) * 256
    return min(64, 65536 // per_warp)


def find_nvcc():
    home = os.environ.get("CUDA_HOME")
    if home and Path(home, "bin", "nvcc").exists():
        return str(Path(home, "bin", "nvcc"))
    found = shutil.which("nvcc")
    if found:
        return found
    if Path("/usr/local/cuda/bin/nvcc").exists():
        return "/usr/local/cuda/bin/nvcc"
    return None


def demangle(names):
    tool = shutil.which("c++filt")
    if not tool or not names:
        return {n: n for n in names}
    out = subprocess.run([tool], input="\n".join(names), capture_output=True, text=True).stdout.splitlines()
    return dict(zip(names, out)) if len(out) == len(names) else {n: n for n in names}


def short_name(pretty):
    """'void ax::cuda_impl::kern::rot_backward_kernel<float>(float const*, ...)' -> 'rot_backward_kernel<float>'."""
    s = pretty
    if s.startswith("void "):
        s = s[5:]
    depth, cut = 0, len(s)
    for i, ch in enumerate(s):  # drop the parameter list: the first '(' outside template brackets
        if ch == "<":
            depth += 1
        elif ch == ">":
            depth -= 1
        elif ch == "(" and depth == 0:
            cut = i
            break
    s = s[:cut]
    for prefix in ("ax::cuda_impl::kern::", "ax::cuda_impl::", "ax::"):
        s = s.replace(prefix, "")
    return s


def accumulates_in_f64(name):
    """Kernels instantiated on double activations / double accumulators."""
    return bool(re.search(r"<(\d+,\s*)?double>", name))


def parse(log):
    """{(mangled, arch): {regs, smem, stack, spill_st, spill_ld}} from `ptxas -v` output."""
    res, arch_of, cur = {}, {}, None
    for line in log.splitlines():
        m = RE_ENTRY.search(line)
        if m:
            cur = (m.group(1), m.group(2))
            res.setdefault(cur, {"regs": None, "smem": 0, "stack": None, "spill_st": None, "spill_ld": None})
            arch_of[m.group(1)] = m.group(2)
            continue
        m = RE_PROPS.search(line)
        if m and m.group(1) in arch_of:
            cur = (m.group(1), arch_of[m.group(1)])
            continue
        if cur is None:
            continue
        m = RE_FRAME.search(line)
        if m:
            res[cur]["stack"], res[cur]["spill_st"], res[cur]["spill_ld"] = map(int, m.groups())
            continue
        m = RE_USED.search(line)
        if m:
            res[cur]["regs"] = int(m.group(1))
            s = RE_SMEM.search(line)
            res[cur]["smem"] = int(s.group(1)) if s else 0
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", default=None, help="SM architecture, e.g. 80 (repeatable)")
    ap.add_argument("--out", default=str(ROOT / "build" / "ptxas_report.md"), help="where to write the table")
    ap.add_argument("--strict-f64", action="store_true", help="gate the float64 kernels too")
    args = ap.parse_args()
    archs = args.arch or ["80", "90"]
    nvcc = find_nvcc()
    if nvcc is None:
        print("check_ptxas: nvcc not found (set CUDA_HOME)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [nvcc, "-std=c++17", "-O3", f"-I{ROOT}", "-Xptxas", "-v", "--threads", "2", "-keep", "-keep-dir", tmp,
               "-c", str(SOURCE), "-o", str(Path(tmp, "kernels.o"))]
        for a in archs:
            cmd += ["-gencode", f"arch=compute_{a},code=sm_{a}"]
        print("check_ptxas: " + " ".join(cmd), flush=True)
        proc = subprocess.run(cmd, capture_output=True, text=True)
        loads = {}
        for ptx in sorted(Path(tmp).glob("*.ptx")):
            for k, v in wide_loads(ptx.read_text()).items():
                loads[k] = max(loads.get(k, 0), v)
        cuobjdump, sass = find_tool("cuobjdump"), None
        if cuobjdump and proc.returncode == 0:
            dump = subprocess.run([cuobjdump, "-sass", str(Path(tmp, "kernels.o"))], capture_output=True, text=True)
            if dump.returncode == 0:
                sass = sass_wide_loads(dump.stdout)
            else:
                print(f"check_ptxas: cuobjdump failed, counting PTX loads:\n{dump.stderr[-2000:]}", file=sys.stderr)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        print(log[-20000:], file=sys.stderr)
        print(f"check_ptxas: nvcc failed (exit {proc.returncode})", file=sys.stderr)
        return 1
    res = parse(log)
    if not res:
        print(log[-5000:], file=sys.stderr)
        print("check_ptxas: no kernel found in the ptxas output", file=sys.stderr)
        return 1
    names = demangle(sorted({k for k, _ in res}))
    rows, bad = [], []
    for (mangled, arch), r in res.items():
        name = short_name(names[mangled])
        f64 = accumulates_in_f64(name)
        gated = args.strict_f64 or not f64
        if None in (r["regs"], r["stack"], r["spill_st"], r["spill_ld"]):
            bad.append(f"{name} {arch}: incomplete ptxas report")
            continue
        problem = r["stack"] > 0 or r["spill_st"] > 0 or r["spill_ld"] > 0
        if problem and gated:
            bad.append(f"{name} {arch}: stack {r['stack']} B, spill stores {r['spill_st']} B, "
                       f"spill loads {r['spill_ld']} B")
        wide = loads.get(mangled) if sass is None else sass.get((mangled, arch))
        if wide is None:
            bad.append(f"{name} {arch}: not found in the {'PTX' if sass is None else 'SASS'}")
            wide = 0
        narrow = name.startswith(VECTOR_KERNELS) and wide == 0
        if narrow and gated:
            bad.append(f"{name} {arch}: no 128-bit global load, its row tiles need them")
        problem = problem or narrow
        status = ("FAIL" if gated else "warn (f64)") if problem else ("ok" if gated else "ok (f64)")
        rows.append((name, arch, r["regs"], occupancy(r["regs"]), r["smem"], r["stack"], r["spill_st"],
                     r["spill_ld"], wide, status))
    rows.sort(key=lambda t: (t[0], t[1]))
    head = ("kernel", "arch", "regs", "warps/SM by regs", "static smem B", "stack B", "spill st B",
            "spill ld B", f"128-bit global loads ({'PTX' if sass is None else 'SASS'})", "status")
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    fmt = lambda t: "| " + " | ".join(str(x).ljust(w) for x, w in zip(t, widths)) + " |"  # noqa: E731
    table = [fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [fmt(t) for t in rows]
    text = "\n".join(table)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(f"# ptxas resource usage of csrc/cuda/kernels.cu (sm_{', sm_'.join(archs)})\n\n{text}\n")
    print(f"check_ptxas: {len(rows)} kernel builds, table written to {out}")
    if bad:
        print("check_ptxas: FAILED - hot kernels with a stack frame, register spills or narrow tile loads:",
              file=sys.stderr)
        for b in bad:
            print("  " + b, file=sys.stderr)
        return 1
    print("check_ptxas: OK - no hot kernel spills or uses a stack frame; the tile kernels load 128 bits at a time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
