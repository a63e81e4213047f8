"""The layer ops on CUDA at the shapes of real layers, and the small cases the GPU check
(tools/gpu_check.py) runs under compute-sanitizer.

Real shapes: d_in = d_out = 4096; r 64, 128, 256 (block size 8 at r 256, else 4; k = 8); 1, 16, 17 and 8192
rows; bf16 and fp16 with the fused projection forced at every row count, turned off, and at its default
threshold, and fp32 (which the fused kernel never takes); forward and the gradients of x, W, bias, U, Vh and
every core parameter against the float64 reference of test_layer_ops. test_paths_follow_the_threshold checks
with the profiler that each setting launches the kernels it names.

The test_sanitizer_* cases are small, so that they fit under compute-sanitizer, yet reach every code path:
the decode kernels, prefill tiles with ragged rows and a K tail, r past a tile boundary, several row tiles
per backward CTA, the 48 KiB rot tile (r 256, block size 8), both block_cayley kernels. Their float64
reference runs on the CPU, so the kernels under the sanitizer are the op's own (and cuBLAS's).

Collected everywhere (the GPU check's dry run counts the selections); skipped without a CUDA device.
"""
import pytest
import torch

from antipasto_ext import ops, reference
from conftest import RTOL, WHY_NO_CUDA
from test_layer_ops import _cases, _RoundGrad

pytestmark = pytest.mark.skipif(bool(WHY_NO_CUDA), reason=WHY_NO_CUDA)

FUSED_ROWS = "ANTIPASTO_EXT_FUSED_PROJECTION_ROWS"
# the dispatch threshold of the fused projection when the variable is unset (CudaKernels::fuse_rows)
DEFAULT_FUSED_ROWS = 16
MODES = {"fused": "1000000000", "cublas": "0", "default": None}
CORES = ["gain", "gain_suppress", "dplr", "rot_V", "rot_U", "rot_none", "ablate"]
D = 4096
K = 8
# (dtype, mode): the fused kernel takes bf16 / fp16 only, so fp32 runs once, at the default setting
DTYPE_MODES = [(dt, mode) for dt in (torch.bfloat16, torch.float16) for mode in MODES] + [(torch.float32, "default")]


def _set_mode(monkeypatch, mode):
    if MODES[mode] is None:
        monkeypatch.delenv(FUSED_ROWS, raising=False)
    else:
        monkeypatch.setenv(FUSED_ROWS, MODES[mode])


def _close(a, ref, dtype, what, scale):
    """max |a - ref| / max |ref| <= RTOL * scale, computed on ref's device (a NaN fails)."""
    a = a.detach().to(device=ref.device, dtype=torch.float64)
    err = ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()
    assert err <= RTOL[dtype] * scale, f"{what}: relative error {err:.3g} > {RTOL[dtype] * scale:.3g} ({dtype})"


def check_layer(core, n, d_in, d_out, r, bs, k, dtype, ref_device):
    """One layer op call on CUDA, forward and backward, against the float64 reference on ref_device: y and the
    gradients of x, W, bias (odd n), U, Vh and the core's parameters."""
    fn, ref_fn, params, scalars = _cases(r, bs, k, ref_device)[core]
    f64 = dict(device=ref_device, dtype=torch.float64)
    # U and Vh are plain random matrices: the op does not rely on orthonormality, and these scales keep p, h
    # and y of order one
    full = [torch.randn(n, d_in, **f64), torch.randn(d_out, d_in, **f64) / d_in ** 0.5,
            torch.randn(d_out, **f64) if n % 2 else None, torch.randn(d_out, r, **f64) / r ** 0.5,
            torch.randn(r, d_in, **f64) / d_in ** 0.5]
    rounded = [None if t is None else t.to(dtype) for t in full]  # the op's inputs; the reference sees them too
    x, W, b, U, Vh = (None if t is None else t.to("cuda").detach().requires_grad_() for t in rounded)
    xr, Wr, br, Ur, Vhr = (None if t is None else t.detach().double().requires_grad_() for t in rounded)
    # parameters live in float32 (as in the modules); the reference takes the same float32 values in float64
    trainable = {name: t.to(device="cuda", dtype=torch.float32).requires_grad_()
                 for name, t in params.items() if name != "S" and t.numel()}
    trainable_ref = {name: t.detach().to(ref_device, torch.float64).requires_grad_() for name, t in trainable.items()}
    op_params = {name: t.to(device="cuda", dtype=torch.float32) for name, t in params.items()}
    y = fn(x, W, b, U, Vh, **{**op_params, **trainable}, **scalars)

    # the reference holds p = x Vh^T and dh = dY U rounded to dtype, as the op does (test_layer_ops._reference)
    p = xr @ Vhr.T
    p = p + (p.to(dtype).double() - p).detach()
    y_ref = xr @ Wr.T + _RoundGrad.apply(ref_fn(p, **{**params, **trainable_ref}, **scalars), dtype) @ Ur.T
    if br is not None:
        y_ref = y_ref + br
    assert y.dtype == dtype and y.shape == (n, d_out)
    _close(y, y_ref, dtype, f"{core} forward", 2)
    grad = torch.randn(n, d_out, **f64).to(dtype)
    y.backward(grad.to("cuda"))
    y_ref.backward(grad.double())
    for name, t, t_ref, scale in (("x", x, xr, 2), ("W", W, Wr, 2), ("bias", b, br, 2), ("U", U, Ur, 2),
                                  ("Vh", Vh, Vhr, 4)):
        if t is not None:
            assert t.grad is not None and t.grad.dtype == dtype, f"{core} grad {name}"
            _close(t.grad, t_ref.grad, dtype, f"{core} grad {name}", scale)
    for name, t in trainable.items():
        # sums over all rows: allow for the accumulated rounding of p and dh in dtype (as test_layer_ops)
        assert t.grad is not None and t.grad.dtype == torch.float32, f"{core} grad {name}"
        _close(t.grad, trainable_ref[name].grad, dtype, f"{core} grad {name}", 4)


