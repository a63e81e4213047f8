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
        self._rotation_cache = None  # (key, R, coefficient) of the last forward without autograd; see _forward_rotation
        self._shared = None  # (its _RotationGroup, its index there) inside shared_rotations

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

    def _coeff_key(self, coeff):
        """What R depends on besides rot_T: a float coefficient's value, or the module's coefficient tensor (its
        identity and version; the caller keeps the tensor alive, so its id is not reused) and the groups' shape."""
        c = self._coeff
        if not isinstance(c, torch.Tensor):
            return c
        return (id(c), c._version, c.dtype, tuple(coeff.shape))

    def _forward_rotation(self, coeff) -> torch.Tensor:
        """R for this forward at ``coeff`` (a float, or a per-group tensor: one set per group). Inside
        ``shared_rotations`` it is a slice of the block's one Cayley call. Without autograd on rot_T (decode, eval)
        the last R is reused until rot_T (its storage or version: an optimizer step, load_state_dict, .to) or the
        coefficient changes (a float's value; the module's coefficient tensor or its version), so a generation step
        does not re-run the Cayley solve; with autograd, or while compiling, it is computed."""
        t = self.rot_T
        if torch.compiler.is_compiling():
            return self.rotation(coeff)
        if self._shared is not None:
            group, index = self._shared
            return group.rotation(index, coeff)
        if torch.is_grad_enabled() and t.requires_grad:
            return self.rotation(coeff)
        key = (t.data_ptr(), t._version, t.device, t.dtype, self._coeff_key(coeff))
        if self._rotation_cache is None or self._rotation_cache[0] != key:
            with torch.no_grad():
                self._rotation_cache = (key, self.rotation(coeff), self._coeff)
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


class SharedRotations:
    """The rotations of many RotLinear layers from one ``block_cayley`` call per group of layers that share block
    size, angle, dtype and device, and per coefficient (see ``antipasto_ext.shared_rotations``). The group's
    generators are concatenated; R is computed at a coefficient's first use and reused by every later forward until
    a layer finds its generator changed (an optimizer step), which starts over (the layers whose generator did not
    change get the same slices of R either way). With autograd each forward's slice of R adds its
    gradient to R's, and once a backward has accumulated it one ``block_cayley_backward`` turns it into d rot_T,
    added to each layer's rot_T.grad (a hook on R): one launch per group and backward instead of one per layer."""

    def __init__(self, modules):
        by_kind = {}
        for m in modules:
            if m.rot_T is not None:
                if m._shared is not None:
                    raise RuntimeError("shared_rotations: a layer is already inside another shared_rotations block")
                key = (m.block_size, m.max_rotation_angle, m.rot_T.device, m.rot_T.dtype)
                by_kind.setdefault(key, []).append(m)
        self._groups = [_RotationGroup(mods) for mods in by_kind.values()]
        for g in self._groups:
            for i, m in enumerate(g.modules):
                m._shared = (g, i)

    def close(self):
        """Releases the layers (each solves its own rotation again)."""
        for g in self._groups:
            g.sets.clear()
            for m in g.modules:
                m._shared = None


class _RotationGroup:
    def __init__(self, modules):
        self.modules = modules
        self.block_size, self.max_angle = modules[0].block_size, modules[0].max_rotation_angle
        sizes = [m.rot_T.shape[0] for m in modules]
        self.starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.ends = [a + n for a, n in zip(self.starts, sizes)]
        self.versions, self.t = [None] * len(modules), None
        self.sets = {}  # coefficient key -> (R, the module's coefficient object, kept alive so its id stays unique)

    def rotation(self, index, coeff) -> torch.Tensor:
        """Layer `index`'s slice of R at coeff."""
        module, start, end = self.modules[index], self.starts[index], self.ends[index]
        t = module.rot_T
        if self.versions[index] != (t.data_ptr(), t._version):  # first use, or a step: concatenate again, forget R
            self.versions = [(m.rot_T.data_ptr(), m.rot_T._version) for m in self.modules]
            self.sets = {}
            self.t = torch.cat([m.rot_T.detach() for m in self.modules])
        key = module._coeff_key(coeff)
        if key not in self.sets:
            with torch.no_grad():
                R = ops.block_cayley(self.t, self.block_size, self.max_angle, coeff)
            if any(m.rot_T.requires_grad for m in self.modules):
                R.requires_grad_(True)
                R.register_post_accumulate_grad_hook(self._backward(self.t, coeff))
            self.sets[key] = (R, module._coeff)
        R = self.sets[key][0]
        view = R[start:end] if R.dim() == 3 else R[:, start:end]
        return view if torch.is_grad_enabled() and module.rot_T.requires_grad else view.detach()

    def _backward(self, t, coeff):
        def hook(R):
            dt = ops.block_cayley_backward(R.grad, R.detach(), t, self.block_size, self.max_angle, coeff)
            R.grad = None
            for m, start, end in zip(self.modules, self.starts, self.ends):
                if m.rot_T.requires_grad:
                    piece = dt[start:end].to(m.rot_T.dtype)
                    if m.rot_T.grad is None:
                        m.rot_T.grad = piece.clone()
                    else:
                        m.rot_T.grad.add_(piece)
        return hook
