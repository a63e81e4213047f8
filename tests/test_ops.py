"""The registered ops against the float64 eager reference: forward and every gradient, every engine,
dtypes, odd shapes; gradcheck, opcheck, determinism and bad input."""
import math

import pytest
import torch

import antipasto_ext as ax
from antipasto_ext import ops, reference
from conftest import DEVICES, assert_close

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# (leading shape of p, r, block size for rot): odd row counts, r not a multiple of any tile, batch dims 1-3
SHAPES = [((7,), 12, 3), ((2, 5), 20, 4), ((3, 1, 11), 36, 6), ((33,), 48, 16), ((1,), 8, 2)]


def _core_cases(r, bs, k, device):
    """(op wrapper, reference fn, param dict) per core, parameters random (away from init)."""
    kw = dict(device=device, dtype=torch.float64)
    S = torch.rand(r, **kw) * 3 + 0.1
    C = torch.linalg.qr(torch.randn(r, k, **kw))[0]
    R = reference.cayley_blocks(torch.randn(r // bs, bs * (bs - 1) // 2, **kw), bs, 0.5, 1.0)
    return {
        "gain": (ops.gain_core, reference.gain_core, dict(S=S, g=torch.randn(r, **kw)), dict(coeff=0.7)),
        "gain_suppress": (ops.gain_core, reference.gain_core,
                          dict(S=S, g=torch.randn(r, **kw)), dict(coeff=-1.3, suppress_only=True)),
        "dplr": (ops.dplr_core, reference.dplr_core,
                 dict(S=S, g=torch.randn(r, **kw), A=torch.randn(k, r, **kw), B=torch.randn(r, k, **kw)), dict(coeff=0.9)),
        "rot_V": (ops.rot_core, reference.rot_core, dict(S=S, delta_s=torch.randn(r, **kw), R=R),
                  dict(coeff=0.8, rotate_basis="V")),
        "rot_U": (ops.rot_core, reference.rot_core, dict(S=S, delta_s=torch.randn(r, **kw), R=R),
                  dict(coeff=-0.6, rotate_basis="U")),
        "rot_none": (ops.rot_core, reference.rot_core, dict(S=S, delta_s=torch.randn(r, **kw), R=R.new_empty(0)),
                     dict(coeff=1.0, rotate_basis="none")),
        "ablate": (ops.ablate_core, reference.ablate_core, dict(S=S, C=C, a=torch.rand(k, **kw)), dict(coeff=0.8)),
    }


CORES = ["gain", "gain_suppress", "dplr", "rot_V", "rot_U", "rot_none", "ablate"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("core", CORES)
def test_core_matches_reference(core, shape, dtype, device, engine):
    lead, r, bs = shape
    k = min(3, r)
    fn, ref_fn, params, scalars = _core_cases(r, bs, k, device)[core]
    p64 = torch.randn(*lead, r, device=device, dtype=torch.float64)
    # the op sees p in `dtype`; the reference sees the same (rounded) values in float64
    p = p64.to(dtype).requires_grad_()
    p_ref = p.detach().double().requires_grad_()
    # parameters live in float32 (float64 for float64 p), as in the modules
    pdt = torch.promote_types(dtype, torch.float32)
    trainable = {n: t.to(pdt).requires_grad_() for n, t in params.items() if n != "S" and t.numel()}
    trainable_ref = {n: t.detach().double().requires_grad_() for n, t in trainable.items()}
    h = fn(p, **{**params, "S": params["S"].to(pdt), **trainable}, **scalars)
    h_ref = ref_fn(p_ref, **{**params, **trainable_ref}, **scalars)
    assert h.dtype == dtype and h.shape == p.shape
    assert_close(h, h_ref, dtype, f"{core} forward")
    grad = torch.randn_like(h_ref).to(dtype).double()  # both sides see the same rounded upstream gradient
    h.backward(grad.to(dtype))
    h_ref.backward(grad)
    assert_close(p.grad, p_ref.grad, dtype, f"{core} grad p")
    for n in trainable:
        # parameter gradients are sums over all rows: allow for the accumulated rounding of p and grad in dtype
        assert trainable[n].grad.dtype == trainable[n].dtype
        assert_close(trainable[n].grad, trainable_ref[n].grad, dtype, f"{core} grad {n}", scale=4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("bs", [2, 3, 4, 5, 8, 9, 16, 32, 64])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_block_cayley_matches_solve(bs, dtype, device, engine):
    n = 5
    rot_T = (torch.randn(n, bs * (bs - 1) // 2, dtype=torch.float64, device=device) * 2).to(dtype).requires_grad_()
    ref_T = rot_T.detach().double().requires_grad_()
    for coeff in (1.0, -0.7):
        R = ops.block_cayley(rot_T, bs, 0.5, coeff)
        R_ref = reference.cayley_blocks(ref_T, bs, 0.5, coeff)
        assert_close(R, R_ref, dtype, f"R bs={bs}", scale=4)
        eye = torch.eye(bs, dtype=torch.float64, device=device)
        assert (R.double().transpose(-1, -2) @ R.double() - eye).abs().max() < (1e-5 if dtype == torch.float32 else 1e-12)
        G = torch.randn_like(R_ref)
        (g,) = torch.autograd.grad(R, rot_T, G.to(dtype))
        (g_ref,) = torch.autograd.grad(R_ref, ref_T, G)
        assert_close(g, g_ref, dtype, f"grad rot_T bs={bs}", scale=4)


def test_block_cayley_coeff_zero_is_identity(engine):
    R = ops.block_cayley(torch.randn(6, 6), 4, 0.5, 0.0)
    assert torch.equal(R, torch.eye(4).expand(6, 4, 4))


def test_block_cayley_clamps_the_angle(engine):
    """The tanh clamp bounds every generator entry by a_lim, so R stays a bounded rotation for huge rot_T."""
    R = ops.block_cayley(torch.full((2, 1), 1e6), 2, 0.5, 1.0)
    angle = torch.atan2(R[:, 1, 0], R[:, 0, 0]).abs()
    assert torch.all(angle <= 2 * math.atan(math.tan(0.25)) + 1e-6)


@pytest.mark.parametrize("core", CORES)
def test_gradcheck_cores(core, engine):
    fn, _, params, scalars = _core_cases(8, 4, 2, "cpu")[core]
    p = torch.randn(5, 8, dtype=torch.float64, requires_grad=True)
    names = [n for n, t in params.items() if n != "S" and t.numel()]
    tensors = [params[n].clone().requires_grad_() for n in names]

    def f(p, *ts):
        return fn(p, **{**params, **dict(zip(names, ts))}, **scalars)

    assert torch.autograd.gradcheck(f, (p, *tensors))


@pytest.mark.parametrize("bs", [2, 4, 9])
def test_gradcheck_block_cayley(bs, engine):
    rot_T = torch.randn(3, bs * (bs - 1) // 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: ops.block_cayley(t, bs, 0.7, 0.8), (rot_T,))


def _opcheck_samples():
    cases = _core_cases(8, 4, 2, "cpu")
    p = torch.randn(3, 5, 8)
    f = lambda d: {n: t.float() for n, t in d.items()}  # noqa: E731
    yield "block_cayley", (torch.randn(2, 6, requires_grad=True), 4, 0.5, 1.0)
    yield "block_cayley_backward", (torch.randn(2, 4, 4), ops.block_cayley(torch.randn(2, 6), 4, 0.5, 1.0),
                                    torch.randn(2, 6), 4, 0.5, 1.0)
    g = f(cases["gain"][2])
    yield "core", ("gain", p.clone().requires_grad_(), g["S"], [g["g"].requires_grad_()], 0.7, 0)
    yield "core_backward", ("gain", torch.randn_like(p), p, g["S"], [g["g"]], 0.7, 1)
    d = f(cases["dplr"][2])
    yield "core", ("dplr", p.clone().requires_grad_(), d["S"], [d["g"], d["A"].requires_grad_(), d["B"]], 0.9, 0)
    yield "core_backward", ("dplr", torch.randn_like(p), p, d["S"], [d["g"], d["A"], d["B"]], 0.9, 0)
    for side in (0, 1, 2):
        rr = f(cases["rot_V"][2])
        R = rr["R"] if side else torch.empty(0)
        yield "core", ("rot", p.clone().requires_grad_(), rr["S"], [rr["delta_s"].requires_grad_(), R], 0.8, side)
        yield "core_backward", ("rot", torch.randn_like(p), p, rr["S"], [rr["delta_s"], R], 0.8, side)
    a = f(cases["ablate"][2])
    yield "core", ("ablate", p.clone().requires_grad_(), a["S"], [a["C"].requires_grad_(), a["a"]], 0.8, 0)
    yield "core_backward", ("ablate", torch.randn_like(p), p, a["S"], [a["C"], a["a"]], 0.8, 0)
    # a non-contiguous activation
    yield "core", ("gain", torch.randn(8, 6).t().requires_grad_(), torch.rand(8), [torch.randn(8)], 1.0, 0)


@pytest.mark.parametrize("name,args", list(_opcheck_samples()), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck(name, args):
    utils = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    if name.endswith("_backward"):  # not differentiable again (no double backward): nothing for aot to trace through
        utils = utils[:3]
    torch.library.opcheck(getattr(torch.ops.antipasto_ext, name).default, args, test_utils=utils)


@pytest.mark.parametrize("core", ["gain", "dplr", "rot_V", "rot_U", "ablate"])
def test_parameter_gradients_are_deterministic(core, engine):
    fn, _, params, scalars = _core_cases(16, 4, 3, "cpu")[core]
    p = torch.randn(1000, 16)
    name = [n for n in params if n != "S"][0]
    grads = []
    for threads in (1, 2, 1):
        torch.set_num_threads(threads)
        t = params[name].float().clone().requires_grad_()
        fn(p, **{**{n: v.float() for n, v in params.items()}, name: t}, **scalars).sum().backward()
        grads.append(t.grad)
    torch.set_num_threads(2)
    assert torch.equal(grads[0], grads[1]) and torch.equal(grads[0], grads[2])


def test_bad_op_input_names_the_argument():
    p, S = torch.randn(4, 8), torch.rand(8)
    with pytest.raises(ValueError, match="block_size"):
        ops.block_cayley(torch.randn(2, 6), 1)
    with pytest.raises(ValueError, match="rot_T"):
        ops.block_cayley(torch.randn(2, 5), 4)
    with pytest.raises(ValueError, match="max_angle"):
        ops.block_cayley(torch.randn(2, 6), 4, max_angle=4.0)
    with pytest.raises(RuntimeError, match="block_size"):
        torch.ops.antipasto_ext.block_cayley(torch.randn(2, 6), 65, 0.5, 1.0)
    with pytest.raises(RuntimeError, match="g must have shape"):
        ops.gain_core(p, S, torch.zeros(7))
    with pytest.raises(RuntimeError, match="p must have last dim"):
        ops.gain_core(torch.randn(4, 9), S, torch.zeros(8))
    with pytest.raises(RuntimeError, match="A must have shape"):
        ops.dplr_core(p, S, torch.zeros(8), torch.zeros(2, 7), torch.zeros(8, 2))
    with pytest.raises(RuntimeError, match="R must have shape"):
        ops.rot_core(p, S, torch.zeros(8), torch.zeros(3, 2, 2))
    with pytest.raises(RuntimeError, match="C must have shape"):
        ops.ablate_core(p, S, torch.zeros(7, 2), torch.zeros(2))
    with pytest.raises(RuntimeError, match="p must be a floating"):
        ops.gain_core(torch.zeros(4, 8, dtype=torch.long), S, torch.zeros(8))
