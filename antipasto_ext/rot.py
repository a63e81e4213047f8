"""antipasto_rot (SPEC §2): block-diagonal Cayley rotation of one side of the frozen basis plus an additive
shift of the singular values. The ext backend applies the rotation in r-space (never forms R Vh)."""
import math

import torch
from torch import nn

from . import ops, reference
from ._base import SVDAdapter

ROTATE_BASIS = ("V", "U", "none")


class RotLinear(SVDAdapter):
    """Trainable ``delta_s`` (r,) ~ N(4e-4, 4e-4) and ``rot_T`` (r / block_size, bs (bs - 1) / 2) = 0."""

    core = "rot"

    def __init__(self, in_features, out_features, r, block_size=4, max_rotation_angle=0.5, rotate_basis="V",
                 coeff=1.0, *, dtype=None, device=None):
        super().__init__(in_features, out_features, r, coeff, dtype=dtype, device=device)
        if isinstance(block_size, bool) or not isinstance(block_size, int) or not 2 <= block_size <= ops.MAX_BLOCK_SIZE:
            raise ValueError(f"block_size must be an int in 2..{ops.MAX_BLOCK_SIZE}, got {block_size!r}")
        if r % block_size:
            raise ValueError(f"block_size={block_size} must divide r={r}")
        if not 0 < max_rotation_angle < math.pi:
            raise ValueError(f"max_rotation_angle must be in (0, pi), got {max_rotation_angle!r}")
        if rotate_basis not in ROTATE_BASIS:
            raise ValueError(f"rotate_basis must be one of {ROTATE_BASIS}, got {rotate_basis!r}")
        self.block_size, self.max_rotation_angle, self.rotate_basis = block_size, float(max_rotation_angle), rotate_basis
        kw = dict(dtype=self.S.dtype, device=self.S.device)
        self.delta_s = nn.Parameter(torch.empty(r, **kw).normal_(mean=4e-4, std=4e-4))
        if rotate_basis != "none":
            self.rot_T = nn.Parameter(torch.zeros(r // block_size, block_size * (block_size - 1) // 2, **kw))
        else:
            self.register_parameter("rot_T", None)
        self._rotation_cache = None  # (key, R) of the last forward without autograd; see _forward_rotation

    def rotation(self, coeff=None) -> torch.Tensor:
        """The per-block rotations R (n_blocks, bs, bs) at ``coeff`` (default: the module's float coeff); one set
        per coefficient, (G, n_blocks, bs, bs), for a 1-D tensor of G coefficients."""
        coeff = self.coeff if coeff is None else coeff
        if isinstance(coeff, torch.Tensor):
            coeff = coeff.reshape(-1)
        return ops.block_cayley(self.rot_T, self.block_size, self.max_rotation_angle, coeff)

    def core_matrix(self, coeff=None):
        """C = diag(S_eff) blockdiag(R) (V side), blockdiag(R)^T diag(S_eff) (U side), diag(S_eff) (none)."""
        coeff = self.coeff if coeff is None else coeff
        ct = self.S.dtype
        s_eff = self.S + coeff * self.delta_s.to(ct)
        if self.rot_T is None:
            return torch.diag(s_eff)
        R = torch.block_diag(*reference.cayley_blocks(self.rot_T.to(ct), self.block_size, self.max_rotation_angle, coeff))
        return s_eff[:, None] * R if self.rotate_basis == "V" else R.T * s_eff

    def _forward_rotation(self, coeff) -> torch.Tensor:
        """R for this forward at ``coeff`` (a float, or a per-group tensor: one set per group). Without autograd on
        rot_T (decode, eval) the last R is reused until rot_T (its storage or version: an optimizer step,
        load_state_dict, .to) or the coefficient changes (a float's value; the module's coefficient tensor, its
        storage or version), so a generation step does not re-run the Cayley solve; with autograd, or while
        compiling, it is computed."""
        t = self.rot_T
        if (torch.is_grad_enabled() and t.requires_grad) or torch.compiler.is_compiling():
            return self.rotation(coeff)
        c = self._coeff
        c_key = (c.data_ptr(), c._version, c.dtype, tuple(c.shape)) if isinstance(c, torch.Tensor) else c
        key = (t.data_ptr(), t._version, t.device, t.dtype, c_key)
        if self._rotation_cache is None or self._rotation_cache[0] != key:
            with torch.no_grad():
                self._rotation_cache = (key, self.rotation(coeff))
        return self._rotation_cache[1]

    def _core_args(self, coeff, adapters=None):
        p = self._raw(adapters)
        if self.rot_T is None:
            R = self.S.new_empty(0)
        elif adapters is not None:  # a bank: each group's rotation set from its adapter's generator
            R = ops.block_cayley(p["rot_T"][adapters], self.block_size, self.max_rotation_angle, coeff)
        else:
            R = self._forward_rotation(coeff)
        return [p["delta_s"], R], ops.ROT_SIDES[self.rotate_basis]

    def _eager(self, x, coeff, p=None):
        p = p or self._raw()
        return reference.antipasto_rot(x, self.weight, self.bias, self.U, self.S, self.Vh, p["delta_s"], p.get("rot_T"),
                                       self.block_size, self.max_rotation_angle, self.rotate_basis, coeff)
