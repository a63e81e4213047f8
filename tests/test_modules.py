"""The five variant modules: parity of every backend with the float64 reference (forward, grad of x and
of every trainable parameter), identity at init / coeff 0, calibration, training, compile, bad input."""
import copy

import pytest
import torch
from torch import nn

import antipasto_ext as ax
from conftest import DEVICES, ENGINES, assert_close

# every example configuration of the registry: name -> (class, kwargs)
VARIANTS = {ex: (ax.variants.VARIANTS[v].cls, kw) for ex, (v, kw) in ax.variants.EXAMPLES.items()}
# (d_in, d_out, r, leading shape of x)
SHAPES = [(24, 20, 12, (7,)), (37, 29, 20, (2, 3)), (16, 40, 16, (1, 2, 5))]
IDENTITY_AT_INIT = {ex for ex, (v, _) in ax.variants.EXAMPLES.items() if ax.variants.VARIANTS[v].identity_at_init}


def make(variant, d_in, d_out, r, dtype=torch.float32, device="cpu", perturb=True):
    cls, kw = VARIANTS[variant]
    lin = nn.Linear(d_in, d_out).to(device=device, dtype=dtype)
    m = cls.from_linear(lin, r=r, **kw)
    if perturb:  # move the core away from init so every term of the forward and backward matters
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.3)
    return lin, m


def trainable(m):
    return {n: p for n, p in m.named_parameters() if p.requires_grad}


def run(m, x, grad_out):
    x = x.detach().clone().requires_grad_()
    m.zero_grad()
    y = m(x)
    y.backward(grad_out.to(y.dtype))
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in trainable(m).items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
# the eager backend runs no extension kernel, so one engine covers it
@pytest.mark.parametrize("backend,engine_name", [("ext", e) for e in ENGINES] + [("eager", "native")])
@pytest.mark.parametrize("variant", VARIANTS)
def test_module_matches_float64_reference(variant, backend, engine_name, shape, dtype, device, monkeypatch):
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", engine_name)
    d_in, d_out, r, lead = shape
    _, m = make(variant, d_in, d_out, r, dtype, device)
    m.coeff = 0.8
    ref = copy.deepcopy(m).double()
    ref.backend = "eager"
    m.backend = backend
    x = torch.randn(*lead, d_in, device=device, dtype=dtype)
    g = torch.randn(*lead, d_out, device=device, dtype=dtype).double()
    y, dx, dparams = run(m, x, g)
    y_ref, dx_ref, dparams_ref = run(ref, x.double(), g)
    assert y.dtype == dtype and y.shape == (*lead, d_out)
    # the float64 reference sees the same (rounded) basis; what differs is the rounding of the compute dtype
    assert_close(y, y_ref, dtype, "out", scale=2)
    assert_close(dx, dx_ref, dtype, "grad x", scale=2)
    assert dparams.keys() == dparams_ref.keys() and dparams
    # A parameter gradient is a sum over tokens that can cancel to far below its terms (ablate's alpha), and
    # the module rounds p = x Vh^T to its dtype before the core: judge the parameter gradients together,
    # relative to the largest (test_ops checks each one on identical inputs).
    flat = lambda d: torch.cat([d[n].double().flatten() for n in sorted(d)])  # noqa: E731
    assert_close(flat(dparams), flat(dparams_ref), dtype, "grad of the trainable parameters", scale=8)


@pytest.mark.parametrize("variant", VARIANTS)
def test_identity_at_init_and_at_coeff_zero(variant, engine):
    lin, m = make(variant, 33, 21, 12, perturb=False)
    x = torch.randn(4, 33)
    if variant in IDENTITY_AT_INIT:
        torch.testing.assert_close(m(x), lin(x), atol=2e-5, rtol=1e-5)
    with torch.no_grad():
        for p in trainable(m).values():
            p.add_(torch.randn_like(p))
        if hasattr(m, "alpha"):
            m.alpha.fill_(0.5)  # inside the clamp, so coeff != 0 must change the output
        if getattr(m, "suppress_only", False):
            m.g.copy_(-m.g.abs())  # suppress_only ignores g > 0: all-positive g (p = 2^-12) would be the identity
    m.coeff = 0.0
    torch.testing.assert_close(m(x), lin(x), atol=2e-5, rtol=1e-5)
    m.coeff = -1.0
    assert not torch.allclose(m(x), lin(x), atol=1e-3)


