"""Registered custom ops (namespace ``antipasto_ext``): thin wrappers and fake kernels.

The kernels are C++ (CPU), CUDA and the CUDA source through the CPU emulation, registered by
``antipasto_ext._C`` with their C++ autograd; every op has a fake kernel here so ``torch.compile(fullgraph=True)``
traces through them. The ops: ``core`` / ``core_backward`` (the r-space core of any variant), ``layer`` (a whole
adapter layer), ``block_cayley`` / ``block_cayley_backward``. The S-space cores take the (tokens, r)
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


def _coeff_args(coeff):
    """(coeff, coeffs) of the ops from a float or a 1-D tensor of per-group coefficients."""
    if isinstance(coeff, torch.Tensor):
        return 1.0, coeff
    return float(coeff), None


def block_cayley(rot_T: torch.Tensor, block_size: int, max_angle: float = 0.5, coeff=1.0) -> torch.Tensor:
    """Per-block Cayley rotations of SPEC §2, shape (n_blocks, block_size, block_size); for a 1-D tensor
    ``coeff`` (G,), one set per coefficient, (G, n_blocks, block_size, block_size), of ``rot_T`` or, for ``rot_T``
    (G, n_blocks, m), of set e's own generator ``rot_T[e]``.

    ``rot_T`` is (n_blocks, block_size*(block_size-1)/2): the strict upper triangle of each block's
    generator in ``torch.triu_indices`` order. Exact solve, no pivoting, no host synchronisation.
    """
    if not isinstance(block_size, int) or not 2 <= block_size <= MAX_BLOCK_SIZE:
        raise ValueError(f"block_size must be an int in 2..{MAX_BLOCK_SIZE}, got {block_size!r}")
    if not (0 < max_angle < math.pi):
        raise ValueError(f"max_angle must be in (0, pi), got {max_angle!r}")
    m = block_size * (block_size - 1) // 2
    per_set = isinstance(coeff, torch.Tensor) and rot_T.dim() == 3
    if rot_T.dim() != 2 + per_set or rot_T.shape[-1] != m:
        raise ValueError(f"rot_T must have shape (n_blocks, {m}) for block_size {block_size} (or (G, n_blocks, {m}) with "
                         f"a tensor coeff of G entries), got {tuple(rot_T.shape)}")
    return _ops.block_cayley(rot_T, block_size, float(max_angle), *_coeff_args(coeff))


def block_cayley_backward(grad_R, R, rot_T, block_size: int, max_angle: float = 0.5, coeff=1.0):
    """d rot_T of block_cayley from grad_R = dL/dR and the forward's R (no second solve)."""
    return _ops.block_cayley_backward(grad_R, R, rot_T, int(block_size), float(max_angle), *_coeff_args(coeff))


# ------------------------------------------------------------------------------------------ the cores
# A core is (core, S, params, coeff, option): its name, the frozen singular values S (r,), its parameters in a
# fixed order and its one integer setting (csrc/cores.h):
#   gain   [g]              option: suppress_only         rot     [delta_s, R]   option: side (0 none, 1 V, 2 U)
#   dplr   [g, A, B]        option: suppress_only         ablate  [C, a]         option: 0
# ``coeff`` is a float, or a 1-D tensor of G coefficients that steers G equal groups of consecutive rows (row i of
# n uses coeff[i // (n // G)]); rot's R is then one rotation set per group (G, r / bs, bs, bs), what
# ``block_cayley`` gives for that tensor. ``adapters`` (with a tensor coeff): a bank, G int64 indices, group e
# running adapter adapters[e]; every parameter but rot's R is then stacked (n_adapters, ...its shape) and its
# gradient comes per adapter. The per-core functions below name the parameters; the generic ones take the list.


def core(core: str, p, S, params, coeff=1.0, option: int = 0, adapters=None):
    """h = core(p): the r-space core ``core`` on p (..., r) (docs/SPEC.md §1-5)."""
    c, cs = _coeff_args(coeff)
    return _ops.core(core, p, S, list(params), c, int(option), cs, adapters)


def core_backward(core: str, grad_h, p, S, params, coeff=1.0, option: int = 0, adapters=None):
    """(dp, [d param for param in params]) of core(p)."""
    c, cs = _coeff_args(coeff)
    return _ops.core_backward(core, grad_h, p, S, list(params), c, int(option), cs, adapters)


def layer(core: str, x, W, bias, U, Vh, S, params, coeff=1.0, option: int = 0, need_p: bool = False,
          adapters=None):
    """(y, p): the whole adapter layer y = x W^T + b + core(x Vh^T) U^T as one op and one autograd node, x (tokens,
    d_in), W (d_out, d_in), bias (d_out) or None, U (d_out, r), Vh (r, d_in), all in x's dtype; p = x Vh^T when
    need_p (else an empty (0, r) tensor). h = core(x Vh^T) runs the fused tensor-core kernel on CUDA for 16-bit
    activations and few rows (the decode path), else the BLAS GEMM and the core kernel; the output GEMM accumulates
    into the frozen one (beta = 1), and in backward dx = dY W + dp Vh is one GEMM accumulated into the other. p is
    kept for backward only when autograd records."""
    c, cs = _coeff_args(coeff)
    return _ops.layer(core, x, W, bias, U, Vh, S, list(params), c, int(option), bool(need_p), cs, adapters)


