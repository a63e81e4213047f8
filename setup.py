"""Build of antipasto_ext._C: C++ CPU kernels always, CUDA kernels when torch is a CUDA build and
nvcc is found, and the CPU emulation of the CUDA kernel source whenever the CUDA headers are there.

Environment:
  ANTIPASTO_EXT_CUDA=0/1   force the CUDA build off / on (on: fail loudly if it cannot be built)
  CUDA_HOME                the CUDA toolkit (else the toolkit of `nvcc` on PATH, else /usr/local/cuda)
  TORCH_CUDA_ARCH_LIST     CUDA archs (default "8.0;9.0")
  MAX_JOBS                 parallel compile jobs (default 2)

Build against the torch already installed: `pip install --no-build-isolation .`
"""
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

# the glue, schemas and autograd (csrc/*.cpp), the C++ CPU kernel set (csrc/cpu), the emulated kernel set
# (csrc/emulated) where the CUDA headers are found, the CUDA kernel set (csrc/cuda) where CUDA is built
sources = sorted(str(p.relative_to(ROOT)) for p in [*(ROOT / "csrc").glob("*.cpp"), *(ROOT / "csrc/cpu").glob("*.cpp")])
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

setup(
    packages=find_packages(include=["antipasto_ext", "antipasto_ext.*"]),
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