@pytest.mark.parametrize("variant", VARIANTS)
def test_frozen_split_and_public_attributes(variant):
    lin, m = make(variant, 30, 18, 12, dtype=torch.bfloat16, perturb=False)
    basis = m.P if variant == "corda" else m.Vh
    assert m.U.dtype == basis.dtype == m.weight.dtype == torch.bfloat16  # stored once in the compute dtype
    assert m.S.dtype == torch.float32 and m.S.shape == (12,)
    assert (m.in_features, m.out_features, m.r) == (30, 18, 12)
    assert not m.weight.requires_grad and not m.bias.requires_grad
    assert torch.equal(m.bias, lin.bias)
    W = m.weight.float() + (m.U.float() * m.S) @ basis.float()
    torch.testing.assert_close(W, lin.weight.float(), atol=2e-2, rtol=0)
    names = set(trainable(m))
    expected = {"antipasto": {"g"}, "rot": {"delta_s", "rot_T"}, "ablate": {"c", "alpha"}, "corda": {"g"},
                "dplr": {"g", "A", "B"}}[variant.split("_")[0]]
    if variant == "rot_none":
        expected = {"delta_s"}
    assert names == expected


@pytest.mark.parametrize("cls,kw", [(ax.AntiPaSTOLinear, {}), (ax.DPLRLinear, {"lora_rank": 2}), (ax.CorDALinear, {})],
                         ids=["antipasto", "dplr", "corda"])
def test_suppress_only_gain_leaves_its_zero_init(cls, kw, monkeypatch):
    """g' = min(g, 0) passes the gradient at g == 0 (the init) on every backend: a negative step is allowed."""
    m = cls.from_linear(nn.Linear(12, 10), r=6, suppress_only=True, **kw)
    x = torch.randn(5, 12)
    grads = {}
    for backend, engine_name in [("ext", "native"), ("ext", "cuda-emulated"), ("eager", "native")]:
        m.backend = backend
        monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", engine_name)
        m.zero_grad()
        m(x).pow(2).sum().backward()
        grads[(backend, engine_name)] = m.g.grad.clone()
    ref = grads[("eager", "native")]
    assert ref.abs().max() > 0, "the eager reference passes no gradient to g at its init"
    for key, grad in grads.items():
        torch.testing.assert_close(grad, ref, rtol=1e-5, atol=1e-6, msg=f"{key}")


def test_inits_follow_the_spec():
    _, rot = make("rot_V", 64, 64, 64, perturb=False)
    assert torch.equal(rot.rot_T, torch.zeros(16, 6))
    assert abs(rot.delta_s.mean().item() - 4e-4) < 2e-4 and abs(rot.delta_s.std().item() - 4e-4) < 2e-4
    _, abl = make("ablate_k3", 64, 64, 64, perturb=False)
    assert torch.equal(abl.alpha, torch.full((3,), 0.05))
    assert abs(abl.c.std().item() - 64 ** -0.5) < 0.03
    _, dplr = make("dplr", 64, 64, 64, perturb=False)
    assert torch.equal(dplr.B, torch.zeros(64, 3)) and torch.equal(dplr.g, torch.zeros(64)) and dplr.A.abs().sum() > 0


@pytest.mark.parametrize("variant", ["antipasto", "rot_V", "ablate", "corda", "dplr"])
def test_training_lowers_the_loss(variant, engine):
    lin, m = make(variant, 32, 24, 16, perturb=False)
    target = copy.deepcopy(m)  # a reachable target: the same adapter with a moved core
    with torch.no_grad():
        if hasattr(target, "alpha"):
            # ablate: same directions, stronger ablation. (A target along other directions can drive alpha
            # below 0 first, where the clamp stops its gradient for good: a property of SPEC §3, not a bug.)
            target.alpha.fill_(0.6)
        else:
            for p in trainable(target).values():
                p.add_(torch.randn_like(p) * 0.5)
    x = torch.randn(64, 32)
    opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=3e-2)
    losses = []
    for _ in range(30):
        loss = (m(x) - target(x).detach()).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    assert m.weight.grad is None and m.U.grad is None  # the frozen residual gets no gradient


