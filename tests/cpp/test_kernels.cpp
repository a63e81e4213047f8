// Kernel tests (torch-free, ctest): the kernel family of csrc/kernels/ run through the CUDA emulator via
// the API of csrc/kernels/api.h (namespace ax::emu_impl), against the per-block / per-row math of
// csrc/kernels/math.h and rowcore.h summed in the same row chunks as the C++ CPU kernels. The kernels
// mirror that arithmetic, so results must agree bit for bit, for every emulator seed (block order and
// thread interleaving). Built twice: under ASan + UBSan, and as the emulator's checked build (every
// memory access of kernel code checked: shared-memory and inter-CTA races, cp.async in flight,
// uninitialised and out-of-bounds global accesses; emu/checker.h). All device memory is
// ax_emu::DeviceBuffer: inputs initialised, outputs and workspaces poisoned and uninitialised, so an
// entry a kernel forgets to write, or a partial it reads before writing, fails; launches must use the
// stream the API was given.
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "csrc/kernels/launchers.cuh"
#include "emu/testing.h"

namespace {

namespace K = ax::emu_impl;
using ax::DType;

struct SeedGuard {
  ~SeedGuard() { ax_emu::clear_seed(); }
};

// The stream every API call gets (and the emulator's current stream): a launch on another one fails.
void* test_stream() {
  static char token;
  ax_emu::set_current_stream(&token);
  return &token;
}

template <typename T>
using Dev = ax_emu::DeviceBuffer<T>;
template <typename T>
T* ptr_or_null(Dev<T>& d) {
  return d.size() ? d.data() : nullptr;
}

template <typename T>
using acc_of = std::conditional_t<std::is_same<T, double>::value, double, float>;

template <typename T>
DType dtype_of() {
  if (std::is_same<T, float>::value) return DType::f32;
  if (std::is_same<T, double>::value) return DType::f64;
  if (std::is_same<T, __half>::value) return DType::f16;
  return DType::bf16;
}
template <typename T>
const char* name_of() {
  if (std::is_same<T, float>::value) return "f32";
  if (std::is_same<T, double>::value) return "f64";
  if (std::is_same<T, __half>::value) return "f16";
  return "bf16";
}

template <typename A, typename T>
A to_acc(T v) {
  if constexpr (std::is_same<T, __half>::value) return __half2float(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __bfloat162float(v);
  else return static_cast<A>(v);
}
template <typename T, typename A>
T from_acc(A v) {
  if constexpr (std::is_same<T, __half>::value) return __float2half_rn(v);
  else if constexpr (std::is_same<T, __nv_bfloat16>::value) return __float2bfloat16_rn(v);
  else return static_cast<T>(v);
}

template <typename T>
std::vector<T> randn(size_t n, std::mt19937_64& rng, double scale = 1.0, double shift = 0.0) {
  std::normal_distribution<double> d(0.0, 1.0);
  std::vector<T> v(n);
  for (auto& x : v) x = from_acc<T>(static_cast<acc_of<T>>(shift + scale * d(rng)));
  return v;
}
// Bitwise equality (NaN == NaN when the bits agree).
template <typename T>
bool same_bits(const std::vector<T>& a, const std::vector<T>& b, const char* what) {
  if (a.size() != b.size()) {
    std::printf("    %s: size %zu vs %zu\n", what, a.size(), b.size());
    return false;
  }
  for (size_t i = 0; i < a.size(); ++i)
    if (std::memcmp(&a[i], &b[i], sizeof(T)) != 0) {
      std::printf("    %s: first difference at %zu: %.9g vs %.9g\n", what, i, double(to_acc<double>(a[i])),
                  double(to_acc<double>(b[i])));
      return false;
    }
  return true;
}

// The C++ CPU kernels' row reduction: partials per chunk of core_rows_per_cta(n) rows, in row order,
// then summed over chunks in order.
template <typename A, typename RowFn>
std::vector<A> reduce_rows(int64_t n, int64_t n_part, const RowFn& row_fn) {
  const int64_t chunk = ax::core_rows_per_cta(n), n_chunks = ax::core_partial_ctas(n);
  std::vector<A> partial(static_cast<size_t>(n_chunks * n_part), A(0)), total(static_cast<size_t>(n_part), A(0));
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) row_fn(i, partial.data() + c * n_part);
  for (int64_t c = 0; c < n_chunks; ++c)
    for (int64_t j = 0; j < n_part; ++j) total[j] += partial[c * n_part + j];
  return total;
}

template <typename T>
std::vector<acc_of<T>> row_acc(const std::vector<T>& x, int64_t i, int64_t r) {
  std::vector<acc_of<T>> v(static_cast<size_t>(r));
  for (int64_t j = 0; j < r; ++j) v[j] = to_acc<acc_of<T>>(x[i * r + j]);
  return v;
}
template <typename T, typename A>
void store_row(const std::vector<A>& v, std::vector<T>& x, int64_t i, int64_t r) {
  for (int64_t j = 0; j < r; ++j) x[i * r + j] = from_acc<T>(v[j]);
}

enum class Core { gain, dplr, rot, ablate };

struct Shape {
  int64_t n, r, k;  // k: low-rank / ablation rank, or the rotation block size
  int64_t side;     // rot only
};

// One core, forward and backward, through the emulated kernels and the reference; checks bits.
template <typename T>
void check_core(Core core, Shape sh, double coeff, bool suppress, uint64_t seed) {
  using A = acc_of<T>;
  const int64_t n = sh.n, r = sh.r, k = sh.k;
  std::mt19937_64 rng(seed * 7919 + uint64_t(r));
  const std::vector<T> p = randn<T>(static_cast<size_t>(n * r), rng), dh = randn<T>(static_cast<size_t>(n * r), rng);
  std::vector<A> S = randn<A>(static_cast<size_t>(r), rng, 1.0, 2.0), g = randn<A>(static_cast<size_t>(r), rng);
  std::vector<A> P1, P2;  // A, B (dplr) | R (rot) | C, a (ablate)
  int64_t n_part = 0;
  const int64_t bs = core == Core::rot ? k : 1, side = core == Core::rot ? sh.side : 0;
  switch (core) {
    case Core::gain: n_part = ax::gain_partials(r); break;
    case Core::dplr:
      P1 = randn<A>(static_cast<size_t>(k * r), rng);
      P2 = randn<A>(static_cast<size_t>(r * k), rng);
      n_part = ax::dplr_partials(r, k);
      break;
    case Core::rot: {
      if (side != ax::kRotNone) {
        const int64_t nb = r / bs, m = bs * (bs - 1) / 2;
        std::vector<A> t = randn<A>(static_cast<size_t>(nb * m), rng), work(static_cast<size_t>(2 * bs * bs));
        P1.resize(static_cast<size_t>(r * bs));
        for (int64_t b = 0; b < nb; ++b)
          ax::cayley_block_forward(t.data() + b * m, int(bs), A(0.9), A(1), work.data(), P1.data() + b * bs * bs);
      }
      n_part = ax::rot_partials(r, bs, side);
      break;
    }
    case Core::ablate:
      P1 = randn<A>(static_cast<size_t>(r * k), rng, 0.3);
      P2.resize(static_cast<size_t>(k));
      for (int64_t m = 0; m < k; ++m) P2[m] = A(0.1 + 0.8 * double(m + 1) / double(k + 1));
      n_part = ax::ablate_partials(r, k);
      break;
  }

  // ---- reference
  std::vector<T> h_ref(static_cast<size_t>(n * r)), dp_ref(static_cast<size_t>(n * r));
  std::vector<A> s(static_cast<size_t>(r)), dscale(static_cast<size_t>(r));
  for (int64_t j = 0; j < r; ++j)
    s[j] = core == Core::rot ? S[j] + A(coeff) * g[j]
                             : ax::gain_scale<A>(S[j], g[j], A(coeff), suppress, &dscale[j]);
  std::vector<A> w(static_cast<size_t>(4 * r + 4 * k + 8)), tot;
  for (int64_t i = 0; i < n; ++i) {
    std::vector<A> x = row_acc(p, i, r), h(static_cast<size_t>(r));
    switch (core) {
      case Core::gain: ax::gain_row_forward(x.data(), s.data(), int(r), h.data()); break;
      case Core::dplr:
        ax::dplr_row_forward(x.data(), s.data(), P1.data(), P2.data(), A(coeff), int(r), int(k), w.data(), h.data());
        break;
      case Core::rot: ax::rot_row_forward(x.data(), s.data(), P1.data(), int(side), int(r), int(bs), h.data()); break;
      case Core::ablate:
        ax::ablate_row_forward(x.data(), S.data(), P1.data(), P2.data(), A(coeff), int(r), int(k), w.data(), h.data());
        break;
    }
    store_row(h, h_ref, i, r);
  }
  tot = reduce_rows<A>(n, n_part, [&](int64_t i, A* part) {
    std::vector<A> x = row_acc(p, i, r), d = row_acc(dh, i, r), dpr(static_cast<size_t>(r));
    switch (core) {
      case Core::gain: ax::gain_row_backward(d.data(), x.data(), s.data(), int(r), dpr.data(), part); break;
      case Core::dplr:
        ax::dplr_row_backward(d.data(), x.data(), s.data(), P1.data(), P2.data(), A(coeff), int(r), int(k), w.data(),
                              w.data() + k, dpr.data(), part, part + r, part + r + k * r);
        break;
      case Core::rot:
        ax::rot_row_backward(d.data(), x.data(), s.data(), P1.data(), int(side), int(r), int(bs), w.data(), dpr.data(),
                             part, part + r);
        break;
      case Core::ablate:
        ax::ablate_row_backward(d.data(), x.data(), S.data(), P1.data(), P2.data(), A(coeff), int(r), int(k), w.data(),
                                w.data() + k, dpr.data(), part, part + r * k);
        break;
    }
    store_row(dpr, dp_ref, i, r);
  });
  if (core == Core::gain || core == Core::dplr)
    for (int64_t j = 0; j < r; ++j) tot[j] *= dscale[j];
  if (core == Core::rot)
    for (int64_t j = 0; j < r; ++j) tot[j] *= A(coeff);

  // ---- kernels (outputs and workspace uninitialised device memory)
  Dev<T> p_d(p, "p"), dh_d(dh, "grad_h"), h_d(static_cast<size_t>(n * r), "h"), dp_d(static_cast<size_t>(n * r), "dp");
  Dev<A> S_d(S, "S"), g_d(g, "g"), P1_d(P1, "A/R/C"), P2_d(P2, "B/a"), dparams_d(static_cast<size_t>(n_part), "dparams");
  Dev<A> ws_d(static_cast<size_t>(ax::core_workspace_elems(n, n_part)), "workspace");
  const DType dt = dtype_of<T>();
  void* st = test_stream();
  switch (core) {
    case Core::gain:
      K::gain_forward(dt, p_d.data(), n, r, S_d.data(), g_d.data(), coeff, suppress, h_d.data(), st);
      K::gain_backward(dt, dh_d.data(), p_d.data(), n, r, S_d.data(), g_d.data(), coeff, suppress, dp_d.data(),
                       dparams_d.data(), ws_d.data(), st);
      break;
    case Core::dplr:
      K::dplr_forward(dt, p_d.data(), n, r, k, S_d.data(), g_d.data(), P1_d.data(), P2_d.data(), coeff, suppress,
                      h_d.data(), st);
      K::dplr_backward(dt, dh_d.data(), p_d.data(), n, r, k, S_d.data(), g_d.data(), P1_d.data(), P2_d.data(), coeff,
                       suppress, dp_d.data(), dparams_d.data(), ws_d.data(), st);
      break;
    case Core::rot:
      K::rot_forward(dt, p_d.data(), n, r, bs, side, S_d.data(), g_d.data(), ptr_or_null(P1_d), coeff, h_d.data(), st);
      K::rot_backward(dt, dh_d.data(), p_d.data(), n, r, bs, side, S_d.data(), g_d.data(), ptr_or_null(P1_d), coeff,
                      dp_d.data(), dparams_d.data(), ws_d.data(), st);
      break;
    case Core::ablate:
      K::ablate_forward(dt, p_d.data(), n, r, k, S_d.data(), P1_d.data(), P2_d.data(), coeff, h_d.data(), st);
      K::ablate_backward(dt, dh_d.data(), p_d.data(), n, r, k, S_d.data(), P1_d.data(), P2_d.data(), coeff,
                         dp_d.data(), dparams_d.data(), ws_d.data(), st);
      break;
  }
  const std::vector<T> h = h_d.to_host(), dp = dp_d.to_host();
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
    check_core<T>(Core::gain, sh, 0.7, false, seed);
    check_core<T>(Core::gain, sh, -1.3, true, seed);
    check_core<T>(Core::dplr, sh, 0.9, false, seed);
    for (int64_t side : {0, 1, 2}) check_core<T>(Core::rot, Shape{sh.n, sh.r, sh.k, side}, -0.6, false, seed);
    check_core<T>(Core::ablate, sh, 0.8, false, seed);
  }
}

}  // namespace

