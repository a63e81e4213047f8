// Kernel tests (torch-free, ctest) of the r-space cores (csrc/kernels/cores.cuh): the kernels of csrc/kernels/ run through the CUDA emulator
// via the kernel API (csrc/kernels/api.h, namespace ax::emu_impl), against the per-row math of csrc/kernels/rowcore.h
// (gain, rot) and tests/cpp/row_oracles.h (dplr, ablate) summed in the same row chunks: the kernels mirror that
// arithmetic, so results must agree bit for bit, for every emulator seed (block order and thread interleaving). Built twice (CMakeLists.txt):
// under ASan + UBSan, and as the emulator's checked build (every memory access of kernel code checked:
// shared-memory and inter-CTA races, cp.async in flight, uninitialised and out-of-bounds global accesses;
// emu/checker.h). All device memory is ax_emu::DeviceBuffer: inputs initialised, outputs and workspaces
// poisoned and uninitialised, so an entry a kernel forgets to write, or a partial it reads before writing,
// fails; launches must use the stream the API was given.
#include "csrc/kernels/launch_cores.cuh"
#include "csrc/kernels/rowcore.h"
#include "tests/cpp/kernel_test_util.h"
#include "tests/cpp/row_oracles.h"

using namespace kt;

namespace {

struct Shape {
  int64_t n, r, k;  // k: low-rank / ablation rank, or the rotation block size
  int64_t side;     // rot only
};

// One core, forward and backward, through the emulated kernels and the reference; checks bits. `off`: p, grad_h, h
// and dp start `off` elements into their device buffers (rows that are not 16-byte aligned for off % 8 != 0).
template <typename T>
void check_core(ax::Core core, Shape sh, double coeff, bool suppress, uint64_t seed, int64_t off = 0) {
  using A = acc_of<T>;
  const int64_t n = sh.n, r = sh.r, k = sh.k;
  std::mt19937_64 rng(seed * 7919 + uint64_t(r));
  const std::vector<T> p = randn<T>(static_cast<size_t>(n * r), rng), dh = randn<T>(static_cast<size_t>(n * r), rng);
  std::vector<A> S = randn<A>(static_cast<size_t>(r), rng, 1.0, 2.0), g = randn<A>(static_cast<size_t>(r), rng);
  std::vector<A> P1, P2;  // A, B (dplr) | R (rot) | C, a (ablate)
  int64_t n_part = 0;
  const int64_t bs = core == ax::Core::rot ? k : 1, side = core == ax::Core::rot ? sh.side : 0;
  switch (core) {
    case ax::Core::gain: n_part = r; break;
    case ax::Core::dplr:
      P1 = randn<A>(static_cast<size_t>(k * r), rng);
      P2 = randn<A>(static_cast<size_t>(r * k), rng);
      n_part = r + 2 * k * r;
      break;
    case ax::Core::rot: {
      if (side != ax::kRotNone) {
        const int64_t nb = r / bs, m = bs * (bs - 1) / 2;
        std::vector<A> t = randn<A>(static_cast<size_t>(nb * m), rng), work(static_cast<size_t>(2 * bs * bs));
        P1.resize(static_cast<size_t>(r * bs));
        for (int64_t b = 0; b < nb; ++b)
          ax::cayley_block_forward(t.data() + b * m, int(bs), A(0.9), A(1), work.data(), P1.data() + b * bs * bs);
      }
      n_part = r + (side != ax::kRotNone ? r * bs : 0);
      break;
    }
    case ax::Core::ablate:
      P1 = randn<A>(static_cast<size_t>(r * k), rng, 0.3);
      P2.resize(static_cast<size_t>(k));
      for (int64_t m = 0; m < k; ++m) P2[m] = A(0.1 + 0.8 * double(m + 1) / double(k + 1));
      n_part = r * k + k;
      break;
  }

  // ---- reference
  std::vector<T> h_ref(static_cast<size_t>(n * r)), dp_ref(static_cast<size_t>(n * r));
  std::vector<A> s(static_cast<size_t>(r)), dscale(static_cast<size_t>(r));
  for (int64_t j = 0; j < r; ++j)
    s[j] = core == ax::Core::rot ? S[j] + A(coeff) * g[j]
                             : ax::gain_scale<A>(S[j], g[j], A(coeff), suppress, &dscale[j]);
  std::vector<A> w(static_cast<size_t>(4 * r + 4 * k + 8)), tot;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<A> x = row_acc(p, i, r), h(static_cast<size_t>(r));
    switch (core) {
      case ax::Core::gain: ax::gain_row_forward(x.data(), s.data(), int(r), h.data()); break;
      case ax::Core::dplr:
        ax::dplr_row_forward(x.data(), s.data(), P1.data(), P2.data(), A(coeff), int(r), int(k), w.data(), h.data());
        break;
      case ax::Core::rot: ax::rot_row_forward(x.data(), s.data(), P1.data(), int(side), int(r), int(bs), h.data()); break;
      case ax::Core::ablate:
        ax::ablate_row_forward(x.data(), S.data(), P1.data(), P2.data(), A(coeff), int(r), int(k), w.data(), h.data(),
                               K::kern::ablate_lanes(int(k)));
        break;
    }
    store_row(h, h_ref, i, r);
  }
  tot = reduce_rows<A>(n, n_part, [&](int64_t i, A* part) {
    std::vector<A> x = row_acc(p, i, r), d = row_acc(dh, i, r), dpr(static_cast<size_t>(r));
    switch (core) {
      case ax::Core::gain: ax::gain_row_backward(d.data(), x.data(), s.data(), int(r), dpr.data(), part); break;
      case ax::Core::dplr:
        ax::dplr_row_backward(d.data(), x.data(), s.data(), P1.data(), P2.data(), A(coeff), int(r), int(k), w.data(),
                              w.data() + k, dpr.data(), part, part + r, part + r + k * r);
        break;
      case ax::Core::rot:
        ax::rot_row_backward(d.data(), x.data(), s.data(), P1.data(), int(side), int(r), int(bs), w.data(), dpr.data(),
                             part, part + r);
        break;
      case ax::Core::ablate:
        ax::ablate_row_backward(d.data(), x.data(), S.data(), P1.data(), P2.data(), A(coeff), int(r), int(k), w.data(),
                                w.data() + k, dpr.data(), part, part + r * k, K::kern::ablate_lanes(int(k)));
        break;
    }
    store_row(dpr, dp_ref, i, r);
  });
  if (core == ax::Core::gain || core == ax::Core::dplr)
    for (int64_t j = 0; j < r; ++j) tot[j] *= dscale[j];
  if (core == ax::Core::rot)
    for (int64_t j = 0; j < r; ++j) tot[j] *= A(coeff);

