"""antipasto (SPEC §1): a diagonal gain on the frozen singular values, S_eff = S * (1 + ELU(coeff * g))."""
import torch
from torch import nn

from . import reference
from ._base import SVDAdapter


class AntiPaSTOLinear(SVDAdapter):
    """``out = x W_res^T + b + ((x Vh^T) * S_eff) U^T``; trainable ``g`` (r,), zero at init (identity)."""

    core = "gain"

    def __init__(self, in_features, out_features, r, coeff=1.0, suppress_only=False, *, dtype=None, device=None):
        super().__init__(in_features, out_features, r, coeff, dtype=dtype, device=device)
        self.suppress_only = bool(suppress_only)
        self.g = nn.Parameter(torch.zeros(r, dtype=self.S.dtype, device=self.S.device))

    def _core_args(self, coeff, adapters=None):
        return [self._raw(adapters)["g"]], int(self.suppress_only)

    def core_matrix(self, coeff=None):
        """C = diag(S_eff) (Delta W = U C Vh)."""
        coeff = self.coeff if coeff is None else coeff
        return torch.diag(reference.gain_scale(self.S, self.g.to(self.S.dtype), coeff, self.suppress_only))

    def _eager(self, x, coeff, p=None):
        p = p or self._raw()
        return reference.antipasto(x, self.weight, self.bias, self.U, self.S, getattr(self, self.in_basis), p["g"],
                                   coeff, self.suppress_only)