AX_TEST(cores_f32_bit_exact) { check_all_cores<float>(1); }
AX_TEST(cores_f64_bit_exact) { check_all_cores<double>(2); }
AX_TEST(cores_f16_bit_exact) { check_all_cores<__half>(3); }
AX_TEST(cores_bf16_bit_exact) { check_all_cores<__nv_bfloat16>(4); }

// Several row tiles per reduction CTA for every tiled core: 4200 rows make 33-row chunks, two tiles of
// at most 32 rows each (the barriers between tiles matter only there).
AX_TEST(cores_several_row_tiles_per_cta) {
  check_core<float>(Core::dplr, Shape{4200, 20, 3, 0}, 0.9, false, 6);
  check_core<__nv_bfloat16>(Core::rot, Shape{4200, 20, 4, 1}, -0.6, false, 6);
  check_core<float>(Core::rot, Shape{4200, 24, 3, 2}, 0.7, false, 6);
  check_core<__half>(Core::ablate, Shape{4200, 20, 2, 0}, 0.8, false, 6);
  check_core<float>(Core::gain, Shape{4200, 20, 1, 0}, 0.5, true, 6);
}

AX_TEST(cores_wide_tiles_and_unstaged_params) {
  check_core<float>(Core::rot, Shape{40, 384, 32, 1}, 0.8, false, 5);   // R does not fit: read from global
  check_core<float>(Core::rot, Shape{40, 384, 4, 2}, 0.8, false, 5);    // 9-row tiles, 16-row chunks
  check_core<float>(Core::dplr, Shape{45, 96, 64, 0}, 0.9, false, 5);   // A, B do not fit
  check_core<float>(Core::ablate, Shape{33, 640, 20, 0}, 0.8, false, 5);  // C does not fit, 8-row tiles
  check_core<double>(Core::dplr, Shape{20, 200, 16, 0}, 0.9, true, 5);
  check_core<float>(Core::gain, Shape{21, 3000, 1, 0}, 0.5, false, 5);
}