  // ---- kernels (outputs and workspace uninitialised device memory)
  auto shifted = [off](const std::vector<T>& v) {
    std::vector<T> o(static_cast<size_t>(off), T(0.0f));
    o.insert(o.end(), v.begin(), v.end());
    return o;
  };
  Dev<T> p_d(shifted(p), "p"), dh_d(shifted(dh), "grad_h"), h_d(static_cast<size_t>(n * r + off), "h"),
      dp_d(static_cast<size_t>(n * r + off), "dp");
  Dev<A> S_d(S, "S"), g_d(g, "g"), P1_d(P1, "A/R/C"), P2_d(P2, "B/a"), dparams_d(static_cast<size_t>(n_part), "dparams");
  Dev<A> ws_d(static_cast<size_t>(ax::core_chunks_per_entry(n) * ax::core_slice(n_part)), "workspace");
  void* st = test_stream();
  ax::CoreCall call;
  call.dtype = dtype_of<T>();
  call.n = n;
  ax::CoreParams& c = call.core;
  c.core = core;
  c.r = r;
  c.coeff = coeff;
  c.S = S_d.data();
  switch (core) {
    case ax::Core::gain:
      c.g = g_d.data();
      c.suppress_only = suppress;
      break;
    case ax::Core::dplr:
      c.k = k;
      c.g = g_d.data();
      c.A = P1_d.data();
      c.B = P2_d.data();
      c.suppress_only = suppress;
      break;
    case ax::Core::rot:
      c.g = g_d.data();
      c.side = int(side);
      c.bs = side == ax::kRotNone ? 1 : bs;
      c.R = ptr_or_null(P1_d);
      break;
    case ax::Core::ablate:
      c.k = k;
      c.A = P1_d.data();
      c.a = P2_d.data();
      break;
  }
  AX_CHECK_EQ(ax::core_partials(c), n_part);
  call.p = p_d.data() + off;
  call.h = h_d.data() + off;
  K::core_forward(call, st);
  call.grad_h = dh_d.data() + off;
  call.dp = dp_d.data() + off;
  call.dparams = dparams_d.data();
  call.workspace = ws_d.data();
  K::core_backward(call, st);
  std::vector<T> h = h_d.to_host(), dp = dp_d.to_host();
  h.erase(h.begin(), h.begin() + off);
  dp.erase(dp.begin(), dp.begin() + off);
  const std::vector<A> dparams = dparams_d.to_host();
  const std::string tag = std::string(name_of<T>()) + " n=" + std::to_string(n) + " r=" + std::to_string(r) +
                          " k/bs=" + std::to_string(k) + " side=" + std::to_string(side);
  AX_CHECK(same_bits(h, h_ref, ("h " + tag).c_str()));
  AX_CHECK(same_bits(dp, dp_ref, ("dp " + tag).c_str()));
  AX_CHECK(same_bits(dparams, tot, ("dparams " + tag).c_str()));
}