@pytest.mark.parametrize("dtype,mode", DTYPE_MODES, ids=lambda v: str(v).replace("torch.", ""))
@pytest.mark.parametrize("rows", [1, 4, 16, 17, 8192], ids=lambda n: f"rows{n}")
@pytest.mark.parametrize("r", [64, 128, 256], ids=lambda r: f"r{r}")
@pytest.mark.parametrize("core", CORES)
def test_layer_at_real_shapes(core, r, rows, dtype, mode, monkeypatch):
    _set_mode(monkeypatch, mode)
    check_layer(core, rows, D, D, r, 8 if r == 256 else 4, K, dtype, "cuda")


def _cuda_kernels(fn):
    """Names of the CUDA kernels fn launches (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type.name == "CUDA"]


@pytest.mark.parametrize("mode", list(MODES))
@pytest.mark.parametrize("rows", [1, 16, 17, 8192], ids=lambda n: f"rows{n}")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
def test_paths_follow_the_threshold(dtype, rows, mode, monkeypatch):
    """The fused kernels run where the setting asks and the dtype allows (gain: the one-kernel decode for <= 4 rows;
    the decode kernel and its finish for <= 16 rows, the prefill tile for more), else cuBLAS and the core kernel."""
    _set_mode(monkeypatch, mode)
    r = 256
    kw = dict(device="cuda", dtype=dtype)
    x, W = torch.randn(rows, D, **kw), torch.randn(D, D, **kw) / D ** 0.5
    U, Vh = torch.randn(D, r, **kw) / r ** 0.5, torch.randn(r, D, **kw) / D ** 0.5
    S, g = torch.rand(r, device="cuda") + 1, torch.randn(r, device="cuda")
    call = lambda: ops.layer_gain(x, W, None, U, Vh, S, g)  # noqa: E731
    call()  # module loading and handle creation stay out of the profile
    names = _cuda_kernels(call)
    fused = dtype != torch.float32 and (mode == "fused" or (mode == "default" and rows <= DEFAULT_FUSED_ROWS))
    assert any("project_core_kernel" in k for k in names) == (fused and rows > 16), names
    assert any("project_gemv_kernel" in k for k in names) == (fused and rows <= 4), names
    assert any("project_decode_kernel" in k for k in names) == (fused and 4 < rows <= 16), names
    assert any("project_finish_kernel" in k for k in names) == (fused and 4 < rows <= 16), names
    assert any("diag_forward_kernel" in k for k in names) == (not fused), names


@pytest.mark.parametrize("steered", [False, True], ids=["float-coeff", "coeff-tensor"])
@pytest.mark.parametrize("example", ["antipasto", "rot_V", "dplr", "ablate"])
def test_decode_step_captures_in_a_cuda_graph(example, steered, monkeypatch):
    """A decode step of an adapted layer (bf16, d 2048, r 128: the decode kernels) is captured in a CUDA graph,
    which a host read or a device synchronisation in the step would refuse, and its replays on new inputs match
    eager calls: 1 and 4 tokens at the module's float coefficient, or 2 samples at (+1, -1)."""
    monkeypatch.delenv(FUSED_ROWS, raising=False)
    from torch import nn

    from antipasto_ext.variants import EXAMPLES, VARIANTS
    name, kw = EXAMPLES[example]
    torch.manual_seed(0)
    lin = nn.Linear(2048, 2048, device="cuda", dtype=torch.bfloat16)
    m = VARIANTS[name].cls.from_linear(lin, r=128, **kw)
    with torch.no_grad():
        for prm in m.parameters():
            if prm.requires_grad:
                prm.add_(0.1 * torch.randn_like(prm))
    shapes = [(2, 1, 2048)] if steered else [(1, 2048), (4, 2048)]
    if steered:
        m.coeff = torch.tensor([1.0, -1.0], device="cuda")
    for shape in shapes:
        static_x = torch.randn(shape, device="cuda", dtype=torch.bfloat16)
        with torch.no_grad():
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up off the capture: handles, the rotation cache
                for _ in range(2):
                    m(static_x)
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_y = m(static_x)
            for _ in range(3):
                x = torch.randn_like(static_x)
                static_x.copy_(x)
                graph.replay()
                torch.testing.assert_close(static_y, m(x), rtol=2e-2, atol=2e-2)


