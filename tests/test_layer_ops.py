"""The layer ops y = x W^T + b + core(x Vh^T) U^T (antipasto_ext::layer_*), one op and one autograd node per
adapter layer, against the float64 eager reference: forward, dx and every parameter gradient, every engine
(the cuda-emulated engine runs the fused tensor-core projection kernel of csrc/kernels/project.cuh wherever
it takes the shape, including the decode kernels), dtypes, odd shapes, with and without bias; which
kernels ran, need_p, gradcheck (every input), opcheck and bad input."""
import pytest
import torch

from antipasto_ext import _C, ops
from conftest import DEVICES, assert_close
from test_ops import CORES, _core_cases

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# (rows, d_in, r, block size, k): row and r off every tile, one/several row tiles, a K tail, the decode kernels
# (rows <= 16; d_in 1024: 16 splits), d_in not a multiple of 8 (the fused kernels cannot take it: unfused path)
SHAPES = [(7, 24, 12, 3, 3), (33, 40, 20, 4, 2), (5, 1024, 16, 4, 3), (1, 64, 8, 2, 1), (18, 36, 12, 3, 3)]


LAYER_OF_CORE = {ops.gain_core: ops.layer_gain, ops.rot_core: ops.layer_rot, ops.dplr_core: ops.layer_dplr,
                 ops.ablate_core: ops.layer_ablate}


def _cases(r, bs, k, device):
    """(layer op, reference core, tensors, scalars) per core: test_ops' core cases with the layer op."""
    return {name: (LAYER_OF_CORE[fn], *rest) for name, (fn, *rest) in _core_cases(r, bs, k, device).items()}


def _inputs(n, d_in, r, dtype, device, d_out=None, bias=True):
    """x (n, d_in) and the frozen layer (W, bias, U, Vh), d_out = d_in + 3 unless given."""
    d_out = d_out or d_in + 3
    kw = dict(device=device, dtype=torch.float64)
    x = torch.randn(n, d_in, **kw).to(dtype)
    W = (torch.randn(d_out, d_in, **kw) / d_in ** 0.5).to(dtype)
    b = torch.randn(d_out, **kw).to(dtype) if bias else None
    U = torch.linalg.qr(torch.randn(d_out, r, **kw))[0].contiguous().to(dtype)
    Vh = torch.linalg.qr(torch.randn(d_in, r, **kw))[0].T.contiguous().to(dtype)
    return x, (W, b, U, Vh)


class _RoundGrad(torch.autograd.Function):
    """Identity whose backward rounds the incoming gradient to `dtype` (as the op's dh = dY U is)."""

    @staticmethod
    def forward(ctx, t, dtype):
        ctx.dtype = dtype
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad.to(ctx.dtype).double(), None


def _reference(x, frozen, h_of_p, dtype):
    """float64 layer with the two activations the op holds in `dtype` rounded to it: p = x Vh^T (kept for
    backward, straight-through for dx) and dh = dY U, as the eager code's F.linear has them. The core's
    parameter gradients are sums of products that may cancel; with the same rounded inputs on both sides
    only the core's own accumulation is compared (as in test_ops)."""
    W, b, U, Vh = (None if t is None else t.double() for t in frozen)
    p = x @ Vh.T
    p = p + (p.to(dtype).double() - p).detach()
    y = x @ W.T + _RoundGrad.apply(h_of_p(p), dtype) @ U.T
    return y if b is None else y + b


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("core", CORES)
def test_layer_matches_reference(core, shape, dtype, device, engine):
    n, d_in, r, bs, k = shape
    fn, ref_fn, params, scalars = _cases(r, bs, k, device)[core]
    x, frozen = _inputs(n, d_in, r, dtype, device, bias=n % 2 == 1)
    x.requires_grad_()
    x_ref = x.detach().double().requires_grad_()
    pdt = torch.promote_types(dtype, torch.float32)  # parameters live in float32 (float64 for float64 x)
    trainable = {name: t.to(pdt).requires_grad_() for name, t in params.items() if name != "S" and t.numel()}
    trainable_ref = {name: t.detach().double().requires_grad_() for name, t in trainable.items()}
    y = fn(x, *frozen, **{**params, "S": params["S"].to(pdt), **trainable}, **scalars)
    y_ref = _reference(x_ref, frozen, lambda p: ref_fn(p, **{**params, **trainable_ref}, **scalars), dtype)
    assert y.dtype == dtype and y.shape == (n, frozen[0].shape[0])
    assert_close(y, y_ref, dtype, f"{core} forward", scale=2)
    grad = torch.randn_like(y_ref).to(dtype).double()
    y.backward(grad.to(dtype))
    y_ref.backward(grad)
    assert_close(x.grad, x_ref.grad, dtype, f"{core} grad x", scale=2)
    for name in trainable:
        assert trainable[name].grad.dtype == trainable[name].dtype
        assert_close(trainable[name].grad, trainable_ref[name].grad, dtype, f"{core} grad {name}", scale=4)


