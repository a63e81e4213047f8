"""Model-level use of the adapters: attach / detach on a whole model, calibrate, steer, save / load, merge.

    import antipasto_ext as ax
    ax.attach(model, "dplr", targets=r"(q|v)_proj$", r=16)   # swaps the matching nn.Linears, freezes the rest
    ax.calibrate(model, batches)                              # one no-grad pass, streamed statistics
    ... train the adapter parameters ...
    ax.save(model, "adapter.safetensors"); ax.load(fresh_model, "adapter.safetensors")
    ax.merge(model)                                           # one F.linear per layer; coeff changes re-merge

Only torch is needed to import this module; safetensors (save / load) and tqdm (progress bar) are imported
when used. See docs/model_level.md.
"""
import contextlib
import json
import re
from collections.abc import Mapping

import torch
from torch import nn

from ._base import SVDAdapter
from .ablate import AblateLinear
from .antipasto import AntiPaSTOLinear
from .corda import CorDALinear
from .dplr import DPLRLinear
from .rot import RotLinear

VARIANTS = {"antipasto": AntiPaSTOLinear, "rot": RotLinear, "ablate": AblateLinear, "corda": CorDALinear,
            "dplr": DPLRLinear}
_NAMES = {cls: name for name, cls in VARIANTS.items()}
# the research code's names
_ALIASES = {f"antipasto_{name}": name for name in VARIANTS if name != "antipasto"}

FILE_FORMAT = "antipasto_ext.adapters"
FILE_VERSION = "1"
# load refuses a file whose W_res + U S Vh is farther than this (relative Frobenius) from the target's weight
BASE_RTOL = 1e-2


def _variant_class(variant: str):
    name = _ALIASES.get(variant, variant) if isinstance(variant, str) else None
    if name not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS) + sorted(_ALIASES)}")
    return VARIANTS[name]


def _variant_name(m: SVDAdapter) -> str:
    for cls in type(m).__mro__:
        if cls in _NAMES:
            return _NAMES[cls]
    raise ValueError(f"{type(m).__name__} is not one of the variants {sorted(VARIANTS)}")


def _compile(targets):
    if isinstance(targets, re.Pattern):
        return targets
    if isinstance(targets, str):
        return re.compile(targets)
    if isinstance(targets, (list, tuple)) and targets and all(isinstance(t, str) for t in targets):
        return re.compile("|".join(f"(?:{t})" for t in targets))
    raise TypeError(f"targets must be a regex string, a compiled pattern or a list of regex strings, got {targets!r}")


def _occurrences(model: nn.Module, kind):
    """{id(module): (module, [full names])} for every submodule of type ``kind`` under every name it has
    (a module shared by two parents is one entry with two names); the root itself is never included."""
    found = {}
    for name, mod in model.named_modules(remove_duplicate=False):
        if name and isinstance(mod, kind):
            found.setdefault(id(mod), (mod, []))[1].append(name)
    return found


def _set_submodule(model: nn.Module, name: str, module: nn.Module):
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def _freeze_base(model: nn.Module):
    """Only adapter parameters stay trainable (their frozen residual weight and bias never are)."""
    keep = {id(p) for m in model.modules() if isinstance(m, SVDAdapter) for p in m.parameters()}
    for p in model.parameters():
        if id(p) not in keep:
            p.requires_grad_(False)


def adapters(model: nn.Module) -> dict:
    """{full name: adapter module} for every attached adapter (a shared adapter under its first name)."""
    return {names[0]: mod for mod, names in _occurrences(model, SVDAdapter).values()}


def _adapters_or_raise(model):
    found = adapters(model)
    if not found:
        raise ValueError("the model has no antipasto_ext adapters (call antipasto_ext.attach first)")
    return found


# ------------------------------------------------------------------------------------------ attach / detach