def gain_core(p, S, g, coeff: float = 1.0, suppress_only: bool = False):
    """h = p * S * (1 + ELU(coeff * g)) (SPEC §1, §4)."""
    return core("gain", p, S, [g], coeff, bool(suppress_only))


def dplr_core(p, S, g, A, B, coeff: float = 1.0, suppress_only: bool = False):
    """h = p * S_eff + coeff * (p A^T) B^T (SPEC §5)."""
    return core("dplr", p, S, [g, A, B], coeff, bool(suppress_only))


def rot_core(p, S, delta_s, R, coeff: float = 1.0, rotate_basis: str = "V"):
    """h = (p blockdiag(R)^T) * S_eff (V side), (p * S_eff) blockdiag(R) (U side) or p * S_eff (none),
    S_eff = S + coeff * delta_s (SPEC §2, the rotation applied in r-space)."""
    return core("rot", p, S, [delta_s, R], coeff, ROT_SIDES[rotate_basis])


def ablate_core(p, S, C, a, coeff: float = 1.0):
    """h = p S - coeff ((p S C) * a) C^T (SPEC §3) for an orthonormal C (r, k) and a = clamp(alpha, 0, 1)."""
    return core("ablate", p, S, [C, a], coeff, 0)


def layer_gain(x, W, bias, U, Vh, S, g, coeff: float = 1.0, suppress_only: bool = False):
    """antipasto / corda layer: h = gain_core(x Vh^T, S, g, coeff, suppress_only)."""
    return layer("gain", x, W, bias, U, Vh, S, [g], coeff, bool(suppress_only))[0]


def layer_rot(x, W, bias, U, Vh, S, delta_s, R, coeff: float = 1.0, rotate_basis: str = "V"):
    """antipasto_rot layer: h = rot_core(x Vh^T, S, delta_s, R, coeff, rotate_basis)."""
    return layer("rot", x, W, bias, U, Vh, S, [delta_s, R], coeff, ROT_SIDES[rotate_basis])[0]


def layer_dplr(x, W, bias, U, Vh, S, g, A, B, coeff: float = 1.0, suppress_only: bool = False):
    """antipasto_dplr layer: h = dplr_core(x Vh^T, S, g, A, B, coeff, suppress_only)."""
    return layer("dplr", x, W, bias, U, Vh, S, [g, A, B], coeff, bool(suppress_only))[0]


def layer_ablate(x, W, bias, U, Vh, S, C, a, coeff: float = 1.0):
    """antipasto_ablate layer: h = ablate_core(x Vh^T, S, C, a, coeff)."""
    return layer("ablate", x, W, bias, U, Vh, S, [C, a], coeff, 0)[0]


# ------------------------------------------------------------------------------------------ autograd
# The forward ops' autograd lives in C++ (csrc/autograd.cpp). The backward ops are not differentiable again;
# saying so beats autograd's silent fallback.


def _no_double_backward(ctx, *grads):
    raise NotImplementedError("antipasto_ext: double backward through the adapter cores is not supported")


# ------------------------------------------------------------------------------------------ fake kernels


def _fake_block_cayley(rot_T, block_size, max_angle, coeff, coeffs=None):
    sets = () if coeffs is None else (coeffs.shape[0],)
    return rot_T.new_empty(*sets, rot_T.shape[-2], block_size, block_size)


def _fake_block_cayley_backward(grad_R, R, rot_T, block_size, max_angle, coeff, coeffs=None):
    return rot_T.new_empty(rot_T.shape)


def _fake_core(core, p, S, params, coeff, option, coeffs=None, adapters=None):
    return p.new_empty(p.shape)


def _fake_core_backward(core, grad_h, p, S, params, coeff, option, coeffs=None, adapters=None):
    return p.new_empty(p.shape), [t.new_empty(t.shape) for t in params]


def _fake_layer(core, x, W, bias, U, Vh, S, params, coeff, option, need_p, coeffs=None, adapters=None):
    n, r = x.shape[0], Vh.shape[0]
    return x.new_empty(n, W.shape[0]), x.new_empty(n if need_p else 0, r)


# Every registered op: its Python wrapper, its fake kernel and, for the backward ops, the refusal of double backward
# (tests/test_op_registry.py checks that the registered ops and this table agree).
OPS = {
    "core": (core, _fake_core, None),
    "core_backward": (core_backward, _fake_core_backward, _no_double_backward),
    "layer": (layer, _fake_layer, None),
    "block_cayley": (block_cayley, _fake_block_cayley, None),
    "block_cayley_backward": (block_cayley_backward, _fake_block_cayley_backward, _no_double_backward),
}


def _register():
    for name, (_, fake, autograd) in OPS.items():
        torch.library.register_fake(f"antipasto_ext::{name}", fake)
        if autograd is not None:
            torch.library.register_autograd(f"antipasto_ext::{name}", autograd)


if ext_loaded:
    _register()
