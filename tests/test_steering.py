"""Steering by a coefficient tensor: one coefficient per sample or per token, in one pass. Every variant row for
row against the module at that row's float coefficient (forward, dx, every parameter gradient as the sum over the
rows), on the C++ CPU kernels and the CUDA kernel source through the emulator; the ops against the group-by-group
reference (gradcheck, opcheck); the model API (set_coeff, steer), compile, and the refusals."""
import copy

import pytest
import torch
from torch import nn

import antipasto_ext as ax
from antipasto_ext import ops
from conftest import DEVICES, ENGINES, assert_close

VARIANTS = {ex: (ax.variants.VARIANTS[v].cls, kw) for ex, (v, kw) in ax.variants.EXAMPLES.items()}


def make(variant, d_in=24, d_out=20, r=12, dtype=torch.float32, device="cpu"):
    cls, kw = VARIANTS[variant]
    m = cls.from_linear(nn.Linear(d_in, d_out).to(device=device, dtype=dtype), r=r, **kw)
    with torch.no_grad():
        for p in m.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p) * 0.3)
    return m


def trainable(m):
    return {n: p for n, p in m.named_parameters() if p.requires_grad}


def run(m, x, g):
    x = x.detach().clone().requires_grad_()
    m.zero_grad()
    y = m(x)
    y.backward(g.to(y.dtype))
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in trainable(m).items()}


def row_by_row(m, x, g, coeff):
    """The oracle: each row of x (..., d_in) through the module at its own float coefficient (coeff has the
    shape of x's leading dims or a prefix of them), parameter gradients summed; and the sums of their absolute
    values (the scale a summed gradient's rounding error follows: rows at +1 and -1 can cancel)."""
    m = copy.deepcopy(m)
    c = coeff.reshape(coeff.shape + (1,) * (x.dim() - 1 - coeff.dim())).expand(x.shape[:-1]).reshape(-1)
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    ys, dxs, grads, mags = [], [], None, None
    for i in range(x2.shape[0]):
        m.coeff = float(c[i])
        y, dx, dp = run(m, x2[i:i + 1], g2[i:i + 1])
        ys.append(y)
        dxs.append(dx)
        grads = dp if grads is None else {n: grads[n] + dp[n] for n in grads}
        mags = {n: t.abs() for n, t in dp.items()} if mags is None else {n: mags[n] + dp[n].abs() for n in mags}
    return torch.cat(ys).reshape(*x.shape[:-1], -1), torch.cat(dxs).reshape(x.shape), grads, mags


def check_rows(variant, granularity, dtype, device="cpu"):
    """x (3, 5, d_in) with coeff (3,) = [+1, -1, 0] or (3, 5) random: output, dx and every parameter gradient
    against the float64 module run row by row at each row's float coefficient (on the CPU)."""
    m = make(variant, dtype=dtype, device=device)
    x = torch.randn(3, 5, 24, dtype=dtype, device=device)
    g = torch.randn(3, 5, 20, dtype=torch.float64, device=device)
    coeff = torch.tensor([1.0, -1.0, 0.0]) if granularity == "sample" else torch.randn(3, 5)
    ref = copy.deepcopy(m).cpu().double()
    ref.backend = "eager"
    y_ref, dx_ref, grads_ref, mags_ref = row_by_row(ref, x.cpu().double(), g.cpu(), coeff.double())
    m.coeff = coeff.to(device)
    y, dx, grads = run(m, x, g)
    assert_close(y, y_ref, dtype, "y")
    assert_close(dx, dx_ref, dtype, "dx", scale=2)
    for n in grads_ref:  # relative to the summed rows' magnitudes: the rows at +1 and -1 may cancel
        assert_close(grads[n], grads_ref[n], dtype, f"d{n}", scale=4, norm=mags_ref[n])


