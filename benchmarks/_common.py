"""What the benchmark scripts share: machine header, interleaved timing with median/IQR, peak memory,
profiler summaries (ops per call, host synchronisations, top ops, Chrome trace), the roofline cost
model, layer shapes, module builders for our variants and the PEFT peers, and the Markdown/CSV writers.

Run the scripts from the repository root (or anywhere: they put the repository on sys.path).
"""
from __future__ import annotations

import copy
import csv
import dataclasses
import datetime
import io
import math
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
RESULTS = Path(__file__).resolve().parent / "results"
try:  # an installed antipasto_ext (pip install .) first; else the checkout (built in place)
    import antipasto_ext as ax
except ImportError:
    sys.path.insert(0, str(REPO))
    import antipasto_ext as ax
from antipasto_ext import reference  # noqa: E402

# ----------------------------------------------------------------------------------------- shapes

# (d_in, d_out) of real projections.
SHAPES = {
    "qwen3-0.6b.q": (1024, 2048),
    "qwen3-0.6b.kv": (1024, 1024),
    "qwen3-0.6b.o": (2048, 1024),
    "qwen3-0.6b.down": (3072, 1024),
    "llama-3-8b.q": (4096, 4096),
    "llama-3-8b.down": (14336, 4096),
}

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "float64": torch.float64}

# The GPU models of the roofline (SXM, dense bf16 tensor-core rate and a copy bandwidth reached in practice):
# H100 800 TFLOP/s (81% of the 989 peak), 3.0 TB/s (90% of 3.35); H200 the same rate, 4.3 TB/s (90% of 4.8).
H100 = {"name": "H100 model", "flops": 800e12, "bw": 3.0e12}
H200 = {"name": "H200 model", "flops": 800e12, "bw": 4.3e12}


def dtype_of(name: str) -> torch.dtype:
    return DTYPES[name]


def optional_import(name: str):
    """(module, None) or (None, why) — the scripts skip what needs a missing optional package."""
    if os.environ.get("ANTIPASTO_BENCH_HIDE", ""):  # for the smoke test: pretend these are not installed
        if name.split(".")[0] in os.environ["ANTIPASTO_BENCH_HIDE"].split(","):
            return None, f"{name} hidden by ANTIPASTO_BENCH_HIDE"
    try:
        return __import__(name, fromlist=["_"]), None
    except Exception as e:  # ImportError, or a broken install
        return None, f"{type(e).__name__}: {e}"


# ----------------------------------------------------------------------------------------- machine header


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git(*args) -> str:
    try:
        return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except Exception:
        return ""


def machine_info(device: torch.device) -> dict:
    info = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "cpu": f"{cpu_model()}, {os.cpu_count()} logical cores, torch threads {torch.get_num_threads()}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": str(device),
        "antipasto_ext": ", ".join(f"{k}={v}" for k, v in ax.build_info().items() if k != "torch")
        + f" ({Path(ax.__file__).parent})",
        "git": (_git("rev-parse", "--short", "HEAD") + (" (+ uncommitted changes)" if _git("status", "--porcelain",
                                                                                            "--untracked-files=no") else "")),
        "load average at start": " ".join(f"{v:.2f}" for v in os.getloadavg()),
    }
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info["gpu"] = f"{p.name}, {p.total_memory / 2**30:.0f} GiB, sm_{p.major}{p.minor}, CUDA {torch.version.cuda}"
    return info


def finish_info(info: dict, t_start: float):
    """Add the end-of-run load and the run time (the load says how much others disturbed the run)."""
    info["load average at end"] = " ".join(f"{v:.2f}" for v in os.getloadavg())
    info["run time"] = f"{time.perf_counter() - t_start:.0f} s"
    load = max(os.getloadavg()[0], float(info["load average at start"].split()[0]))
    if load > 0.75 * (os.cpu_count() or 1) and torch.get_num_threads() > 1:
        info["WARNING"] = (f"the machine was busy (1-min load {load:.1f} on {os.cpu_count()} cores): multi-threaded "
                           "timings are inflated by oversubscription, the eager LAPACK path (torch.linalg.solve on "
                           "tiny blocks) by up to 50x; rerun at a quiet moment or with --threads 1")
        log("WARNING: " + info["WARNING"])


