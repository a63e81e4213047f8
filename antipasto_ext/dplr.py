"""antipasto_dplr (SPEC §5): diagonal gain plus a low-rank core in S-space, C = diag(S_eff) + coeff B A."""
import math

import torch
from torch import nn

from . import reference
from ._base import check_int_range
from .antipasto import AntiPaSTOLinear


class DPLRLinear(AntiPaSTOLinear):
    """``h = p * S_eff + coeff (p A^T) B^T``; trainable ``g`` (r,) = 0, ``A`` (k, r) kaiming-uniform,
    ``B`` (r, k) = 0 (identity at init)."""

    core = "dplr"

    def __init__(self, in_features, out_features, r, lora_rank=8, coeff=1.0, suppress_only=False, *, dtype=None,
                 device=None):
        super().__init__(in_features, out_features, r, coeff, suppress_only, dtype=dtype, device=device)
        check_int_range("lora_rank", lora_rank, 1, r)
        self.lora_rank = lora_rank
        kw = dict(dtype=self.S.dtype, device=self.S.device)
        self.A = nn.Parameter(torch.empty(lora_rank, r, **kw))
        nn.init.kaiming_uniform_(self.A, a=math.sqrt(5))
        self.B = nn.Parameter(torch.zeros(r, lora_rank, **kw))

    def _core_args(self, coeff, adapters=None):
        p = self._raw(adapters)
        return [p["g"], p["A"], p["B"]], int(self.suppress_only)

    def core_matrix(self, coeff=None):
        """C = diag(S_eff) + coeff B A."""
        coeff = self.coeff if coeff is None else coeff
        return super().core_matrix(coeff) + coeff * (self.B @ self.A).to(self.S.dtype)

    def _eager(self, x, coeff, p=None):
        p = p or self._raw()
        return reference.antipasto_dplr(x, self.weight, self.bias, self.U, self.S, self.Vh, p["g"], p["A"], p["B"],
                                        coeff, self.suppress_only)
