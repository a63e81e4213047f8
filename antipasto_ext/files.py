"""Adapter files: ``save`` / ``load`` of the attached adapters, and ``shares_basis`` for files that can be used
together on one base model.

A file (safetensors, format ``antipasto_ext.adapters`` version 2) holds per layer what the base model cannot
give back: the trainable core, its init snapshot where training moved it, the merged core of a merged layer,
and the frozen basis only where the weight cannot reproduce it (calibrated layers, layers not made by
``from_linear``, or every layer with ``basis=True``). Everything else is rebuilt from the model's own weight
at load: the top-r SVD by the recipe the layer was made with (``antipasto_ext.svd``), and the residual
``W_res = W - U diag(S) Vh``. Two small fingerprints per layer (float32, from fixed Gaussian probes) tie the
file to the weight and to the basis it was made on:

- ``<layer>._fingerprint.weight`` (KW*KW + 1,): ``Z_out^T W Z_in`` (KW x KW) and ``||W||_F``. For Gaussian
  probes the difference of two sketches estimates ``||W_a - W_b||_F`` (the base check, ``BASE_RTOL``).
- ``<layer>._fingerprint.basis`` (r, 3 + 2 KB): per direction ``S_i``, ``||U_i||``, ``||B_i||``, ``B_i Z_in``
  (KB values) and ``U_i^T Z_out`` (KB values), B = Vh or P, from the basis as stored in the layer's dtype.
  Per direction the probe difference estimates ``||B_i - B'_i|| / ||B_i||`` (and the same for U): the basis
  check (``BASIS_TOL``), sign included.
- ``<layer>._fingerprint.split`` (calibrated layers): the basis fingerprint of the from_linear split that
  calibration replaced, so that ``load`` can rebuild the calibrated residual bit for bit.

Version 1 files (every layer's residual weight and basis in the file) still load.
"""
import functools
import json
import math

import torch
from torch import nn

from . import svd as _svd
from . import variants as _variants
from ._base import SVDAdapter
from .model import _freeze_base, _occurrences, _progress_layers, _set_submodule

FILE_FORMAT = "antipasto_ext.adapters"
FILE_VERSION = "2"
READS = ("1", "2")
# load refuses a file whose base weight is farther than this (relative Frobenius) from the target's weight
BASE_RTOL = 1e-2
# A recomputed basis counts as the file's when every direction agrees to this (relative, per vector, sign
# included) and every singular value to this relative to the largest. The output of a trained layer then
# moves by about BASIS_TOL * ||core - diag(S)|| / ||W||, ~1e-5 of the output for a core that moved 10%.
BASIS_TOL = 1e-4
FP_SEED, KW, KB = 20240917, 4, 2
_FP = {"seed": FP_SEED, "weight_probes": KW, "basis_probes": KB}


# ------------------------------------------------------------------------------------------ fingerprints


@functools.lru_cache(maxsize=64)
def _probe_cpu(d: int, k: int, side: int) -> torch.Tensor:
    gen = torch.Generator(device="cpu").manual_seed(FP_SEED + side)
    return torch.randn(d, k, generator=gen, dtype=torch.float32)


def _probe(d, k, side, like: torch.Tensor) -> torch.Tensor:
    return _probe_cpu(d, k, side).to(device=like.device, dtype=like.dtype)


def weight_fingerprint(W: torch.Tensor) -> torch.Tensor:
    """(KW*KW + 1,) float32: the sketch Z_out^T W Z_in and ||W||_F of a (d_out, d_in) weight."""
    W = W.detach().to(_svd.compute_dtype(W.dtype))
    sketch = _probe(W.shape[0], KW, 2, W).T @ (W @ _probe(W.shape[1], KW, 1, W))
    return torch.cat([sketch.flatten(), W.norm().reshape(1)]).float()


