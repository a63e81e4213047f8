import os

import pytest
import torch

import antipasto_ext as ax

# Fail collection with the reason rather than with errors in every test (e.g. the source tree shadowing the
# installed package: run `pytest` from the repo, not `python -m pytest`, after `pip install`).
assert ax.build_info()["cpu"], ax.build_info().get("error")

# Engines of the CPU op implementation: the C++ CPU kernels, and the CUDA kernel source run through the
# CPU emulation of the CUDA execution model (ANTIPASTO_EXT_ENGINE=cuda-emulated).
ENGINES = ["native", "cuda-emulated"]
# The CUDA device is always a parameter, skipped (with the reason) where it cannot run, so a CPU-only run
# still collects every CUDA test: the GPU check's dry run (tools/gpu_check.py --dry-run) relies on it.
if not torch.cuda.is_available():
    WHY_NO_CUDA = f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)"
elif not ax.build_info()["cuda"]:
    WHY_NO_CUDA = "antipasto_ext was built without CUDA kernels (antipasto_ext.build_info()['cuda'] is False)"
else:
    WHY_NO_CUDA = ""
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(bool(WHY_NO_CUDA), reason=WHY_NO_CUDA))]

# Relative tolerances (max |err| / max |ref|) against the float64 reference, per compute dtype.
RTOL = {torch.float64: 1e-10, torch.float32: 2e-5, torch.bfloat16: 2e-2, torch.float16: 4e-3}


@pytest.fixture(params=ENGINES)
def engine(request, monkeypatch):
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", request.param)
    return request.param


@pytest.fixture(autouse=True)
def _fresh_seed(request):
    """A fresh seed per test (printed on failure), reproducible with ANTIPASTO_TEST_SEED."""
    seed = int(os.environ.get("ANTIPASTO_TEST_SEED", torch.seed() % 2**31))
    torch.manual_seed(seed)
    print(f"ANTIPASTO_TEST_SEED={seed}")  # shown with a failure's captured output
    yield seed


def rel_err(a: torch.Tensor, ref: torch.Tensor, norm: torch.Tensor | None = None) -> float:
    """max |a - ref| / max |norm| (norm: ref unless given, e.g. the magnitudes a sum cancelled from)."""
    a, ref = a.detach().double().cpu(), ref.detach().double().cpu()
    norm = ref if norm is None else norm.detach().double().cpu()
    return ((a - ref).abs().max() / norm.abs().max().clamp_min(1e-30)).item()


def assert_close(a, ref, dtype, name="", scale=1.0, norm=None):
    err = rel_err(a, ref, norm)
    assert err <= RTOL[dtype] * scale, f"{name}: relative error {err:.3g} > {RTOL[dtype] * scale:.3g} ({dtype})"
