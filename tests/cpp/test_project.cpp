// Kernel tests (torch-free, ctest) of the fused projection (csrc/kernels/project.cuh): the kernels of csrc/kernels/ run through the CUDA emulator
// via the kernel API (csrc/kernels/api.h, namespace ax::emu_impl), against a float64 reference of h = core(x Vh^T)
// (P exact from the 16-bit inputs; tolerance: P accumulated in fp32 on the emulated tensor cores, h rounded once
// to 16 bits). Built twice (CMakeLists.txt):
// under ASan + UBSan, and as the emulator's checked build (every memory access of kernel code checked:
// shared-memory and inter-CTA races, cp.async in flight, uninitialised and out-of-bounds global accesses;
// emu/checker.h). All device memory is ax_emu::DeviceBuffer: inputs initialised, outputs and workspaces
// poisoned and uninitialised, so an entry a kernel forgets to write, or a partial it reads before writing,
// fails; launches must use the stream the API was given.
#include <tuple>

#include "csrc/kernels/launch_project.cuh"
#include "csrc/kernels/rowcore.h"
#include "tests/cpp/kernel_test_util.h"
#include "tests/cpp/row_oracles.h"

using namespace kt;

namespace {
// h = core(x Vh^T) through project_forward vs a float64 reference (P exact from the 16-bit inputs).
// Tolerance: P accumulated in fp32 on the (emulated) tensor cores, h rounded once to 16 bits.
// core: 0 gain, 1 rot (side, bs), 2 dplr (k), 3 ablate (k).
template <typename T>
void check_project(int64_t n, int64_t d_in, int64_t r, int core, int side, int bs, uint64_t seed, int k = 0,
                   ax::DecodePath path = ax::DecodePath::model) {
  std::mt19937_64 rng(seed);
  const std::vector<T> x = randn<T>(static_cast<size_t>(n * d_in), rng), Vh = randn<T>(static_cast<size_t>(r * d_in), rng, 0.05);
  std::vector<float> S = randn<float>(static_cast<size_t>(r), rng, 1.0, 2.0), g = randn<float>(static_cast<size_t>(r), rng, 0.5);
  std::vector<float> R;
  if (core == 1 && side != 0) {
    const int64_t nb = r / bs, m = int64_t(bs) * (bs - 1) / 2;
    std::vector<float> t = randn<float>(static_cast<size_t>(nb * m), rng), work(static_cast<size_t>(2 * bs * bs));
    R.resize(static_cast<size_t>(r * bs));
    for (int64_t b = 0; b < nb; ++b) ax::cayley_block_forward(t.data() + b * m, bs, 0.9f, 1.0f, work.data(), R.data() + b * bs * bs);
  }
  // dplr A (k, r), B (r, k); ablate C (r, k) in A, a (k) in [0, 1]
  const std::vector<float> A = randn<float>(static_cast<size_t>(k * r), rng, 0.3), B = randn<float>(static_cast<size_t>(r * k), rng, 0.3);
  std::vector<float> a = randn<float>(static_cast<size_t>(k), rng, 0.3, 0.5);
  const double coeff = core == 0 || core == 2 ? 0.8 : -0.6;
  const bool suppress = (core == 0 || core == 2) && (seed % 2 == 1);
  // reference in double
  std::vector<double> P(static_cast<size_t>(n * r)), href(static_cast<size_t>(n * r)), s(static_cast<size_t>(r));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < r; ++j) {
      double acc = 0;
      for (int64_t q = 0; q < d_in; ++q) acc += to_acc<double>(x[i * d_in + q]) * to_acc<double>(Vh[j * d_in + q]);
      P[i * r + j] = acc;
    }
  for (int64_t j = 0; j < r; ++j)
    s[j] = core == 1 ? double(S[j]) + coeff * double(g[j]) : ax::gain_scale<double>(S[j], g[j], coeff, suppress, nullptr);
  const std::vector<double> Rd(R.begin(), R.end()), Ad(A.begin(), A.end()), Bd(B.begin(), B.end()), ad(a.begin(), a.end()),
      Sd(S.begin(), S.end());
  std::vector<double> tmp(static_cast<size_t>(std::max(k, 1)));
  for (int64_t i = 0; i < n; ++i) {
    const double* pi = P.data() + i * r;
    double* hi = href.data() + i * r;
    if (core <= 1) ax::rot_row_forward(pi, s.data(), Rd.data(), core == 0 ? 0 : side, int(r), int(core == 0 ? 1 : bs), hi);
    else if (core == 2) ax::dplr_row_forward(pi, s.data(), Ad.data(), Bd.data(), coeff, int(r), k, tmp.data(), hi);
    else ax::ablate_row_forward(pi, Sd.data(), Ad.data(), ad.data(), coeff, int(r), k, tmp.data(), hi);
  }
  // kernels
  Dev<T> x_d(x, "x"), Vh_d(Vh, "Vh"), h_d(static_cast<size_t>(n * r), "h"), p_d(static_cast<size_t>(n * r), "p");
  Dev<float> S_d(S, "S"), g_d(g, "g"), R_d(R, "R"), A_d(A, "A"), B_d(B, "B"), a_d(a, "a");
  ax::ProjectCall call;
  call.dtype = dtype_of<T>();
  call.n = n;
  call.d_in = d_in;
  ax::CoreParams& c = call.core;
  c.core = ax::Core(core);
  c.r = r;
  c.side = side;
  c.bs = bs;
  c.k = k;
  c.S = S_d.data();
  c.g = g_d.data();
  c.R = ptr_or_null(R_d);
  c.A = k ? A_d.data() : nullptr;
  c.B = k && core == 2 ? B_d.data() : nullptr;
  c.a = k ? a_d.data() : nullptr;
  c.coeff = coeff;
  c.suppress_only = suppress;
  call.decode_path = path;
  Dev<float> ws_d(static_cast<size_t>(ax::project_workspace_elems(n, d_in, c, path)), "workspace");
  call.x = x_d.data();
  call.Vh = Vh_d.data();
  call.h = h_d.data();
  call.p_out = p_d.data();
  call.workspace = ptr_or_null(ws_d);
  K::project_forward(call, test_stream());
  const std::vector<T> h = h_d.to_host(), p = p_d.to_host();
  double hmax = 0, pmax = 0, herr = 0, perr = 0;
  for (int64_t e = 0; e < n * r; ++e) {
    hmax = std::max(hmax, std::fabs(href[e]));
    pmax = std::max(pmax, std::fabs(P[e]));
    herr = std::max(herr, std::fabs(to_acc<double>(h[e]) - href[e]));  // NaN fails the check below
    perr = std::max(perr, std::fabs(to_acc<double>(p[e]) - P[e]));
    if (std::isnan(to_acc<double>(h[e])) || std::isnan(to_acc<double>(p[e]))) herr = perr = 1e30;
  }
  const double tol = std::is_same<T, __nv_bfloat16>::value ? 8e-3 : 1.5e-3;
  std::printf("    %s n=%lld d_in=%lld r=%lld core=%d side=%d bs=%d k=%d splits=%lld%s: rel err h %.2g, p %.2g\n",
              name_of<T>(), (long long)n, (long long)d_in, (long long)r, core, side, bs, k,
              (long long)(ax::project_workspace_elems(n, d_in, c, path) > 0 ? ax::project_decode_splits(d_in, r) : 0),
              ax::project_decodes(n) && ax::project_gemv(n, d_in, c, path) ? " (one kernel)" : "", herr / hmax,
              perr / pmax);
  AX_CHECK(herr <= tol * hmax);
  AX_CHECK(perr <= tol * pmax);
}