@pytest.mark.parametrize("variant", VARIANTS)
def test_state_dict_round_trip(variant):
    _, m = make(variant, 20, 16, 8)
    x = torch.randn(3, 20)
    fresh = make(variant, 20, 16, 8)[1]
    fresh.load_state_dict(m.state_dict())
    fresh.coeff = m.coeff
    assert torch.equal(fresh(x), m(x))


def test_non_contiguous_and_strided_x_work(engine):
    _, m = make("dplr", 24, 20, 12)
    x = torch.randn(24, 10).t()  # non-contiguous
    torch.testing.assert_close(m(x), m(x.contiguous()))
    xs = torch.randn(10, 48)[:, ::2]  # strided
    torch.testing.assert_close(m(xs), m(xs.contiguous()))


def test_torch_compile_fullgraph_no_graph_break():
    torch._dynamo.reset()
    model = nn.Sequential(
        make("antipasto", 16, 24, 8)[1], nn.GELU(), make("rot_V", 24, 24, 8)[1], nn.GELU(),
        make("ablate_k3", 24, 20, 8)[1], make("corda", 20, 20, 8)[1], make("dplr", 20, 12, 8)[1])
    x = torch.randn(5, 16)
    y_eager = model(x)
    y_eager.sum().backward()
    grads_eager = [p.grad.clone() for p in model.parameters() if p.requires_grad]
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    y = compiled(x)
    y.sum().backward()
    torch.testing.assert_close(y, y_eager)
    for g, ge in zip([p.grad for p in model.parameters() if p.requires_grad], grads_eager):
        torch.testing.assert_close(g, ge)


@pytest.mark.parametrize("variant", ["antipasto", "rot_V", "dplr"])
def test_calibrate_selects_high_energy_directions(variant):
    lin, m = make(variant, 32, 32, 4, perturb=False)
    # inputs live on the 4 weakest right singular directions of W, with enough energy to outscore the top ones
    _, S_f, Vh_f = torch.linalg.svd(lin.weight.detach())
    weak = Vh_f[-4:]
    x = torch.randn(500, 4) * (10 * S_f[0] / S_f[-4:]) @ weak
    assert (x @ m.Vh.T).square().sum() < 1e-6 * x.square().sum()  # the top-4 basis does not see them
    m.calibrate([x[:200], x[200:]])
    torch.testing.assert_close((m.Vh @ weak.T).abs().sum(0), torch.ones(4), atol=1e-4, rtol=0)  # same subspace
    torch.testing.assert_close(m.weight + (m.U * m.S) @ m.Vh, lin.weight, atol=1e-5, rtol=0)
    if variant != "rot_V":  # rot is not the identity at init (delta_s)
        # x W^T cancels heavily here (x lives on W's weakest directions): fp32 rounding scales with sum |W| |x|
        cancel_scale = (x.abs() @ lin.weight.detach().abs().T).max().item()
        torch.testing.assert_close(m(x), lin(x), atol=1e-5 * cancel_scale, rtol=1e-4)


def test_corda_calibration_builds_covariance_basis():
    lin, m = make("corda", 24, 16, 6, perturb=False)
    x = torch.randn(400, 24) * torch.linspace(0.1, 3, 24)
    m.calibrate(x)
    torch.testing.assert_close(m.weight + (m.U * m.S) @ m.P, lin.weight, atol=1e-5, rtol=0)
    torch.testing.assert_close(m(x), lin(x), atol=1e-4, rtol=1e-4)  # still identity
    # U orthonormal; P C^{1/2} has orthonormal rows
    torch.testing.assert_close(m.U.T @ m.U, torch.eye(6), atol=1e-5, rtol=0)
    C = x.T @ x / 400
    lam, Q = torch.linalg.eigh(C)
    C_half = (Q * (lam + 1e-3).sqrt()) @ Q.T
    torch.testing.assert_close((m.P @ C_half) @ (m.P @ C_half).T, torch.eye(6), atol=1e-3, rtol=0)


def test_calibration_errors():
    _, m = make("corda", 16, 16, 4, perturb=False)
    bad = torch.randn(10, 16)
    bad[3, 2] = float("nan")
    with pytest.raises(ValueError, match="finite"):
        m.calibrate(bad)
    _, d = make("dplr", 16, 16, 8, perturb=False)
    with pytest.raises(ValueError, match="at least r=8 tokens"):
        d.calibrate(torch.randn(5, 16))
    with torch.no_grad():
        d.g.add_(1.0)
    with pytest.raises(RuntimeError, match="moved from their init"):
        d.calibrate(torch.randn(50, 16))