// Shapes: odd row counts, one and zero rows, r off every tile size, several reduction CTAs
// (n > 16), several row tiles per CTA and parameters too large to stage (wide r / large k).
const Shape kShapes[] = {{7, 12, 3, 1}, {33, 20, 4, 2}, {70, 36, 2, 1}, {1, 8, 8, 2}, {0, 12, 3, 1}, {150, 48, 16, 1}};

template <typename T>
void check_all_cores(uint64_t seed) {
  for (const Shape& sh : kShapes) {
    check_core<T>(ax::Core::gain, sh, 0.7, false, seed);
    check_core<T>(ax::Core::gain, sh, -1.3, true, seed);
    check_core<T>(ax::Core::dplr, sh, 0.9, false, seed);
    for (int64_t side : {0, 1, 2}) check_core<T>(ax::Core::rot, Shape{sh.n, sh.r, sh.k, side}, -0.6, false, seed);
    check_core<T>(ax::Core::ablate, sh, 0.8, false, seed);
  }
}

}  // namespace

AX_TEST(cores_f32_bit_exact) { check_all_cores<float>(1); }
AX_TEST(cores_f64_bit_exact) { check_all_cores<double>(2); }
AX_TEST(cores_f16_bit_exact) { check_all_cores<__half>(3); }
AX_TEST(cores_bf16_bit_exact) { check_all_cores<__nv_bfloat16>(4); }

// Several row tiles per reduction CTA for every tiled core: 8779 rows make 33-row chunks, two tiles of
// at most 32 rows each (the barriers between tiles matter only there).
AX_TEST(cores_several_row_tiles_per_cta) {
  check_core<float>(ax::Core::dplr, Shape{8779, 20, 3, 0}, 0.9, false, 6);
  check_core<__nv_bfloat16>(ax::Core::rot, Shape{8779, 20, 4, 1}, -0.6, false, 6);
  check_core<float>(ax::Core::rot, Shape{8779, 24, 3, 2}, 0.7, false, 6);
  check_core<__half>(ax::Core::ablate, Shape{8779, 20, 2, 0}, 0.8, false, 6);
  check_core<float>(ax::Core::gain, Shape{8779, 20, 1, 0}, 0.5, true, 6);
}

