"""Model-level use of the adapters: attach / detach on a whole model, calibrate, steer, merge (save / load
and shares_basis live in antipasto_ext.files).

    import antipasto_ext as ax
    ax.attach(model, "dplr", targets=r"(q|v)_proj$", r=16)   # swaps the matching nn.Linears, freezes the rest
    ax.calibrate(model, batches)                              # one no-grad pass, streamed statistics
    ... train the adapter parameters ...
    ax.save(model, "adapter.safetensors"); ax.load(fresh_model, "adapter.safetensors")
    ax.merge(model)                                           # one F.linear per layer; coeff changes re-merge

Only torch is needed to import this module; safetensors (save / load) and tqdm (progress bars) are imported
when used. See docs/model_level.md.
"""
import contextlib
import re
import sys
from collections.abc import Mapping

import torch
from torch import nn

from . import svd as _svd
from ._base import SVDAdapter
from . import variants as _variants


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


def attach(model: nn.Module, variant: str = "dplr", targets=r"(q|v)_proj$", r: int = 16, svd="auto",
           progress: bool = True, **variant_kwargs) -> list:
    """Replace every nn.Linear whose full dotted name matches ``targets`` (``re.search``) by the variant
    built with ``from_linear(linear, r=r, svd=svd, **variant_kwargs)`` and freeze every other parameter of
    the model. Returns the replaced names. Every layer's arguments are checked before any layer is replaced.
    ``svd``: how the top-r basis is computed, "auto" (randomized subspace iteration for large layers, the
    exact SVD otherwise), "exact" or "randomized" (see antipasto_ext.svd). ``progress``: a bar over layers
    on stderr when it is a terminal."""
    cls = _variants.variant(variant).cls
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
            _svd.resolve(svd, tuple(lin.weight.shape), r)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{e} (layer {names[0]!r}: in_features={lin.in_features}, "
                          f"out_features={lin.out_features})") from e
    replaced = []
    # one layer at a time: the old Linear can go before the next SVD
    for lin, names in _progress_layers(list(matched.values()), progress, "antipasto_ext.attach", len(matched)):
        adapter = cls.from_linear(lin, r=r, svd=svd, **variant_kwargs)
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


def set_coeff(model: nn.Module, value):
    """Set ``coeff`` on every adapter: a float (merged adapters re-merge) or a tensor that steers each sample
    (``(B,)``) or token (``x.shape[:-1]``), the same tensor for every layer (see SVDAdapter)."""
    mods = list(_adapters_or_raise(model).values())
    if isinstance(value, torch.Tensor) and any(m.merged for m in mods):
        raise ValueError("coeff: the model has merged adapters, which fold one coefficient; a coefficient tensor "
                         "needs unmerged ones (ax.unmerge(model))")
    mods[0].coeff = value  # validates before any layer changes
    for m in mods[1:]:
        m.coeff = value


def set_adapter(model: nn.Module, index):
    """Which adapter of each layer's bank (``load(model, [paths])``) every sample or token runs: an integer tensor
    shaped like a coefficient tensor, or None (adapter 0). Checked once here (a CUDA tensor is read back now,
    never in a forward)."""
    mods = list(_adapters_or_raise(model).values())
    if index is not None and any(m.bank_size == 0 for m in mods):
        raise ValueError("adapter: the model's adapters have no bank (load(model, [path_a, path_b]) makes one)")
    mods[0].adapter = index  # validates before any layer changes
    for m in mods[1:]:
        m.adapter = mods[0].adapter


@contextlib.contextmanager
def steer(model: nn.Module, coeff, adapter=None):
    """``with steer(model, -1.0): ...`` (or a per-sample tensor, ``steer(model, torch.tensor([1., -1.]))``) runs
    the block at ``coeff`` and restores every adapter's coeff. ``adapter``: with a bank, which adapter each sample
    or token runs (``set_adapter``); restored too."""
    mods = list(_adapters_or_raise(model).values())
    old = [(m.coeff, m.adapter) for m in mods]
    try:
        set_coeff(model, coeff)
        if adapter is not None:
            set_adapter(model, adapter)
        yield model
    finally:
        for m, (c, a) in zip(mods, old):
            m.coeff = c
            m.adapter = a


# ------------------------------------------------------------------------------------------ rotations


@contextlib.contextmanager
def shared_rotations(model: nn.Module):
    """``with shared_rotations(model): ...`` (around a training loop, or one optimizer step's micro-batches)
    computes the Cayley rotations of every ``RotLinear`` of the model in one ``block_cayley`` launch per coefficient
    (and per block size, angle, dtype and device) at first use, and reuses them in every forward until an optimizer
    step changes a generator; each backward turns the rotations' accumulated gradient into every layer's
    ``rot_T.grad`` with one ``block_cayley_backward`` per coefficient. Forward values and gradients are those of
    the layers' own solves (which they do again after the block), up to rounding."""
    from .rot import RotLinear, SharedRotations
    shared = SharedRotations([m for m, _ in _occurrences(model, RotLinear).values()])
    try:
        yield model
    finally:
        shared.close()


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


def _progress_layers(items, enabled: bool, desc: str, total: int):
    """A bar over layers on stderr when it is a terminal: tqdm when installed, else one rewritten line."""
    if not enabled or total < 2 or not getattr(sys.stderr, "isatty", lambda: False)():
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, desc=desc, total=total, leave=False, unit="layer")
        return
    for i, item in enumerate(items):
        sys.stderr.write(f"\r{desc}: layer {i + 1}/{total}")
        sys.stderr.flush()
        yield item
    sys.stderr.write("\r" + " " * (len(desc) + 24) + "\r")
    sys.stderr.flush()


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
