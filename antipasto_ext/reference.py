"""Eager PyTorch reference of every variant (SPEC §1-5): the oracle for the other backends and what
``backend="eager"`` runs. Plain differentiable torch ops, any dtype; the S-space core is computed in
the parameters' dtype (float32 or wider) and cast back to the input's dtype before the output GEMM.
The rotation variant follows the research code: a batched ``torch.linalg.solve`` per forward and the
rotated basis formed explicitly.
"""
import math

import torch
import torch.nn.functional as F


def svd_split(weight: torch.Tensor, r: int):
    """Top-r SVD of W in float32 (float64 for a float64 W): (U (d_out, r), S (r,), Vh (r, d_in),
    W_res = W - U diag(S) Vh), all in that dtype."""
    W = weight.detach().to(torch.promote_types(weight.dtype, torch.float32))
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    U, S, Vh = U[:, :r].contiguous(), S[:r].contiguous(), Vh[:r].contiguous()
    return U, S, Vh, W - (U * S) @ Vh


def _core_dtype(x: torch.Tensor, param: torch.Tensor) -> torch.dtype:
    return torch.promote_types(torch.promote_types(x.dtype, param.dtype), torch.float32)


def gain_scale(S, g, coeff: float, suppress_only: bool):
    """S_eff = S * (1 + ELU(coeff * g)); g -> min(g, 0) when suppress_only, written g - relu(g) so the gradient
    passes at g == 0 (torch's clamp passes none at its bound, and g starts at 0: it could never leave it)."""
    if suppress_only:
        g = g - torch.relu(g)
    return S * (1 + F.elu(coeff * g))


def _output(x, weight, bias, h, U):
    """y_base + h U^T with h cast to the input's dtype."""
    return F.linear(x, weight, bias) + F.linear(h.to(x.dtype), U)


def gain_core(p, S, g, coeff=1.0, suppress_only=False):
    """r-space core of antipasto / corda: h = p * S_eff."""
    return p * gain_scale(S, g, coeff, suppress_only)


def dplr_core(p, S, g, A, B, coeff=1.0, suppress_only=False):
    """r-space core of dplr: h = p * S_eff + coeff * (p A^T) B^T."""
    return gain_core(p, S, g, coeff, suppress_only) + coeff * (p @ A.T) @ B.T


def rot_core(p, S, delta_s, R, coeff=1.0, rotate_basis="V"):
    """r-space form of antipasto_rot's core: V side (p_b R_b^T) * S_eff, U side (p * S_eff)_b R_b."""
    s_eff = S + coeff * delta_s
    if rotate_basis == "none":
        return p * s_eff
    n, bs, _ = R.shape
    pb = p.reshape(-1, n, bs)
    if rotate_basis == "V":
        return torch.einsum("tbj,bij->tbi", pb, R).reshape(p.shape) * s_eff
    return torch.einsum("tbi,bij->tbj", (p * s_eff).reshape(-1, n, bs), R).reshape(p.shape)


def ablate_core(p, S, C, a, coeff=1.0):
    """r-space core of ablate: h = p S - coeff ((p S C) * a) C^T."""
    h = p * S
    return h - coeff * ((h @ C) * a) @ C.T


_ROT_SIDES = {0: "none", 1: "V", 2: "U"}
# core name -> h = core(p, S, params, coeff, option), the ops' argument order (antipasto_ext/ops.py)
CORES = {
    "gain": lambda p, S, params, coeff, option: gain_core(p, S, *params, coeff, bool(option)),
    "rot": lambda p, S, params, coeff, option: rot_core(p, S, *params, coeff, _ROT_SIDES[option]),
    "dplr": lambda p, S, params, coeff, option: dplr_core(p, S, *params, coeff, bool(option)),
    "ablate": lambda p, S, params, coeff, option: ablate_core(p, S, *params, coeff),
}


def core(name, p, S, params, coeff=1.0, option=0):
    """The r-space core ``name`` as the ops take it: ``params`` in the core's order, ``option`` its setting.
    A 1-D tensor ``coeff`` of G coefficients steers G equal groups of consecutive rows of p (rot's R is then one
    rotation set per group): computed group by group, each at its own coefficient."""
    if not isinstance(coeff, torch.Tensor) or coeff.dim() == 0:
        return CORES[name](p, S, params, coeff, option)
    G = coeff.shape[0]
    groups = p.reshape(G, -1, p.shape[-1])
    per_group = name == "rot" and option != 0
    out = [CORES[name](groups[e], S, [params[0], params[1][e]] if per_group else params, coeff[e], option)
           for e in range(G)]
    return torch.cat(out).reshape(p.shape)


def antipasto(x, weight, bias, U, S, Vh, g, coeff=1.0, suppress_only=False):
    """SPEC §1 (and §4 with Vh = P): out = y_base + ((x Vh^T) * S_eff) U^T."""
    ct = _core_dtype(x, g)
    p = F.linear(x, Vh).to(ct)
    return _output(x, weight, bias, gain_core(p, S.to(ct), g.to(ct), coeff, suppress_only), U)