ax::ProjectCall gain_call(const void* S, const void* g, int64_t n, int64_t d_in, int64_t r) {
  ax::ProjectCall c;
  c.dtype = ax::DType::bf16;
  c.n = n;
  c.d_in = d_in;
  c.core.r = r;
  c.core.S = S;
  c.core.g = g;
  return c;
}
}  // namespace

AX_TEST(project_prefill_matches_reference) {
  check_project<__nv_bfloat16>(37, 72, 20, 0, 0, 1, 1);   // K tail (72 = 4.5 k-steps), r off the n-tiles
  check_project<__half>(70, 64, 12, 1, 2, 3, 2);           // rot U, 3 row tiles
  check_project<__nv_bfloat16>(33, 48, 48, 1, 1, 16, 3);  // rot V, bs 16
  check_project<__half>(40, 128, 100, 0, 0, 1, 5);        // 8 n-tiles per warp
  check_project<__nv_bfloat16>(17, 32, 256, 1, 0, 1, 4);   // r = 256 (16 n-tiles per warp), rot none
  check_project<__nv_bfloat16>(45, 40, 24, 2, 0, 1, 11, 3);  // dplr k 3
  check_project<__half>(33, 64, 72, 2, 0, 1, 12, 32);        // dplr k 32 (the largest tile of Q)
  check_project<__nv_bfloat16>(20, 24, 36, 3, 0, 1, 13, 2);  // ablate k 2
  check_project<__half>(64, 56, 256, 3, 0, 1, 14, 32);       // ablate, r 256 and k 32: the largest epilogue
  check_project<__nv_bfloat16>(35, 96, 66, 0, 0, 1, 17);     // r just past 64 (8 n-tiles per warp), 6 K steps
  check_project<__half>(19, 48, 130, 1, 2, 2, 18);           // r just past 128 (16 n-tiles), rot U, 3 K steps
  check_project<__nv_bfloat16>(18, 64, 33, 0, 0, 1, 20);     // odd r: the last column pair of a row is one column
}

