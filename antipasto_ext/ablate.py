"""antipasto_ablate (SPEC §3): contractive ablation of k learned directions on the output side,
h = p S - coeff ((p S C_hat) * clamp(alpha, 0, 1)) C_hat^T."""
import math

import torch
from torch import nn

from . import reference
from ._base import SVDAdapter, check_int_range


class AblateLinear(SVDAdapter):
    """Trainable ``c`` (r, k) ~ N(0, 1/sqrt(r)) and ``alpha`` (k,) = init_alpha. With ``cov_orient``,
    ``calibrate`` builds the covariance-oriented basis of CorDA (SPEC §4) instead of choosing directions."""

    core = "ablate"

    def __init__(self, in_features, out_features, r, k=1, init_alpha=0.05, coeff=1.0, cov_orient=False,
                 cov_eps=1e-3, *, dtype=None, device=None):
        super().__init__(in_features, out_features, r, coeff, dtype=dtype, device=device)
        check_int_range("k", k, 1, r)
        self.k = k
        self.cov_orient, self.cov_eps = bool(cov_orient), float(cov_eps)
        if self.cov_orient:
            self.calibration_kind = "covariance"
        kw = dict(dtype=self.S.dtype, device=self.S.device)
        self.c = nn.Parameter(torch.randn(r, k, **kw) / math.sqrt(r))
        self.alpha = nn.Parameter(torch.full((k,), float(init_alpha), **kw))

    def core_matrix(self, coeff=None):
        """C = (I - coeff C_hat diag(a) C_hat^T) diag(S)."""
        coeff = self.coeff if coeff is None else coeff
        C_hat = reference.ablation_basis(self.c.to(self.S.dtype))
        M = torch.eye(self.r, dtype=self.S.dtype, device=self.S.device) - coeff * (C_hat * self.alpha.to(self.S.dtype).clamp(0, 1)) @ C_hat.T
        return M * self.S

    def _core_args(self, coeff, adapters=None):
        p = self._raw(adapters)
        return [reference.ablation_basis(p["c"]), p["alpha"].clamp(0, 1)], 0

    def _eager(self, x, coeff, p=None):
        p = p or self._raw()
        return reference.antipasto_ablate(x, self.weight, self.bias, self.U, self.S, self.Vh, p["c"], p["alpha"],
                                          coeff)