AX_TEST(cores_wide_tiles_and_unstaged_params) {
  check_core<float>(ax::Core::rot, Shape{40, 384, 32, 1}, 0.8, false, 5);   // R does not fit: read from global
  check_core<float>(ax::Core::rot, Shape{40, 384, 4, 2}, 0.8, false, 5);    // 8-row tiles (R staged with a padded row stride), 16-row chunks
  check_core<float>(ax::Core::dplr, Shape{45, 96, 64, 0}, 0.9, false, 5);   // A, B do not fit
  check_core<float>(ax::Core::ablate, Shape{33, 640, 20, 0}, 0.8, false, 5);  // C does not fit, 8-row tiles
  check_core<double>(ax::Core::dplr, Shape{20, 200, 16, 0}, 0.9, true, 5);
  check_core<float>(ax::Core::gain, Shape{21, 3000, 1, 0}, 0.5, false, 5);
  check_core<__nv_bfloat16>(ax::Core::ablate, Shape{70, 40, 1, 0}, 0.8, false, 5);  // k 1: 8 threads per sum
  check_core<double>(ax::Core::ablate, Shape{37, 52, 2, 0}, 0.8, false, 5);          // k 2: 4 threads per sum
}

// Rows of a vector's width whose start is not 16-byte aligned (a view one element into its storage): the
// element-wise tile fills and elementwise forward.
AX_TEST(cores_unaligned_rows) {
  for (int64_t off : {1, 3}) {
    check_core<__nv_bfloat16>(ax::Core::gain, Shape{40, 16, 1, 0}, 0.7, false, 7, off);
    check_core<__nv_bfloat16>(ax::Core::dplr, Shape{40, 16, 3, 0}, 0.9, false, 7, off);
    check_core<__nv_bfloat16>(ax::Core::rot, Shape{40, 16, 4, 1}, -0.6, false, 7, off);
    check_core<__half>(ax::Core::rot, Shape{40, 16, 4, 2}, -0.6, false, 7, off);
    check_core<float>(ax::Core::ablate, Shape{40, 16, 2, 0}, 0.8, false, 7, off);
  }
}

// The tile fills in the emulator's memory model (checked build only; the plain build has no metrics): 16-byte global
// loads, fully coalesced, and 16-byte shared stores without bank conflicts (the order of a lane's two halves).
AX_TEST(cores_tile_fills_are_vector_and_conflict_free) {
  if (!ax_emu::checked_build()) return;
  ax_emu::start_metrics();
  check_core<__nv_bfloat16>(ax::Core::rot, Shape{64, 256, 4, 1}, -0.6, false, 8);
  check_core<float>(ax::Core::dplr, Shape{40, 64, 2, 0}, 0.9, false, 8);
  const std::vector<ax_emu::MetricRow> rows = ax_emu::stop_metrics();
  int loads = 0, stores = 0;
  for (const ax_emu::MetricRow& m : rows) {
    if (m.site.find("load_tile") == std::string::npos) continue;
    const std::string what = m.kernel + " " + m.site;
    if (!m.shared && !m.write) {
      ++loads;
      if (m.bytes_per_lane != 16.0 || m.sectors != m.min_sectors)
        std::printf("    %s: %.1f B/lane, %.0f / %.0f sectors\n", what.c_str(), m.bytes_per_lane, m.sectors,
                    m.min_sectors);
      AX_CHECK_EQ(m.bytes_per_lane, 16.0);
      AX_CHECK_EQ(m.sectors, m.min_sectors);
    } else if (m.shared && m.write) {
      ++stores;
      if (m.wavefronts != m.ideal_wavefronts)
        std::printf("    %s: %.0f / %.0f wavefronts\n", what.c_str(), m.wavefronts, m.ideal_wavefronts);
      AX_CHECK_EQ(m.bytes_per_lane, 16.0);
      AX_CHECK_EQ(m.wavefronts, m.ideal_wavefronts);
    }
  }
  AX_CHECK(loads > 0);
  AX_CHECK(stores > 0);
}