# (id, rows, d_in, r, block size, k, dtype, fused projection setting)
SANITIZER_LAYER = [
    # cuBLAS projection + the core kernels. r 256, block size 8: the rot backward's tile is 48 KiB with 13 rows,
    # so the 16-row CTAs of 40 rows run two tiles each; r 72 (past a 64-column boundary) at 4100 rows: 33 rows
    # per backward CTA, two 32-row tiles
    ("cublas-f32-r256", 40, 64, 256, 8, 8, torch.float32, "cublas"),
    ("cublas-bf16-r72", 4100, 96, 72, 4, 3, torch.bfloat16, "cublas"),
    # the fused projection at r 256, d_in 2048: 3 rows (gain: the one-kernel decode; the other cores: 16 splits of
    # 128 over 8 column slices and the finish), 8 rows (every core through the splits)
    ("fused-decode-r256", 3, 2048, 256, 8, 8, torch.bfloat16, "fused"),
    ("fused-decode-r256-8rows", 8, 2048, 256, 8, 8, torch.bfloat16, "fused"),
    # prefill tiles: 70 rows (3 CTAs, the last ragged), d_in 200 (the last K step half filled), r 72 (8 n-tiles)
    ("fused-prefill-r72", 70, 200, 72, 4, 3, torch.float16, "fused"),
    # r 40 (4 n-tiles), 33 rows (a second CTA with one row)
    ("fused-prefill-r40", 33, 64, 40, 4, 2, torch.bfloat16, "fused"),
]


@pytest.mark.parametrize("case", SANITIZER_LAYER, ids=lambda c: c[0])
@pytest.mark.parametrize("core", CORES)
def test_sanitizer_layer(core, case, monkeypatch):
    _, n, d_in, r, bs, k, dtype, mode = case
    _set_mode(monkeypatch, mode)
    check_layer(core, n, d_in, d_in + 8, r, bs, k, dtype, "cpu")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("bs", [2, 4, 8, 16, 64])
def test_sanitizer_block_cayley(bs, dtype):
    """block_cayley forward and backward against reference.cayley_blocks on the CPU: the register kernels
    (bs <= 8; 70 blocks, two CTAs of 64) and the kernels with one CTA per block (bs 16, 64)."""
    n = 70
    t = (torch.randn(n, bs * (bs - 1) // 2, dtype=torch.float64) * 2).to(dtype)
    rot_T, rot_T_ref = t.to("cuda").requires_grad_(), t.double().requires_grad_()
    R = ops.block_cayley(rot_T, bs, 0.5, 0.8)
    R_ref = reference.cayley_blocks(rot_T_ref, bs, 0.5, 0.8)
    _close(R, R_ref, dtype, f"R bs={bs}", 4)
    G = torch.randn(n, bs, bs, dtype=torch.float64).to(dtype)
    (dT,) = torch.autograd.grad(R, rot_T, G.to("cuda"))
    (dT_ref,) = torch.autograd.grad(R_ref, rot_T_ref, G.double())
    _close(dT, dT_ref, dtype, f"grad rot_T bs={bs}", 4)