def _basis_fp(U: torch.Tensor, S: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    ct = S.dtype
    U, B = U.to(ct), B.to(ct)
    cols = [S[:, None], U.norm(dim=0)[:, None], B.norm(dim=1)[:, None], B @ _probe(B.shape[1], KB, 1, B),
            U.T @ _probe(U.shape[0], KB, 2, U)]
    return torch.cat(cols, 1).float()


def basis_fingerprint(m: SVDAdapter) -> torch.Tensor:
    """(r, 3 + 2 KB) float32 fingerprint of the basis ``m`` holds (as stored, in its dtype)."""
    with torch.no_grad():
        return _basis_fp(m.U, m.S, getattr(m, m.in_basis))


def _weight_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative difference of two weights from their fingerprints (estimates ||W_a - W_b||_F / ||W_a||_F)."""
    a, b = a.double().cpu(), b.double().cpu()
    norm = float(a[-1].clamp_min(1e-30))
    sketch = float((a[:-1] - b[:-1]).norm()) / (KW * norm)
    return max(sketch, abs(float(a[-1] - b[-1])) / norm)


def _basis_rel(a: torch.Tensor, b: torch.Tensor):
    """(largest relative difference, direction where it is) between two basis fingerprints of one shape."""
    a, b = a.double().cpu(), b.double().cpu()
    s_scale = a[:, 0].abs().max().clamp_min(1e-30)
    parts = [(a[:, 0] - b[:, 0]).abs() / s_scale]
    for col, sl in ((1, slice(3 + KB, 3 + 2 * KB)), (2, slice(3, 3 + KB))):  # U side, B side
        norm = a[:, col].clamp_min(1e-30)
        parts.append((a[:, col] - b[:, col]).abs() / norm)
        parts.append((a[:, sl] - b[:, sl]).norm(dim=1) / (math.sqrt(KB) * norm))
    per_dir = torch.stack(parts).amax(0)
    if not torch.isfinite(per_dir).all():
        return math.inf, int((~torch.isfinite(per_dir)).nonzero()[0])
    i = int(per_dir.argmax())
    return float(per_dir[i]), i


def _closest_gap(S: torch.Tensor, i: int) -> float:
    """min |S_i - S_j| / S_0 over the neighbours j of i within the saved r."""
    S = S.double().cpu()
    gaps = [abs(float(S[i] - S[j])) for j in (i - 1, i + 1) if 0 <= j < len(S)]
    return min(gaps) / max(float(S.abs().max()), 1e-30) if gaps else math.inf


# ------------------------------------------------------------------------------------------ save


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("antipasto_ext")
    except Exception:  # running from a source tree that is not installed
        return "(not installed)"


def _config(m: SVDAdapter, aliases) -> dict:
    import inspect
    if isinstance(m.coeff, torch.Tensor):
        raise ValueError("coeff: a layer steered by a coefficient tensor has no one coefficient to save; set a float "
                         "coeff first (ax.set_coeff(model, 1.0))")
    skip = {"self", "in_features", "out_features", "r", "coeff", "dtype", "device"}
    kwargs = {k: getattr(m, k) for k in inspect.signature(type(m).__init__).parameters
              if k not in skip and k in vars(m)}  # init-only arguments (init_alpha) live in the saved tensors
    return {"variant": _variants.variant_of(m).name, "r": m.r, "in_features": m.in_features,
            "out_features": m.out_features,
            "bias": m.bias is not None, "kwargs": kwargs, "coeff": m.coeff,
            "dtype": str(m.weight.dtype).removeprefix("torch."), "merged": m.merged, "backend": m._backend,
            "aliases": list(aliases)}


def _core_params(m: SVDAdapter) -> dict:
    return {n: p for n, p in m._parameters.items() if n not in ("weight", "bias") and p is not None}


def save(model: nn.Module, path, basis: bool = False) -> list:
    """Write every adapter of ``model`` to a safetensors file and return the saved layer names.

    Per layer: its config (variant, r, kwargs, coeff, dtype, merged, chosen backend, SVD recipe), the trainable
    parameters, their init snapshot where it differs from them, the merged core when merged, fingerprints
    of the base weight and of the basis, and the basis itself (U, S, Vh | P) only where the weight cannot
    reproduce it: calibrated layers and layers not made by ``from_linear``. ``basis=True`` stores every
    layer's basis (a file that does not depend on recomputing an SVD). The residual weight is never stored:
    ``load`` rebuilds it from the model's weight."""
    from safetensors.torch import save_file

    found = _occurrences(model, SVDAdapter)
    if not found:
        raise ValueError("the model has no antipasto_ext adapters (call antipasto_ext.attach first)")
    tensors, config = {}, {}
    with torch.no_grad():
        for m, names in found.values():
            name = names[0]
            if m._calibration is not None:
                raise ValueError(f"{name}: cannot save during calibration (finish ax.calibrate first)")
            cfg = _config(m, names[1:])
            in_file = basis or m._calibrations > 0 or m._split_svd is None
            cfg.update(basis="file" if in_file else "svd", svd=m._split_svd, calibrations=m._calibrations,
                       in_basis=m.in_basis)
            state = {}
            for n, p in _core_params(m).items():
                state[n] = p
                init = m._init_state.get(n) if getattr(m, "_init_state", None) else None
                if init is not None and not torch.equal(init, p):
                    state[f"_init.{n}"] = init
            if m.merged:
                state["_merged_core"] = m._merged_core
            if in_file:
                state.update(U=m.U, S=m.S, **{m.in_basis: getattr(m, m.in_basis)})
            state["_fingerprint.weight"] = weight_fingerprint(m.full_weight())
            state["_fingerprint.basis"] = basis_fingerprint(m)
            if m._calibrations > 0 and m._split_fingerprint is not None:
                state["_fingerprint.split"] = m._split_fingerprint
            for k, t in state.items():
                tensors[f"{name}.{k}"] = t.detach().to("cpu", copy=True).contiguous()
            config[name] = cfg
    metadata = {"format": FILE_FORMAT, "format_version": FILE_VERSION, "layers": json.dumps(config),
                "fingerprint": json.dumps(_FP), "created_by": f"antipasto_ext {_version()}, torch {torch.__version__}"}
    save_file(tensors, str(path), metadata=metadata)
    return list(config)


# ------------------------------------------------------------------------------------------ reading


class _File:
    """An open adapter file: metadata checked, tensors read on demand; every error is a ValueError naming
    the file (and the layer, where there is one)."""

    def __init__(self, path):
        from safetensors import safe_open

        self.path = str(path)
        try:
            self._f = safe_open(self.path, framework="pt", device="cpu")
            meta = self._f.metadata() or {}
            self.keys = set(self._f.keys())
        except FileNotFoundError:
            raise
        except Exception as e:  # truncated, not safetensors at all, unreadable header
            raise ValueError(f"{self.path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
        if meta.get("format") != FILE_FORMAT:
            raise ValueError(f"{self.path} is not an antipasto_ext adapter file (metadata format={meta.get('format')!r})")
        self.version = meta.get("format_version")
        if self.version not in READS:
            raise ValueError(f"{self.path}: format_version {self.version!r} is not one this antipasto_ext reads "
                             f"({', '.join(READS)}); it was written by {meta.get('created_by', 'another version')}")
        try:
            self.layers = json.loads(meta["layers"])
            if not isinstance(self.layers, dict) or not all(isinstance(c, dict) for c in self.layers.values()):
                raise TypeError("not a mapping of layer configs")
            fp = json.loads(meta.get("fingerprint", json.dumps(_FP)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{self.path}: unreadable layer config in the metadata ({e})") from None
        if self.version != "1" and fp != _FP:
            raise ValueError(f"{self.path}: fingerprints made with {fp}, this antipasto_ext uses {_FP}")

    def get(self, name: str, key: str) -> torch.Tensor:
        """A tensor of the file in memory the allocator aligned: a GEMM's last bits can depend on the alignment
        of its operands, and safetensors' own buffers are not aligned to 64 bytes."""
        try:
            return self._f.get_tensor(f"{name}.{key}").clone()
        except Exception as e:
            raise ValueError(f"{self.path}: layer {name!r}: cannot read tensor {key!r} "
                             f"({type(e).__name__}: {e})") from None

    def layer_keys(self, name: str) -> set:
        prefix = name + "."
        return {k[len(prefix):] for k in self.keys if k.startswith(prefix)}

    def close(self):
        f, self._f = self._f, None
        if f is not None and hasattr(f, "__exit__"):
            f.__exit__(None, None, None)


def _cfg(file: _File, name: str, cfg: dict, key: str, kind=None):
    if key not in cfg or (kind is not None and not isinstance(cfg[key], kind)):
        raise ValueError(f"{file.path}: layer {name!r}: bad config, {key!r} is {cfg.get(key, 'missing')!r}")
    return cfg[key]


def _target_weight(target) -> torch.Tensor:
    """The base weight of a target layer in its SVD dtype: an nn.Linear's own, an adapter's rebuilt."""
    if isinstance(target, SVDAdapter):
        return target.full_weight()
    return target.weight.detach().to(_svd.compute_dtype(target.weight.dtype))


# ------------------------------------------------------------------------------------------ load (version 2)


def _target(model, name: str, cfg: dict, where: str):
    """The model's module the file's layer `name` (and its aliases) goes to: an nn.Linear or an adapter."""
    try:
        target = model.get_submodule(name)
        for alias in cfg.get("aliases", []):
            model.get_submodule(alias)
    except AttributeError as e:
        raise ValueError(f"{where}: no such module in the model ({e})") from None
    if not isinstance(target, (nn.Linear, SVDAdapter)):
        raise ValueError(f"{where}: expected an nn.Linear (or an adapter), found {type(target).__name__}")
    return target


def _plan_layer(file: _File, model, name: str, cfg: dict, check_base: bool) -> dict:
    """Everything about one layer that can be checked, computed without touching the model (the basis to
    use, the SVD split to replay, the tensors of the core); raises ValueError naming file and layer."""
    where = f"{file.path}: layer {name!r}"
    variant = _cfg(file, name, cfg, "variant", str)
    try:
        cls = _variants.variant(variant).cls
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    r = _cfg(file, name, cfg, "r", int)
    shape = (_cfg(file, name, cfg, "in_features", int), _cfg(file, name, cfg, "out_features", int))
    kwargs = _cfg(file, name, cfg, "kwargs", dict)
    coeff = _cfg(file, name, cfg, "coeff", (int, float))
    merged = _cfg(file, name, cfg, "merged", bool)
    source = _cfg(file, name, cfg, "basis", str)
    calibrations = _cfg(file, name, cfg, "calibrations", int)
    file_dtype = getattr(torch, str(_cfg(file, name, cfg, "dtype", str)), None)
    if not isinstance(file_dtype, torch.dtype) or not file_dtype.is_floating_point:
        raise ValueError(f"{where}: bad config, dtype {cfg['dtype']!r}")
    if source not in ("svd", "file"):
        raise ValueError(f"{where}: bad config, basis {source!r} (expected 'svd' or 'file')")
    target = _target(model, name, cfg, where)
    if (target.in_features, target.out_features) != shape:
        raise ValueError(f"{where}: the file's layer is (in_features, out_features)={shape}, the model's is "
                         f"{(target.in_features, target.out_features)}")
    if bool(cfg.get("bias")) != (target.bias is not None):
        raise ValueError(f"{where}: the file's layer {'has' if cfg.get('bias') else 'has no'} bias, the model's "
                         f"{'has' if target.bias is not None else 'has none'}")
    dtype, device = target.weight.dtype, target.weight.device
    try:  # the arguments, and the shapes of everything the layer holds; a meta module allocates nothing
        meta = cls(*shape, r, coeff=coeff, dtype=file_dtype, device="meta", **kwargs)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: bad config {cfg}: {e}") from None
    if cfg.get("in_basis", meta.in_basis) != meta.in_basis:
        raise ValueError(f"{where}: bad config, in_basis {cfg['in_basis']!r} for {variant}")
    spec = None
    if cfg.get("svd") is not None:
        try:
            spec = _svd.resolve(cfg["svd"], (shape[1], shape[0]), r)
        except ValueError as e:
            raise ValueError(f"{where}: bad config, {e}") from None
    if source == "svd" and spec is None:
        raise ValueError(f"{where}: bad config, basis 'svd' without an svd recipe")

    params = _core_params(meta)
    want = {n: (tuple(p.shape), p.dtype) for n, p in params.items()}
    want.update({f"_init.{n}": v for n, v in want.items()})
    ct_file = meta.S.dtype
    want["_fingerprint.weight"] = ((KW * KW + 1,), torch.float32)
    want["_fingerprint.basis"] = ((r, 3 + 2 * KB), torch.float32)
    want["_fingerprint.split"] = ((r, 3 + 2 * KB), torch.float32)
    if merged:
        want["_merged_core"] = ((r, r), ct_file)
    if source == "file":
        for n in ("U", "S", meta.in_basis):
            want[n] = (tuple(getattr(meta, n).shape), getattr(meta, n).dtype)
    have = file.layer_keys(name)
    optional = {f"_init.{n}" for n in params} | {"_fingerprint.split"}
    missing = sorted(k for k in want if k not in have and k not in optional)
    unexpected = sorted(k for k in have if k not in want)
    if missing or unexpected:
        raise ValueError(f"{where}: tensors missing {missing}, unexpected {unexpected} for the file's {variant} "
                         f"layer (basis {source!r}{', merged' if merged else ''})")
    t = {}
    for k in sorted(have):
        v = file.get(name, k)
        if (tuple(v.shape), v.dtype) != want[k]:
            raise ValueError(f"{where}: tensor {k!r} is {tuple(v.shape)} {v.dtype} in the file; the file's config "
                             f"({variant}, r={r}, {file_dtype}) needs {want[k][0]} {want[k][1]}")
        if not torch.isfinite(v).all():
            raise ValueError(f"{where}: tensor {k!r} holds NaN or inf")
        t[k] = v

    with torch.no_grad():
        W = _target_weight(target)
        ct = _svd.compute_dtype(dtype)
        if check_base:
            rel = _weight_rel(t["_fingerprint.weight"], weight_fingerprint(W))
            if not rel <= BASE_RTOL:
                raise ValueError(f"{where}: the file's adapter was built from another weight (relative difference "
                                 f"{rel:.3g} from this model's); pass check_base=False to load it anyway")
        dtype_note = "" if file_dtype == dtype else f" (the file's layer was {file_dtype}, the model's is {dtype})"
        if source == "file":
            U, S, B = t["U"], t["S"], t[meta.in_basis]
            rel, i = _basis_rel(t["_fingerprint.basis"], _basis_fp(U, S, B))
            if not rel <= BASIS_TOL:
                raise ValueError(f"{where}: the basis in the file does not match its own fingerprint (direction {i}, "
                                 f"difference {rel:.3g}): the file is damaged")
            U, S, B = U.to(device, dtype), S.to(device, ct), B.to(device, dtype)
        else:
            U, S, B = _svd.top_r(W, r, spec)
            U, B = U.to(dtype), B.to(dtype)
            rel, i = _basis_rel(t["_fingerprint.basis"], _basis_fp(U, S, B))
            if not rel <= BASIS_TOL:
                gap = _closest_gap(t["_fingerprint.basis"][:, 0], i)
                raise ValueError(
                    f"{where}: the top-{r} SVD of this model's weight ({spec['method']}) does not reproduce the "
                    f"file's basis (direction {i}: relative difference {rel:.3g} > {BASIS_TOL:g}; its singular "
                    f"value is {gap:.2g} of the largest away from a neighbour){dtype_note}. The base weight differs, "
                    f"or near-equal singular values leave the directions to rounding; save the adapter with "
                    f"ax.save(model, path, basis=True) to carry the basis in the file")
        replay = None  # the from_linear split the calibration started from, when it recomputes exactly
        if source == "file" and calibrations == 1 and spec is not None and "_fingerprint.split" in t:
            U0, S0, B0 = _svd.top_r(W, r, spec)
            U0, B0 = U0.to(dtype), B0.to(dtype)
            if _basis_rel(t["_fingerprint.split"], _basis_fp(U0, S0, B0))[0] == 0.0:
                replay = (U0, S0, B0)
        del W
    return {"name": name, "cfg": cfg, "cls": cls, "shape": shape, "r": r, "kwargs": kwargs, "coeff": coeff,
            "dtype": dtype, "device": device, "basis": (U, S, B), "replay": replay, "tensors": t, "spec": spec,
            "calibrations": calibrations, "params": list(params), "merged": merged}


def _build(model, plan: dict) -> SVDAdapter:
    """The adapter of a checked plan, with its residual rebuilt from the model's weight."""
    target = model.get_submodule(plan["name"])
    dtype, device, t = plan["dtype"], plan["device"], plan["tensors"]
    m = plan["cls"](*plan["shape"], plan["r"], coeff=plan["coeff"], dtype=dtype, device=device, **plan["kwargs"])
    with torch.no_grad():
        W = _target_weight(target)
        ct = W.dtype
        if plan["replay"] is not None:  # W_res and full_weight() of the from_linear split, as calibration saw them
            U0, S0, B0 = plan["replay"]
            low_rank = (U0.to(ct) * S0) @ B0.to(ct)
            W = (W - low_rank).to(dtype).to(ct) + low_rank
            del low_rank
        m._split_from(*plan["basis"], W)
        del W
        if target.bias is not None:
            m.bias = nn.Parameter(target.bias.detach().clone(), requires_grad=False)
        for n in plan["params"]:
            m._parameters[n].copy_(t[n])
        m._init_state = {n: (t[f"_init.{n}"] if f"_init.{n}" in t else t[n]).to(device=m._parameters[n].device,
                                                                                dtype=m._parameters[n].dtype)
                         for n in plan["params"]}
        if plan["merged"]:
            C = t["_merged_core"].to(device=device, dtype=m.S.dtype)
            m._fold(C)
            m._merged_core = C
    m._split_svd = plan["spec"]
    m._calibrations = plan["calibrations"]
    m._split_fingerprint = t.get("_fingerprint.split")
    backend = plan["cfg"].get("backend")
    if backend in ("ext", "eager"):
        try:
            m.backend = backend
        except RuntimeError:
            pass  # not available here: the default backend computes the same function
    return m


def _load_v2(file: _File, model, check_base: bool, progress: bool) -> list:
    plans = [_plan_layer(file, model, name, cfg, check_base)
             for name, cfg in _progress_layers(file.layers.items(), progress, "antipasto_ext.load",
                                               len(file.layers))]
    loaded = []
    for plan in plans:  # all checked: now one layer at a time, so the old Linear can go before the next residual
        m = _build(model, plan)
        for n in [plan["name"]] + plan["cfg"].get("aliases", []):
            _set_submodule(model, n, m)
            loaded.append(n)
    return loaded


# ------------------------------------------------------------------------------------------ load (version 1)


def _build_v1(file: _File, model, name, cfg, check_base):
    """One layer of a version 1 file (residual weight and basis stored), built and checked without touching
    the model."""
    where = f"{file.path}: layer {name!r}"
    try:
        cls = _variants.variant(cfg.get("variant")).cls
    except ValueError as e:
        raise ValueError(f"{where}: {e}") from None
    target = _target(model, name, cfg, where)
    shape = (cfg["in_features"], cfg["out_features"])
    if (target.in_features, target.out_features) != shape:
        raise ValueError(f"{where}: the file's layer is (in_features, out_features)={shape}, the model's is "
                         f"{(target.in_features, target.out_features)}")
    device, dtype = target.weight.device, getattr(torch, cfg["dtype"])
    try:
        m = cls(*shape, cfg["r"], coeff=cfg["coeff"], dtype=dtype, device=device, **cfg["kwargs"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{where}: bad config {cfg}: {e}") from None
    if cfg["bias"]:
        m.bias = nn.Parameter(torch.empty(m.out_features, dtype=dtype, device=device), requires_grad=False)
    expected = m.state_dict()
    special = {"_merged_core"} | {f"_init.{k}" for k, p in m.named_parameters() if p.requires_grad}
    mine = file.layer_keys(name)
    missing = [k for k in expected if k not in mine]
    unexpected = [k for k in mine if k not in expected and k not in special]
    if missing or unexpected:
        raise ValueError(f"{where}: tensors missing {missing}, unexpected {unexpected} for {cfg['variant']}")
    state = {}
    for k in list(expected) + sorted(mine - set(expected)):  # a deterministic order for the error message
        t = file.get(name, k)
        ref = expected[k] if k in expected else (m._parameters[k[len("_init."):]] if k.startswith("_init.") else None)
        want_shape = (m.r, m.r) if k == "_merged_core" else tuple(ref.shape)
        want_dtype = m.S.dtype if k == "_merged_core" else ref.dtype
        if tuple(t.shape) != want_shape or t.dtype != want_dtype:
            raise ValueError(f"{where}: tensor {k!r} is {tuple(t.shape)} {t.dtype} in the file, "
                             f"the {cfg['variant']} layer needs {want_shape} {want_dtype}")
        state[k] = t
    m.load_state_dict({k: state[k] for k in expected})
    m._init_state = {k[len("_init."):]: t.to(device) for k, t in state.items() if k.startswith("_init.")}
    if not m._init_state:
        m._snapshot_init()
    if cfg["merged"]:
        if "_merged_core" not in state:
            raise ValueError(f"{where}: marked merged but the file has no merged core")
        m._merged_core = state["_merged_core"].to(device)
    if cfg.get("backend") in ("ext", "eager"):
        try:
            m.backend = cfg["backend"]
        except RuntimeError:
            pass
    if target.weight.dtype != dtype:
        m.to(target.weight.dtype)
    if check_base:
        with torch.no_grad():
            ref = _target_weight(target).to(m.S.dtype)
            rel = ((m.full_weight() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        if not rel <= BASE_RTOL:
            raise ValueError(f"{where}: the file's adapter was built from another weight (relative difference "
                             f"{rel:.3g} from this model's); pass check_base=False to load it anyway")
    return m


def _load_v1(file: _File, model, check_base: bool) -> list:
    try:
        built = [(name, cfg, _build_v1(file, model, name, cfg, check_base)) for name, cfg in file.layers.items()]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{file.path}: bad layer config in a version 1 file ({type(e).__name__}: {e})") from None
    loaded = []
    for name, cfg, m in built:
        for n in [name] + cfg.get("aliases", []):
            _set_submodule(model, n, m)
            loaded.append(n)
    return loaded


def load(model: nn.Module, path, check_base: bool = True, progress: bool = True) -> list:
    """Attach the adapters of a file written by ``save`` to ``model`` (a copy of the base model: plain
    nn.Linears there, or adapters that get replaced) and return the loaded names; afterwards only adapter
    parameters are trainable.

    ``path`` a list of files: a bank. Every file must hold the same layers with the same variant, options and r,
    made on the same basis (``basis_differences``); the first loads as above and each layer gets the stacked
    cores of all the files (``SVDAdapter.set_bank``): ``steer(model, coeff, adapter=...)`` picks one per sample or
    token, adapter 0 (the first file) by default. A file that differs, or a merged layer, raises ValueError naming
    the file and the layer before the model is touched.

    Each residual weight is rebuilt from the model's own weight; a basis the file does not hold is recomputed
    by the layer's SVD recipe and must match the file's fingerprint. On the same device and dtype a file
    with ``basis=True`` reloads bit-identically, and so does a default file wherever the SVD recomputes
    bit for bit (a deterministic LAPACK / cuSOLVER); otherwise a default file loads to within ~BASIS_TOL of
    the adapter's effect, or is refused. Everything is checked before the model is touched: an unreadable
    or foreign file, an unknown variant, a missing layer, wrong shapes or dtypes, another base weight
    (``check_base``: relative difference > BASE_RTOL) or a basis that does not recompute raise ValueError
    naming the file and the layer, and leave the model as it was. ``progress``: a bar over layers on a
    terminal's stderr. Version 1 files (residual weights inside) still load."""
    if isinstance(path, (list, tuple)):
        return _load_bank(model, list(path), check_base, progress)
    file = _File(path)
    try:
        if file.version == "1":
            loaded = _load_v1(file, model, check_base)
        else:
            loaded = _load_v2(file, model, check_base, progress)
    finally:
        file.close()
    _freeze_base(model)
    return loaded


def _load_bank(model: nn.Module, paths: list, check_base: bool, progress: bool) -> list:
    if not paths:
        raise ValueError("load: an empty list of adapter files")
    files = [_File(p) for p in paths]
    try:
        first, cores = files[0], []
        for f in files:
            for name, cfg in f.layers.items():
                if cfg.get("merged"):
                    raise ValueError(f"{f.path}: layer {name!r} is merged; a bank needs unmerged adapters")
        shapes = {}  # layer -> {trainable parameter: shape}, from the variant built on the meta device
        for name, cfg in first.layers.items():
            meta = _variants.variant(cfg["variant"]).cls(cfg["in_features"], cfg["out_features"], cfg["r"],
                                                         dtype=getattr(torch, cfg["dtype"]), device="meta",
                                                         **cfg["kwargs"])
            shapes[name] = {n: p.shape for n, p in meta._raw().items()}
        for f in files[1:]:
            if set(f.layers) != set(first.layers):
                odd = sorted(set(f.layers) ^ set(first.layers))
                raise ValueError(f"{f.path}: its layers differ from {first.path}'s (e.g. {odd[0]!r}); a bank needs "
                                 "the same layers in every file")
            for name, cfg in first.layers.items():
                for key in ("variant", "kwargs", "r", "in_features", "out_features", "dtype"):
                    if f.layers[name].get(key) != cfg.get(key):
                        raise ValueError(f"{f.path}: layer {name!r}: {key} {f.layers[name].get(key)!r} differs from "
                                         f"{first.path}'s {cfg.get(key)!r}; a bank needs one variant, options and r "
                                         "per layer")
            diffs = basis_differences(first.path, f.path)
            if diffs:
                raise ValueError(f"{f.path}: its basis differs from {first.path}'s ({diffs[0]}"
                                 f"{f'; {len(diffs) - 1} more' if len(diffs) > 1 else ''}); a bank shares one basis")
            core = {}
            for name in first.layers:  # the trainable tensors, checked against the variant's shapes
                core[name] = {}
                for n, shape in shapes[name].items():
                    t = f.get(name, n)
                    if t.shape != shape:
                        raise ValueError(f"{f.path}: layer {name!r}: {n} has shape {tuple(t.shape)}, expected "
                                         f"{tuple(shape)}")
                    core[name][n] = t
            cores.append(core)
    finally:
        for f in files:
            f.close()
    loaded = load(model, paths[0], check_base, progress)
    mods = {n: m for n, m in model.named_modules() if isinstance(m, SVDAdapter)}
    for name in loaded:
        m = mods[name]
        m.set_bank({n: torch.stack([p.detach()] + [c[name][n].to(device=p.device, dtype=p.dtype) for c in cores])
                    for n, p in m._raw().items()})
    return loaded


# ------------------------------------------------------------------------------------------ shared basis


def _fingerprints(file: _File) -> dict:
    """{layer: (in_features, out_features, r, in_basis, weight fingerprint, basis fingerprint)}."""
    out = {}
    for name, cfg in file.layers.items():
        try:
            cls = _variants.variant(cfg.get("variant")).cls
            dims = (cfg["in_features"], cfg["out_features"], cfg["r"], cls.in_basis)
        except (KeyError, ValueError) as e:
            raise ValueError(f"{file.path}: layer {name!r}: bad config ({e})") from None
        if file.version == "1":  # residual and basis stored: fingerprint them the way version 2 does
            S = file.get(name, "S")
            U, B, W_res = (file.get(name, k).to(S.dtype) for k in ("U", cls.in_basis, "weight"))
            C = torch.diag(S) - file.get(name, "_merged_core").to(S.dtype) if cfg.get("merged") else torch.diag(S)
            dtype = getattr(torch, cfg["dtype"])
            out[name] = dims + (weight_fingerprint(W_res + (U @ C) @ B), _basis_fp(U.to(dtype), S, B.to(dtype)))
        else:
            out[name] = dims + (file.get(name, "_fingerprint.weight"), file.get(name, "_fingerprint.basis"))
    return out


def basis_differences(path_a, path_b) -> list:
    """Why two adapter files do not share their basis: [] when, layer by layer, they were made on the same
    base weight with the same frozen basis (same layers, shapes, r, basis kind, weight and basis fingerprints
    within BASIS_TOL), so that they can drive one model together (one residual and one basis per layer,
    several cores). The variants and their cores may differ."""
    fa, fb = _File(path_a), _File(path_b)
    try:
        a, b = _fingerprints(fa), _fingerprints(fb)
    finally:
        fa.close()
        fb.close()
    diffs = [f"layer {n!r} only in {p}" for n, p in [(n, fa.path) for n in a if n not in b]
             + [(n, fb.path) for n in b if n not in a]]
    for n in a.keys() & b.keys():
        if a[n][:4] != b[n][:4]:
            diffs.append(f"layer {n!r}: (in_features, out_features, r, basis) {a[n][:4]} vs {b[n][:4]}")
            continue
        w = _weight_rel(a[n][4], b[n][4])
        if not w <= BASIS_TOL:
            diffs.append(f"layer {n!r}: base weights differ (relative {w:.3g})")
        rel, i = _basis_rel(a[n][5], b[n][5])
        if not rel <= BASIS_TOL:
            diffs.append(f"layer {n!r}: bases differ (direction {i}: relative {rel:.3g})")
    return sorted(diffs)


def shares_basis(path_a, path_b) -> bool:
    """True when two adapter files were made on the same base with the same basis (see basis_differences)."""
    return not basis_differences(path_a, path_b)