// The elementwise backward in the emulator's memory model (checked build only): its reads of grad_h and p and its
// writes of dp are 16-byte accesses of whole sectors (bf16, and f32 at an r that is a multiple of 4 only), and the
// whole kernel, s and the partials included, is within the targets (bank-conflict factor 1.25, sectors 85%).
AX_TEST(cores_gain_backward_moves_vectors) {
  if (!ax_emu::checked_build()) return;
  ax_emu::start_metrics();
  check_core<__nv_bfloat16>(ax::Core::gain, Shape{70, 256, 1, 0}, 0.7, false, 8);
  check_core<float>(ax::Core::gain, Shape{33, 36, 1, 0}, -0.4, false, 9);
  const std::vector<ax_emu::MetricRow> rows = ax_emu::stop_metrics();
  check_memory_targets(rows, "diag_backward_kernel");
  int accesses = 0;
  for (const ax_emu::MetricRow& m : rows) {
    if (m.kernel.find("diag_backward_kernel") == std::string::npos || m.shared) continue;
    if (m.site.find("ld_vec") == std::string::npos && m.site.find("st_vec") == std::string::npos) continue;
    ++accesses;
    AX_CHECK_EQ(m.bytes_per_lane, 16.0);
    AX_CHECK_EQ(m.sectors, m.min_sectors);
  }
  AX_CHECK(accesses >= 3);  // grad_h, p, dp
}

// The shared layouts of the low-rank core in the emulator's memory model (checked build only): with A, B and the row
// tiles in their padded strides each dplr kernel's shared accesses, weighted by count as in kernel_metrics.md, are
// within the 1.25 bank-conflict target at the training width r 256 and rank 8.
AX_TEST(cores_dplr_shared_layout_is_conflict_free) {
  if (!ax_emu::checked_build()) return;
  ax_emu::start_metrics();
  check_core<__nv_bfloat16>(ax::Core::dplr, Shape{64, 256, 8, 0}, 0.9, false, 8);
  const std::vector<ax_emu::MetricRow> rows = ax_emu::stop_metrics();
  for (const char* kernel : {"dplr_forward_kernel", "dplr_backward_kernel"}) {
    const MetricTotals t = metric_totals(rows, kernel);
    std::printf("    %s: bank-conflict factor %.3f\n", kernel, t.wavefronts / t.ideal_wavefronts);
    AX_CHECK(t.ideal_wavefronts > 0 && t.wavefronts <= 1.25 * t.ideal_wavefronts);
  }
}

