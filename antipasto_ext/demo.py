"""python -m antipasto_ext.demo: every variant on a realistic layer, checked against the eager
reference, trained a few steps on a toy steering objective, timed eager vs ext."""
import argparse
import copy
import statistics
import time

import torch
from torch import nn

import antipasto_ext as ax

# (research name, class, kwargs) of every variant
VARIANTS = [(ax.variants.research_name(v.name), v.cls, v.demo) for v in ax.variants.VARIANTS.values()]


def step_ms(module, x, target, steps, warmup=2):
    """Median ms of one training step (forward, loss, backward, Adam update) over ``steps`` timed steps, after
    ``warmup`` untimed steps on a copy: the first steps of a process pay one-off costs (allocator growth,
    lazy initialisation of the BLAS and of autograd) that would land on whichever row runs first."""
    trial = copy.deepcopy(module)
    for m, n, timed in ((trial, warmup, False), (module, steps, True)):
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-2)
        losses, times = [], []
        for _ in range(n):
            t0 = time.perf_counter()
            loss = (m(x) - target).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            times.append((time.perf_counter() - t0) * 1e3)
            losses.append(loss.item())
    return statistics.median(times), losses[0], losses[-1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--d-in", type=int, default=1024)
    parser.add_argument("--d-out", type=int, default=2048)
    parser.add_argument("-r", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    info = ax.build_info()
    if not info["cpu"]:
        raise SystemExit(f"antipasto_ext demo: the extension is not loaded, nothing to compare: {info['error']}")
    device = torch.device(args.device)
    print(f"antipasto_ext demo | torch {info['torch']} | device {device} | extension built with "
          f"CPU={info['cpu']} CUDA={info['cuda']} ({info['cuda_archs'] or '-'}) emulation={info['emulation']}")
    lin = nn.Linear(args.d_in, args.d_out, device=device)
    x = torch.randn(args.tokens, args.d_in, device=device)
    x_cal = torch.randn(4 * args.r, args.d_in, device=device)
    header = f"{'variant':18} {'backend':7} {'params':>7} {'max err vs ref':>14} {'loss before':>12} {'loss after':>11} " \
             f"{'eager ms/step':>13} {'ext ms/step':>11}"
    print(header)
    print("-" * len(header))
    for name, cls, kw in VARIANTS:
        m = cls.from_linear(lin, r=args.r, **kw)
        if name == "antipasto_corda":
            m.calibrate(x_cal)
        # a reachable toy objective: the output of the same adapter with a moved core, at coeff 1
        teacher = copy.deepcopy(m)
        with torch.no_grad():
            for p in teacher.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.2)
            target = teacher(x)
        backend = m.backend  # "ext" where the extension has kernels for this device
        with torch.no_grad():
            m.backend = "eager"
            ref = m(x)
            m.backend = backend
            err = (m(x) - ref).abs().max().item()
        timings = {}
        for b in ("eager", backend):
            trial = copy.deepcopy(m)
            trial.backend = b
            timings[b] = step_ms(trial, x, target, args.steps)
        ext_ms, before, after = timings[backend]
        n_params = sum(p.numel() for p in m.parameters() if p.requires_grad)
        print(f"{name:18} {backend:7} {n_params:7d} {err:14.2e} {before:12.4e} {after:11.4e} "
              f"{timings['eager'][0]:13.2f} {ext_ms:11.2f}")
    print(f"layer {args.d_in}->{args.d_out}, r={args.r}, {args.tokens} tokens, median of {args.steps} Adam steps "
          "after 2 untimed ones on a copy; 'ext' = antipasto_ext kernels, 'eager' = the plain-PyTorch reference")


if __name__ == "__main__":
    main()