@pytest.mark.parametrize("variant", VARIANTS)
def test_rows_at_coeff_zero_equal_the_layer_at_zero_and_a_constant_tensor_equals_the_float(variant, engine):
    m = make(variant)
    x = torch.randn(4, 3, 24)
    with torch.no_grad():
        m.coeff = 0.0
        y0 = m(x)
        m.coeff = 0.7
        y_float = m(x)
        m.coeff = torch.tensor([0.0, 0.7, 0.0, 0.7])
        y = m(x)
        m.coeff = torch.full((4, 3), 0.7)
        y_tok = m(x)
    torch.testing.assert_close(y[0::2], y0[0::2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y[1::2], y_float[1::2], rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(y_tok, y_float, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_eager_backend_steers_like_the_kernels(variant):
    m = make(variant)
    m.coeff = torch.tensor([1.0, -1.0])
    x = torch.randn(2, 4, 24)
    g = torch.randn(2, 4, 20)
    y, dx, grads = run(m, x, g)
    m.backend = "eager"
    y_e, dx_e, grads_e = run(m, x, g)
    torch.testing.assert_close(y, y_e, rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(dx, dx_e, rtol=2e-5, atol=2e-5)
    for n in grads:
        torch.testing.assert_close(grads[n], grads_e[n], rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------------------------------ ops


def core_case(name, G, dtype=torch.float64):
    """(params, option) of the core `name` for G steering groups (rot: one rotation set per group)."""
    r, k, bs = 8, 3, 4
    kw = dict(dtype=dtype)
    if name == "gain":
        return [torch.randn(r, **kw) * 0.5], 0
    if name == "rot":
        t = torch.randn(r // bs, bs * (bs - 1) // 2, **kw) * 0.5
        coeffs = torch.randn(G, **kw)
        R = ax.reference.cayley_blocks(t, bs, 0.5, 1.0)
        R = torch.stack([ax.reference.cayley_blocks(t, bs, 0.5, c) for c in coeffs]) if G else R
        return [torch.randn(r, **kw) * 0.1, R], 1
    if name == "dplr":
        return [torch.randn(r, **kw) * 0.5, torch.randn(k, r, **kw), torch.randn(r, k, **kw)], 0
    C = torch.linalg.qr(torch.randn(r, k, **kw))[0]
    return [C, torch.rand(k, **kw)], 0


@pytest.mark.parametrize("name", ["gain", "rot", "dplr", "ablate"])
@pytest.mark.parametrize("groups,rows", [(3, 4), (5, 1), (1, 6), (2, 40)])
def test_core_op_matches_the_group_by_group_reference(name, groups, rows, engine):
    params, option = core_case(name, groups)
    S = torch.rand(8, dtype=torch.float64) + 0.5
    coeffs = torch.randn(groups, dtype=torch.float64)
    p = torch.randn(groups * rows, 8, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in params]
    h = ops.core(name, p, S, params, coeffs, option)
    p_ref = p.detach().clone().requires_grad_()
    params_ref = [t.detach().clone().requires_grad_() for t in params]
    h_ref = ax.reference.core(name, p_ref, S, params_ref, coeffs, option)
    torch.testing.assert_close(h, h_ref, rtol=1e-10, atol=1e-12)
    gh = torch.randn_like(h)
    grads = torch.autograd.grad(h, [p] + params, gh)
    grads_ref = torch.autograd.grad(h_ref, [p_ref] + params_ref, gh)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ["gain", "rot", "dplr", "ablate"])
def test_core_and_layer_ops_gradcheck_and_opcheck_with_coeffs(name, engine):
    params, option = core_case(name, 3)
    params = [t.requires_grad_() for t in params]
    S = torch.rand(8, dtype=torch.float64) + 0.5
    coeffs = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    p = torch.randn(6, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda p, *ps: ops.core(name, p, S, ps, coeffs, option), (p, *params))
    torch.library.opcheck(torch.ops.antipasto_ext.core.default, (name, p, S, params, 1.0, option, coeffs))
    x = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    W, U, Vh = torch.randn(7, 10, dtype=torch.float64), torch.randn(7, 8, dtype=torch.float64), torch.randn(8, 10, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x, *ps: ops.layer(name, x, W, None, U, Vh, S, ps, coeffs, option)[0],
                                    (x, *params))
    torch.library.opcheck(torch.ops.antipasto_ext.layer.default,
                          (name, x, W, None, U, Vh, S, params, 1.0, option, True, coeffs))


def test_block_cayley_with_coeffs_is_one_set_per_coefficient(engine):
    t = (torch.randn(3, 6, dtype=torch.float64) * 0.5).requires_grad_()
    coeffs = torch.tensor([1.0, -1.0, 0.0, 0.3], dtype=torch.float64)
    R = ops.block_cayley(t, 4, 0.5, coeffs)
    assert R.shape == (4, 3, 4, 4)
    for e, c in enumerate(coeffs):
        torch.testing.assert_close(R[e], ops.block_cayley(t, 4, 0.5, float(c)), rtol=0, atol=0)
    torch.testing.assert_close(R[2], torch.eye(4, dtype=torch.float64).expand(3, 4, 4))
    assert torch.autograd.gradcheck(lambda t: ops.block_cayley(t, 4, 0.5, coeffs), (t,))
    torch.library.opcheck(torch.ops.antipasto_ext.block_cayley.default, (t, 4, 0.5, 1.0, coeffs))


def test_ops_refuse_coeffs_that_do_not_split_the_rows():
    params, option = core_case("gain", 0)
    S = torch.rand(8, dtype=torch.float64)
    p = torch.randn(7, 8, dtype=torch.float64)
    with pytest.raises(RuntimeError, match="coeffs has 2 entries"):
        ops.core("gain", p, S, params, torch.ones(2, dtype=torch.float64), option)
    with pytest.raises(RuntimeError, match="coeffs must be a non-empty 1-D"):
        ops.core("gain", p, S, params, torch.ones(7, 1, dtype=torch.float64), option)
    rot_params, rot_option = core_case("rot", 3)
    with pytest.raises(RuntimeError, match="one set per coeffs entry"):
        ops.core("rot", torch.randn(4, 8, dtype=torch.float64), S, rot_params, torch.ones(2, dtype=torch.float64),
                 rot_option)


# ------------------------------------------------------------------------------------------ model API


def test_set_coeff_and_steer_take_a_tensor_and_restore():
    model = nn.Sequential(make("dplr", 24, 20), nn.GELU(), make("rot_V", 20, 20))
    x = torch.randn(3, 24)
    c = torch.tensor([1.0, -1.0, 0.0])
    with torch.no_grad():
        rows = []
        for v in c.tolist():
            ax.set_coeff(model, v)
            rows.append(model(x))
        ax.set_coeff(model, 0.5)
        with ax.steer(model, c):
            assert all(m.coeff is c for m in ax.adapters(model).values())
            y = model(x)
        assert all(m.coeff == 0.5 for m in ax.adapters(model).values())
    for i in range(3):
        torch.testing.assert_close(y[i], rows[i][i], rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph_with_a_coefficient_tensor():
    torch._dynamo.reset()
    model = nn.Sequential(make("antipasto", 24, 20), nn.GELU(), make("rot_V", 20, 20), make("ablate_k3", 20, 20),
                          make("dplr", 20, 12))
    x = torch.randn(4, 3, 24)
    ax.set_coeff(model, torch.tensor([1.0, -1.0, 0.0, 0.5]))
    y = model(x)
    y.square().sum().backward()
    grads = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    yc = compiled(x)
    yc.square().sum().backward()
    torch.testing.assert_close(yc, y)
    for a, b in zip([p.grad for p in model.parameters() if p.requires_grad], grads):
        torch.testing.assert_close(a, b)
    ax.set_coeff(model, torch.tensor([-1.0, 1.0, 0.5, 0.0]))  # a new value, same shape: no recompile needed
    torch.testing.assert_close(compiled(x), model(x))


@pytest.mark.parametrize("bad,match", [
    (torch.ones(2), r"coeff: a tensor of shape \(2,\) fits neither"),
    (torch.ones(3, 4), r"coeff: a tensor of shape \(3, 4\) fits neither"),
    (torch.ones(3, 5, 1), r"coeff: a tensor of shape \(3, 5, 1\) fits neither"),
])
def test_a_coefficient_tensor_that_fits_neither_batch_nor_tokens_is_refused(bad, match):
    m = make("dplr")
    m.coeff = bad
    with pytest.raises(ValueError, match=match):
        m(torch.randn(3, 5, 24))


def test_bad_coefficient_tensors_are_refused_by_name():
    m = make("antipasto")
    with pytest.raises(ValueError, match="coeff: the tensor must be real"):
        m.coeff = torch.ones(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="must not require grad"):
        m.coeff = torch.ones(3, requires_grad=True)
    with pytest.raises(ValueError, match="coeff must be a float or a tensor"):
        m.coeff = "1"
    m.coeff = torch.ones(3, device="meta")
    with pytest.raises(ValueError, match="coeff is on meta but x is on cpu"):
        m(torch.randn(3, 24))
    m.coeff = torch.tensor([1, -1, 0])  # integer coefficients are real
    with torch.no_grad():
        m(torch.randn(3, 24))


def test_merged_layers_and_files_refuse_a_coefficient_tensor(tmp_path):
    model = nn.Sequential(make("dplr"))
    ax.merge(model)
    with pytest.raises(ValueError, match="merged"):
        ax.set_coeff(model, torch.ones(2))
    with pytest.raises(ValueError, match="merged layer folds one coefficient"):
        model[0].coeff = torch.ones(2)
    ax.unmerge(model)
    ax.set_coeff(model, torch.ones(2))
    with pytest.raises(ValueError, match="merge folds one coefficient"):
        ax.merge(model)
    with pytest.raises(ValueError, match="no one coefficient to save"):
        ax.save(model, tmp_path / "a.safetensors")


@pytest.mark.parametrize("device", DEVICES)
def test_steered_rotation_is_reused_until_the_coefficient_tensor_changes(device, monkeypatch):
    m = make("rot_V", device=device)
    calls = []
    real = ops.block_cayley
    monkeypatch.setattr(ops, "block_cayley", lambda *a, **k: calls.append(1) or real(*a, **k))
    c = torch.tensor([1.0, -1.0], device=device)
    m.coeff = c
    x = torch.randn(1, 24, device=device).expand(2, 24)  # equal rows: flipping the coefficients flips the output
    with torch.no_grad():
        y1 = m(x)
        m(x)
        assert len(calls) == 1
        c.mul_(-1)  # in place: a new version of the same tensor
        y2 = m(x)
        assert len(calls) == 2
    torch.testing.assert_close(y2, y1.flip(0), rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ banks


def bank_of(m, n_adapters=3):
    """n_adapters variations of m's trainable parameters (adapter 0: m's own), stacked."""
    raw = m._raw()
    stacked = {n: torch.stack([p.detach()] + [p.detach() + torch.randn_like(p) * 0.3 for _ in range(n_adapters - 1)])
               for n, p in raw.items()}
    return stacked


def with_adapter(m, stacked, a):
    """A copy of m running adapter a of the stack, without a bank."""
    m = copy.deepcopy(m).clear_bank()
    with torch.no_grad():
        for n, t in stacked.items():
            getattr(m, n).copy_(t[a])
    return m


def check_bank_rows(variant, granularity, dtype, device="cpu"):
    """x (4, 3, d_in), adapter per sample [2, 0, 1, 2] (or per token), coeff per sample: output, dx and the bank's
    gradients (each adapter's: the sum over its rows) against the float64 module of each row's adapter at each
    row's float coefficient (on the CPU)."""
    m = make(variant, dtype=dtype)
    stacked = bank_of(m)
    m.set_bank(stacked)
    ref = copy.deepcopy(m).double()
    ref.backend = "eager"
    m.to(device)
    for n in stacked:
        getattr(m, f"bank_{n}").requires_grad_()
    adapter = torch.tensor([2, 0, 1, 2]) if granularity == "sample" else torch.randint(0, 3, (4, 3))
    coeff = torch.tensor([1.0, -1.0, 0.5, 0.0])
    m.adapter, m.coeff = adapter.to(device), coeff.to(device)
    x = torch.randn(4, 3, 24, dtype=dtype)
    g = torch.randn(4, 3, 20, dtype=torch.float64)
    xr = x.detach().clone().to(device).requires_grad_()
    y = m(xr)
    y.backward(g.to(device, y.dtype))
    a_rows = adapter.reshape(4, -1).expand(4, 3).reshape(-1)
    c_rows = coeff[:, None].expand(4, 3).reshape(-1)
    x2, g2 = x.double().reshape(-1, 24), g.reshape(-1, 20)
    stacked64 = {n: t.double() for n, t in stacked.items()}
    models = [with_adapter(ref, stacked64, a) for a in range(3)]
    ys, dxs = [], []
    grads_ref = {n: torch.zeros_like(t) for n, t in stacked64.items()}
    for i in range(12):
        mi = models[int(a_rows[i])]
        mi.coeff = float(c_rows[i])
        yi, dxi, dpi = run(mi, x2[i:i + 1], g2[i:i + 1])
        ys.append(yi)
        dxs.append(dxi)
        for n in grads_ref:
            grads_ref[n][int(a_rows[i])] += dpi[n]
    assert_close(y, torch.cat(ys).reshape(4, 3, 20), dtype, "y")
    assert_close(xr.grad, torch.cat(dxs).reshape(4, 3, 24), dtype, "dx", scale=2)
    for n in grads_ref:
        assert_close(getattr(m, f"bank_{n}").grad, grads_ref[n], dtype, f"d bank_{n}", scale=4)


# Row by row against the float64 module: a coefficient per row (check_rows), and a bank (check_bank_rows).
CHECKS = {"coeff": check_rows, "bank": check_bank_rows}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("granularity", ["sample", "token"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("steering", CHECKS)
def test_each_row_equals_the_module_at_its_coefficient_and_adapter(steering, variant, granularity, dtype, engine):
    CHECKS[steering](variant, granularity, dtype)


@pytest.mark.parametrize("device", DEVICES[1:])  # the CUDA kernels (the CPU engines: the test above)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("granularity", ["sample", "token"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("steering", CHECKS)
def test_each_row_equals_the_module_at_its_coefficient_and_adapter_on_cuda(steering, variant, granularity, dtype,
                                                                           device):
    CHECKS[steering](variant, granularity, dtype, device)


@pytest.mark.parametrize("variant", VARIANTS)
def test_bank_without_an_adapter_runs_adapter_0_and_the_eager_backend_agrees(variant, engine):
    m = make(variant)
    x = torch.randn(3, 2, 24)
    with torch.no_grad():
        y_own = m(x)
        m.set_bank(bank_of(m))
        torch.testing.assert_close(m(x), y_own, rtol=1e-6, atol=1e-6)
        m.adapter, m.coeff = torch.tensor([1, 2, 0]), torch.tensor([0.5, -1.0, 1.0])
        y = m(x)
        m.backend = "eager"
        torch.testing.assert_close(m(x), y, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize("name", ["gain", "rot", "dplr", "ablate"])
def test_core_and_layer_ops_with_a_bank_gradcheck_and_opcheck(name, engine):
    params, option = core_case(name, 4)
    stacked = [torch.stack([t + 0.1 * i * torch.randn_like(t) for i in range(3)]) if (name != "rot" or j == 0) else t
               for j, t in enumerate(params)]
    stacked = [t.detach().requires_grad_() for t in stacked]
    S = torch.rand(8, dtype=torch.float64) + 0.5
    coeffs = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    adapters = torch.tensor([2, 0, 2, 1])
    p = torch.randn(8, 8, dtype=torch.float64, requires_grad=True)
    h = ops.core(name, p, S, stacked, coeffs, option, adapters=adapters)
    for e in range(4):  # group e: adapter adapters[e]'s parameters at coeffs[e]
        ps = [t[adapters[e]] if (name != "rot" or j == 0) else t[e] for j, t in enumerate(stacked)]
        torch.testing.assert_close(h[2 * e:2 * e + 2], ax.reference.core(name, p[2 * e:2 * e + 2], S, ps, coeffs[e], option))
    assert torch.autograd.gradcheck(lambda p, *ps: ops.core(name, p, S, ps, coeffs, option, adapters=adapters),
                                    (p, *stacked))
    torch.library.opcheck(torch.ops.antipasto_ext.core.default, (name, p, S, stacked, 1.0, option, coeffs, adapters))
    x = torch.randn(8, 10, dtype=torch.float64, requires_grad=True)
    W, U, Vh = (torch.randn(*s, dtype=torch.float64) for s in ((7, 10), (7, 8), (8, 10)))
    assert torch.autograd.gradcheck(
        lambda x, *ps: ops.layer(name, x, W, None, U, Vh, S, ps, coeffs, option, adapters=adapters)[0], (x, *stacked))
    torch.library.opcheck(torch.ops.antipasto_ext.layer.default,
                          (name, x, W, None, U, Vh, S, stacked, 1.0, option, True, coeffs, adapters))


def test_block_cayley_with_one_generator_per_set(engine):
    t = (torch.randn(3, 2, 6, dtype=torch.float64) * 0.5).requires_grad_()
    coeffs = torch.tensor([1.0, -0.5, 0.3], dtype=torch.float64)
    R = ops.block_cayley(t, 4, 0.5, coeffs)
    for e in range(3):
        torch.testing.assert_close(R[e], ops.block_cayley(t[e], 4, 0.5, float(coeffs[e])), rtol=0, atol=0)
    assert torch.autograd.gradcheck(lambda t: ops.block_cayley(t, 4, 0.5, coeffs), (t,))
    torch.library.opcheck(torch.ops.antipasto_ext.block_cayley.default, (t, 4, 0.5, 1.0, coeffs))


def test_bad_adapter_indices_are_refused_by_name():
    m = make("dplr")
    with pytest.raises(ValueError, match="adapter: this layer has no bank"):
        m.adapter = torch.tensor([0, 1])
    m.set_bank(bank_of(m))
    with pytest.raises(ValueError, match=r"adapter: index out of the bank's range 0..2"):
        m.adapter = torch.tensor([0, 3])
    with pytest.raises(ValueError, match=r"adapter: index out of the bank's range"):
        m.adapter = torch.tensor([-1])
    with pytest.raises(ValueError, match="adapter: indices must be an integer tensor"):
        m.adapter = torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="adapter: the tensor must be real"):
        m.adapter = torch.tensor([True])
    m.adapter = torch.tensor([0, 1])
    with pytest.raises(ValueError, match=r"adapter: a tensor of shape \(2,\) fits neither"):
        m(torch.randn(3, 24))
    m.adapter = torch.zeros(3, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="adapter is on meta but x is on cpu"):
        m(torch.randn(3, 24))
    with pytest.raises(ValueError, match="bank: merge folds one adapter"):
        m.merge()
    with pytest.raises(ValueError, match=r"bank: A must have shape \(n_adapters, 3, 12\)"):
        m.set_bank({n: t[..., :1] if n == "A" else t for n, t in bank_of(m).items()})
    with pytest.raises(ValueError, match="bank: expected stacked tensors"):
        m.set_bank({"g": torch.zeros(2, 12)})


def test_set_adapter_and_steer_with_an_adapter_restore():
    model = nn.Sequential(make("dplr"), nn.GELU(), make("rot_V", 20, 20))
    with pytest.raises(ValueError, match="have no bank"):
        ax.set_adapter(model, torch.tensor([0]))
    for m in ax.adapters(model).values():
        m.set_bank(bank_of(m, 2))
    x = torch.randn(2, 24)
    with torch.no_grad():
        with ax.steer(model, torch.tensor([1.0, -1.0]), adapter=torch.tensor([1, 0])):
            y = model(x)
            assert all(m.adapter.tolist() == [1, 0] for m in ax.adapters(model).values())
        assert all(m.adapter is None and m.coeff == 1.0 for m in ax.adapters(model).values())
        ax.set_adapter(model, torch.tensor([1, 1]))
        ax.set_coeff(model, 1.0)
        y1 = model(x)
        ax.set_adapter(model, None)
        ax.set_coeff(model, -1.0)
        y0 = model(x)
    torch.testing.assert_close(y[0], y1[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(y[1], y0[1], rtol=1e-5, atol=1e-6)


def test_torch_compile_fullgraph_with_a_bank():
    torch._dynamo.reset()
    model = nn.Sequential(make("antipasto", 24, 20), make("rot_V", 20, 20), make("ablate_k3", 20, 20))
    for m in ax.adapters(model).values():
        m.set_bank(bank_of(m, 2))
    x = torch.randn(4, 3, 24)
    ax.set_coeff(model, torch.tensor([1.0, -1.0, 0.0, 0.5]))
    ax.set_adapter(model, torch.tensor([0, 1, 1, 0]))
    with torch.no_grad():
        y = model(x)
        compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
        torch.testing.assert_close(compiled(x), y)


def tiny_base():
    from collections import OrderedDict
    torch.manual_seed(3)
    return nn.Sequential(OrderedDict(q_proj=nn.Linear(24, 24), act=nn.GELU(), v_proj=nn.Linear(24, 20)))


def trained_file(base, path, variant="dplr", seed=0, calibrate=False, **kw):
    model = copy.deepcopy(base)
    ax.attach(model, variant, targets=r"(q|v)_proj$", r=8, progress=False, **kw)
    if calibrate:
        ax.calibrate(model, [torch.randn(64, 24)], progress=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in ax.adapters(model).values():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.3 * torch.randn(p.shape, generator=g))
    ax.save(model, path)
    return model


@pytest.mark.parametrize("variant", ["dplr", "rot", "ablate"])
def test_a_bank_round_trips_from_files(variant, tmp_path):
    base = tiny_base()
    kw = ax.variants.VARIANTS[variant].demo
    models = [trained_file(base, tmp_path / f"{i}.safetensors", variant, seed=i, **kw) for i in range(3)]
    bank = copy.deepcopy(base)
    loaded = ax.load(bank, [tmp_path / f"{i}.safetensors" for i in range(3)], progress=False)
    assert sorted(loaded) == ["q_proj", "v_proj"] and all(m.bank_size == 3 for m in ax.adapters(bank).values())
    x = torch.randn(4, 5, 24)
    adapter, coeff = torch.tensor([2, 0, 1, 2]), torch.tensor([1.0, -1.0, 0.5, 1.0])
    with torch.no_grad(), ax.steer(bank, coeff, adapter=adapter):
        y = bank(x)
    for b in range(4):
        with torch.no_grad(), ax.steer(models[int(adapter[b])], float(coeff[b])):
            torch.testing.assert_close(y[b], models[int(adapter[b])](x[b]), rtol=1e-5, atol=1e-5)


def test_a_bank_refuses_files_that_differ(tmp_path):
    base = tiny_base()
    trained_file(base, tmp_path / "a.safetensors")
    trained_file(base, tmp_path / "rot.safetensors", "rot", block_size=4)
    trained_file(base, tmp_path / "k4.safetensors", lora_rank=4)
    trained_file(base, tmp_path / "calibrated.safetensors", calibrate=True)
    merged = trained_file(base, tmp_path / "unused.safetensors")
    ax.merge(merged)
    ax.save(merged, tmp_path / "merged.safetensors")
    fresh = copy.deepcopy(base)
    for other, match in [("rot", "layer '(q|v)_proj': variant 'rot' differs"),
                         ("k4", "layer '(q|v)_proj': kwargs .* differs"),
                         ("calibrated", "its basis differs .*layer '(q|v)_proj': bases differ"),
                         ("merged", "layer '(q|v)_proj' is merged")]:
        with pytest.raises(ValueError, match=f"{other}.safetensors: .*{match}"):
            ax.load(fresh, [tmp_path / "a.safetensors", tmp_path / f"{other}.safetensors"], progress=False)
    assert not any(isinstance(m, ax.variants.SVDAdapter) for m in fresh.modules())  # the model was not touched
