"""Registered custom ops (namespace ``antipasto_ext``): thin wrappers, autograd and fake kernels.

The kernels are C++ (CPU) and CUDA, registered by ``antipasto_ext._C``. Each forward op has a
``*_backward`` op; autograd wires them together here, and every op has a fake kernel so
``torch.compile(fullgraph=True)`` traces through them. The S-space cores take the (tokens, r)
activations ``p`` in any float dtype and the small parameters in any float dtype; they accumulate in
float32 (float64 for float64 ``p``) and return ``h`` in ``p``'s dtype, gradients in each input's dtype.
"""
import math

import torch

from ._loader import ext_loaded, why_unavailable


class _NotBuilt:
    """Stands in for torch.ops.antipasto_ext when the library did not load: a call says why."""

    def __getattr__(self, name):
        raise RuntimeError(why_unavailable(torch.device("cpu")))


_ops = torch.ops.antipasto_ext if ext_loaded else _NotBuilt()

# Which side antipasto_rot rotates, as the kernels number it.
ROT_SIDES = {"none": 0, "V": 1, "U": 2}
MAX_BLOCK_SIZE = 64


def block_cayley(rot_T: torch.Tensor, block_size: int, max_angle: float = 0.5, coeff: float = 1.0) -> torch.Tensor:
    """Per-block Cayley rotations of SPEC §2, shape (n_blocks, block_size, block_size).

    ``rot_T`` is (n_blocks, block_size*(block_size-1)/2): the strict upper triangle of each block's
    generator in ``torch.triu_indices`` order. Exact solve, no pivoting, no host synchronisation.
    """
    if not isinstance(block_size, int) or not 2 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be an int in 2..{MAX_BLOCK_SIZE}, got {block_size!r}")
    if not (0 < max_angle < math.pi):
        raise ValueError(f"max_angle must be in (0, pi), got {max_angle!r}")
    m = block_size * (block_size - 1) // 2
    if rot_T.dim() != 2 or rot_T.shape[1] != m:
        raise ValueError(f"rot_T must have shape (n_blocks, {m}) for block_size {block_size}, got {tuple(rot_T.shape)}")
    return _ops.block_cayley(rot_T, block_size, float(max_angle), float(coeff))


def gain_core(p, S, g, coeff: float = 1.0, suppress_only: bool = False):
    """h = p * S * (1 + ELU(coeff * g)) (SPEC §1, §4)."""
    return _ops.gain_core(p, S, g, float(coeff), bool(suppress_only))


def dplr_core(p, S, g, A, B, coeff: float = 1.0, suppress_only: bool = False):
    """h = p * S_eff + coeff * (p A^T) B^T (SPEC §5)."""
    return _ops.dplr_core(p, S, g, A, B, float(coeff), bool(suppress_only))


def rot_core(p, S, delta_s, R, coeff: float = 1.0, rotate_basis: str = "V"):
    """h = (p blockdiag(R)^T) * S_eff (V side), (p * S_eff) blockdiag(R) (U side) or p * S_eff (none),
    S_eff = S + coeff * delta_s (SPEC §2, the rotation applied in r-space)."""
    return _ops.rot_core(p, S, delta_s, R, float(coeff), ROT_SIDES[rotate_basis])


def ablate_core(p, S, C, a, coeff: float = 1.0):
    """h = p S - coeff ((p S C) * a) C^T (SPEC §3) for an orthonormal C (r, k) and a = clamp(alpha, 0, 1)."""
    return _ops.ablate_core(p, S, C, a, float(coeff))


# ------------------------------------------------------------------------------------------ layer ops
# The whole adapter layer y = x W^T + b + core(x Vh^T) U^T as one op and one autograd node, x (tokens, d_in),
# W (d_out, d_in), bias (d_out) or None, U (d_out, r), Vh (r, d_in), all in x's dtype. h = core(x Vh^T) runs
# the fused tensor-core kernel on CUDA for 16-bit activations and few rows (the decode path), else the BLAS
# GEMM and the core kernel; the output GEMM accumulates into the frozen one (beta = 1), and in backward
# dx = dY W + dp Vh is one GEMM accumulated into the other. p = x Vh^T is kept only when autograd records.


