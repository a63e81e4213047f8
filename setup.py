"""Build of antipasto_ext._C: C++ CPU kernels always, CUDA kernels when torch is a CUDA build and
nvcc is found, and the CPU emulation of the CUDA kernel source whenever the CUDA headers are there.

Environment:
  ANTIPASTO_EXT_CUDA=0/1   force the CUDA build off / on (on: fail loudly if it cannot be built)
  CUDA_HOME                the CUDA toolkit (else the toolkit of `nvcc` on PATH, else /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST     CUDA archs (default "8.0;9.0")
  MAX_JOBS                 parallel compile jobs (default 2)
  ANTIPASTO_EXT_REBUILD=1  compile even when build/antipasto_ext-cache holds this exact build

Build against the torch already installed: `pip install --no-build-isolation .`

A finished build is kept in build/antipasto_ext-cache/<key>/, the key a hash of everything that goes into
it: the contents of csrc/, emu/ and this file, the sources, flags and defines, the torch version (its
headers) and build, the Python version, the C++ compiler and nvcc. A later install with the same key
copies it instead of compiling. ninja alone cannot tell: it compares file times, and a reinstalled torch
(a fresh virtual environment, .ci/run) has new header times; an editable install (`pip install -e`) builds
in a new temporary directory every time; switching ANTIPASTO_EXT_CUDA back and forth changes the flags.
"""
import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).resolve().parent


def find_cuda_home():
    """CUDA_HOME, else the toolkit that `nvcc` really runs (PATH may hold a wrapper), else /usr/local/cuda."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc:
        try:
            out = subprocess.run([nvcc, "-dryrun", "-c", "x.cu"], capture_output=True, text=True, timeout=60)
            top = re.search(r"TOP=(\S+)", out.stdout + out.stderr)
            if top:
                return str(Path(top.group(1)).resolve())
        except (OSError, subprocess.SubprocessError):
            pass
        return str(Path(nvcc).resolve().parent.parent)
    return "/usr/local/cuda" if Path("/usr/local/cuda").is_dir() else None


def say(msg):
    print(f"antipasto_ext build: {msg}", file=sys.stderr)


cuda_home = find_cuda_home()
if cuda_home:
    os.environ["CUDA_HOME"] = cuda_home
os.environ.setdefault("MAX_JOBS", "2")
os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")

import torch  # noqa: E402  (after CUDA_HOME is set: cpp_extension reads it at import)
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

force = os.environ.get("ANTIPASTO_EXT_CUDA")
nvcc_path = Path(cuda_home, "bin", "nvcc") if cuda_home else None
cuda_include = Path(cuda_home, "include") if cuda_home else None
if force == "0":
    why_not_cuda = "ANTIPASTO_EXT_CUDA=0"
elif torch.version.cuda is None:
    why_not_cuda = f"torch {torch.__version__} is a CPU-only build"
elif nvcc_path is None or not nvcc_path.exists():
    why_not_cuda = "nvcc not found (set CUDA_HOME)"
elif not list((ROOT / "csrc/cuda").glob("*.cu")):
    why_not_cuda = "this source tree has no CUDA kernels (csrc/cuda)"
else:
    why_not_cuda = None
if why_not_cuda and force == "1":
    raise RuntimeError(f"antipasto_ext: ANTIPASTO_EXT_CUDA=1 but CUDA cannot be built: {why_not_cuda}")
with_cuda = why_not_cuda is None
emulation_sources = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/emulated").glob("*.cpp"))
with_emulation = bool(emulation_sources) and cuda_include is not None and (cuda_include / "cuda_bf16.h").exists()

# the glue, schemas and autograd (csrc/*.cpp), each core's host side (csrc/cores), the C++ CPU kernel set
# (csrc/cpu), the emulated kernel set (csrc/emulated) where the CUDA headers are found, the CUDA kernel set
# (csrc/cuda) where CUDA is built
sources = sorted(str(p.relative_to(ROOT)) for d in ("csrc", "csrc/cores", "csrc/cpu") for p in (ROOT / d).glob("*.cpp"))
cxx_flags = ["-O3", f"-I{ROOT}"]
archs = os.environ["TORCH_CUDA_ARCH_LIST"] if with_cuda else ""
defines = [("AX_WITH_CUDA", "1" if with_cuda else "0"), ("AX_CUDA_ARCHS", f'"{archs}"'),
           ("AX_WITH_EMULATION", "1" if with_emulation else "0")]
if with_emulation:
    sources += emulation_sources
    cxx_flags.append(f"-I{cuda_include}")
if with_cuda:
    sources += sorted(str(p.relative_to(ROOT)) for p in (ROOT / "csrc/cuda").glob("*.cu"))
    ext = CUDAExtension(
        "antipasto_ext._C", sources, define_macros=defines,
        extra_compile_args={"cxx": cxx_flags, "nvcc": ["-O3", f"-I{ROOT}", "-lineinfo", "--threads", "2"]})
    say(f"CPU + CUDA kernels (archs {archs}, CUDA {cuda_home})")
else:
    ext = CppExtension("antipasto_ext._C", sources, define_macros=defines, extra_compile_args=cxx_flags)
    say(f"CPU kernels only: CUDA not built because {why_not_cuda}")
say("CUDA kernel emulation engine: " + ("built" if with_emulation else "not built (needs csrc/emulated and the CUDA headers)"))



def _tool_version(cmd):
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


class CachedBuildExtension(BuildExtension.with_options(use_ninja=True)):
    """BuildExtension that reuses a finished build of identical inputs (see the module docstring)."""

    CACHE = ROOT / "build" / "antipasto_ext-cache"
    KEEP = 3  # cached builds kept (the most recently used)

    def _key(self, ext) -> str:
        h = hashlib.sha256()
        for path in sorted([*(ROOT / "csrc").rglob("*"), *(ROOT / "emu").rglob("*")]) + [ROOT / "setup.py"]:
            if path.is_file():
                h.update(str(path.relative_to(ROOT)).encode() + b"\0" + path.read_bytes() + b"\0")
        compiler = getattr(self.compiler, "compiler_so", None) or ["c++"]
        h.update(repr((ext.name, ext.sources, ext.define_macros, ext.extra_compile_args, ext.include_dirs,
                       ext.library_dirs, ext.libraries, ext.extra_link_args, torch.__version__,
                       torch.version.git_version, torch.version.cuda, sys.version, compiler,
                       _tool_version([compiler[0], "--version"]),
                       _tool_version([str(nvcc_path), "--version"]) if with_cuda else "")).encode())
        return h.hexdigest()[:20]

    def build_extension(self, ext):
        out = Path(self.get_ext_fullpath(ext.name))
        cached = self.CACHE / self._key(ext) / out.name
        if cached.is_file() and os.environ.get("ANTIPASTO_EXT_REBUILD") != "1":
            say(f"reusing the build of identical sources, flags and toolchain: {cached.parent}")
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(cached, out)
            os.utime(cached.parent)
            return
        super().build_extension(ext)
        cached.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(out, cached)
        entries = sorted((p for p in self.CACHE.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
        for old in entries[:-self.KEEP]:
            shutil.rmtree(old, ignore_errors=True)


setup(
    packages=find_packages(include=["antipasto_ext", "antipasto_ext.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": CachedBuildExtension},
)