antipasto_corda = antipasto


def cayley_blocks(rot_T, block_size: int, max_angle: float = 0.5, coeff: float = 1.0):
    """SPEC §2 per-block Cayley rotation R_b = (I - X_b)^-1 (I + X_b), shape (n_blocks, bs, bs)."""
    n = rot_T.shape[0]
    iu = torch.triu_indices(block_size, block_size, offset=1, device=rot_T.device)
    T = rot_T.new_zeros(n, block_size, block_size)
    T[:, iu[0], iu[1]] = rot_T
    A = (T - T.transpose(-1, -2)) / 2
    a_lim = 2 * math.tan(max_angle / 2)
    A = a_lim * torch.tanh(A / a_lim)
    X = coeff * A / 2
    eye = torch.eye(block_size, dtype=rot_T.dtype, device=rot_T.device).expand(n, -1, -1)
    return torch.linalg.solve(eye - X, eye + X)


def antipasto_rot(x, weight, bias, U, S, Vh, delta_s, rot_T, block_size=4, max_angle=0.5, rotate_basis="V",
                  coeff=1.0):
    """SPEC §2: rotate one basis side block by block, S_eff = S + coeff * delta_s."""
    ct = _core_dtype(x, delta_s)
    S_eff = S.to(ct) + coeff * delta_s.to(ct)
    if rotate_basis != "none":
        R = cayley_blocks(rot_T.to(ct), block_size, max_angle, coeff)
        n = R.shape[0]
        if rotate_basis == "V":
            Vh = torch.bmm(R, Vh.to(ct).reshape(n, block_size, -1)).reshape(Vh.shape).to(x.dtype)
        else:
            U = torch.bmm(U.to(ct).reshape(-1, n, block_size).transpose(0, 1), R.transpose(-1, -2))
            U = U.transpose(0, 1).reshape(-1, n * block_size).to(x.dtype)
    p = F.linear(x, Vh).to(ct)
    return _output(x, weight, bias, p * S_eff, U)


def ablation_basis(c):
    """C_hat: c / (||c|| + 1e-6) for k == 1, else Q of the reduced QR of c in float32; c (..., r, k), batched."""
    if c.shape[-1] == 1:
        return c / (torch.linalg.vector_norm(c, dim=(-2, -1), keepdim=True) + 1e-6)
    return torch.linalg.qr(c.to(torch.promote_types(c.dtype, torch.float32)), mode="reduced")[0].to(c.dtype)


def antipasto_ablate(x, weight, bias, U, S, Vh, c, alpha, coeff=1.0):
    """SPEC §3: h = p S;  h <- h - coeff ((h C_hat) * clamp(alpha, 0, 1)) C_hat^T."""
    ct = _core_dtype(x, c)
    h = ablate_core(F.linear(x, Vh).to(ct), S.to(ct), ablation_basis(c).to(ct), alpha.to(ct).clamp(0, 1), coeff)
    return _output(x, weight, bias, h, U)


def antipasto_dplr(x, weight, bias, U, S, Vh, g, A, B, coeff=1.0, suppress_only=False):
    """SPEC §5: h = p * S_eff + coeff * (p A^T) B^T."""
    ct = _core_dtype(x, g)
    h = dplr_core(F.linear(x, Vh).to(ct), S.to(ct), g.to(ct), A.to(ct), B.to(ct), coeff, suppress_only)
    return _output(x, weight, bias, h, U)


def corda_basis(weight, xtx, n_tokens: int, r: int, cov_eps: float = 1e-3):
    """SPEC §4 from the running sum X^T X over n_tokens: (U, S, P, W_res), float32."""
    W = weight.detach().to(xtx.dtype)
    C = xtx / n_tokens
    lam, Q = torch.linalg.eigh((C + C.T) / 2)
    lam = lam.clamp(min=0) + cov_eps
    C_half = (Q * lam.sqrt()) @ Q.T
    C_invhalf = (Q * lam.rsqrt()) @ Q.T
    U_t, S_t, Vh_t = torch.linalg.svd(W @ C_half, full_matrices=False)
    U, S, P = U_t[:, :r].contiguous(), S_t[:r].contiguous(), (Vh_t[:r] @ C_invhalf).contiguous()
    return U, S, P, W - (U * S) @ P


def select_directions(weight, proj_sq_or_abs_sum, n_tokens: int, r: int, Vh_full, S_full, U_full, pool="rms"):
    """SPEC "Data-driven choice": top-r of S_f * pool, pool from the running sum of proj^2 ("rms") or
    |proj| ("mean_abs") over n_tokens. Returns (U, S, Vh, W_res), float32."""
    mean = proj_sq_or_abs_sum / n_tokens
    score = S_full * (mean.sqrt() if pool == "rms" else mean)
    idx = torch.topk(score, r).indices.sort().values
    U, S, Vh = U_full[:, idx].contiguous(), S_full[idx].contiguous(), Vh_full[idx].contiguous()
    return U, S, Vh, weight.detach().to(S.dtype) - (U * S) @ Vh
