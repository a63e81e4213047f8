"""What every variant shares: the frozen top-r SVD split of an nn.Linear, input checks, the backend
switch, the forward skeleton (two skinny GEMMs around an r-space core) and layer-level calibration."""
import math

import torch
from torch import nn

from . import _loader, ops, reference
from . import svd as _svd

BACKENDS = ("ext", "eager")


def check_int_range(name: str, value, lo: int, hi: int):
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an int in {lo}..{hi}, got {value!r}")


def check_steering_tensor(name: str, t: torch.Tensor):
    """A coefficient or adapter-index tensor: real (float or integer), no autograd (no gradient flows to it)."""
    if t.dtype == torch.bool or t.is_complex():
        raise ValueError(f"{name}: the tensor must be real, got dtype {t.dtype}")
    if t.requires_grad:
        raise ValueError(f"{name}: the tensor must not require grad (no gradient flows to it)")


class SVDAdapter(nn.Module):
    """Base of the variants: ``out = x W_res^T + b + core(x Vh^T) U^T``.

    Subclasses create their trainable parameters in ``__init__``, name their r-space core (``core``, one of the
    ops' cores) and define ``_core_args`` (its parameters and option for the ops) and ``_eager`` (the reference
    forward). ``in_basis`` names the input-side basis buffer ("Vh", or
    "P" for CorDA).

    ``coeff`` is a float, or a tensor that steers each sample or token: shape ``(B,)`` for x ``(B, ..., d_in)``
    (sample b at ``coeff[b]``), ``x.shape[:-1]`` (one per token) or ``()``. Row for row the output and the gradients
    equal the module's at that row's float coefficient (parameter gradients summed over the rows); the kernels read
    the tensor on its device (no host synchronisation).

    A bank (``set_bank``, or ``antipasto_ext.load(model, [path_a, path_b, ...])``) serves several adapters made on
    this layer's basis at once: ``adapter`` (an integer tensor shaped like a coefficient tensor, or None: adapter 0)
    says which adapter each sample or token runs, at its coefficient.
    """

    in_basis = "Vh"
    calibration_kind = "directions"  # or "covariance"

    def __init__(self, in_features: int, out_features: int, r: int, coeff: float = 1.0, *, dtype=None, device=None):
        super().__init__()
        check_int_range("r", r, 1, min(in_features, out_features))
        dtype = dtype or torch.get_default_dtype()
        self.in_features, self.out_features, self.r = in_features, out_features, r
        self.coeff = coeff
        param_dtype = torch.promote_types(dtype, torch.float32)
        kw = dict(device=device)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, dtype=dtype, **kw), requires_grad=False)
        self.register_parameter("bias", None)
        self.register_buffer("U", torch.empty(out_features, r, dtype=dtype, **kw))
        self.register_buffer("S", torch.empty(r, dtype=param_dtype, **kw))
        self.register_buffer(self.in_basis, torch.empty(r, in_features, dtype=dtype, **kw))
        # While merged: the core C folded into ``weight`` (W_res + U C Vh), so unmerge takes out what was put in.
        # Persistent: a merged module's state_dict says so, and loading it into an unmerged one fails loudly.
        self.register_buffer("_merged_core", None)
        self._backend = None
        self._calibration = None
        self._bank_names = None  # the trainable parameters a bank stacks (buffers bank_<name>), or None
        self._adapter = None
        # How the current basis was made, for saving a file that recomputes it instead of storing it:
        # the SVD recipe of from_linear (None: built otherwise, the basis is not reproducible from the weight),
        # the number of calibrations since, and the fingerprint (files.basis_fingerprint) of the from_linear
        # split that the first calibration replaced (a file uses it to rebuild the residual bit for bit).
        self._split_svd = None
        self._calibrations = 0
        self._split_fingerprint = None

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int, svd="auto", **kwargs):
        """Split ``linear`` into the frozen top-r SVD basis and the residual weight; the module keeps
        the linear's device and dtype. The trainable core starts at the variant's init.

        ``svd``: ``"exact"`` (full LAPACK / cuSOLVER SVD), ``"randomized"`` (subspace iteration, see
        ``antipasto_ext.svd``) or ``"auto"`` (randomized for large layers, where it was measured faster and
        accurate). The split is exact either way: the residual weight absorbs what the basis leaves out."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        W = linear.weight
        m = cls(linear.in_features, linear.out_features, r, dtype=W.dtype, device=W.device, **kwargs)
        spec = _svd.resolve(svd, tuple(W.shape), r)
        with torch.no_grad():
            m._split_from(*_svd.top_r(W, r, spec), W)
            if linear.bias is not None:
                m.bias = nn.Parameter(linear.bias.detach().clone(), requires_grad=False)
        m._split_svd = spec
        m._snapshot_init()
        return m

    def _split_from(self, U, S, in_basis, W):
        """Store the basis once in the layer's dtype and W_res = W - U diag(S) in_basis computed in the SVD
        dtype from the stored (rounded) basis, rounded once to the layer's dtype. The residual depends only on
        W and the stored basis, so a file holding the basis (or a recipe to recompute it) rebuilds it exactly;
        the stored W_res + U diag(S) Vh rebuilds W to within one rounding of the layer's dtype."""
        dtype, ct = self.weight.dtype, S.dtype
        self.U.copy_(U.to(dtype))
        self.S.copy_(S)
        getattr(self, self.in_basis).copy_(in_basis.to(dtype))
        U_st, B_st = self.U.to(ct), getattr(self, self.in_basis).to(ct)
        self.weight.copy_((W.detach().to(ct) - (U_st * self.S) @ B_st).to(dtype))

    def _set_basis(self, U, S, in_basis, W_res):
        """Store a split computed elsewhere, (U, S, in_basis, W_res = W - U diag(S) in_basis) in the SVD dtype
        (the benchmarks share one SVD between variants), once in the dtype the forward computes in."""
        dtype, ct = self.weight.dtype, S.dtype
        self.U.copy_(U.to(dtype))
        self.S.copy_(S)
        getattr(self, self.in_basis).copy_(in_basis.to(dtype))
        if dtype != ct:  # the stored U, Vh are rounded: fold that rounding into W_res, so that the stored
            # W_res + U diag(S) Vh rebuilds W to within one rounding of dtype (what detach relies on)
            W_res = W_res + (U * S) @ in_basis - (self.U.to(ct) * S) @ getattr(self, self.in_basis).to(ct)
        self.weight.copy_(W_res.to(dtype))

    def _precise_tensors(self):
        """Tensors kept in promote(weight dtype, float32) whatever ``.to(dtype)`` does: S, the core's
        parameters and the merged core (what the constructor makes; the S-space core accumulates in it)."""
        names = (["S", "_merged_core"] + [n for n in self._parameters if n not in ("weight", "bias")]
                 + [f"bank_{n}" for n in self._bank_names or ()])
        return {n: t for n in names if (t := getattr(self, n)) is not None}

    def _apply(self, fn, recurse=True):
        """``.to(bfloat16)`` / ``.half()`` move U, Vh and the residual weight to the new dtype and keep the
        S-space tensors in float32, as a module built in that dtype has them (no rounding of S or of
        trainable parameters, calibration still possible); the init snapshot follows device and dtype."""
        # detach(): views of the current storage, which super()._apply replaces in the Parameter via .data
        before = {n: (t.detach(), None if t.grad is None else t.grad.detach())
                  for n, t in self._precise_tensors().items()}
        super()._apply(fn, recurse)
        ct = torch.promote_types(self.weight.dtype, torch.float32)
        for n, (old, old_grad) in before.items():
            new = getattr(self, n)
            if new is None or new.dtype == ct:
                continue
            value = old.to(device=new.device, dtype=ct)
            if isinstance(new, nn.Parameter):
                new.data = value
                if old_grad is not None:
                    new.grad = old_grad.to(device=new.device, dtype=ct)
            else:
                self._buffers[n] = value
        if getattr(self, "_init_state", None):
            self._init_state = {n: t.to(device=self._parameters[n].device, dtype=self._parameters[n].dtype)
                                for n, t in self._init_state.items()}
        return self

    def _snapshot_init(self):
        # Calibration re-selects the basis and is only sound while the core is at its init.
        self._init_state = {n: p.detach().clone() for n, p in self.named_parameters() if p.requires_grad}

    # ----------------------------------------------------------------------------- runtime knobs

    @property
    def coeff(self):
        return self._coeff

    @coeff.setter
    def coeff(self, value):
        if isinstance(value, torch.Tensor):
            check_steering_tensor("coeff", value)
            if self._buffers.get("_merged_core") is not None:
                raise ValueError("coeff: a merged layer folds one coefficient; a coefficient tensor needs the "
                                 "unmerged layer (unmerge first)")
            self._coeff = value
            return
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"coeff must be a float or a tensor, got {type(value).__name__}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"coeff must be finite, got {value}")
        C_old = self._buffers.get("_merged_core")
        if C_old is not None and value != self._coeff:  # merged: re-merge now, so the weight is never stale
            with torch.no_grad():
                C_new = self.core_matrix(value).detach().to(C_old.dtype)
                self._fold(C_new - C_old)
                self._merged_core = C_new
        self._coeff = value

    @property
    def backend(self) -> str:
        return self._backend or ("ext" if _loader.ext_available(self.weight.device) else "eager")

    @backend.setter
    def backend(self, value: str):
        if value not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {value!r}")
        if value == "ext" and not _loader.ext_available(self.weight.device):
            raise RuntimeError(f"backend 'ext' unavailable on {self.weight.device}: {_loader.why_unavailable(self.weight.device)}")
        self._backend = value

    # ----------------------------------------------------------------------------- forward

    def _check_input(self, x: torch.Tensor):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x must be a tensor, got {type(x).__name__}")
        if x.dim() < 1 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have last dim in_features={self.in_features}, got shape {tuple(x.shape)}")
        if x.device != self.weight.device:
            raise ValueError(f"x is on {x.device} but the module is on {self.weight.device}")
        if x.dtype != self.weight.dtype and not torch.is_autocast_enabled(x.device.type):
            raise ValueError(f"x has dtype {x.dtype} but the module computes in {self.weight.dtype} "
                             "(cast x, move the module with .to(dtype), or use torch.autocast)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input(x)
        if self._merged_core is not None:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        if self._calibration is not None:
            self._calibration_update(x)
        steering = self._steering(x)
        if self.backend == "eager":
            return self._eager_steered(x, steering)
        frozen = (x.reshape(-1, self.in_features), self.weight, self.bias, self.U, getattr(self, self.in_basis))
        if torch.is_autocast_enabled(x.device.type):  # as F.linear would: every GEMM operand in the autocast dtype
            dtype = torch.get_autocast_dtype(x.device.type)
            frozen = tuple(None if t is None else t.to(dtype) for t in frozen)
        return self._layer(*frozen, steering).reshape(*x.shape[:-1], self.out_features)

    def _fit(self, name: str, t: torch.Tensor, x: torch.Tensor):
        """Check that the steering tensor ``name`` fits x: shape (), (B,) or x.shape[:-1], on x's device."""
        batch = x.shape[:-1]
        if t.shape not in ((), batch, batch[:1]):
            raise ValueError(f"{name}: a tensor of shape {tuple(t.shape)} fits neither the batch "
                             f"({batch[0] if batch else 1},) nor x.shape[:-1] = {tuple(batch)} of x {tuple(x.shape)}")
        if t.device != x.device:
            raise ValueError(f"{name} is on {t.device} but x is on {x.device}")

    def _steering(self, x: torch.Tensor):
        """(coeff, adapters) of this forward: the float coefficient and None, or one coefficient (1-D, S dtype) and,
        with a bank, one adapter index (1-D int64) per group of consecutive rows of x.reshape(-1, d_in): the finer of
        the two tensors' shapes sets the groups, the coarser is repeated over it."""
        c, a = self._coeff, self._adapter
        if self._bank_names is None and not isinstance(c, torch.Tensor):
            return c, None
        given = {n: t for n, t in (("coeff", c), ("adapter", a)) if isinstance(t, torch.Tensor)}
        for n, t in given.items():
            self._fit(n, t, x)
        shape = max((t.shape for t in given.values()), key=len, default=torch.Size())

        def groups(t):
            return t.reshape(t.shape + (1,) * (len(shape) - t.dim())).expand(shape).reshape(-1)
        coeffs = groups(c if isinstance(c, torch.Tensor) else torch.full((), c, device=x.device)).to(self.S.dtype)
        if self._bank_names is None:
            return coeffs, None
        return coeffs, groups(a if a is not None else torch.zeros((), dtype=torch.long, device=x.device))

    def _layer(self, x2, W, bias, U, basis, steering) -> torch.Tensor:
        """x2 W^T + bias + core(x2 basis^T) U^T through the layer op (one op, one autograd node)."""
        coeff, adapters = steering
        params, option = self._core_args(coeff, adapters)
        return ops.layer(self.core, x2, W, bias, U, basis, self.S, params, coeff, option, adapters=adapters)[0]

    def _raw(self, adapters=None) -> dict:
        """The trainable parameters by name: the module's, or (adapters given) the bank's, stacked."""
        if adapters is None:
            return {n: p for n, p in self._parameters.items() if n not in ("weight", "bias") and p is not None}
        return {n: getattr(self, f"bank_{n}") for n in self._bank_names}

    def _core_args(self, coeff, adapters=None):
        """(params, option) of the variant's r-space core ``self.core`` as the ops take them (antipasto_ext/ops.py)
        at ``coeff`` (a float, or the per-group tensor of _steering), from the module's parameters or, with
        ``adapters``, the bank's."""
        raise NotImplementedError

    def _eager_steered(self, x: torch.Tensor, steering) -> torch.Tensor:
        """The reference forward at a float, or group by group at a per-group tensor (and the group's adapter of a
        bank), with no host synchronisation: coefficients and indices stay tensors."""
        coeff, adapters = steering
        if not isinstance(coeff, torch.Tensor):
            return self._eager(x, coeff)
        x2 = x.reshape(coeff.shape[0], -1, self.in_features)
        bank = None if adapters is None else self._raw(adapters)
        out = torch.cat([self._eager(x2[e], coeff[e], None if bank is None else {n: t[adapters[e]] for n, t in bank.items()})
                         for e in range(coeff.shape[0])])
        return out.reshape(*x.shape[:-1], self.out_features)

    def _eager(self, x: torch.Tensor, coeff, p=None) -> torch.Tensor:
        """The reference forward (antipasto_ext.reference) at a float or 0-dim tensor coefficient, with the trainable
        parameters ``p`` (by name; default: the module's)."""
        raise NotImplementedError

    # ----------------------------------------------------------------------------- bank

    @property
    def bank_size(self) -> int:
        """The number of adapters of the bank (0: no bank)."""
        return 0 if self._bank_names is None else getattr(self, f"bank_{self._bank_names[0]}").shape[0]

    @torch.no_grad()
    def set_bank(self, stacked: dict):
        """Serve several adapters of this layer (same variant, options, r and basis) at once: ``stacked`` maps every
        trainable parameter's name to its values for each adapter, (n_adapters, ...its shape). Kept as buffers in
        the parameters' dtype and device (they move with the module; state_dict leaves them out)."""
        names = list(self._raw())
        if self.merged:
            raise ValueError("bank: a merged layer folds one adapter; unmerge before setting a bank")
        if set(stacked) != set(names):
            raise ValueError(f"bank: expected stacked tensors for {names}, got {sorted(stacked)}")
        sizes = {stacked[n].shape[0] if stacked[n].dim() else 0 for n in names}
        for n in names:
            p, t = getattr(self, n), stacked[n]
            if t.dim() != p.dim() + 1 or t.shape[1:] != p.shape:
                raise ValueError(f"bank: {n} must have shape (n_adapters, {', '.join(map(str, p.shape))}), got "
                                 f"{tuple(t.shape)}")
        if len(sizes) != 1 or 0 in sizes:
            raise ValueError(f"bank: every parameter needs the same number (>= 1) of adapters, got {sorted(sizes)}")
        self.clear_bank()
        for n in names:
            p = getattr(self, n)
            self.register_buffer(f"bank_{n}", stacked[n].detach().to(device=p.device, dtype=p.dtype).contiguous(),
                                 persistent=False)
        self._bank_names = names
        return self

    def clear_bank(self):
        """Back to the module's own adapter."""
        for n in self._bank_names or ():
            del self._buffers[f"bank_{n}"]
        self._bank_names, self._adapter = None, None
        return self

    @property
    def adapter(self):
        """Which adapter of the bank each sample or token runs: an integer tensor shaped like a coefficient tensor
        (``(B,)``, ``x.shape[:-1]`` or ``()``), or None (adapter 0). The indices are checked when set, once: a CUDA
        tensor is read back at that point, never in a forward."""
        return self._adapter

    @adapter.setter
    def adapter(self, value):
        if value is None:
            self._adapter = None
            return
        if self._bank_names is None:
            raise ValueError("adapter: this layer has no bank (set_bank, or antipasto_ext.load(model, [paths]))")
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"adapter must be an integer tensor or None, got {type(value).__name__}")
        check_steering_tensor("adapter", value)
        if value.is_floating_point():
            raise ValueError(f"adapter: indices must be an integer tensor, got dtype {value.dtype}")
        n = self.bank_size
        if value.numel() and value.device.type != "meta" and not (0 <= int(value.min()) and int(value.max()) < n):
            raise ValueError(f"adapter: index out of the bank's range 0..{n - 1} (got {int(value.min())}.."
                             f"{int(value.max())})")
        self._adapter = value.long()

    # ----------------------------------------------------------------------------- merge

    def core_matrix(self, coeff: float | None = None) -> torch.Tensor:
        """The variant's core C (r, r) in S-space at ``coeff`` (default: the module's): Delta W = U C Vh,
        i.e. the forward is ``x (W_res + U C Vh)^T + b``. In the S dtype, differentiable."""
        raise NotImplementedError

    def _delta_weight(self, C: torch.Tensor) -> torch.Tensor:
        ct = C.dtype
        return (self.U.to(ct) @ C) @ getattr(self, self.in_basis).to(ct)

    def _fold(self, C: torch.Tensor):
        """weight += U C Vh, computed in C's dtype (float32) and rounded once to the weight's dtype."""
        self.weight.copy_((self.weight.to(C.dtype) + self._delta_weight(C)).to(self.weight.dtype))

    @property
    def merged(self) -> bool:
        return self._merged_core is not None

    @torch.no_grad()
    def merge(self):
        """Fold the adapter into one weight W_res + U C Vh (forward becomes one F.linear; the core's
        parameters get no gradient while merged). Setting ``coeff`` while merged re-merges at once."""
        if self._calibration is not None:
            raise RuntimeError("cannot merge during calibration (call calibration_end first)")
        if isinstance(self._coeff, torch.Tensor):
            raise ValueError("coeff: merge folds one coefficient; set a float coeff before merging, not a tensor")
        if self._bank_names is not None:
            raise ValueError("bank: merge folds one adapter; clear_bank() before merging")
        if not self.merged:
            C = self.core_matrix().detach().to(self.S.dtype)
            self._fold(C)
            self._merged_core = C
        return self

    @torch.no_grad()
    def unmerge(self):
        """Back to the training form: subtract exactly the U C Vh that merge added (one rounding of the
        weight's dtype)."""
        C = self._merged_core
        if C is not None:
            self._fold(-C)
            self._merged_core = None
        return self

    # ----------------------------------------------------------------------------- calibration

    def full_weight(self) -> torch.Tensor:
        """W = W_res + U diag(S) Vh, in the SVD dtype (float32, or float64 for a float64 layer); the
        original layer's weight, whatever the adapter has learned and whether it is merged."""
        ct = self.S.dtype
        if self.merged:  # weight holds W_res + U C Vh
            return self.weight.to(ct) + self._delta_weight(torch.diag(self.S) - self._merged_core.to(ct))
        return self.weight.to(ct) + (self.U.to(ct) * self.S) @ getattr(self, self.in_basis).to(ct)

    def check_calibratable(self):
        """Raise unless calibration may re-select the basis now (not merged, core still at its init)."""
        if self.merged:
            raise RuntimeError("cannot calibrate a merged layer (unmerge first)")
        moved = [n for n, p in self.named_parameters() if n in self._init_state and not torch.equal(p, self._init_state[n])]
        if moved:
            raise RuntimeError(f"cannot calibrate: parameters {moved} have moved from their init (calibrate before training)")

    def calibration_begin(self, pool: str = "rms"):
        """Start streaming calibration statistics from this layer's inputs (every forward adds to them)."""
        if pool not in ("rms", "mean_abs"):
            raise ValueError(f"pool must be 'rms' or 'mean_abs', got {pool!r}")
        self.check_calibratable()
        ct = self.S.dtype
        # the state is O(d^2) whatever the token count; W itself is rebuilt at the end, not kept meanwhile
        with torch.no_grad():
            if self.calibration_kind == "covariance":
                stats = {"xtx": torch.zeros(self.in_features, self.in_features, dtype=ct, device=self.S.device)}
            else:
                U_f, S_f, Vh_f = torch.linalg.svd(self.full_weight(), full_matrices=False)
                stats = {"sum": torch.zeros_like(S_f), "svd": (U_f, S_f, Vh_f)}
        self._calibration = {"n": 0, "pool": pool, **stats}

    @torch.no_grad()
    def _calibration_update(self, x: torch.Tensor):
        c = self._calibration
        x2 = x.detach().reshape(-1, self.in_features).to(self.S.dtype)
        if not torch.isfinite(x2).all():
            raise ValueError("calibration inputs must be finite (found NaN or inf)")
        if "xtx" in c:
            c["xtx"].addmm_(x2.t(), x2)
        else:
            proj = x2 @ c["svd"][2].t()
            c["sum"] += (proj.square() if c["pool"] == "rms" else proj.abs()).sum(0)
        c["n"] += x2.shape[0]

    def calibration_end(self):
        """Rebuild the basis from the statistics gathered since ``calibration_begin``."""
        c, self._calibration = self._calibration, None
        if c is None:
            raise RuntimeError("calibration_end without calibration_begin")
        with torch.no_grad():
            W = self.full_weight()
            if "xtx" in c:
                if c["n"] == 0:
                    raise ValueError("calibration saw no tokens")
                basis = reference.corda_basis(W, c["xtx"], c["n"], self.r, self.cov_eps)
            else:
                if c["n"] < self.r:
                    raise ValueError(f"calibration needs at least r={self.r} tokens, got {c['n']}")
                U_f, S_f, Vh_f = c["svd"]
                basis = reference.select_directions(W, c["sum"], c["n"], self.r, Vh_f, S_f, U_f, c["pool"])
            if self._calibrations == 0 and self._split_svd is not None:
                from .files import basis_fingerprint  # the from_linear split this calibration replaces
                self._split_fingerprint = basis_fingerprint(self).cpu()
            else:  # a second calibration starts from a calibrated residual that no file can rebuild exactly
                self._split_fingerprint = None
            self._split_from(*basis[:3], W)
            self._calibrations += 1

    def calibrate(self, inputs, pool: str = "rms"):
        """Calibrate from this layer's inputs: a tensor (..., in_features) or an iterable of them.
        CorDA builds the covariance basis (SPEC §4); the other variants pick the r directions with the
        most data energy (SPEC "Data-driven choice")."""
        self.calibration_begin(pool)
        try:
            for x in [inputs] if isinstance(inputs, torch.Tensor) else inputs:
                self._check_input(x)
                self._calibration_update(x)
        except BaseException:
            self._calibration = None
            raise
        self.calibration_end()
        return self

    def extra_repr(self) -> str:
        c = self.coeff
        c = f"tensor{tuple(c.shape)}" if isinstance(c, torch.Tensor) else c
        return (f"in_features={self.in_features}, out_features={self.out_features}, r={self.r}, "
                f"coeff={c}, backend={self.backend!r}" + (", merged" if self.merged else ""))