def header_md(title: str, info: dict) -> str:
    lines = [f"# {title}", ""]
    lines += [f"- **{k}**: `{v}`" if k == "command" else f"- **{k}**: {v}" for k, v in info.items()]
    return "\n".join(lines) + "\n"


def header_csv(info: dict) -> str:
    return "".join(f"# {k}: {v}\n" for k, v in info.items())


# ----------------------------------------------------------------------------------------- timing


def sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclasses.dataclass
class Stat:
    """Seconds per call over repeats: median and quartiles."""
    samples: list

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        s = sorted(self.samples)
        if len(s) == 1:
            return s[0]
        pos = q * (len(s) - 1)
        lo = int(math.floor(pos))
        hi = min(lo + 1, len(s) - 1)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    @property
    def iqr(self) -> float:
        return self.quantile(0.75) - self.quantile(0.25)

    @property
    def ms(self) -> float:
        return self.median * 1e3

    @property
    def us(self) -> float:
        return self.median * 1e6

    def fmt_ms(self, digits=3) -> str:
        return f"{self.ms:.{digits}f} ± {self.iqr * 1e3 / 2:.{digits}f}"

    def fmt_us(self, digits=1) -> str:
        return f"{self.us:.{digits}f} ± {self.iqr * 1e6 / 2:.{digits}f}"


def _timed(fn, inner: int, device) -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(inner):
        fn()
    sync(device)
    return (time.perf_counter() - t0) / inner


def bench(fns: dict, device, warmup: int = 3, repeats: int = 10, sample_s: float = 2e-3, budget_s: float | None = None
          ) -> dict:
    """Time several callables interleaved (round-robin, the order rotated each round, so drift and
    neighbours' load hit them alike). Each sample averages ``inner`` calls, ``inner`` chosen so a
    sample lasts about ``sample_s``. ``budget_s`` caps the total time (at least 3 rounds).
    Returns {name: Stat} of seconds per call."""
    names = list(fns)
    inner = {}
    for n in names:
        for _ in range(warmup):
            fns[n]()
        t = _timed(fns[n], 1, device)
        inner[n] = max(1, min(1000, int(sample_s / max(t, 1e-9))))
    samples = {n: [] for n in names}
    t_start = time.perf_counter()
    for rnd in range(repeats):
        order = names[rnd % len(names):] + names[:rnd % len(names)]
        for n in order:
            samples[n].append(_timed(fns[n], inner[n], device))
        if budget_s is not None and rnd >= 2 and time.perf_counter() - t_start > budget_s:
            break
    return {n: Stat(s) for n, s in samples.items()}


def target_status(ratio: float, limit: float, a: Stat, b: Stat) -> str:
    """'met' if ratio <= limit; 'within noise' if it misses by less than the runs' relative spread
    (half the IQR over the median of each side, added); else 'missed'."""
    if ratio <= limit:
        return "met"
    spread = a.iqr / 2 / a.median + b.iqr / 2 / b.median
    return f"within noise (±{100 * spread:.0f}%)" if ratio <= limit * (1 + spread) else "**missed**"


def fwd_fn(module, x):
    def f():
        with torch.no_grad():
            module(x)
    return f


def fwd_bwd_fn(module, x, grad_out, params=None):
    """One training step of the layer: forward, backward with a fixed upstream gradient; the grads
    are reset to None first (no accumulation kernels), x requires grad (dx computed, as in a model)."""
    params = [p for p in module.parameters() if p.requires_grad] if params is None else params

    def f():
        for p in params:
            p.grad = None
        x.grad = None
        module(x).backward(grad_out)
    return f


# ----------------------------------------------------------------------------------------- memory


