"""antipasto_ext: fast C++/CUDA kernels for the AntiPaSTO family of SVD-basis adapters.

    import antipasto_ext as ax
    m = ax.DPLRLinear.from_linear(torch.nn.Linear(1024, 2048), r=256, lora_rank=8)
"""
from . import ops, reference, svd, variants
from ._loader import build_info
from .ablate import AblateLinear
from .antipasto import AntiPaSTOLinear
from .corda import CorDALinear
from .dplr import DPLRLinear
from .files import basis_differences, load, save, shares_basis
from .model import (adapters, attach, calibrate, detach, merge, set_adapter, set_coeff, shared_rotations, steer,
                    unmerge)
from .rot import RotLinear

__all__ = ["AntiPaSTOLinear", "RotLinear", "AblateLinear", "CorDALinear", "DPLRLinear", "build_info", "ops",
           "reference", "attach", "detach", "calibrate", "save", "load", "merge", "unmerge", "set_coeff", "set_adapter",
           "steer", "shared_rotations",
           "adapters", "shares_basis", "basis_differences", "svd", "variants"]