def attach(model: nn.Module, variant: str = "dplr", targets=r"(q|v)_proj$", r: int = 16, **variant_kwargs) -> list:
    """Replace every nn.Linear whose full dotted name matches ``targets`` (``re.search``) by the variant
    built with ``from_linear(linear, r=r, **variant_kwargs)`` and freeze every other parameter of the
    model. Returns the replaced names. Every layer's arguments are checked before any layer is replaced."""
    cls = _variant_class(variant)
    pattern = _compile(targets)
    linears = _occurrences(model, nn.Linear)
    matched = {}
    for key, (lin, names) in linears.items():
        hit = [n for n in names if pattern.search(n)]
        if hit:
            matched[key] = (lin, hit)
    if not matched:
        some = [names[0] for _, names in linears.values()][:8]
        already = [n for n in adapters(model) if pattern.search(n)]
        hint = f"; already attached there: {already[:4]}" if already else ""
        raise ValueError(f"targets {pattern.pattern!r} matched no nn.Linear of the model{hint}; "
                         f"some nn.Linear names: {some}" if some else "the model has no nn.Linear")
    for lin, names in matched.values():
        for n in names:
            parent = n.rpartition(".")[0]
            if isinstance(model.get_submodule(parent) if parent else model, nn.MultiheadAttention):
                raise ValueError(f"{n}: nn.MultiheadAttention reads its Linear's weight directly; it cannot be adapted")
        if not lin.weight.is_floating_point():
            raise ValueError(f"{names[0]}: weight dtype {lin.weight.dtype} is not a float dtype")
        try:  # argument checks only: a meta module allocates nothing
            cls(lin.in_features, lin.out_features, r, dtype=lin.weight.dtype, device="meta", **variant_kwargs)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{e} (layer {names[0]!r}: in_features={lin.in_features}, "
                          f"out_features={lin.out_features})") from e
    replaced = []
    for lin, names in matched.values():  # one layer at a time: the old Linear can go before the next SVD
        adapter = cls.from_linear(lin, r=r, **variant_kwargs)
        for n in names:
            _set_submodule(model, n, adapter)
        replaced += names
    _freeze_base(model)
    return replaced


def _to_linear(m: SVDAdapter, weight: torch.Tensor) -> nn.Linear:
    lin = torch.nn.utils.skip_init(nn.Linear, m.in_features, m.out_features, bias=m.bias is not None,
                                   device=m.weight.device, dtype=m.weight.dtype)
    with torch.no_grad():
        lin.weight.copy_(weight)
        if m.bias is not None:
            lin.bias.copy_(m.bias)
    lin.requires_grad_(False)
    return lin


def detach(model: nn.Module) -> list:
    """Put plain nn.Linears back with the original weight W_res + U diag(S) Vh, computed in float32 and
    rounded once to the layer's dtype; what the adapters learned is dropped (``merge(model, unload=True)``
    keeps it). The rest of the model stays frozen. Returns the restored names."""
    restored = []
    for m, names in _occurrences(model, SVDAdapter).values():
        with torch.no_grad():
            lin = _to_linear(m, m.full_weight())
        for n in names:
            _set_submodule(model, n, lin)
        restored += names
    return restored


# ------------------------------------------------------------------------------------------ coeff


def set_coeff(model: nn.Module, value: float):
    """Set ``coeff`` on every adapter (merged ones re-merge)."""
    mods = list(_adapters_or_raise(model).values())
    mods[0].coeff = value  # validates before any layer changes
    for m in mods[1:]:
        m.coeff = value


@contextlib.contextmanager
def steer(model: nn.Module, coeff: float):
    """``with steer(model, -1.0): ...`` runs the block at ``coeff`` and restores every adapter's coeff."""
    mods = list(_adapters_or_raise(model).values())
    old = [m.coeff for m in mods]
    try:
        set_coeff(model, coeff)
        yield model
    finally:
        for m, c in zip(mods, old):
            m.coeff = c


# ------------------------------------------------------------------------------------------ calibrate


def _call(model, batch):
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def _progress(batches, enabled: bool):
    if not enabled:
        return batches
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return batches
    total = len(batches) if hasattr(batches, "__len__") else None
    return tqdm(batches, desc="antipasto_ext.calibrate", total=total, leave=False)