AX_TEST(cores_same_bits_for_every_schedule) {
  SeedGuard guard;
  for (uint64_t seed : {11ull, 12ull, 13ull}) {
    ax_emu::set_seed(seed);  // block order and thread interleaving
    check_core<float>(ax::Core::dplr, Shape{100, 20, 3, 0}, 0.9, false, 9);
    check_core<float>(ax::Core::rot, Shape{100, 20, 4, 1}, 0.9, false, 9);
    check_core<float>(ax::Core::ablate, Shape{100, 20, 3, 0}, 0.9, false, 9);
  }
}
// A steered call (several groups of rows, one coefficient each; rot: one rotation set each; with n_adapters > 1 a
// bank: one adapter each, the trainable arrays stacked) against api.h's definition, on the emulated kernels
// themselves: group e's rows equal an unsteered call over them at c_e with its adapter's parameters (itself checked
// against the oracles above), an adapter's parameter gradients are its groups' results added in group order (0 for
// an adapter no group runs), a per-group gradient (rot's dR) is its group's. Bit for bit.
template <typename T>
void check_steered(ax::Core core, int64_t groups, int64_t rows, int64_t r, int64_t k, int side, uint64_t seed,
                   int64_t n_adapters = 1) {
  using A = acc_of<T>;
  const int64_t n = groups * rows, bs = core == ax::Core::rot ? k : 1, nA = n_adapters;
  const bool per_group_R = core == ax::Core::rot && side != ax::kRotNone;
  std::mt19937_64 rng(seed);
  const std::vector<T> p = randn<T>(static_cast<size_t>(n * r), rng), dh = randn<T>(static_cast<size_t>(n * r), rng);
  const std::vector<A> S = randn<A>(static_cast<size_t>(r), rng, 1.0, 2.0);
  const std::vector<A> g = randn<A>(static_cast<size_t>(nA * r), rng);
  std::vector<A> coeffs = randn<A>(static_cast<size_t>(groups), rng);
  coeffs[0] = A(0);
  std::vector<int64_t> adapters(static_cast<size_t>(groups));
  for (int64_t e = 0; e < groups; ++e) adapters[e] = (e * 7 + 1) % nA;  // adapter 0 unused when nA > groups
  std::vector<A> P1, P2;
  if (core == ax::Core::dplr) {
    P1 = randn<A>(static_cast<size_t>(nA * k * r), rng);
    P2 = randn<A>(static_cast<size_t>(nA * r * k), rng);
  } else if (core == ax::Core::ablate) {
    P1 = randn<A>(static_cast<size_t>(nA * r * k), rng, 0.3);
    P2 = randn<A>(static_cast<size_t>(nA * k), rng, 0.2, 0.5);
  } else if (per_group_R) {  // R_e = cayley(t, c_e)
    const int64_t nb = r / bs, m = bs * (bs - 1) / 2;
    const std::vector<A> t = randn<A>(static_cast<size_t>(nb * m), rng);
    std::vector<A> work(static_cast<size_t>(2 * bs * bs));
    P1.resize(static_cast<size_t>(groups * r * bs));
    for (int64_t e = 0; e < groups; ++e)
      for (int64_t b = 0; b < nb; ++b)
        ax::cayley_block_forward(t.data() + b * m, int(bs), A(0.9), coeffs[e], work.data(),
                                 P1.data() + (e * nb + b) * bs * bs);
  }
  Dev<A> S_d(S, "S"), c_d(coeffs, "coeffs");
  Dev<int64_t> adapters_d(adapters, "adapters");
  auto params = [&](ax::CoreParams& c, A* g_ptr, A* P1_ptr, A* P2_ptr) {
    c.core = core;
    c.r = r;
    c.S = S_d.data();
    c.g = g_ptr;
    c.k = core == ax::Core::dplr || core == ax::Core::ablate ? k : 0;
    c.A = c.R = P1_ptr;
    c.B = c.a = P2_ptr;
    c.side = core == ax::Core::rot ? side : 0;
    c.bs = per_group_R ? bs : 1;
    c.suppress_only = core == ax::Core::gain;
  };
  // adapter a's slice of a stacked array of nA copies
  auto slice = [&](const std::vector<A>& v, int64_t a) {
    const size_t each = v.size() / size_t(nA);
    return std::vector<A>(v.begin() + a * each, v.begin() + (a + 1) * each);
  };
  void* st = test_stream();
  // ---- expected: one unsteered call per group
  ax::CoreParams unsteered;
  params(unsteered, nullptr, nullptr, nullptr);
  unsteered.k = core == ax::Core::dplr || core == ax::Core::ablate ? k : 0;
  const int64_t n_part = ax::core_partials(unsteered), n_shared = n_part - (per_group_R ? r * bs : 0);
  std::vector<T> h_ref, dp_ref;
  std::vector<A> tot(static_cast<size_t>(nA * n_shared), A(0)), dR_ref;
  std::vector<bool> seen(static_cast<size_t>(nA), false);
  for (int64_t e = 0; e < groups; ++e) {
    const auto rows_of = [&](const std::vector<T>& v) {
      return std::vector<T>(v.begin() + e * rows * r, v.begin() + (e + 1) * rows * r);
    };
    Dev<T> p_e(rows_of(p), "p"), dh_e(rows_of(dh), "grad_h"), h_e(static_cast<size_t>(rows * r), "h"),
        dp_e(static_cast<size_t>(rows * r), "dp");
    const int64_t ad = adapters[e];
    std::vector<A> P1_e = per_group_R ? std::vector<A>(P1.begin() + e * r * bs, P1.begin() + (e + 1) * r * bs)
                                      : P1.empty() ? P1 : slice(P1, ad);
    Dev<A> P1_d(P1_e, "A/R/C"), dparams_e(static_cast<size_t>(n_part), "dparams");
    Dev<A> g_e(slice(g, ad), "g"), P2_e(P2.empty() ? P2 : slice(P2, ad), "B/a");
    Dev<A> ws_e(static_cast<size_t>(ax::core_chunks_per_entry(rows) * ax::core_slice(n_part)), "workspace");
    ax::CoreCall call;
    call.dtype = dtype_of<T>();
    call.n = rows;
    params(call.core, g_e.data(), ptr_or_null(P1_d), ptr_or_null(P2_e));
    call.core.coeff = coeffs[e];
    call.p = p_e.data();
    call.h = h_e.data();
    K::core_forward(call, st);
    call.grad_h = dh_e.data();
    call.dp = dp_e.data();
    call.dparams = dparams_e.data();
    call.workspace = ws_e.data();
    K::core_backward(call, st);
    for (const T& v : h_e.to_host()) h_ref.push_back(v);
    for (const T& v : dp_e.to_host()) dp_ref.push_back(v);
    const std::vector<A> d = dparams_e.to_host();
    for (int64_t j = 0; j < n_shared; ++j) tot[ad * n_shared + j] = seen[ad] ? tot[ad * n_shared + j] + d[j] : d[j];
    seen[ad] = true;
    dR_ref.insert(dR_ref.end(), d.begin() + n_shared, d.end());
  }
  tot.insert(tot.end(), dR_ref.begin(), dR_ref.end());
  // ---- one steered call
  Dev<T> p_d(p, "p"), dh_d(dh, "grad_h"), h_d(static_cast<size_t>(n * r), "h"), dp_d(static_cast<size_t>(n * r), "dp");
  Dev<A> P1_d(P1, "A/R/C"), g_d(g, "g"), P2_d(P2, "B/a");
  ax::CoreCall call;
  call.dtype = dtype_of<T>();
  call.n = n;
  params(call.core, g_d.data(), ptr_or_null(P1_d), ptr_or_null(P2_d));
  call.core.entries = groups;
  call.core.coeffs = c_d.data();
  if (nA > 1) {
    call.core.adapters = adapters_d.data();
    call.core.n_adapters = nA;
  }
  AX_CHECK_EQ(ax::core_dparams_elems(call.core), int64_t(tot.size()));
  Dev<A> dparams_d(tot.size(), "dparams"), ws_d(static_cast<size_t>(ax::core_workspace_elems(n, call.core)), "workspace");
  call.p = p_d.data();
  call.h = h_d.data();
  K::core_forward(call, st);
  call.grad_h = dh_d.data();
  call.dp = dp_d.data();
  call.dparams = dparams_d.data();
  call.workspace = ws_d.data();
  K::core_backward(call, st);
  const std::string tag = std::string(name_of<T>()) + " core=" + std::to_string(int(core)) + " groups=" +
                          std::to_string(groups) + " rows=" + std::to_string(rows) + " side=" + std::to_string(side) +
                          " adapters=" + std::to_string(nA);
  AX_CHECK(same_bits(h_d.to_host(), h_ref, ("steered h " + tag).c_str()));
  AX_CHECK(same_bits(dp_d.to_host(), dp_ref, ("steered dp " + tag).c_str()));
  AX_CHECK(same_bits(dparams_d.to_host(), tot, ("steered dparams " + tag).c_str()));
}