def _kineto_peak(prof) -> int:
    """Peak of live bytes allocated inside a profiled region (from the profiler's [memory] events)."""
    evs = [(e.start_ns(), e.nbytes()) for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    cur = peak = 0
    for _, b in sorted(evs):
        cur += b
        peak = max(peak, cur)
    return peak


def peak_memory(fn, device, warm: bool = True) -> tuple[int, str]:
    """Bytes: peak of memory allocated by one call above what was allocated before it.
    CUDA: the caching allocator's max_memory_allocated; CPU: the profiler's allocation events
    (every tensor allocation/free of the CPU allocator, i.e. live tensor bytes, not RSS)."""
    if warm:
        fn()  # lazy init, caches
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        fn()
        sync(device)
        return torch.cuda.max_memory_allocated(device) - base, "CUDA allocator max_memory_allocated - before"
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    return _kineto_peak(prof), "CPU allocator, peak live bytes from profiler [memory] events"


# ----------------------------------------------------------------------------------------- profiler

SYNC_NAMES = {
    "aten::_local_scalar_dense": "item()/host read",
    "cudaStreamSynchronize": "stream sync",
    "cudaDeviceSynchronize": "device sync",
    "cudaEventSynchronize": "event sync",
    "cudaMemcpy": "blocking memcpy",
}
# Not a synchronisation on CPU, but one on CUDA: LAPACK-style info checks of torch.linalg.
CHECK_NAMES = {"aten::_linalg_check_errors"}


def _is_op(name: str) -> bool:
    return "::" in name and not name.startswith(("autograd::", "profiler::", "cuda", "Optimizer"))


@dataclasses.dataclass
class ProfSummary:
    calls: int
    ops_per_call: float          # dispatcher ops, all nesting levels
    top_ops_per_call: float      # dispatcher ops not nested in another op
    autograd_nodes_per_call: float
    kernels_per_call: float      # CUDA kernels (0 on CPU)
    syncs_per_call: dict         # name -> count per call
    checks_per_call: float       # linalg error checks (a host sync each on CUDA)
    top_table: list              # [(name, self time us per call, count per call, pct)]
    total_us_per_call: float
    sync_sources: dict = dataclasses.field(default_factory=dict)  # "op < parent < ..." -> count per call


def profile_calls(fns: dict, device, calls: int = 3, trace_path: Path | None = None, top: int = 10) -> dict:
    """Profile each callable ``calls`` times (after one warm call), each call inside a labelled
    record_function. Returns {name: ProfSummary}; writes one Chrome trace holding all of them."""
    from torch.profiler import ProfilerActivity, profile, record_function
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    for f in fns.values():
        f()
    sync(device)
    with profile(activities=acts, record_shapes=False) as prof:
        for name, f in fns.items():
            for i in range(calls):
                with record_function(f"call/{name}"):
                    f()
                    sync(device)
    if trace_path is not None:
        prof.export_chrome_trace(str(trace_path))
    events = prof.events()
    out = {}
    # Assign every event to the labelled call it lies in (by ancestry).
    by_label = {n: [] for n in fns}
    for e in events:
        a, label = e, None
        while a is not None:
            if a.name.startswith("call/"):
                label = a.name[5:]
                break
            a = a.cpu_parent
        if label in by_label:
            by_label[label].append(e)
    # CUDA kernels carry no cpu_parent: attribute them through their launching runtime call's label
    # (correlation); if that is unavailable, by time window.
    windows = {}
    for e in events:
        if e.name.startswith("call/") and e.device_type.name == "CPU":
            windows.setdefault(e.name[5:], []).append((e.time_range.start, e.time_range.end))
    for name, evs in by_label.items():
        ops = [e for e in evs if _is_op(e.name) and e.device_type.name == "CPU"]
        top_ops = []
        for e in ops:
            a, nested = e.cpu_parent, False
            while a is not None:
                if _is_op(a.name):
                    nested = True
                    break
                a = a.cpu_parent
            if not nested:
                top_ops.append(e)
        nodes = [e for e in evs if e.name.startswith("autograd::engine::evaluate_function")]
        kernels = 0
        if device.type == "cuda":
            for e in events:
                if e.device_type.name == "CUDA" and any(s <= e.time_range.start <= t for s, t in windows.get(name, [])):
                    kernels += 1
            # runtime launches are CPU-side events named cudaLaunchKernel* inside the label
            launches = sum(1 for e in evs if e.name.startswith(("cudaLaunchKernel", "cuLaunchKernel")))
            kernels = max(kernels, launches)
        syncs, sources = {}, {}
        for e in evs:
            if e.name in SYNC_NAMES:
                syncs[e.name] = syncs.get(e.name, 0) + 1
                chain, a = [], e.cpu_parent
                while a is not None and not a.name.startswith("call/") and len(chain) < 4:
                    chain.append(a.name)
                    a = a.cpu_parent
                src = " < ".join([e.name] + chain)
                sources[src] = sources.get(src, 0) + 1
        checks = sum(1 for e in evs if e.name in CHECK_NAMES)
        # self time per op name (CPU self time; on CUDA the device time of kernels is in the trace)
        agg = {}
        for e in evs:
            if e.name.startswith("call/"):
                continue
            d = agg.setdefault(e.name, [0.0, 0])
            d[0] += e.self_cpu_time_total
            d[1] += 1
        if device.type == "cuda":  # where the GPU time goes: kernels by device time
            for e in events:
                if e.device_type.name == "CUDA" and any(s <= e.time_range.start <= t for s, t in windows.get(name, [])):
                    d = agg.setdefault("[GPU] " + e.name[:60], [0.0, 0])
                    d[0] += getattr(e, "self_device_time_total", 0.0) or e.time_range.elapsed_us()
                    d[1] += 1
        label_total = sum(t - s for s, t in windows.get(name, []))
        rows = sorted(agg.items(), key=lambda kv: -kv[1][0])[:top]
        table = [(n, t / calls, c / calls, 100 * t / max(label_total, 1e-9)) for n, (t, c) in rows]
        out[name] = ProfSummary(calls, len(ops) / calls, len(top_ops) / calls, len(nodes) / calls, kernels / calls,
                                {k: v / calls for k, v in syncs.items()}, checks / calls, table, label_total / calls,
                                {k: v / calls for k, v in sources.items()})
    return out


# ----------------------------------------------------------------------------------------- builders

# every variant by its research name (antipasto_rot, ...), from the registry
CLASSES = {ax.variants.research_name(v.name): v.cls for v in ax.variants.VARIANTS.values()}
VARIANTS = tuple(CLASSES)


@dataclasses.dataclass
class Config:
    r: int = 256
    block_size: int = 4
    lora_rank: int = 8
    ablate_k: int = 1

    def kwargs(self, variant: str) -> dict:
        return {"antipasto_rot": {"block_size": self.block_size}, "antipasto_dplr": {"lora_rank": self.lora_rank},
                "antipasto_ablate": {"k": self.ablate_k}}.get(variant, {})


def make_linear(d_in: int, d_out: int, dtype, device, seed: int = 0) -> nn.Linear:
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(d_in, d_out, bias=False)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(d_out, d_in, generator=g) / math.sqrt(d_in))
    lin = lin.to(device=device, dtype=dtype)
    lin.requires_grad_(False)
    return lin


