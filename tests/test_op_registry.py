"""Every op registered under antipasto_ext:: has its Python wrapper (antipasto_ext.ops.OPS), a fake kernel that
traces, autograd (C++, or the refusal of double backward), and a kernel for every engine: the C++ CPU kernels, the
emulated CUDA kernels (which must launch at least one emulated kernel) and, when built, CUDA. An op added without
one of these, or without a sample below, fails here. And the core of every variant of the registry, as its module
hands it to the ops, matches the float64 reference on every engine."""
import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensorMode

import antipasto_ext as ax
from antipasto_ext import _C, ops


def _samples():
    """Small inputs of every op, by name."""
    p, S, g = torch.randn(5, 8), torch.rand(8) + 0.5, torch.randn(8)
    x, W, U, Vh = torch.randn(5, 16), torch.randn(12, 16), torch.randn(12, 8), torch.randn(8, 16)
    t = torch.randn(3, 6)
    R = ops.block_cayley(t, 4)
    return {
        "core": ("gain", p, S, [g], 0.5, 0),
        "core_backward": ("gain", torch.randn(5, 8), p, S, [g], 0.5, 0),
        "layer": ("gain", x, W, None, U, Vh, S, [g], 0.5, 0, False),
        "block_cayley": (t, 4, 0.5, 1.0),
        "block_cayley_backward": (torch.randn(3, 4, 4), R, t, 4, 0.5, 1.0),
    }


REGISTERED = sorted(n.split("::")[1] for n in torch._C._dispatch_get_all_op_names() if n.startswith("antipasto_ext::"))


def test_the_registered_ops_are_the_table():
    assert REGISTERED == sorted(ops.OPS) == sorted(_samples()), (REGISTERED, sorted(ops.OPS))


@pytest.mark.parametrize("name", REGISTERED)
def test_op_has_wrapper_fake_autograd_and_kernels(name, monkeypatch):
    qual = f"antipasto_ext::{name}"
    wrapper, fake, _ = ops.OPS[name]
    assert callable(wrapper) and callable(fake), name
    args = _samples()[name]
    op = getattr(torch.ops.antipasto_ext, name).default
    # autograd: the C++ Function or, for the backward ops, the refusal of double backward
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "Autograd"), f"{name} has no autograd"
    # the fake kernel traces, with the shapes of the real outputs
    real = op(*args)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_args = [mode.from_tensor(a) if isinstance(a, torch.Tensor) else
                     [mode.from_tensor(t) for t in a] if isinstance(a, list) else a for a in args]
        traced = op(*fake_args)
    shapes = lambda out: [tuple(t.shape) for t in torch.utils._pytree.tree_leaves(out)]  # noqa: E731
    assert shapes(traced) == shapes(real), name
    # a kernel for every engine
    assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CPU"), f"{name} has no CPU kernel"
    if ax.build_info()["cuda"]:
        assert torch._C._dispatch_has_kernel_for_dispatch_key(qual, "CUDA"), f"{name} has no CUDA kernel"
    if ax.build_info()["emulation"]:
        monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", "cuda-emulated")
        _C._emulator_launch_log(True)
        emulated = op(*args)
        launched = _C._emulator_launch_log(False)
        assert launched, f"{name} launched no emulated kernel on the cuda-emulated engine"
        assert shapes(emulated) == shapes(real)


@pytest.mark.parametrize("example", sorted(ax.variants.EXAMPLES))
def test_every_variant_core_matches_the_reference(example, engine):
    """The core of every registry example, as its module hands it to the ops (_core_args), against
    reference.core in float64: forward and the gradient of p and of every parameter. A new variant is tested
    here without a new test case."""
    name, kw = ax.variants.EXAMPLES[example]
    m = ax.variants.VARIANTS[name].cls.from_linear(torch.nn.Linear(24, 20), r=12, **kw)  # S set (not torch.empty)
    with torch.no_grad():
        for t in m.parameters():
            if t.requires_grad:
                t.add_(torch.randn_like(t) * 0.3)
    params, option = m._core_args(m.coeff)
    params = [t.detach().double().requires_grad_() for t in params]
    params_ref = [t.detach().clone().requires_grad_() for t in params]
    S = m.S.double()
    p = torch.randn(7, 12, dtype=torch.float64, requires_grad=True)
    p_ref = p.detach().clone().requires_grad_()
    h = ops.core(m.core, p, S, params, 0.8, option)
    h_ref = ax.reference.core(m.core, p_ref, S, params_ref, 0.8, option)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    grad = torch.randn_like(h)
    h.backward(grad)
    h_ref.backward(grad)
    torch.testing.assert_close(p.grad, p_ref.grad, rtol=1e-10, atol=1e-12)
    for t, t_ref in zip(params, params_ref):
        if t.numel():
            torch.testing.assert_close(t.grad, t_ref.grad, rtol=1e-10, atol=1e-12)