// Group sizes: one row (per token, decode), a few rows, several reduction chunks and row tiles per group.
AX_TEST(cores_steered_groups_equal_unsteered_calls) {
  for (auto [groups, rows] : {std::pair<int64_t, int64_t>{5, 1}, {3, 7}, {2, 70}}) {
    check_steered<float>(ax::Core::gain, groups, rows, 12, 1, 0, 21);
    check_steered<__nv_bfloat16>(ax::Core::dplr, groups, rows, 20, 3, 0, 22);
    check_steered<float>(ax::Core::rot, groups, rows, 12, 4, ax::kRotV, 23);
    check_steered<__half>(ax::Core::rot, groups, rows, 12, 3, ax::kRotU, 24);
    check_steered<float>(ax::Core::rot, groups, rows, 12, 1, ax::kRotNone, 25);
    check_steered<double>(ax::Core::ablate, groups, rows, 20, 3, 0, 26);
  }
}

// Banks: 2 adapters (both run) and 7 (adapter 0 and others idle: their gradients 0).
AX_TEST(cores_bank_groups_equal_unsteered_calls_of_their_adapter) {
  for (int64_t n_adapters : {2, 7}) {
    for (auto [groups, rows] : {std::pair<int64_t, int64_t>{5, 1}, {3, 40}}) {
      check_steered<float>(ax::Core::gain, groups, rows, 12, 1, 0, 31, n_adapters);
      check_steered<__nv_bfloat16>(ax::Core::dplr, groups, rows, 20, 3, 0, 32, n_adapters);
      check_steered<float>(ax::Core::dplr, groups, rows, 96, 64, 0, 37, n_adapters);  // A, B read from global
      check_steered<float>(ax::Core::rot, groups, rows, 12, 4, ax::kRotV, 33, n_adapters);
      check_steered<double>(ax::Core::rot, groups, rows, 12, 1, ax::kRotNone, 34, n_adapters);
      check_steered<__half>(ax::Core::ablate, groups, rows, 20, 3, 0, 35, n_adapters);
    }
  }
}