# Above this width the benchmark basis is a random orthonormal one (QR) instead of the top-r SVD: the
# timings do not depend on the basis values, and the SVD of a 14336 x 4096 weight takes minutes on CPU.
EXACT_SVD_MAX_DIM = 4096


def svd_split_cached(lin: nn.Linear, r: int, cache: dict):
    w = lin.weight  # make_linear is deterministic per shape: key on what defines the weight
    key = (lin.in_features, lin.out_features, w.dtype, str(w.device), float(w[0, :4].float().sum()), r)
    if key not in cache:
        if max(lin.in_features, lin.out_features) <= EXACT_SVD_MAX_DIM:
            cache[key] = reference.svd_split(lin.weight, r)
        else:
            g = torch.Generator().manual_seed(1)
            W = w.detach().float()
            U = torch.linalg.qr(torch.randn(lin.out_features, r, generator=g).to(W.device))[0]
            Vh = torch.linalg.qr(torch.randn(lin.in_features, r, generator=g).to(W.device))[0].T.contiguous()
            S = torch.linspace(2.0, 1.0, r, device=W.device)
            cache[key] = (U, S, Vh, W - (U * S) @ Vh)
    return cache[key]


def build_variant(variant: str, lin: nn.Linear, cfg: Config, backend: str, split_cache: dict):
    """The variant on ``lin`` with the given backend. The SVD split is computed once per layer and
    shared by the variants (from_linear would redo it for each: minutes for a 14336x4096 weight on CPU)."""
    cls = CLASSES[variant]
    r = min(cfg.r, lin.in_features, lin.out_features)
    W = lin.weight
    m = cls(lin.in_features, lin.out_features, r, dtype=W.dtype, device=W.device, **cfg.kwargs(variant))
    with torch.no_grad():
        m._set_basis(*svd_split_cached(lin, r, split_cache))
    m._snapshot_init()
    m.backend = backend
    return m