def layer_gain(x, W, bias, U, Vh, S, g, coeff: float = 1.0, suppress_only: bool = False):
    """antipasto / corda layer: h = gain_core(x Vh^T, S, g, coeff, suppress_only)."""
    return _ops.layer_gain(x, W, bias, U, Vh, S, g, float(coeff), bool(suppress_only), False)[0]


def layer_rot(x, W, bias, U, Vh, S, delta_s, R, coeff: float = 1.0, rotate_basis: str = "V"):
    """antipasto_rot layer: h = rot_core(x Vh^T, S, delta_s, R, coeff, rotate_basis)."""
    return _ops.layer_rot(x, W, bias, U, Vh, S, delta_s, R, float(coeff), ROT_SIDES[rotate_basis], False)[0]


def layer_dplr(x, W, bias, U, Vh, S, g, A, B, coeff: float = 1.0, suppress_only: bool = False):
    """antipasto_dplr layer: h = dplr_core(x Vh^T, S, g, A, B, coeff, suppress_only)."""
    return _ops.layer_dplr(x, W, bias, U, Vh, S, g, A, B, float(coeff), bool(suppress_only), False)[0]


def layer_ablate(x, W, bias, U, Vh, S, C, a, coeff: float = 1.0):
    """antipasto_ablate layer: h = ablate_core(x Vh^T, S, C, a, coeff)."""
    return _ops.layer_ablate(x, W, bias, U, Vh, S, C, a, float(coeff), False)[0]


# ------------------------------------------------------------------------------------------ autograd
# The forward ops' autograd lives in C++ (csrc/autograd.cpp). The *_backward ops are not
# differentiable again; saying so beats autograd's silent fallback.


def _no_double_backward(ctx, *grads):
    raise NotImplementedError("antipasto_ext: double backward through the adapter cores is not supported")


# ------------------------------------------------------------------------------------------ fake kernels


def _fake_block_cayley(rot_T, block_size, max_angle, coeff):
    return rot_T.new_empty(rot_T.shape[0], block_size, block_size)


def _fake_block_cayley_backward(grad_R, R, rot_T, block_size, max_angle, coeff):
    return rot_T.new_empty(rot_T.shape)


def _fake_core(p, *args):
    return p.new_empty(p.shape)


def _fake_gain_backward(grad_h, p, S, g, coeff, suppress_only):
    return p.new_empty(p.shape), g.new_empty(g.shape)


def _fake_dplr_backward(grad_h, p, S, g, A, B, coeff, suppress_only):
    return p.new_empty(p.shape), g.new_empty(g.shape), A.new_empty(A.shape), B.new_empty(B.shape)


def _fake_rot_backward(grad_h, p, S, delta_s, R, coeff, side):
    return p.new_empty(p.shape), delta_s.new_empty(delta_s.shape), R.new_empty(R.shape)


def _fake_ablate_backward(grad_h, p, S, C, a, coeff):
    return p.new_empty(p.shape), C.new_empty(C.shape), a.new_empty(a.shape)


def _fake_layer(x, W, bias, U, Vh, *args):
    need_p = args[-1]
    n, r = x.shape[0], Vh.shape[0]
    return x.new_empty(n, W.shape[0]), x.new_empty(n if need_p else 0, r)


def _register():
    lib = torch.library
    for name in ("gain_core", "dplr_core", "rot_core", "ablate_core"):
        lib.register_autograd(f"antipasto_ext::{name}_backward", _no_double_backward)
        lib.register_fake(f"antipasto_ext::{name}", _fake_core)
    lib.register_autograd("antipasto_ext::block_cayley_backward", _no_double_backward)
    lib.register_fake("antipasto_ext::block_cayley", _fake_block_cayley)
    lib.register_fake("antipasto_ext::block_cayley_backward", _fake_block_cayley_backward)
    lib.register_fake("antipasto_ext::gain_core_backward", _fake_gain_backward)
    lib.register_fake("antipasto_ext::dplr_core_backward", _fake_dplr_backward)
    lib.register_fake("antipasto_ext::rot_core_backward", _fake_rot_backward)
    lib.register_fake("antipasto_ext::ablate_core_backward", _fake_ablate_backward)
    for name in ("gain", "rot", "dplr", "ablate"):
        lib.register_fake(f"antipasto_ext::layer_{name}", _fake_layer)


if ext_loaded:
    _register()
