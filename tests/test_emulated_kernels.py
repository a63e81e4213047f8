"""The CUDA kernel source (csrc/kernels/*.cuh) run on the CPU through the emulation of the CUDA
execution model (ANTIPASTO_EXT_ENGINE=cuda-emulated), against the float64 eager reference.

What the shapes exercise in the kernels (csrc/kernels/launchers.cuh, cores.cuh, cayley.cuh):
  * row counts that are not a multiple of any tile (7, 11, 33, 37), one row, zero rows;
  * r not a multiple of the 256-thread CTA or of a warp (12, 20, 36, 48);
  * backward reductions over several CTAs (n > 16 rows: CTA c owns rows [16c, 16c + 16) or more),
    several row tiles inside one CTA (wide r: the shared-memory tile holds fewer rows than the
    CTA's chunk), and small parameters too big to stage in shared memory (read from global);
  * the block Cayley register path (block size <= 8, one thread per block) and the shared-memory
    path (block size > 8, one CTA per block).
The emulator runs blocks in a seeded random order and the threads of a block in a seeded random
order between barriers; results must not depend on the seed (AX_EMU_SEED).

Tolerances: relative error max|err| / max|ref| against float64, per activation dtype, for h and dp
(rounded once to the activation dtype) and for the parameter gradients (float32 sums of products
of the rounded activations, float64 for float64).
"""
import math
import os

import pytest
import torch

import antipasto_ext as ax
from antipasto_ext import ops, reference

pytestmark = pytest.mark.skipif(not ax.build_info().get("emulation"),
                                reason="antipasto_ext was built without the CUDA emulation engine")

E = torch.ops.antipasto_ext
DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
# activations (h, dp): one rounding to the dtype; parameter gradients: accumulation in float32 / float64
TOL_ACT = {torch.float64: 1e-12, torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}
TOL_PARAM = {torch.float64: 1e-12, torch.float32: 2e-5, torch.bfloat16: 2e-5, torch.float16: 2e-5}
CORES = ["gain", "gain_suppress", "dplr", "rot_V", "rot_U", "rot_none", "ablate"]
# (leading shape of p, r, rot block size, k)
SHAPES = [((7,), 12, 3, 2), ((2, 5), 20, 4, 3), ((3, 11), 36, 2, 5), ((37,), 48, 16, 4), ((1,), 8, 8, 1),
          ((70,), 20, 5, 3)]


@pytest.fixture
def emulated(monkeypatch):
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", "cuda-emulated")


