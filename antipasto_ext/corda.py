"""antipasto_corda (SPEC §4): the gain of antipasto on a covariance-oriented basis W = U diag(S) P + W_res,
built by ``calibrate(inputs)`` from this layer's inputs (plain SVD, i.e. antipasto, until then)."""
from .antipasto import AntiPaSTOLinear


class CorDALinear(AntiPaSTOLinear):
    """``out = x W_res^T + b + ((x P^T) * S_eff) U^T``; trainable ``g`` (r,), zero at init (identity)."""

    in_basis = "P"
    calibration_kind = "covariance"

    def __init__(self, in_features, out_features, r, cov_eps=1e-3, coeff=1.0, suppress_only=False, *, dtype=None,
                 device=None):
        if not cov_eps > 0:
            raise ValueError(f"cov_eps must be > 0, got {cov_eps!r}")
        super().__init__(in_features, out_features, r, coeff, suppress_only, dtype=dtype, device=device)
        self.cov_eps = float(cov_eps)