AX_TEST(cores_same_bits_for_every_schedule) {
  SeedGuard guard;
  for (uint64_t seed : {11ull, 12ull, 13ull}) {
    ax_emu::set_seed(seed);  // block order and thread interleaving
    check_core<float>(Core::dplr, Shape{100, 20, 3, 0}, 0.9, false, 9);
    check_core<float>(Core::rot, Shape{100, 20, 4, 1}, 0.9, false, 9);
    check_core<float>(Core::ablate, Shape{100, 20, 3, 0}, 0.9, false, 9);
  }
}

namespace {
template <typename A>
void check_cayley(int bs, int64_t nb, double coeff, uint64_t seed) {
  std::mt19937_64 rng(seed);
  const int64_t m = int64_t(bs) * (bs - 1) / 2;
  const std::vector<A> t = randn<A>(static_cast<size_t>(nb * m), rng, 2.0), G = randn<A>(static_cast<size_t>(nb * bs * bs), rng);
  const double a_lim = 2.0 * std::tan(0.5 / 2.0);
  std::vector<A> R_ref(static_cast<size_t>(nb * bs * bs)), dt_ref(static_cast<size_t>(nb * m)), work(static_cast<size_t>(3 * bs * bs));
  for (int64_t b = 0; b < nb; ++b) {
    ax::cayley_block_forward(t.data() + b * m, bs, A(a_lim), A(coeff), work.data(), R_ref.data() + b * bs * bs);
    ax::cayley_block_backward(G.data() + b * bs * bs, R_ref.data() + b * bs * bs, t.data() + b * m, bs, A(a_lim),
                              A(coeff), work.data(), dt_ref.data() + b * m);
  }
  Dev<A> t_d(t, "t"), G_d(G, "grad_R"), R_d(R_ref.size(), "R"), dt_d(dt_ref.size(), "dt");
  const bool f64 = std::is_same<A, double>::value;
  K::block_cayley_forward(f64, t_d.data(), nb, bs, a_lim, coeff, R_d.data(), test_stream());
  K::block_cayley_backward(f64, G_d.data(), R_d.data(), t_d.data(), nb, bs, a_lim, coeff, dt_d.data(), test_stream());
  const std::vector<A> R = R_d.to_host(), dt = dt_d.to_host();
  const std::string tag = std::string(f64 ? "f64" : "f32") + " bs=" + std::to_string(bs);
  AX_CHECK(same_bits(R, R_ref, ("R " + tag).c_str()));
  AX_CHECK(same_bits(dt, dt_ref, ("dt " + tag).c_str()));
  // R orthogonal
  double err = 0;
  for (int64_t b = 0; b < nb; ++b)
    for (int i = 0; i < bs; ++i)
      for (int j = 0; j < bs; ++j) {
        double s = 0;
        for (int q = 0; q < bs; ++q) s += double(R[b * bs * bs + q * bs + i]) * double(R[b * bs * bs + q * bs + j]);
        err = std::max(err, std::fabs(s - (i == j ? 1.0 : 0.0)));
      }
  AX_CHECK(err < (f64 ? 1e-12 : 1e-5));
}
}  // namespace