def calibrate(model: nn.Module, batches, pool: str = "rms", progress: bool = True) -> list:
    """One no-grad pass of ``model`` over ``batches`` (a tensor -> model(b), tuple/list -> model(*b),
    dict -> model(**b)) in eval mode, every adapter streaming its statistics (CorDA / ablate with
    cov_orient: the running X^T X; the others: running sums of the projections for the choice of
    directions, see ``pool``), then every basis is rebuilt. No activation is stored: the state is
    O(d_in^2) per layer whatever the token count. All layers are checked before the pass and after it
    (each must have seen enough tokens) so that on an error no layer is changed. Returns the names."""
    found = _adapters_or_raise(model)
    problems = []
    for name, m in found.items():
        try:
            m.check_calibratable()
        except RuntimeError as e:
            problems.append(f"{name}: {e}")
    if problems:
        raise RuntimeError("cannot calibrate, no layer was changed:\n  " + "\n  ".join(problems))
    modes = [(mod, mod.training) for mod in model.modules()]
    try:
        for m in found.values():
            m.calibration_begin(pool)
        model.eval()
        with torch.no_grad():
            for batch in _progress(batches, progress):
                _call(model, batch)
        short = [f"{name}: {m._calibration['n']} tokens, needs {1 if 'xtx' in m._calibration else m.r}"
                 for name, m in found.items() if m._calibration["n"] < (1 if "xtx" in m._calibration else m.r)]
        if short:
            raise ValueError("calibration saw too few tokens, no layer was changed:\n  " + "\n  ".join(short))
        for m in found.values():
            m.calibration_end()
    finally:
        for m in found.values():
            m._calibration = None
        for mod, training in modes:
            mod.training = training
    return list(found)


# ------------------------------------------------------------------------------------------ merge


def merge(model: nn.Module, unload: bool = False) -> list:
    """Fold every adapter into one weight W_res + U C Vh: the forward is one F.linear per layer. Setting
    coeff afterwards re-merges at once; ``unmerge`` restores the training form. With ``unload=True`` the
    adapters are replaced by plain nn.Linears holding the merged weight (a plain model to export)."""
    found = _occurrences(model, SVDAdapter)
    if not found:
        raise ValueError("the model has no antipasto_ext adapters (call antipasto_ext.attach first)")
    names = []
    for m, ns in found.values():
        m.merge()
        if unload:
            lin = _to_linear(m, m.weight)
            for n in ns:
                _set_submodule(model, n, lin)
        names += ns
    return names


def unmerge(model: nn.Module) -> list:
    """Back to the training form (W_res in the weight, the core applied in S-space)."""
    found = _adapters_or_raise(model)
    for m in found.values():
        m.unmerge()
    return list(found)


# ------------------------------------------------------------------------------------------ save / load


def _config(m: SVDAdapter, aliases) -> dict:
    import inspect
    skip = {"self", "in_features", "out_features", "r", "coeff", "dtype", "device"}
    kwargs = {k: getattr(m, k) for k in inspect.signature(type(m).__init__).parameters
              if k not in skip and k in vars(m)}  # init-only arguments (init_alpha) live in the saved tensors
    return {"variant": _variant_name(m), "r": m.r, "in_features": m.in_features, "out_features": m.out_features,
            "bias": m.bias is not None, "kwargs": kwargs, "coeff": m.coeff,
            "dtype": str(m.weight.dtype).removeprefix("torch."), "merged": m.merged, "backend": m._backend,
            "aliases": list(aliases)}


def save(model: nn.Module, path) -> list:
    """Write every adapter to a safetensors file: its state (residual weight, bias, frozen basis U, S,
    Vh | P, trainable parameters, their init snapshot, the merged core when merged) and a JSON config per
    layer (variant, r, kwargs, coeff, dtype) in the metadata. Returns the saved names."""
    from safetensors.torch import save_file

    found = _occurrences(model, SVDAdapter)
    if not found:
        raise ValueError("the model has no antipasto_ext adapters (call antipasto_ext.attach first)")
    tensors, config = {}, {}
    for m, names in found.values():
        name = names[0]
        config[name] = _config(m, names[1:])
        state = dict(m.state_dict())
        state.update({f"_init.{k}": t for k, t in m._init_state.items()})
        if m.merged:
            state["_merged_core"] = m._merged_core
        for k, t in state.items():
            tensors[f"{name}.{k}"] = t.detach().to("cpu", copy=True).contiguous()
    metadata = {"format": FILE_FORMAT, "format_version": FILE_VERSION, "layers": json.dumps(config)}
    save_file(tensors, str(path), metadata=metadata)
    return list(config)