AX_TEST(project_decode_matches_reference) {
  check_project<__nv_bfloat16>(5, 2048, 36, 1, 1, 4, 6);  // two column slices, the second 4 columns wide
  check_project<__half>(16, 1024, 64, 0, 0, 1, 7);        // all 16 rows of the m-tile
  check_project<__nv_bfloat16>(1, 1536, 20, 0, 0, 1, 9);  // one token
  check_project<__half>(3, 1024, 40, 2, 0, 1, 15, 5);       // dplr through the finish kernel
  check_project<__nv_bfloat16>(7, 2048, 24, 3, 0, 1, 16, 4);  // ablate through the finish kernel
  check_project<__half>(3, 1024, 21, 0, 0, 1, 19);            // odd r: every other workspace row is not 8-byte aligned
  // r 256 (8 column slices), 9 rows (the m-tile's second half partly), d_in 1000: 16 splits of 64, the last 40 wide
  // (a half-filled K step)
  check_project<__nv_bfloat16>(9, 1000, 256, 1, 2, 8, 23);
  check_project<__half>(2, 40, 48, 0, 0, 1, 24);  // d_in 40: one split shorter than its K range
  // K ranges at the cap (448): d_in 14400, r 136 (5 column slices, the last 8 wide), dplr: 33 splits, the last 64
  // wide, so the finish reads a second batch (one split) per column
  check_project<__half>(1, 14400, 136, 2, 0, 1, 30, 8);
  // the one-kernel decode (gain, rot none; at most 4 rows; the model's choice where not named): 4 rows, r 17 (the
  // last CTA one column wide), d_in 2056 (257 chunks of 8); 1 row at d_in 16400 (2050 chunks: a second batch for two
  // threads); and gain at 2 rows through the split path
  check_project<__half>(4, 2056, 17, 1, 0, 1, 31);
  check_project<__nv_bfloat16>(1, 16400, 6, 0, 0, 1, 32, 0, ax::DecodePath::gemv);
  check_project<__nv_bfloat16>(2, 1024, 40, 0, 0, 1, 33, 0, ax::DecodePath::split);
}

