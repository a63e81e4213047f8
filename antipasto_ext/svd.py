"""The top-r SVD behind every adapter's frozen split ``W = U diag(S) Vh + W_res``.

Two ways to get it, both on the weight's device and in promote(weight dtype, float32):

- ``exact``: the full ``torch.linalg.svd`` (LAPACK / cuSOLVER), truncated to r. O(d_out d_in min(d_out, d_in)).
- ``randomized``: subspace iteration with a Gaussian start (Halko, Martinsson, Tropp 2011, alg. 4.4):
  ``Q = orth(W Omega)``, ``power_iters`` times ``Q = orth(W orth(W^T Q))``, then the exact SVD of the small
  ``Q^T W``. Omega has ``r + oversample`` columns and comes from a CPU generator with a fixed seed, so the
  result is a deterministic function of W on every device. O(d_out d_in (r + oversample) (2 power_iters + 2)).

The split stays exact whichever is used: ``W_res = W - U diag(S) Vh`` absorbs whatever the top-r
approximation leaves out. ``method="auto"`` picks ``randomized`` where benchmarks/attach_svd.py measured it
both faster and accurate (see AUTO_MIN_DIM) and ``exact`` elsewhere.

Singular vectors are returned with a canonical sign (each column of U has its largest-magnitude entry
positive, Vh's row flipped with it), so the basis does not depend on the sign convention of the LAPACK or
cuSOLVER build; ``load`` relies on that to recompute a basis instead of reading it from the file.
"""
import torch

METHODS = ("auto", "exact", "randomized")
# Randomized defaults and where "auto" uses them: chosen from benchmarks/results/attach_svd_cpu.md.
OVERSAMPLE_MIN = 32  # oversample = max(r, OVERSAMPLE_MIN) extra columns
POWER_ITERS = 6
SEED = 0
AUTO_MIN_DIM = 1024  # randomized when min(d_out, d_in) >= this and r + oversample <= min(d_out, d_in) / 4
AUTO_MAX_FRACTION = 4


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def resolve(method, shape, r: int, oversample: int | None = None, power_iters: int = POWER_ITERS,
            seed: int = SEED) -> dict:
    """The concrete recipe for a (d_out, d_in) weight: ``{"method": "exact"}`` or ``{"method": "randomized",
    "oversample", "power_iters", "seed"}`` (oversample None: max(r, OVERSAMPLE_MIN)). ``method`` may already
    be such a dict (it is checked)."""
    if oversample is None:
        oversample = max(r, OVERSAMPLE_MIN) if isinstance(r, int) else OVERSAMPLE_MIN
    if isinstance(method, dict):
        spec = dict(method)
        method = spec.get("method")
        if method == "randomized":
            oversample, power_iters, seed = spec.get("oversample"), spec.get("power_iters"), spec.get("seed")
        elif method != "exact" or len(spec) != 1:
            raise ValueError(f"svd must be one of {METHODS} or a recipe dict from a file, got {spec!r}")
    if method not in METHODS:
        raise ValueError(f"svd must be one of {METHODS}, got {method!r}")
    for name, v, lo in (("oversample", oversample, 0), ("power_iters", power_iters, 0), ("seed", seed, 0)):
        if isinstance(v, bool) or not isinstance(v, int) or v < lo:
            raise ValueError(f"svd {name} must be an int >= {lo}, got {v!r}")
    k = min(shape)
    if method == "auto":
        method = "randomized" if k >= AUTO_MIN_DIM and (r + oversample) * AUTO_MAX_FRACTION <= k else "exact"
    if method == "exact":
        return {"method": "exact"}
    return {"method": "randomized", "oversample": oversample, "power_iters": power_iters, "seed": seed}


def canonical_signs(U: torch.Tensor, Vh: torch.Tensor):
    """Flip each singular pair (U[:, i], Vh[i]) so that U[:, i]'s largest-magnitude entry is positive (the
    first one on a tie). The product U diag(S) Vh is unchanged."""
    idx = U.abs().argmax(0)
    sign = torch.sign(U.gather(0, idx[None]).squeeze(0))
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return U * sign, Vh * sign[:, None]


def _orth(A: torch.Tensor) -> torch.Tensor:
    return torch.linalg.qr(A, mode="reduced")[0]


def randomized_svd(W: torch.Tensor, r: int, oversample: int, power_iters: int = POWER_ITERS, seed: int = SEED):
    """Top-r (U, S, Vh) of W (already in its compute dtype) by randomized subspace iteration; falls back to
    the exact SVD when r + oversample reaches min(W.shape). Signs are not canonicalised here."""
    m, n = W.shape
    ell = r + oversample
    if ell >= min(m, n):
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        return U[:, :r], S[:r], Vh[:r]
    gen = torch.Generator(device="cpu").manual_seed(seed)
    omega = torch.randn(n, ell, generator=gen, dtype=torch.float32).to(device=W.device, dtype=W.dtype)
    Q = _orth(W @ omega)
    for _ in range(power_iters):
        Q = _orth(W @ _orth(W.T @ Q))
    Ub, S, Vh = torch.linalg.svd(Q.T @ W, full_matrices=False)
    return Q @ Ub[:, :r], S[:r], Vh[:r]


def top_r(W: torch.Tensor, r: int, spec: dict):
    """(U (d_out, r), S (r,), Vh (r, d_in)) of W in its compute dtype, canonical signs, contiguous."""
    W = W.detach().to(compute_dtype(W.dtype))
    if spec["method"] == "exact":
        U, S, Vh = torch.linalg.svd(W, full_matrices=False)
        U, S, Vh = U[:, :r], S[:r], Vh[:r]
    else:
        U, S, Vh = randomized_svd(W, r, spec["oversample"], spec["power_iters"], spec["seed"])
    U, Vh = canonical_signs(U, Vh)
    return U.contiguous(), S.contiguous(), Vh.contiguous()