AX_TEST(cayley_register_path_bit_exact) {  // bs <= 8: one thread per block; 70 blocks = 2 CTAs
  for (int bs = 2; bs <= 8; ++bs) {
    check_cayley<float>(bs, 70, 1.0, uint64_t(bs));
    check_cayley<double>(bs, 70, -0.7, uint64_t(bs));
  }
}

AX_TEST(cayley_shared_memory_path_bit_exact) {  // bs > 8: one CTA per block
  for (int bs : {9, 12, 16, 23, 32, 64}) {
    check_cayley<float>(bs, 3, 1.0, uint64_t(bs));
    check_cayley<double>(bs, 2, -0.7, uint64_t(bs));
  }
}

AX_TEST(cayley_coeff_zero_is_identity) {
  for (int bs : {4, 16}) {
    std::mt19937_64 rng(1);
    const int64_t nb = 3, m = int64_t(bs) * (bs - 1) / 2;
    Dev<float> t_d(randn<float>(static_cast<size_t>(nb * m), rng), "t"), R_d(static_cast<size_t>(nb * bs * bs), "R");
    K::block_cayley_forward(false, t_d.data(), nb, bs, 0.5, 0.0, R_d.data(), test_stream());
    const std::vector<float> R = R_d.to_host();
    for (int64_t e = 0; e < nb * bs * bs; ++e) AX_CHECK_EQ(R[e], ((e % (bs * bs)) / bs == e % bs) ? 1.0f : 0.0f);
  }
}