def trainable(module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class _Holder(nn.Module):
    def __init__(self, lin):
        super().__init__()
        self.lin = lin

    def forward(self, x):
        return self.lin(x)


def build_peer(kind: str, lin: nn.Linear, rank: int = 8, block_size: int = 4, neumann: bool = False):
    """A PEFT layer wrapping a copy of ``lin`` (the injected tuner layer itself is returned, so the
    timing carries no PeftModel wrapper). kind: 'lora' or 'oft'. Only the adapter trains."""
    import peft
    holder = _Holder(copy.deepcopy(lin))
    if kind == "lora":
        cfg = peft.LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=["lin"])
    elif kind == "oft":
        cfg = peft.OFTConfig(oft_block_size=block_size, r=0, target_modules=["lin"], module_dropout=0.0,
                             use_cayley_neumann=neumann, **({"num_cayley_neumann_terms": 5} if neumann else {}))
    else:
        raise ValueError(kind)
    holder = peft.inject_adapter_in_model(cfg, holder)
    for n, p in holder.named_parameters():
        p.requires_grad_(("lora_" in n) or ("oft_" in n))
    layer = holder.lin
    return layer.to(device=lin.weight.device, dtype=lin.weight.dtype)


def oft_options() -> dict:
    """What the installed PEFT's OFTConfig offers for the Cayley parameterisation."""
    import peft
    fields = {f.name: f.default for f in dataclasses.fields(peft.OFTConfig)}
    return {k: fields[k] for k in ("use_cayley_neumann", "num_cayley_neumann_terms", "coft", "block_share") if k in fields}


def with_grad_input(x: torch.Tensor) -> torch.Tensor:
    return x.detach().clone().requires_grad_(True)


# ----------------------------------------------------------------------------------------- roofline

# Phases of the op_costs rows that one layer call executes; the other rows ("fwd (one kernel)", "fwd (one
# op)") describe the same work fused or summed, for the roofline table only.
EXECUTED_PHASES = ("fwd", "bwd", "per-call")


@dataclasses.dataclass
class OpCost:
    op: str
    phase: str      # fwd / bwd / per-call
    flops: float
    bytes: float
    formula: str

    def roofline_s(self, flops_rate: float, bw: float) -> float:
        return max(self.flops / flops_rate, self.bytes / bw)

    def bound(self, flops_rate: float, bw: float) -> str:
        return "compute" if self.flops / flops_rate >= self.bytes / bw else "memory"