def _build_from_file(model, name, cfg, f, keys, check_base):
    """One layer's adapter, built and filled from the file, checked against the model; raises ValueError
    without touching the model."""
    cls = _variant_class(cfg.get("variant"))
    try:
        target = model.get_submodule(name)
        for alias in cfg.get("aliases", []):
            model.get_submodule(alias)
    except AttributeError as e:
        raise ValueError(f"{name}: no such module in the model ({e})") from None
    if isinstance(target, SVDAdapter):
        base_weight = target.full_weight()
    elif isinstance(target, nn.Linear):
        base_weight = target.weight
    else:
        raise ValueError(f"{name}: expected an nn.Linear (or an adapter), found {type(target).__name__}")
    shape = (cfg["in_features"], cfg["out_features"])
    if (target.in_features, target.out_features) != shape:
        raise ValueError(f"{name}: the file's layer is (in_features, out_features)={shape}, the model's is "
                         f"{(target.in_features, target.out_features)}")
    device, dtype = target.weight.device, getattr(torch, cfg["dtype"])
    try:
        m = cls(*shape, cfg["r"], coeff=cfg["coeff"], dtype=dtype, device=device, **cfg["kwargs"])
    except (ValueError, TypeError) as e:
        raise ValueError(f"{name}: bad config {cfg}: {e}") from e
    if cfg["bias"]:
        m.bias = nn.Parameter(torch.empty(m.out_features, dtype=dtype, device=device), requires_grad=False)
    expected = m.state_dict()
    special = {"_merged_core"} | {f"_init.{k}" for k, p in m.named_parameters() if p.requires_grad}
    prefix = name + "."
    mine = {k[len(prefix):] for k in keys if k.startswith(prefix)}
    missing = [k for k in expected if k not in mine]
    unexpected = [k for k in mine if k not in expected and k not in special]
    if missing or unexpected:
        raise ValueError(f"{name}: tensors missing {missing}, unexpected {unexpected} for {cfg['variant']}")
    state = {}
    for k in list(expected) + sorted(mine - set(expected)):  # a deterministic order for the error message
        t = f.get_tensor(prefix + k)
        ref = expected[k] if k in expected else (m._parameters[k[len("_init."):]] if k.startswith("_init.") else None)
        want_shape = (m.r, m.r) if k == "_merged_core" else tuple(ref.shape)
        want_dtype = m.S.dtype if k == "_merged_core" else ref.dtype
        if tuple(t.shape) != want_shape or t.dtype != want_dtype:
            raise ValueError(f"{name}.{k}: the file holds {tuple(t.shape)} {t.dtype}, "
                             f"the {cfg['variant']} layer needs {want_shape} {want_dtype}")
        state[k] = t
    m.load_state_dict({k: state[k] for k in expected})
    m._init_state = {k[len("_init."):]: t.to(device) for k, t in state.items() if k.startswith("_init.")}
    if not m._init_state:
        m._snapshot_init()
    if cfg["merged"]:
        if "_merged_core" not in state:
            raise ValueError(f"{name}: marked merged but the file has no merged core")
        m._merged_core = state["_merged_core"].to(device)
    if cfg.get("backend") and cfg["backend"] in ("ext", "eager"):
        try:
            m.backend = cfg["backend"]
        except RuntimeError:
            pass  # not available here: the default backend computes the same function
    if target.weight.dtype != dtype:
        m.to(target.weight.dtype)
    if check_base:
        with torch.no_grad():
            ref = base_weight.detach().to(m.S.dtype)
            rel = ((m.full_weight() - ref).norm() / ref.norm().clamp_min(1e-30)).item()
        if not rel <= BASE_RTOL:
            raise ValueError(f"{name}: the file's adapter was built from another weight (relative difference "
                             f"{rel:.3g} from this model's); pass check_base=False to load it anyway")
    return m


def load(model: nn.Module, path, check_base: bool = True) -> list:
    """Attach the adapters saved by ``save`` to ``model`` (a fresh copy of the base model: plain
    nn.Linears there, or adapters that get replaced), restoring state, coeff and merge state; then only
    adapter parameters are trainable. On the same device and dtype the outputs are bit-identical to the
    saved model's. Everything is validated before the model is touched: unknown variant, missing layer,
    wrong shapes or another base weight (``check_base``) raise ValueError. Returns the loaded names."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt", device="cpu") as f:
        meta = f.metadata() or {}
        if meta.get("format") != FILE_FORMAT:
            raise ValueError(f"{path} is not an antipasto_ext adapter file (metadata format={meta.get('format')!r})")
        if meta.get("format_version") != FILE_VERSION:
            raise ValueError(f"{path}: unsupported format_version {meta.get('format_version')!r}")
        config = json.loads(meta["layers"])
        keys = list(f.keys())
        built = [(name, cfg, _build_from_file(model, name, cfg, f, keys, check_base)) for name, cfg in config.items()]
    loaded = []
    for name, cfg, m in built:
        for n in [name] + cfg.get("aliases", []):
            _set_submodule(model, n, m)
            loaded.append(n)
    _freeze_base(model)
    return loaded