AX_TEST(bad_sizes_throw) {
  std::vector<float> x(4096 * 2, 1.f), S(4096, 1.f), R(4096 * 2, 0.f), out(4096 * 2), ws(1 << 16);
  AX_CHECK_THROWS(std::invalid_argument,
                  K::rot_backward(DType::f32, x.data(), x.data(), 2, 4096, 2, 1, S.data(), S.data(), R.data(), 1.0,
                                  out.data(), out.data(), ws.data(), nullptr),
                  "too wide");
  AX_CHECK_THROWS(std::invalid_argument,
                  K::rot_forward(DType::f32, x.data(), 2, 12, 5, 1, S.data(), S.data(), R.data(), 1.0, out.data(),
                                 nullptr),
                  "does not divide");
  AX_CHECK_THROWS(std::invalid_argument,
                  K::block_cayley_forward(false, x.data(), 1, 65, 0.5, 1.0, out.data(), nullptr), "block size");
}

// ------------------------------------------------------------------ stage 2: fused projection + core

namespace {
// h = core(x Vh^T) through project_core_forward vs a float64 reference (P exact from the 16-bit inputs).
// Tolerance: P accumulated in fp32 on the (emulated) tensor cores, h rounded once to 16 bits.
// core: 0 gain, 1 rot (side, bs), 2 dplr (k), 3 ablate (k).
template <typename T>
void check_project(int64_t n, int64_t d_in, int64_t r, int core, int side, int bs, uint64_t seed, int k = 0) {
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
  Dev<float> ws_d(static_cast<size_t>(ax::project_workspace_elems(n, d_in, r)), "workspace");
  ax::ProjectCore c;
  c.kind = core;
  c.side = side;
  c.bs = bs;
  c.k = k;
  c.S = S_d.data();
  c.g = g_d.data();
  c.R = ptr_or_null(R_d);
  c.A = k ? A_d.data() : nullptr;
  c.B = k ? (core == 3 ? A_d.data() : B_d.data()) : nullptr;
  c.a = k ? a_d.data() : nullptr;
  c.coeff = coeff;
  c.suppress_only = suppress;
  K::project_core_forward(dtype_of<T>(), x_d.data(), Vh_d.data(), n, d_in, r, c, h_d.data(), p_d.data(),
                          ptr_or_null(ws_d), test_stream());
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
  std::printf("    %s n=%lld d_in=%lld r=%lld core=%d side=%d bs=%d k=%d splits=%lld: rel err h %.2g, p %.2g\n", name_of<T>(),
              (long long)n, (long long)d_in, (long long)r, core, side, bs, k,
              (long long)((d_in + ax::project_k_split(n, d_in) - 1) / ax::project_k_split(n, d_in)), herr / hmax, perr / pmax);
  AX_CHECK(herr <= tol * hmax);
  AX_CHECK(perr <= tol * pmax);
}

ax::ProjectCore gain_core_of(const float* S, const float* g) {
  ax::ProjectCore c;
  c.S = S;
  c.g = g;
  return c;
}
}  // namespace