def op_costs(variant: str, N: int, d_in: int, d_out: int, r: int, k: int = 8, bs: int = 4, e: int = 2,
             training: bool = True) -> list:
    """FLOPs and minimum bytes moved per kernel of the ext path (or the peer's path), at N tokens,
    e bytes per activation/weight element; S-space parameters in float32 (4 bytes). The minimum bytes
    read each operand once and write each result once."""
    f4 = 4
    ops = []
    if variant == "linear":
        ops.append(OpCost("x W^T", "fwd", 2 * N * d_in * d_out, e * (N * d_in + d_in * d_out + N * d_out),
                          "2 N din dout"))
        if training:
            ops.append(OpCost("dx = dY W", "bwd", 2 * N * d_in * d_out, e * (N * d_out + d_in * d_out + N * d_in),
                              "2 N din dout"))
        return ops
    if variant.startswith("lora"):
        ops += op_costs("linear", N, d_in, d_out, r, training=training)
        ops.append(OpCost("s = x A^T", "fwd", 2 * N * d_in * k, e * (N * d_in + k * d_in + N * k), "2 N din k"))
        ops.append(OpCost("y += s B^T", "fwd", 2 * N * k * d_out, e * (N * k + k * d_out + 2 * N * d_out),
                          "2 N k dout"))
        if training:
            ops.append(OpCost("ds = dY B; dB = dY^T s", "bwd", 4 * N * k * d_out, e * (N * d_out + 2 * k * d_out + 2 * N * k),
                              "4 N k dout"))
            ops.append(OpCost("dx += ds A; dA = ds^T x", "bwd", 4 * N * k * d_in,
                              e * (N * k + 2 * k * d_in + 3 * N * d_in), "4 N k din"))
        return ops
    if variant.startswith("oft"):
        nb = d_in // bs
        ops += op_costs("linear", N, d_in, d_out, r, training=training)
        ops.append(OpCost("cayley (solve)", "per-call", nb * 2 * bs ** 3, f4 * nb * (bs * (bs - 1) // 2 + bs * bs),
                          "nb 2 bs^3"))
        ops.append(OpCost("x blockdiag(R)", "fwd", 2 * N * d_in * bs, 2 * e * N * d_in, "2 N din bs"))
        if training:
            ops.append(OpCost("dx, dR of the rotation", "bwd", 4 * N * d_in * bs, 3 * e * N * d_in, "4 N din bs"))
        return ops
    # ours
    ops.append(OpCost("base x W_res^T", "fwd", 2 * N * d_in * d_out, e * (N * d_in + d_in * d_out + N * d_out),
                      "2 N din dout"))
    ops.append(OpCost("p = x Vh^T", "fwd", 2 * N * d_in * r, e * (N * d_in + r * d_in + N * r), "2 N din r"))
    core = {
        "antipasto": (N * r, "N r", 3 * N * r, "3 N r"),
        "antipasto_corda": (N * r, "N r", 3 * N * r, "3 N r"),
        "antipasto_dplr": (N * r + 4 * N * r * k, "N r + 4 N r k", 3 * N * r + 10 * N * r * k, "3 N r + 10 N r k"),
        "antipasto_ablate": (N * r + 4 * N * r * k, "N r + 4 N r k", 3 * N * r + 8 * N * r * k, "3 N r + 8 N r k"),
        "antipasto_rot": (N * r + 2 * N * r * bs, "N r + 2 N r bs", 3 * N * r + 4 * N * r * bs, "3 N r + 4 N r bs"),
    }[variant]
    ops.append(OpCost("core h = f(p)", "fwd", core[0], 2 * e * N * r, core[1]))
    # the fused projection kernel (CUDA, 16-bit, few rows) runs the two rows above as one (p written only for
    # backward); not timed alone (it lives inside the layer op: see the "layer op" row and the dispatch section)
    ops.append(OpCost("h = core(x Vh^T) fused", "fwd (one kernel)", 2 * N * d_in * r + core[0],
                      e * (N * d_in + r * d_in + (2 if training else 1) * N * r), f"2 N din r + {core[1]}"))
    ops.append(OpCost("out = base + h U^T", "fwd", 2 * N * r * d_out, e * (N * r + r * d_out + 2 * N * d_out),
                      "2 N r dout"))
    # the layer op: all of the forward above in one op call (minimum bytes: x, W_res, Vh, U, y once, p if kept)
    ops.append(OpCost("layer op (whole forward)", "fwd (one op)",
                      2 * N * d_in * d_out + 2 * N * d_in * r + core[0] + 2 * N * r * d_out,
                      e * (N * d_in + d_in * d_out + r * d_in + r * d_out + N * d_out + (N * r if training else 0)),
                      f"2 N din dout + 2 N r (din + dout) + {core[1]}"))
    if variant == "antipasto_rot":
        nb = r // bs
        ops.append(OpCost("block_cayley", "per-call", nb * 2 * bs ** 3, f4 * nb * (bs * (bs - 1) // 2 + bs * bs),
                          "nb 2 bs^3"))
    if training:
        ops.append(OpCost("dh = dY U", "bwd", 2 * N * d_out * r, e * (N * d_out + d_out * r + N * r), "2 N dout r"))
        ops.append(OpCost("core backward", "bwd", core[2], 3 * e * N * r, core[3]))
        ops.append(OpCost("dx = dY W_res", "bwd", 2 * N * d_out * d_in, e * (N * d_out + d_out * d_in + N * d_in),
                          "2 N dout din"))
        ops.append(OpCost("dx += dp Vh", "bwd", 2 * N * r * d_in, e * (N * r + r * d_in + 2 * N * d_in), "2 N r din"))
        if variant == "antipasto_rot":
            nb = r // bs
            ops.append(OpCost("block_cayley backward", "per-call", nb * 4 * bs ** 3,
                              f4 * nb * (2 * bs * bs + bs * (bs - 1)), "nb 4 bs^3"))
    return ops


def added_macs_per_token(variant: str, backend: str, d_in: int, d_out: int, r: int, k: int, bs: int, N: int
                         ) -> tuple[float, str]:
    """Multiply-accumulates per token the adapter adds to the frozen x W^T (forward), counted from the
    code path; per-call work (independent of tokens) is amortised over N tokens and shown apart."""
    if variant == "linear":
        return 0.0, "0"
    if variant.startswith("lora"):
        return k * (d_in + d_out), "k (din + dout)"
    if variant.startswith("oft"):
        nb = d_in // bs
        return d_in * bs + nb * 2 * bs ** 3 / N, "din bs + [nb 2 bs^3]/N"
    base = r * (d_in + d_out)
    if variant in ("antipasto", "antipasto_corda"):
        return base + r, "r (din + dout) + r"
    if variant == "antipasto_dplr":
        return base + r + 2 * r * k, "r (din + dout) + r + 2 r k"
    if variant == "antipasto_ablate":
        return base + r + 2 * r * k, "r (din + dout) + r + 2 r k"
    if variant == "antipasto_rot":
        nb = r // bs
        if backend == "eager":  # forms R Vh every forward (per call), no r-space rotation
            return base + r + (nb * 2 * bs ** 3 + r * bs * d_in) / N, "r (din + dout) + r + [nb 2 bs^3 + r bs din]/N"
        return base + r + r * bs + nb * 2 * bs ** 3 / N, "r (din + dout) + r + r bs + [nb 2 bs^3]/N"
    raise ValueError(variant)


def measure_rates(device, dtype=torch.float32, quick=False) -> dict:
    """This machine's ceilings: a big matmul's FLOP/s and a big copy's bytes/s (read + write)."""
    n = 1024 if quick else 2048
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    st = bench({"mm": lambda: torch.mm(a, b)}, device, warmup=2, repeats=3 if quick else 7, sample_s=0.05)["mm"]
    src = torch.empty(32 * 2**20 // 4 * (1 if quick else 4), device=device, dtype=torch.float32).uniform_()
    dst = torch.empty_like(src)
    bw = bench({"copy": lambda: dst.copy_(src)}, device, warmup=2, repeats=3 if quick else 7, sample_s=0.05)["copy"]
    return {"gemm_flops": 2 * n ** 3 / st.median, "gemm_shape": f"{n}x{n}x{n} {str(dtype).split('.')[-1]}",
            "copy_bw": 2 * src.numel() * 4 / bw.median, "copy_bytes": src.numel() * 4}


# ----------------------------------------------------------------------------------------- output


def md_table(header: list, rows: list) -> str:
    out = io.StringIO()
    out.write("| " + " | ".join(header) + " |\n")
    out.write("|" + "|".join("---" for _ in header) + "|\n")
    for r in rows:
        out.write("| " + " | ".join(str(c) for c in r) + " |\n")
    return out.getvalue()


def write_csv(path: Path, info: dict, header: list, rows: list):
    with open(path, "w", newline="") as f:
        f.write(header_csv(info))
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def out_paths(out_dir: Path, stem: str, device: torch.device, quick: bool) -> dict:
    out_dir.mkdir(parents=True, exist_ok=True)
    base = f"{stem}_{device.type}" + ("_quick" if quick else "")
    return {ext: out_dir / f"{base}.{ext}" for ext in ("md", "csv", "png", "trace.json")}


def fmt_ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "n/a"


def backends_for(device: torch.device) -> tuple:
    """('eager', 'ext'), or ('eager',) with the reason printed when the compiled ops are unavailable."""
    from antipasto_ext import _loader
    if _loader.ext_available(device):
        return ("eager", "ext")
    log(f"NOTE: backend 'ext' unavailable on {device} ({_loader.why_unavailable(device)}); eager only")
    return ("eager",)


def set_threads(n: int | None):
    if n:
        torch.set_num_threads(n)


def pick_device(name: str) -> torch.device:
    d = torch.device(name)
    if d.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device available")
    return d


def log(*a):
    print(*a, flush=True)