// The projection kernel in the emulator's memory model (checked build only): its cp.async fill, mma fragment reads
// and P tile, weighted by count as in kernel_metrics.md, within the 1.25 bank-conflict target, and its global
// accesses whole sectors, at r 256: the prefill tile (40 rows), the one-kernel decode (gain, 2 rows) and the decode
// kernels (rot and dplr, 1-2 rows).
AX_TEST(project_core_shared_layout_is_conflict_free) {
  if (!ax_emu::checked_build()) return;
  ax_emu::start_metrics();
  check_project<__nv_bfloat16>(40, 64, 256, 0, 0, 1, 21);
  check_project<__nv_bfloat16>(40, 64, 256, 1, 1, 8, 27);     // prefill rot V: R staged
  check_project<__nv_bfloat16>(40, 64, 256, 2, 0, 1, 28, 8);  // prefill dplr: B staged
  check_project<__nv_bfloat16>(2, 2048, 256, 0, 0, 1, 22);
  check_project<__nv_bfloat16>(2, 2048, 256, 1, 1, 4, 25);     // rot V: R staged in the finish
  check_project<__nv_bfloat16>(1, 2048, 256, 2, 0, 1, 26, 8);  // dplr: B staged in the finish
  const std::vector<ax_emu::MetricRow> rows = ax_emu::stop_metrics();
  for (const char* kernel :
       {"project_core_kernel", "project_decode_kernel", "project_finish_kernel", "project_gemv_kernel"})
    check_memory_targets(rows, kernel);
}

AX_TEST(project_same_bits_for_every_schedule) {
  SeedGuard guard;
  std::mt19937_64 rng(3);
  const int64_t d_in = 1024, r = 40;
  for (int64_t n : {20, 7, 3}) {  // the prefill tile; the decode kernels (16 splits); the one-kernel decode
    Dev<__nv_bfloat16> x(randn<__nv_bfloat16>(static_cast<size_t>(n * d_in), rng), "x");
    Dev<__nv_bfloat16> Vh(randn<__nv_bfloat16>(static_cast<size_t>(r * d_in), rng), "Vh");
    Dev<float> S(std::vector<float>(static_cast<size_t>(r), 1.5f), "S"), g(std::vector<float>(static_cast<size_t>(r), 0.1f), "g");
    const ax::CoreParams core = gain_call(S.data(), g.data(), n, d_in, r).core;
    Dev<float> ws(static_cast<size_t>(std::max<int64_t>(1, ax::project_workspace_elems(n, d_in, core))), "workspace");
    std::vector<__nv_bfloat16> first;
    for (uint64_t seed : {1ull, 2ull, 3ull}) {
      ax_emu::set_seed(seed);
      Dev<__nv_bfloat16> h_d(static_cast<size_t>(n * r), "h");
      ax::ProjectCall call = gain_call(S.data(), g.data(), n, d_in, r);
      call.x = x.data();
      call.Vh = Vh.data();
      call.h = h_d.data();
      call.workspace = ws.data();
      K::project_forward(call, test_stream());
      const std::vector<__nv_bfloat16> h = h_d.to_host();
      if (first.empty()) first = h;
      AX_CHECK(same_bits(h, first, "h"));
    }
  }
}