AX_TEST(project_prefill_matches_reference) {
  check_project<__nv_bfloat16>(37, 72, 20, 0, 0, 1, 1);   // K tail (72 = 4.5 k-steps), r off the n-tiles
  check_project<__half>(70, 64, 12, 1, 2, 3, 2);           // rot U, 3 row tiles
  check_project<__nv_bfloat16>(33, 48, 48, 1, 1, 16, 3);  // rot V, bs 16
  check_project<__half>(40, 128, 100, 0, 0, 1, 5);        // 8 n-tiles per warp
  check_project<__nv_bfloat16>(9, 32, 256, 1, 0, 1, 4);    // r = 256 (16 n-tiles per warp), rot none
  check_project<__nv_bfloat16>(45, 40, 24, 2, 0, 1, 11, 3);  // dplr k 3
  check_project<__half>(33, 64, 72, 2, 0, 1, 12, 32);        // dplr k 32 (the largest tile of Q)
  check_project<__nv_bfloat16>(20, 24, 36, 3, 0, 1, 13, 2);  // ablate k 2
  check_project<__half>(64, 56, 256, 3, 0, 1, 14, 32);       // ablate, r 256 and k 32: the largest epilogue
  check_project<__nv_bfloat16>(35, 96, 66, 0, 0, 1, 17);     // r just past 64 (8 n-tiles per warp), 6 K steps
  check_project<__half>(19, 48, 130, 1, 2, 2, 18);           // r just past 128 (16 n-tiles), rot U, 3 K steps
}

