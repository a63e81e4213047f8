// Memory metrics of every kernel of csrc/kernels at a training shape (8192 rows, d 4096, r 256, bf16) and
// the decode shapes (1 and 16 rows), from the emulator's checked build (emu/checker.h): per source
// line, the shared-memory bank-conflict factor (wavefronts per warp-wide access over the conflict-free
// count; 32 banks x 4 bytes) and the global sector efficiency (minimum 32-byte sectors for the bytes
// requested over the sectors touched). These are models of an NVIDIA GPU's memory pipeline counted on
// the CPU, not measurements: they steer the kernels while no GPU is at hand.
//
// Built by CMakeLists.txt as `kernel_metrics` (checked build); run through tools/kernel_metrics.py, which
// writes benchmarks/results/kernel_metrics.md.
//   kernel_metrics [--list] [--blocks N] [case ...]   (a case is chosen by name or name prefix)
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "csrc/kernels/launchers.cuh"

namespace {

namespace K = ax::emu_impl;
using ax::DType;
using bf16 = __nv_bfloat16;

static_assert(ax_emu::checked_build(), "kernel_metrics must be compiled with -fsanitize=thread (CMakeLists.txt)");

constexpr int64_t kRows = 8192, kDin = 4096, kR = 256;

std::mt19937_64& rng() {
  static std::mt19937_64 g(7);
  return g;
}

// Device buffers with small random values (the metrics do not depend on them; finite values keep the
// kernels' data-dependent branches on their usual path).
template <typename T>
ax_emu::DeviceBuffer<T>* dev(int64_t n, const char* name, double scale = 0.1, double shift = 0.0) {
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(static_cast<size_t>(n));
  for (auto& x : v) x = T(float(shift + scale * d(rng())));
  return new ax_emu::DeviceBuffer<T>(v, name);
}

struct Case {
  std::string name, shape;
  std::function<void(void*)> run;
};

// Buffers live for the whole run (the cases reuse them; device memory is plentiful on the CPU).
struct Buffers {
  ax_emu::DeviceBuffer<bf16>*p = dev<bf16>(kRows * kR, "p"), *dh = dev<bf16>(kRows * kR, "grad_h");
  ax_emu::DeviceBuffer<bf16>*h = dev<bf16>(kRows * kR, "h"), *dp = dev<bf16>(kRows * kR, "dp");
  ax_emu::DeviceBuffer<bf16>*x = dev<bf16>(kRows * kDin, "x"), *Vh = dev<bf16>(kR * kDin, "Vh");
  ax_emu::DeviceBuffer<bf16>* p_out = dev<bf16>(kRows * kR, "p_out");
  ax_emu::DeviceBuffer<float>*S = dev<float>(kR, "S", 1.0, 2.0), *g = dev<float>(kR, "g");
  ax_emu::DeviceBuffer<float>*R4 = dev<float>(kR * 4, "R bs4"), *R8 = dev<float>(kR * 8, "R bs8");
  ax_emu::DeviceBuffer<float>*A = dev<float>(8 * kR, "A"), *B = dev<float>(kR * 8, "B");
  ax_emu::DeviceBuffer<float>*C = dev<float>(kR * 1, "C"), *a = dev<float>(1, "a", 0.1, 0.5);
  ax_emu::DeviceBuffer<float>* t = dev<float>(kR * 64, "rot_T"), *G = dev<float>(kR * 64, "grad_R");
  ax_emu::DeviceBuffer<float>*Rc = dev<float>(kR * 64, "R"), *dt = dev<float>(kR * 64, "dt");
  ax_emu::DeviceBuffer<float>* ws = dev<float>(ax::core_chunks_per_entry(kRows) * ax::core_slice(kR + 2 * 8 * kR) +
                                                   ax::project_decode_splits(kDin, kR) * 16 * kR,
                                               "workspace");
  ax_emu::DeviceBuffer<float>* dparams = dev<float>(kR + 2 * 8 * kR, "dparams");
};

// The core of each case: gain, rot (side, bs), dplr (k 8), ablate (k 1), coeff 0.7.
ax::CoreParams core_of(Buffers& b, ax::Core core, int side = ax::kRotV, int bs = 4) {
  ax::CoreParams c;
  c.core = core;
  c.r = kR;
  c.coeff = 0.7;
  c.S = b.S->data();
  c.g = b.g->data();
  if (core == ax::Core::rot) {
    c.side = side;
    c.bs = bs;
    c.R = (bs == 4 ? b.R4 : b.R8)->data();
  }
  if (core == ax::Core::dplr) {
    c.k = 8;
    c.A = b.A->data();
    c.B = b.B->data();
  }
  if (core == ax::Core::ablate) {
    c.k = 1;
    c.A = b.C->data();
    c.a = b.a->data();
  }
  return c;
}

void run_core(Buffers& b, const ax::CoreParams& core, bool backward, void* st) {
  ax::CoreCall call;
  call.dtype = ax::DType::bf16;
  call.n = kRows;
  call.core = core;
  call.p = b.p->data();
  call.h = b.h->data();
  call.grad_h = b.dh->data();
  call.dp = b.dp->data();
  call.dparams = b.dparams->data();
  call.workspace = b.ws->data();
  backward ? K::core_backward(call, st) : K::core_forward(call, st);
}

void run_project(Buffers& b, const ax::CoreParams& core, int64_t n, void* st) {
  ax::ProjectCall call;
  call.dtype = ax::DType::bf16;
  call.n = n;
  call.d_in = kDin;
  call.core = core;
  call.x = b.x->data();
  call.Vh = b.Vh->data();
  call.h = b.h->data();
  call.p_out = n > 16 ? b.p_out->data() : nullptr;
  call.workspace = b.ws->data();
  K::project_forward(call, st);
}

void run_cayley(Buffers& b, int bs, bool backward, void* st) {
  ax::CayleyCall call;
  call.n_blocks = kR / bs;
  call.bs = bs;
  call.a_lim = 0.5;
  call.coeff = 0.7;
  call.t = b.t->data();
  call.R = b.Rc->data();
  call.grad_R = b.G->data();
  call.dt = b.dt->data();
  backward ? K::cayley_backward(call, st) : K::cayley_forward(call, st);
}

std::vector<Case> cases(Buffers& b) {
  const std::string train = "8192 x 256, bf16", train_din = "8192 x 4096 -> 256, bf16";
  std::vector<Case> v;
  for (bool bwd : {false, true}) {
    const std::string dir = bwd ? "backward" : "forward";
    v.push_back({"gain_" + dir, train, [&b, bwd](void* st) { run_core(b, core_of(b, ax::Core::gain), bwd, st); }});
    for (int bs : {4, 8})
      for (int side : {int(ax::kRotV), int(ax::kRotU)}) {
        const std::string tag = std::string(side == ax::kRotV ? "V" : "U") + "_bs" + std::to_string(bs);
        v.push_back({"rot_" + dir + "_" + tag, train,
                     [&b, bwd, side, bs](void* st) { run_core(b, core_of(b, ax::Core::rot, side, bs), bwd, st); }});
      }
    v.push_back({"dplr_" + dir + "_k8", train, [&b, bwd](void* st) { run_core(b, core_of(b, ax::Core::dplr), bwd, st); }});
    v.push_back(
        {"ablate_" + dir + "_k1", train, [&b, bwd](void* st) { run_core(b, core_of(b, ax::Core::ablate), bwd, st); }});
  }
  for (int bs : {4, 8, 16}) {
    const std::string shape = std::to_string(kR / bs) + " blocks of " + std::to_string(bs) + " (r 256), f32";
    v.push_back({"block_cayley_forward_bs" + std::to_string(bs), shape, [&b, bs](void* st) { run_cayley(b, bs, false, st); }});
    v.push_back({"block_cayley_backward_bs" + std::to_string(bs), shape, [&b, bs](void* st) { run_cayley(b, bs, true, st); }});
  }
  for (ax::Core core : {ax::Core::gain, ax::Core::dplr}) {
    const std::string name = core == ax::Core::gain ? "gain" : "dplr_k8";
    v.push_back({"project_prefill_" + name, train_din, [&b, core](void* st) { run_project(b, core_of(b, core), kRows, st); }});
  }
  for (int64_t n : {int64_t(1), int64_t(16)})
    for (ax::Core core : {ax::Core::gain, ax::Core::rot, ax::Core::dplr}) {
      const std::string name = core == ax::Core::gain ? "gain" : core == ax::Core::rot ? "rot_V_bs4" : "dplr_k8";
      v.push_back({"project_decode_" + std::to_string(n) + "_" + name, std::to_string(n) + " x 4096 -> 256, bf16",
                   [&b, core, n](void* st) { run_project(b, core_of(b, core), n, st); }});
    }
  return v;
}

// "file:line (function) <- file:line (function) ..." as "file:line in f <- file:line in g" (two frames, the
// access and the code it was inlined into; namespaces, templates and return types dropped).
std::string short_site(const std::string& site) {
  std::string out;
  size_t pos = 0;
  for (int frame = 0; frame < 2 && pos < site.size(); ++frame) {
    size_t end = site.find(" <- ", pos);
    std::string f = site.substr(pos, end == std::string::npos ? std::string::npos : end - pos);
    pos = end == std::string::npos ? site.size() : end + 4;
    const size_t paren = f.find(" (");
    std::string loc = f.substr(0, paren), fn;
    if (paren != std::string::npos) {
      fn = f.substr(paren + 2, f.size() - paren - 3);
      int depth = 0;
      std::string plain;  // without template arguments
      for (char ch : fn) {
        if (ch == '<') ++depth;
        if (depth == 0) plain += ch;
        if (ch == '>') --depth;
      }
      const size_t sp = plain.rfind(' ');
      if (sp != std::string::npos) plain = plain.substr(sp + 1);
      const size_t colon = plain.rfind("::");
      fn = colon == std::string::npos ? plain : plain.substr(colon + 2);
    }
    if (!out.empty()) out += " <- ";
    out += fn.empty() ? loc : loc + " in " + fn;
  }
  return out;
}

// The decode model of api.h (DecodeModel, decode_split_seconds, decode_gemv_seconds: the dispatch takes the faster
// path by it) per shape, with the launch geometry: the column "in flight / (bandwidth x latency)" says whether the
// bytes in flight cover bandwidth x latency (Little's law). The ceiling is the best any single kernel could do under
// the same model: one DRAM latency plus the bytes at peak. A model with stated constants, not a measurement.
void print_decode_model() {
  const ax::DecodeModel m;
  std::printf("\n## Decode model (H200: %.1f TB/s HBM, %.1f us DRAM and %.1f us L2 latency, %.0f GB/s of L2 reads per "
              "SM assumed; not a measurement)\n\nFor gain and rot without a rotation the dispatch takes the path marked *.\n\n| rows | d_in -> r | path | "
              "CTAs | K per CTA | KiB in flight per CTA | in flight / (bandwidth x latency) | HBM bytes | finish: KiB "
              "read per row, batches | model us | floor us | floor / model | ceiling (one kernel) |\n"
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n",
              m.hbm_bytes_per_s / 1e12, m.dram_latency_s * 1e6, m.l2_latency_s * 1e6, m.sm_l2_bytes_per_s / 1e9);
  const double latency_bytes = m.hbm_bytes_per_s * m.dram_latency_s;
  for (int64_t d_in : {int64_t(1024), int64_t(4096), int64_t(14336)})
    for (int64_t r : {int64_t(64), int64_t(256)})
      for (int64_t n : {int64_t(1), int64_t(4), int64_t(16)}) {
        ax::CoreParams gain;
        gain.core = ax::Core::gain;
        gain.r = r;
        const bool takes_gemv = ax::project_gemv(n, d_in, gain);
        for (bool gemv : {true, false}) {
          if (gemv && n > ax::kGemvRows) continue;
          const double hbm = ax::decode_hbm_bytes(n, d_in, r), floor = hbm / m.hbm_bytes_per_s;
          int64_t ctas, kk;
          double per_cta, in_flight, model;
          std::string finish = "-";
          if (gemv) {
            const int64_t chunks = d_in / 8, per_batch = ax::kGemvThreads * ax::gemv_batch(n);
            ctas = (r + ax::kGemvCols - 1) / ax::kGemvCols;
            kk = d_in;
            per_cta = double(std::min(chunks, per_batch) * (ax::kGemvCols + n) * 16);
            in_flight = per_cta * double(ctas);
            model = ax::decode_gemv_seconds(n, d_in, r, m);
          } else {
            kk = ax::project_decode_k(d_in, r);
            const int64_t splits = ax::project_decode_splits(d_in, r);
            ctas = splits * ((r + ax::kDecodeCols - 1) / ax::kDecodeCols);
            per_cta = double((n + std::min<int64_t>(r, ax::kDecodeCols)) * kk * 2);
            in_flight = double(r * d_in * 2 + n * d_in * 2 * (ctas / splits));  // every CTA's slice at once
            finish = std::to_string((splits * r * 4 + 512) / 1024) + ", " + std::to_string(ax::finish_batches(d_in, r));
            model = ax::decode_split_seconds(n, d_in, r, m);
          }
          const bool taken = gemv == takes_gemv;
          std::printf("| %lld | %lld -> %lld | %s%s | %lld | %lld | %.1f | %.2f | %.0f KiB | %s | %.2f | %.2f | %.0f%% | "
                      "%.0f%% |\n",
                      (long long)n, (long long)d_in, (long long)r, gemv ? "one kernel (gain, rot none)" : "split K + finish",
                      taken ? " *" : "", (long long)ctas, (long long)kk, per_cta / 1024.0, in_flight / latency_bytes,
                      hbm / 1024.0, finish.c_str(), model * 1e6, floor * 1e6, 100.0 * floor / model,
                      100.0 * floor / (floor + m.dram_latency_s));
        }
      }
  std::printf("\nThe split path serves every core; the one-kernel path only gain and rot without a rotation (the others "
              "take the split path at every row count). A path that reads B bytes from HBM reaches at most B / (B + "
              "bandwidth x DRAM latency) of the bandwidth under this model: 50%% needs B >= %.1f MB (r x d_in >= "
              "%.1f M in 16 bits).\n",
              latency_bytes / 1e6, latency_bytes / 2 / 1e6);
}

// Access-weighted mean of a ratio over the rows of one kernel (hot loops dominate by access count).
struct Summary {
  double wf = 0, ideal = 0, sec = 0, minsec = 0;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> want;
  uint64_t blocks = 3;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--list") {
      list = true;
    } else if (a == "--blocks" && i + 1 < argc) {
      blocks = std::strtoull(argv[++i], nullptr, 10);
    } else if (!a.empty() && a[0] == '-') {
      std::fprintf(stderr, "kernel_metrics: unknown option %s (usage: kernel_metrics [--list] [--blocks N] [case ...])\n",
                   a.c_str());
      return 2;
    } else {
      want.push_back(a);
    }
  }
  ax_emu::set_checks(false);  // metrics only: no shadow of the large buffers
  Buffers b;
  const std::vector<Case> all = cases(b);
  if (list) {
    for (const Case& c : all) std::printf("%s  (%s)\n", c.name.c_str(), c.shape.c_str());
    return 0;
  }
  std::vector<const Case*> run;
  for (const std::string& w : want) {
    size_t before = run.size();
    for (const Case& c : all)
      if (c.name.rfind(w, 0) == 0) run.push_back(&c);
    if (run.size() == before) {
      std::fprintf(stderr, "kernel_metrics: unknown kernel case '%s' (kernel_metrics --list shows them)\n", w.c_str());
      return 2;
    }
  }
  if (want.empty())
    for (const Case& c : all) run.push_back(&c);

  static char stream;
  ax_emu::set_current_stream(&stream);
  ax_emu::set_block_sample(blocks);
  std::printf("| case | shape | kernel | line | space | ld/st | warp accesses | bytes/lane | bank-conflict factor | "
              "sector efficiency |\n|---|---|---|---|---|---|---|---|---|---|\n");
  std::map<std::string, Summary> per_kernel;
  std::vector<std::string> order;
  for (const Case* c : run) {
    ax_emu::start_metrics();
    c->run(&stream);
    const std::vector<ax_emu::MetricRow> rows = ax_emu::stop_metrics();
    for (const ax_emu::MetricRow& r : rows) {
      const std::string line = short_site(r.site);
      char bank[32] = "", sector[32] = "";
      if (r.shared)
        std::snprintf(bank, sizeof bank, "%.2f", r.ideal_wavefronts > 0 ? r.wavefronts / r.ideal_wavefronts : 0.0);
      else
        std::snprintf(sector, sizeof sector, "%.0f%%", r.sectors > 0 ? 100.0 * r.min_sectors / r.sectors : 0.0);
      std::printf("| %s | %s | %s | %s | %s | %s | %llu | %.0f | %s | %s |\n", c->name.c_str(), c->shape.c_str(),
                  r.kernel.c_str(), line.c_str(), r.shared ? "shared" : "global", r.write ? "st" : "ld",
                  static_cast<unsigned long long>(r.accesses), r.bytes_per_lane, bank, sector);
      const std::string key = c->name + "\t" + r.kernel;
      if (!per_kernel.count(key)) order.push_back(key);
      Summary& s = per_kernel[key];
      s.wf += r.wavefronts;
      s.ideal += r.ideal_wavefronts;
      s.sec += r.sectors;
      s.minsec += r.min_sectors;
    }
  }
  std::printf("\n## Per kernel (access-weighted over its lines; targets: conflict factor <= 1.25, sector efficiency "
              ">= 85%%)\n\n| case | kernel | bank-conflict factor | sector efficiency |\n|---|---|---|---|\n");
  for (const std::string& key : order) {
    const Summary& s = per_kernel[key];
    const size_t tab = key.find('\t');
    char bank[48] = "-", sector[48] = "-";
    if (s.ideal > 0)
      std::snprintf(bank, sizeof bank, "%.2f%s", s.wf / s.ideal, s.wf / s.ideal <= 1.25 ? "" : " (above target)");
    if (s.sec > 0)
      std::snprintf(sector, sizeof sector, "%.0f%%%s", 100.0 * s.minsec / s.sec,
                    s.minsec / s.sec >= 0.85 ? "" : " (below target)");
    std::printf("| %s | %s | %s | %s |\n", key.substr(0, tab).c_str(), key.substr(tab + 1).c_str(), bank, sector);
  }
  print_decode_model();
  return 0;
}