// A steered call (groups of rows at their coefficients; rot: a rotation set each; with n_adapters > 1 a bank) against
// one unsteered call per group with that group's coefficient and parameters: bit for bit (P of a row does not depend
// on the other rows where the call and its per-group calls take one path: the one-kernel decode, the same K splits
// at most 16 rows, or the prefill tile).
template <typename T>
void check_project_steered(int64_t groups, int64_t rows, int64_t d_in, int64_t r, ax::Core core, int side, int bs,
                           int k, int64_t n_adapters, uint64_t seed) {
  const int64_t n = groups * rows, nA = n_adapters;
  const bool rotates = core == ax::Core::rot && side != ax::kRotNone;
  std::mt19937_64 rng(seed);
  const std::vector<T> x = randn<T>(static_cast<size_t>(n * d_in), rng), Vh = randn<T>(static_cast<size_t>(r * d_in), rng, 0.05);
  const std::vector<float> S = randn<float>(static_cast<size_t>(r), rng, 1.0, 2.0);
  const std::vector<float> g = randn<float>(static_cast<size_t>(nA * r), rng, 0.5);
  const std::vector<float> A = randn<float>(static_cast<size_t>(nA * k * r), rng, 0.3), B = randn<float>(static_cast<size_t>(nA * r * k), rng, 0.3);
  const std::vector<float> a = randn<float>(static_cast<size_t>(nA * k), rng, 0.3, 0.5);
  std::vector<float> coeffs = randn<float>(static_cast<size_t>(groups), rng);
  coeffs[0] = 0.f;
  std::vector<int64_t> adapters(static_cast<size_t>(groups));
  for (int64_t e = 0; e < groups; ++e) adapters[e] = (e * 5 + 1) % nA;
  std::vector<float> R;
  if (rotates) {
    const int64_t nb = r / bs, m = int64_t(bs) * (bs - 1) / 2;
    std::vector<float> t = randn<float>(static_cast<size_t>(nb * m), rng), work(static_cast<size_t>(2 * bs * bs));
    R.resize(static_cast<size_t>(groups * r * bs));
    for (int64_t e = 0; e < groups; ++e)
      for (int64_t b = 0; b < nb; ++b)
        ax::cayley_block_forward(t.data() + b * m, bs, 0.9f, coeffs[e], work.data(), R.data() + (e * nb + b) * bs * bs);
  }
  auto slice = [](const std::vector<float>& v, int64_t i, int64_t count) {
    return v.empty() ? v : std::vector<float>(v.begin() + i * (int64_t(v.size()) / count), v.begin() + (i + 1) * (int64_t(v.size()) / count));
  };
  void* st = test_stream();
  auto run = [&](const std::vector<T>& xs, int64_t rows_, const std::vector<float>& g_, const std::vector<float>& R_,
                 const std::vector<float>& A_, const std::vector<float>& B_, const std::vector<float>& a_, float coeff,
                 const std::vector<float>* cs, const std::vector<int64_t>* ads) {
    Dev<T> x_d(xs, "x"), Vh_d(Vh, "Vh"), h_d(static_cast<size_t>(rows_ * r), "h");
    Dev<float> S_d(S, "S"), g_d(g_, "g"), R_d(R_, "R"), A_d(A_, "A"), B_d(B_, "B"), a_d(a_, "a");
    Dev<float> c_d(cs ? *cs : std::vector<float>(), "coeffs");
    Dev<int64_t> ad_d(ads ? *ads : std::vector<int64_t>(), "adapters");
    ax::ProjectCall call;
    call.dtype = dtype_of<T>();
    call.n = rows_;
    call.d_in = d_in;
    ax::CoreParams& c = call.core;
    c.core = core;
    c.r = r;
    c.k = core == ax::Core::dplr || core == ax::Core::ablate ? k : 0;
    c.bs = rotates ? bs : 1;
    c.side = core == ax::Core::rot ? side : 0;
    c.coeff = coeff;
    c.S = S_d.data();
    c.g = core == ax::Core::ablate ? nullptr : g_d.data();
    c.R = ptr_or_null(R_d);
    c.A = ptr_or_null(A_d);
    c.B = core == ax::Core::dplr ? ptr_or_null(B_d) : nullptr;
    c.a = core == ax::Core::ablate ? ptr_or_null(a_d) : nullptr;
    if (cs) {
      c.entries = int64_t(cs->size());
      c.coeffs = c_d.data();
    }
    if (ads) {
      c.adapters = ad_d.data();
      c.n_adapters = nA;
    }
    Dev<float> ws(static_cast<size_t>(std::max<int64_t>(1, ax::project_workspace_elems(rows_, d_in, c))), "workspace");
    call.x = x_d.data();
    call.Vh = Vh_d.data();
    call.h = h_d.data();
    call.workspace = ws.data();
    K::project_forward(call, st);
    return h_d.to_host();
  };
  std::vector<T> h_ref;
  for (int64_t e = 0; e < groups; ++e) {
    const int64_t ad = adapters[e];
    const std::vector<T> xs(x.begin() + e * rows * d_in, x.begin() + (e + 1) * rows * d_in);
    for (const T& v : run(xs, rows, slice(g, ad, nA), slice(R, e, groups), slice(A, ad, nA), slice(B, ad, nA),
                          slice(a, ad, nA), coeffs[e], nullptr, nullptr))
      h_ref.push_back(v);
  }
  const std::vector<T> h = run(x, n, g, R, A, B, a, 1.f, &coeffs, nA > 1 ? &adapters : nullptr);
  const std::string tag = std::string(name_of<T>()) + " core=" + std::to_string(int(core)) + " groups=" +
                          std::to_string(groups) + " rows=" + std::to_string(rows) + " adapters=" + std::to_string(nA);
  AX_CHECK(same_bits(h, h_ref, ("steered projection h " + tag).c_str()));
}