def _launches(fn):
    _C._emulator_launch_log(True)
    try:
        fn()
    finally:
        names = _C._emulator_launch_log(False)
    return names


@pytest.mark.parametrize("core", ["gain", "dplr", "rot_V", "ablate"])
def test_emulated_engine_runs_the_fused_kernel_where_it_fits(core, monkeypatch):
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", "cuda-emulated")
    fn, _, params, scalars = _cases(16, 4, 2, "cpu")[core]
    params = {name: t.float() for name, t in params.items()}

    def run(n, d_in, dtype, transform=lambda x: x):
        x, frozen = _inputs(n, d_in, 16, dtype, "cpu")
        return _launches(lambda: fn(transform(x), *frozen, **params, **scalars))

    fused = run(40, 64, torch.bfloat16)
    assert any("project_core_kernel" in k for k in fused) and not any("finish" in k for k in fused), fused
    decode = run(3, 2048, torch.float16)
    if core == "gain":  # a columnwise core at <= 4 rows: projection and core in one kernel
        assert len(decode) == 1 and "project_gemv_kernel" in decode[0], decode
    else:  # projection (partials), then their sum and the core: two launches in all
        assert len(decode) == 2 and "project_decode_kernel" in decode[0] and "project_finish_kernel" in decode[1], decode
    decode = run(5, 2048, torch.float16)
    assert len(decode) == 2 and "project_decode_kernel" in decode[0] and "project_finish_kernel" in decode[1], decode
    # shapes the fused kernel cannot take: the BLAS GEMM (at::mm), then the core kernel
    for unfused in (run(40, 64, torch.float32), run(40, 36, torch.bfloat16),
                    run(40, 64, torch.bfloat16, lambda x: x.t().contiguous().t())):
        assert unfused and not any("project" in k for k in unfused), unfused


@pytest.mark.parametrize("core", ["gain", "dplr"])
def test_decode_path_setting(core, monkeypatch):
    """ANTIPASTO_EXT_DECODE_PATH names the decode path: gain takes either (the same y within its dtype), a core the
    one-kernel decode cannot take stays on the split path; an unknown value is an error naming the variable."""
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", "cuda-emulated")
    fn, _, params, scalars = _cases(16, 4, 2, "cpu")[core]
    params = {name: t.float() for name, t in params.items()}
    x, frozen = _inputs(3, 512, 16, torch.bfloat16, "cpu")
    ys = {}
    for path, kernels in (("split", ["project_decode_kernel", "project_finish_kernel"]),
                          ("one-kernel", ["project_gemv_kernel"] if core == "gain" else
                           ["project_decode_kernel", "project_finish_kernel"])):
        monkeypatch.setenv("ANTIPASTO_EXT_DECODE_PATH", path)
        names = _launches(lambda: ys.setdefault(path, fn(x, *frozen, **params, **scalars)))
        assert len(names) == len(kernels) and all(k in n for k, n in zip(kernels, names)), (path, names)
    assert_close(ys["one-kernel"].double(), ys["split"].double(), torch.bfloat16, f"{core} decode paths")
    monkeypatch.setenv("ANTIPASTO_EXT_DECODE_PATH", "fastest")
    with pytest.raises(RuntimeError, match="ANTIPASTO_EXT_DECODE_PATH must be"):
        fn(x, *frozen, **params, **scalars)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32], ids=str)
