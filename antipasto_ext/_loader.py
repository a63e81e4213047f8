"""Loads the compiled library antipasto_ext._C; the package still imports (eager backend only) when
it is missing, and says why."""
import torch

try:
    from . import _C
    _load_error = None
except ImportError as e:  # not built, or built against another torch
    from pathlib import Path

    _C = None
    _load_error = f"antipasto_ext._C could not be loaded ({e}); reinstall with `pip install --no-build-isolation .`"
    if (Path(__file__).resolve().parent.parent / "setup.py").exists():
        _load_error += (f" -- note: this is the source tree at {Path(__file__).resolve().parent}, which shadows the "
                        "installed package when Python runs from the repository root; run from another directory, "
                        "or `python -P -m ...`")

ext_loaded = _C is not None


def build_info() -> dict:
    """What the compiled extension holds: {'cpu', 'cuda', 'cuda_archs', 'emulation', 'torch'}."""
    info = dict(_C.build_info()) if ext_loaded else {"cpu": False, "cuda": False, "cuda_archs": "", "emulation": False}
    info["torch"] = torch.__version__
    if not ext_loaded:
        info["error"] = _load_error
    return info


def why_unavailable(device: torch.device) -> str:
    if not ext_loaded:
        return _load_error
    if device.type == "cuda" and not _C.build_info()["cuda"]:
        return "the extension was built without CUDA kernels (see build_info())"
    if device.type not in ("cpu", "cuda"):
        return f"no kernels for device type {device.type!r}"
    return ""


def ext_available(device: torch.device) -> bool:
    return not why_unavailable(torch.device(device))