AX_TEST(project_steered_groups_equal_unsteered_calls) {
  for (int64_t nA : {1, 3}) {
    // decode: gain at 4 rows of one group each (the one-kernel decode), every core at 3 groups of 5 rows (d_in 512:
    // 8 K splits); prefill: 2 groups of 40 rows
    check_project_steered<__nv_bfloat16>(4, 1, 512, 24, ax::Core::gain, 0, 1, 0, nA, 40);
    for (auto [groups, rows, d_in] : {std::tuple<int64_t, int64_t, int64_t>{3, 5, 512}, {2, 40, 64}}) {
      check_project_steered<__nv_bfloat16>(groups, rows, d_in, 24, ax::Core::gain, 0, 1, 0, nA, 41);
      check_project_steered<__half>(groups, rows, d_in, 24, ax::Core::rot, ax::kRotV, 4, 0, nA, 42);
      check_project_steered<__nv_bfloat16>(groups, rows, d_in, 24, ax::Core::rot, ax::kRotU, 3, 0, nA, 43);
      check_project_steered<__nv_bfloat16>(groups, rows, d_in, 40, ax::Core::dplr, 0, 1, 5, nA, 44);
      check_project_steered<__half>(groups, rows, d_in, 40, ax::Core::ablate, 0, 1, 3, nA, 45);
    }
  }
}

AX_TEST(project_bad_input_throws) {
  std::vector<__nv_bfloat16> x(64), Vh(64), h(64);
  std::vector<float> S(8, 1.f);
  ax::ProjectCall call = gain_call(S.data(), S.data(), 2, 12, 4);
  call.x = x.data();
  call.Vh = Vh.data();
  call.h = h.data();
  AX_CHECK_THROWS(std::invalid_argument, K::project_forward(call, nullptr), "multiple of 8");
  call.d_in = 16;
  call.dtype = ax::DType::f32;
  AX_CHECK_THROWS(std::invalid_argument, K::project_forward(call, nullptr), "bfloat16 or float16");
  call.dtype = ax::DType::bf16;
  call.x = x.data() + 1;
  AX_CHECK_THROWS(std::invalid_argument, K::project_forward(call, nullptr), "aligned");
  call.x = x.data();
  call.core.core = ax::Core::dplr;
  call.core.k = 33;
  call.core.A = call.core.B = S.data();
  AX_CHECK_THROWS(std::invalid_argument, K::project_forward(call, nullptr), "low-rank");
  call.core.k = 4;
  call.decode_path = ax::DecodePath::gemv;
  AX_CHECK_THROWS(std::invalid_argument, K::project_forward(call, nullptr), "one-kernel decode");
}

int main(int argc, char** argv) { return ax_test::run_main(argc, argv); }