def rel_err(a, ref):
    a, ref = a.detach().double(), ref.detach().double()
    if ref.numel() == 0:
        return 0.0
    return ((a - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def core_case(core, r, bs, k, gen):
    """(op, reference, params (float64), scalars) of one core; parameters random, away from init."""
    kw = dict(dtype=torch.float64)
    S = torch.rand(r, generator=gen, **kw) * 3 + 0.1
    rnd = lambda *s: torch.randn(*s, generator=gen, **kw)  # noqa: E731
    if core in ("gain", "gain_suppress"):
        sup = core == "gain_suppress"
        return ops.gain_core, reference.gain_core, dict(S=S, g=rnd(r)), dict(coeff=-1.3 if sup else 0.7,
                                                                            suppress_only=sup)
    if core == "dplr":
        return ops.dplr_core, reference.dplr_core, dict(S=S, g=rnd(r), A=rnd(k, r), B=rnd(r, k)), dict(coeff=0.9)
    if core.startswith("rot"):
        side = core.split("_")[1]
        R = reference.cayley_blocks(rnd(r // bs, bs * (bs - 1) // 2), bs, 0.5, 1.0) if side != "none" else S.new_empty(0)
        return ops.rot_core, reference.rot_core, dict(S=S, delta_s=rnd(r), R=R), dict(
            coeff={"V": 0.8, "U": -0.6, "none": 1.1}[side], rotate_basis=side)
    C = torch.linalg.qr(rnd(r, k))[0]
    return ops.ablate_core, reference.ablate_core, dict(S=S, C=C, a=torch.rand(k, generator=gen, **kw)), dict(coeff=0.8)


def run_core(core, lead, r, bs, k, dtype, seed=0):
    """Forward + backward of one core through the ops (whatever engine is set) and through the float64
    reference; returns ({name: (value, reference)}, trainable param names)."""
    gen = torch.Generator().manual_seed(seed)
    fn, ref_fn, params, scalars = core_case(core, r, bs, k, gen)
    p = torch.randn(*lead, r, generator=gen, dtype=torch.float64).to(dtype).requires_grad_()
    p_ref = p.detach().double().requires_grad_()
    pdt = torch.promote_types(dtype, torch.float32)  # parameters in float32 (float64 for float64 p)
    train = {n: t.to(pdt).requires_grad_() for n, t in params.items() if n != "S" and t.numel()}
    train_ref = {n: t.detach().double().requires_grad_() for n, t in train.items()}
    h = fn(p, **{**params, "S": params["S"].to(pdt), **train}, **scalars)
    h_ref = ref_fn(p_ref, **{**params, **train_ref}, **scalars)
    assert h.dtype == dtype and h.shape == p.shape
    grad = torch.randn(h.shape, generator=gen, dtype=torch.float64).to(dtype)
    h.backward(grad)
    h_ref.backward(grad.double())
    out = {"h": (h, h_ref), "p": (p.grad, p_ref.grad)}
    for n in train:
        assert train[n].grad.dtype == train[n].dtype
        out[n] = (train[n].grad, train_ref[n].grad)
    return out


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("core", CORES)
def test_core_matches_float64_reference(core, shape, dtype, emulated):
    lead, r, bs, k = shape
    for name, (v, ref) in run_core(core, lead, r, bs, k, dtype).items():
        tol = TOL_ACT[dtype] if name in ("h", "p") else TOL_PARAM[dtype]
        err = rel_err(v, ref)
        assert err <= tol, f"{core} {name}: relative error {err:.3g} > {tol:.3g} ({dtype}, shape {shape})"


# Wide r: the backward tile holds fewer rows than a CTA's chunk (several tiles per CTA) and the
# rotation blocks / low-rank factors do not fit in shared memory next to a useful tile.
WIDE = [("rot_V", (40,), 384, 32, 1), ("rot_U", (40,), 384, 4, 1), ("dplr", (45,), 96, 4, 64),
        ("ablate", (33,), 640, 4, 20), ("gain", (21,), 3000, 4, 1)]


@pytest.mark.parametrize("core,lead,r,bs,k", WIDE)
def test_wide_cores_several_tiles_and_unstaged_params(core, lead, r, bs, k, emulated):
    for name, (v, ref) in run_core(core, lead, r, bs, k, torch.float32).items():
        err = rel_err(v, ref)
        assert err <= 5e-5, f"{core} {name}: relative error {err:.3g}"


# The low-rank cores' CPU kernels use their own SIMD-friendly summation order (csrc/cpu/kernels.cpp), so
# only the diagonal and rotation cores still share the CUDA kernels' arithmetic expression for expression.
SAME_ARITHMETIC = [c for c in CORES if not c.startswith(("dplr", "ablate"))]


@pytest.mark.parametrize("core", SAME_ARITHMETIC)
def test_bit_identical_to_cpu_kernels(core, monkeypatch):
    """These kernels mirror the C++ CPU kernels' arithmetic (same expressions, same row chunks, same
    summation order) and the emulator compiles without FMA contraction, so results agree bit for bit."""
    for dtype in (torch.float32, torch.bfloat16, torch.float64):
        runs = {}
        for engine in ("native", "cuda-emulated"):
            monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", engine)
            runs[engine] = run_core(core, (150,), 20, 4, 3, dtype, seed=3)
        for name in runs["native"]:
            a, b = runs["native"][name][0], runs["cuda-emulated"][name][0]
            assert torch.equal(a, b), f"{core} {name} ({dtype}): max diff {(a.double() - b.double()).abs().max()}"


@pytest.mark.parametrize("core", ["gain", "dplr", "rot_V", "rot_U", "ablate"])
def test_same_bits_for_any_schedule(core, monkeypatch):
    """Parameter gradients come from a two-stage reduction in a fixed order: the same bits for every
    block order / thread interleaving the emulator picks (AX_EMU_SEED) and run to run."""
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", "cuda-emulated")
    results = []
    for seed in ("1", "2", "12345", "1"):
        monkeypatch.setenv("AX_EMU_SEED", seed)
        results.append(run_core(core, (300,), 36, 4, 3, torch.float32, seed=7))
    for res in results[1:]:
        for name in res:
            assert torch.equal(res[name][0], results[0][name][0]), f"{core} {name} depends on the schedule"


@pytest.mark.parametrize("core", CORES)
def test_zero_rows(core, emulated):
    out = run_core(core, (0,), 12, 3, 2, torch.float32)
    assert out["h"][0].shape == (0, 12)
    for name, (v, ref) in out.items():
        assert v.shape == ref.shape and torch.count_nonzero(v) == 0, name


def test_non_contiguous_activation(emulated):
    p = torch.randn(12, 9).t().requires_grad_()  # (9, 12), strides (1, 9)
    S, g = torch.rand(12) + 0.5, torch.randn(12, requires_grad=True)
    h = ops.gain_core(p, S, g, 0.6)
    h_ref = reference.gain_core(p.detach().double(), S.double(), g.detach().double(), 0.6)
    assert rel_err(h, h_ref) < 1e-6
    h.sum().backward()
    assert rel_err(p.grad, reference.gain_scale(S.double(), g.detach().double(), 0.6, False).expand(9, 12)) < 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
@pytest.mark.parametrize("bs", [2, 3, 4, 5, 7, 8, 9, 16, 32, 64])
def test_block_cayley_both_paths(bs, dtype, emulated):
    """bs <= 8: one thread per Cayley block in registers; bs > 8: one CTA per block in shared memory."""
    gen = torch.Generator().manual_seed(bs)
    n = 3 if bs > 16 else 70  # 70 blocks: two CTAs of the register path
    t64 = torch.randn(n, bs * (bs - 1) // 2, generator=gen, dtype=torch.float64) * 2
    rot_T = t64.to(dtype).requires_grad_()
    ref_T = rot_T.detach().double().requires_grad_()
    tol = 1e-12 if dtype == torch.float64 else 2e-5 * max(1, bs / 8)
    for coeff in (1.0, -0.7):
        R = ops.block_cayley(rot_T, bs, 0.5, coeff)
        R_ref = reference.cayley_blocks(ref_T, bs, 0.5, coeff)
        assert R.dtype == dtype
        # R is computed in float32 (float64) and rounded once to rot_T's dtype
        assert rel_err(R, R_ref) <= (4e-3 if dtype == torch.bfloat16 else tol)
        if dtype != torch.bfloat16:
            eye = torch.eye(bs, dtype=torch.float64)
            assert (R.double().transpose(-1, -2) @ R.double() - eye).abs().max() < 10 * tol
        G = torch.randn(R_ref.shape, generator=gen, dtype=torch.float64).to(dtype)
        (g,) = torch.autograd.grad(R, rot_T, G)
        (g_ref,) = torch.autograd.grad(R_ref, ref_T, G.double())
        assert g.dtype == dtype
        assert rel_err(g, g_ref) <= (8e-3 if dtype == torch.bfloat16 else 10 * tol), f"grad rot_T bs={bs}"


@pytest.mark.parametrize("bs", [4, 8, 12, 40])
def test_block_cayley_edge_values(bs, emulated):
    t = torch.randn(5, bs * (bs - 1) // 2)
    assert torch.equal(ops.block_cayley(t, bs, 0.5, 0.0), torch.eye(bs).expand(5, bs, bs))  # coeff 0: exactly I
    R = ops.block_cayley(torch.full((2, bs * (bs - 1) // 2), 1e6), bs, 0.5, 1.0)  # clamped, still orthogonal
    assert torch.isfinite(R).all()
    assert (R.transpose(-1, -2) @ R - torch.eye(bs)).abs().max() < 1e-4
    assert ops.block_cayley(t[:0], bs, 0.5, 1.0).shape == (0, bs, bs)  # no blocks, no launch


def test_block_cayley_grad_bit_identical_to_cpu(monkeypatch):
    for bs in (3, 8, 9, 24):
        t = torch.randn(6, bs * (bs - 1) // 2, dtype=torch.float64)
        G = torch.randn(6, bs, bs, dtype=torch.float64)
        res = []
        for engine in ("native", "cuda-emulated"):
            monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", engine)
            R = E.block_cayley(t, bs, 0.4, 0.9)
            res.append((R, E.block_cayley_backward(G, R, t, bs, 0.4, 0.9)))
        assert torch.equal(res[0][0], res[1][0]) and torch.equal(res[0][1], res[1][1]), bs


def test_engine_variable_is_checked(monkeypatch):
    p, S, g = torch.randn(3, 4), torch.rand(4), torch.randn(4)
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", "cuda_emulated")  # a typo is an error, not a silent fallback
    with pytest.raises(RuntimeError, match="ANTIPASTO_EXT_ENGINE"):
        ops.gain_core(p, S, g)
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", "native")
    ops.gain_core(p, S, g)
    monkeypatch.setenv("ANTIPASTO_EXT_ENGINE", "")
    ops.gain_core(p, S, g)


def test_too_wide_for_shared_memory_is_a_clear_error(emulated):
    r = 4096  # rot backward stages 3 float rows of r per tile row: > 48 KiB for one row
    R = torch.eye(2).expand(r // 2, 2, 2).contiguous()
    with pytest.raises((ValueError, RuntimeError), match="too wide"):
        E.core_backward("rot", torch.randn(2, r), torch.randn(2, r), torch.rand(r), [torch.rand(r), R], 1.0, 1)
