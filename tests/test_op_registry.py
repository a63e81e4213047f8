"""Every op registered under antipasto_ext:: has its Python wrapper (antipasto_ext.ops.OPS), a fake kernel that
traces, autograd (C++, or the refusal of double backward), and a kernel for every engine: the C++ CPU kernels, the
emulated CUDA kernels (which must launch at least one emulated kernel) and, when built, CUDA. An op added without
one of these, or without a sample below, fails here."""
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