def test_bad_construction_arguments_name_the_argument():
    lin = nn.Linear(16, 12)
    for r in (0, 13, -1):
        with pytest.raises(ValueError, match="r must be"):
            ax.AntiPaSTOLinear.from_linear(lin, r=r)
    with pytest.raises(ValueError, match="block_size=3 must divide r=8"):
        ax.RotLinear.from_linear(lin, r=8, block_size=3)
    with pytest.raises(ValueError, match="block_size must be"):
        ax.RotLinear.from_linear(lin, r=8, block_size=1)
    with pytest.raises(ValueError, match="lora_rank must be"):
        ax.DPLRLinear.from_linear(lin, r=8, lora_rank=9)
    with pytest.raises(ValueError, match="lora_rank must be"):
        ax.DPLRLinear.from_linear(lin, r=8, lora_rank=0)
    with pytest.raises(ValueError, match="k must be"):
        ax.AblateLinear.from_linear(lin, r=8, k=9)
    with pytest.raises(ValueError, match="rotate_basis"):
        ax.RotLinear.from_linear(lin, r=8, rotate_basis="W")
    with pytest.raises(TypeError, match="linear must be an nn.Linear"):
        ax.AntiPaSTOLinear.from_linear(nn.Conv1d(3, 3, 1), r=2)


def test_bad_forward_input_names_the_argument():
    _, m = make("dplr", 16, 12, 8)
    with pytest.raises(ValueError, match="in_features=16"):
        m(torch.randn(3, 15))
    with pytest.raises(ValueError, match="dtype"):
        m(torch.randn(3, 16, dtype=torch.float64))
    with pytest.raises(ValueError, match="coeff must be finite"):
        m.coeff = float("nan")
    with pytest.raises(ValueError, match="backend must be"):
        m.backend = "triton"
    if torch.cuda.is_available():
        with pytest.raises(ValueError, match="is on cuda"):
            m(torch.randn(3, 16, device="cuda"))


def test_meta_device_input_is_rejected_by_name():
    _, m = make("antipasto", 16, 12, 8)
    with pytest.raises(ValueError, match="x is on meta"):
        m(torch.randn(3, 16, device="meta"))


def test_autocast_bf16_on_cpu(engine):
    lin, m = make("dplr", 32, 24, 16)
    x = torch.randn(6, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = m(x)
    assert y.dtype == torch.bfloat16
    m.backend = "eager"
    torch.testing.assert_close(y.float(), m(x), atol=0.1, rtol=0.05)


def test_rotation_reused_without_autograd_until_rot_T_or_coeff_changes(monkeypatch):
    """Decode / eval forwards reuse R (no Cayley solve per token); anything that changes R recomputes it."""
    from antipasto_ext import ops
    _, m = make("rot_V", 24, 20, 12)
    calls = []
    real = ops.block_cayley
    monkeypatch.setattr(ops, "block_cayley", lambda *a, **k: calls.append(1) or real(*a, **k))
    x = torch.randn(3, 24)

    def fresh():  # what the layer computes with R recomputed now
        return m._eager(x, m.coeff)

    with torch.no_grad():
        y1 = m(x)
        m(x)
        assert len(calls) == 1
        torch.testing.assert_close(y1, fresh(), atol=1e-5, rtol=1e-5)
        m.rot_T.add_(0.2)  # an optimizer step, in place: the version changes
        torch.testing.assert_close(m(x), fresh(), atol=1e-5, rtol=1e-5)
        assert len(calls) == 2
        m.coeff = -0.5
        torch.testing.assert_close(m(x), fresh(), atol=1e-5, rtol=1e-5)
        m.load_state_dict({**m.state_dict(), "rot_T": torch.randn_like(m.rot_T)})
        torch.testing.assert_close(m(x), fresh(), atol=1e-5, rtol=1e-5)
        assert len(calls) == 4
    m(x).sum().backward()  # with autograd: recomputed on the graph, and rot_T gets its gradient
    assert len(calls) == 5 and m.rot_T.grad is not None