def test_p_only_when_asked_or_recorded(dtype, engine):
    x, frozen = _inputs(9, 32, 8, dtype, "cpu")
    S, g = torch.rand(8) + 1, torch.randn(8)
    layer = torch.ops.antipasto_ext.layer
    y, p = layer("gain", x, *frozen, S, [g], 0.5, 0, True)
    assert p.shape == (9, 8) and p.dtype == dtype
    assert_close(p, x.double() @ frozen[3].double().T, dtype, "p")
    y2, p2 = layer("gain", x, *frozen, S, [g], 0.5, 0, False)
    assert p2.shape == (0, 8) and torch.equal(y, y2)
    g.requires_grad_()
    y3, p3 = layer("gain", x, *frozen, S, [g], 0.5, 0, False)
    assert p3.shape == (0, 8) and y3.requires_grad and torch.equal(y3, y)
    y3.sum().backward()
    assert g.grad is not None and torch.isfinite(g.grad).all()


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("core", CORES)
def test_gradcheck_layer(core, bias, engine):
    """Every input that can require grad: x, the frozen W, bias, U, Vh, and the core's parameters."""
    fn, _, params, scalars = _cases(8, 4, 2, "cpu")[core]
    x, frozen = _inputs(5, 12, 8, torch.float64, "cpu", d_out=9, bias=bias)
    names = [name for name, t in params.items() if name != "S" and t.numel()]
    tensors = [params[name].clone().requires_grad_() for name in names]
    frozen = [t for t in frozen if t is not None]

    def f(x, W, *rest):
        b, (U, Vh, *ts) = (rest[0], rest[1:]) if bias else (None, rest)
        return fn(x, W, b, U, Vh, **{**params, **dict(zip(names, ts))}, **scalars)

    assert torch.autograd.gradcheck(f, (x.requires_grad_(), *(t.requires_grad_() for t in frozen), *tensors))


def _opcheck_samples():
    c = {name: {t: v.float() for t, v in case[2].items()} for name, case in _cases(16, 4, 2, "cpu").items()}
    for dtype in (torch.float32, torch.bfloat16):
        x, (W, b, U, Vh) = _inputs(6, 32, 16, dtype, "cpu")
        for need_p in (True, False):
            g = c["gain"]
            yield "layer", ("gain", x.clone().requires_grad_(), W, b, U, Vh, g["S"], [g["g"].requires_grad_()], 0.7, 0,
                            need_p)
            d = c["dplr"]
            yield "layer", ("dplr", x, W, None, U, Vh, d["S"], [d["g"], d["A"].requires_grad_(), d["B"]], 0.9, 1, need_p)
            rr = c["rot_V"]
            for side in (0, 1, 2):
                R = rr["R"].clone().requires_grad_() if side else torch.empty(0)
                yield "layer", ("rot", x, W, b, U, Vh, rr["S"], [rr["delta_s"].requires_grad_(), R], 0.8, side, need_p)
            a = c["ablate"]
            yield "layer", ("ablate", x.clone().requires_grad_(), W, b.clone().requires_grad_(), U, Vh, a["S"],
                            [a["C"], a["a"]], 0.8, 0, need_p)


@pytest.mark.parametrize("name,args", list(_opcheck_samples()), ids=lambda v: v if isinstance(v, str) else "")
def test_opcheck_layer(name, args, engine):
    torch.library.opcheck(getattr(torch.ops.antipasto_ext, name).default, args)


def test_bad_layer_input_names_the_argument():
    x, (W, b, U, Vh) = _inputs(4, 16, 8, torch.float32, "cpu")
    S, g = torch.rand(8), torch.zeros(8)
    with pytest.raises(RuntimeError, match="x must be 2-D"):
        ops.layer_gain(x[None], W, b, U, Vh, S, g)
    with pytest.raises(RuntimeError, match="Vh must have shape"):
        ops.layer_gain(x, W, b, U, Vh[:, :15], S, g)
    with pytest.raises(RuntimeError, match="Vh has dtype"):
        ops.layer_gain(x, W, b, U, Vh.double(), S, g)
    with pytest.raises(RuntimeError, match="W must have shape"):
        ops.layer_gain(x, W[:, :15], b, U, Vh, S, g)
    with pytest.raises(RuntimeError, match="U must have shape"):
        ops.layer_gain(x, W, b, U[:, :7], Vh, S, g)
    with pytest.raises(RuntimeError, match="U has dtype"):
        ops.layer_gain(x, W, b, U.half(), Vh, S, g)
    with pytest.raises(RuntimeError, match="bias must have shape"):
        ops.layer_gain(x, W, b[:3], U, Vh, S, g)
    with pytest.raises(RuntimeError, match="g must have shape"):
        ops.layer_gain(x, W, b, U, Vh, S, g[:7])
    with pytest.raises(RuntimeError, match="R must have shape"):
        ops.layer_rot(x, W, b, U, Vh, S, g, torch.zeros(3, 2, 2))
    with pytest.raises(RuntimeError, match="B must have shape"):
        ops.layer_dplr(x, W, b, U, Vh, S, g, torch.zeros(2, 8), torch.zeros(8, 3))
    with pytest.raises(RuntimeError, match="a must have shape"):
        ops.layer_ablate(x, W, b, U, Vh, S, torch.zeros(8, 2), torch.zeros(3))
    with pytest.raises(RuntimeError, match="x must be a floating"):
        ops.layer_gain(x.long(), W, b, U, Vh, S, g)