AX_TEST(project_decode_split_k_matches_reference) {
  check_project<__nv_bfloat16>(5, 2048, 36, 1, 1, 4, 6);  // 4 splits of 512
  check_project<__half>(16, 1024, 64, 0, 0, 1, 7);        // 2 splits
  check_project<__nv_bfloat16>(1, 1536, 20, 0, 0, 1, 9);  // one token
  check_project<__half>(3, 1024, 40, 2, 0, 1, 15, 5);       // dplr through the finish kernel
  check_project<__nv_bfloat16>(7, 2048, 24, 3, 0, 1, 16, 4);  // ablate through the finish kernel
}

AX_TEST(project_same_bits_for_every_schedule) {
  SeedGuard guard;
  std::mt19937_64 rng(3);
  const int64_t n = 20, d_in = 96, r = 40;
  Dev<__nv_bfloat16> x(randn<__nv_bfloat16>(static_cast<size_t>(n * d_in), rng), "x");
  Dev<__nv_bfloat16> Vh(randn<__nv_bfloat16>(static_cast<size_t>(r * d_in), rng), "Vh");
  Dev<float> S(std::vector<float>(static_cast<size_t>(r), 1.5f), "S"), g(std::vector<float>(static_cast<size_t>(r), 0.1f), "g");
  std::vector<__nv_bfloat16> first;
  for (uint64_t seed : {1ull, 2ull, 3ull}) {
    ax_emu::set_seed(seed);
    Dev<__nv_bfloat16> h_d(static_cast<size_t>(n * r), "h");
    K::project_core_forward(DType::bf16, x.data(), Vh.data(), n, d_in, r, gain_core_of(S.data(), g.data()), h_d.data(),
                            nullptr, nullptr, test_stream());
    const std::vector<__nv_bfloat16> h = h_d.to_host();
    if (first.empty()) first = h;
    AX_CHECK(same_bits(h, first, "h"));
  }
}

AX_TEST(project_bad_input_throws) {
  std::vector<__nv_bfloat16> x(64), Vh(64), h(64);
  std::vector<float> S(8, 1.f);
  const ax::ProjectCore gain = gain_core_of(S.data(), S.data());
  AX_CHECK_THROWS(std::invalid_argument,
                  K::project_core_forward(DType::bf16, x.data(), Vh.data(), 2, 12, 4, gain, h.data(), nullptr, nullptr, nullptr),
                  "multiple of 8");
  AX_CHECK_THROWS(std::invalid_argument,
                  K::project_core_forward(DType::f32, x.data(), Vh.data(), 2, 16, 4, gain, h.data(), nullptr, nullptr, nullptr),
                  "bfloat16 or float16");
  AX_CHECK_THROWS(std::invalid_argument,
                  K::project_core_forward(DType::bf16, x.data() + 1, Vh.data(), 2, 16, 4, gain, h.data(), nullptr, nullptr,
                                          nullptr),
                  "aligned");
  ax::ProjectCore dplr = gain;
  dplr.kind = ax::kProjectDplr;
  dplr.k = 33;
  dplr.A = dplr.B = S.data();
  AX_CHECK_THROWS(std::invalid_argument,
                  K::project_core_forward(DType::bf16, x.data(), Vh.data(), 2, 16, 4, dplr, h.data(), nullptr, nullptr, nullptr),
                  "low-rank");
}

int main(int argc, char** argv) { return ax_test::run_main(argc, argv); }