AX_TEST(bad_sizes_throw) {
  std::vector<float> x(4096 * 2, 1.f), S(4096, 1.f), R(4096 * 2, 0.f), out(4096 * 2), ws(1 << 16);
  ax::CoreCall call;
  call.n = 2;
  call.core.core = ax::Core::rot;
  call.core.r = 4096;
  call.core.bs = 2;
  call.core.side = ax::kRotV;
  call.core.S = call.core.g = S.data();
  call.core.R = R.data();
  call.p = call.grad_h = x.data();
  call.h = call.dp = call.dparams = out.data();
  call.workspace = ws.data();
  AX_CHECK_THROWS(std::invalid_argument, K::core_backward(call, nullptr), "too wide");
  call.core.r = 12;
  call.core.bs = 5;
  AX_CHECK_THROWS(std::invalid_argument, K::core_forward(call, nullptr), "does not divide");
  call.core.core = ax::Core::dplr;
  call.core.k = 13;
  AX_CHECK_THROWS(std::invalid_argument, K::core_forward(call, nullptr), "unsupported sizes");
  call.core.k = 3;
  call.core.entries = 3;  // 2 rows in 3 groups
  call.core.coeffs = S.data();
  AX_CHECK_THROWS(std::invalid_argument, K::core_forward(call, nullptr), "steering groups");
}

int main(int argc, char** argv) { return ax_test::run_main(argc, argv); }
